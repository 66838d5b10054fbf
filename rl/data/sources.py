"""Problem sets as they are published, read from local files into `ProblemRecord`s.

Formats, told apart per row by their keys (docs/data.md):
- LiveCodeBench code_generation: `question_content`, `public_test_cases`, `private_test_cases`, ...
- TACO: `question`, `input_output` (JSON text of {inputs, outputs, fn_name?}), `difficulty`, ...
- DeepCoder-Preview-Dataset: `problem`, `tests` (JSON text), `starter_code`, `metadata` (JSON text)
- the sandbox's own problem JSON (`sandbox.Problem.from_dict`) with a `question` for the prompt.
Tests are always built by `sandbox.Problem`; nothing here parses a test.
"""
from __future__ import annotations

import codecs
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from sandbox import Problem, ProblemError
from sandbox.problem import loads_json

ID_KEYS = ("id", "question_id", "problem_id", "task_id")
MAX_ERRORS_KEPT = 20  # error messages a LoadReport keeps (all are counted)


class DataError(ValueError):
    """A problem file or row that cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class ProblemRecord:
    id: str
    source: str                     # row format: "lcb" | "taco" | "deepcoder" | "sandbox"
    question: str
    starter_code: str
    problem: Problem                # tests and limits, for grading
    difficulty: str | None = None   # lower case as published ("easy", "medium_hard", ...)
    platform: str | None = None     # "leetcode", "atcoder", "codeforces", ...
    contest_date: datetime | None = None
    origin: str = ""                # "FILE row N": where the row came from

    def meta(self) -> dict:
        """The record without its text and tests, as JSON for run logs."""
        return {"id": self.id, "source": self.source, "difficulty": self.difficulty,
                "platform": self.platform, "origin": self.origin,
                "contest_date": self.contest_date.isoformat() if self.contest_date else None}


@dataclass
class LoadReport:
    """What loading kept and skipped, to record in the run."""
    rows: int = 0
    loaded: int = 0
    skipped: int = 0
    formats: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first MAX_ERRORS_KEPT messages

    def to_json(self) -> dict:
        return {"rows": self.rows, "loaded": self.loaded, "skipped": self.skipped,
                "formats": dict(self.formats), "errors": self.errors}


def load_problems(paths, *, strict: bool = False, progress: bool = False
                  ) -> tuple[list[ProblemRecord], LoadReport]:
    """Every problem of the files in `paths` (.json, .jsonl, .parquet), in file then row order.

    A bad row raises DataError when `strict`; otherwise it is skipped, counted in the report and
    summed up in one warning per file. A file that cannot be read at all always raises.
    `progress`: a progress bar of rows read per file."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records, report, seen = [], LoadReport(), {}
    paths = [Path(p) for p in paths]
    for path, prefix in zip(paths, id_prefixes(paths)):
        skipped_before, first_error = report.skipped, None
        rows = read_rows(path)
        if progress:
            rows = tqdm(rows, desc=f"loading {path.name}", unit=" rows", leave=False)
        for row_no, row, where in rows:
            report.rows += 1
            try:
                if isinstance(row, DataError):
                    raise row
                rec = to_record(row, f"{prefix}#{row_no}", where)
                if rec.id in seen:
                    raise DataError(f"{where}: id: {rec.id!r} already used by {seen[rec.id]}")
            except DataError as e:
                if strict:
                    raise
                report.skipped += 1
                first_error = first_error or str(e)
                if len(report.errors) < MAX_ERRORS_KEPT:
                    report.errors.append(str(e))
                continue
            seen[rec.id] = where
            report.formats[rec.source] += 1
            records.append(rec)
        if report.skipped > skipped_before:
            warnings.warn(f"{path}: skipped {report.skipped - skipped_before} malformed rows "
                          f"(first: {first_error}); "
                          "strict=True raises instead", RuntimeWarning, stacklevel=2)
    report.loaded = len(records)
    return records, report


def id_prefixes(paths: list[Path]) -> list[str]:
    """What the ids of rows without one start with ("FILE#ROW"): each file's name, or the path as given
    where files of one load share a name (hub parquet exports name every subset's file 0000.parquet)."""
    names = Counter(p.name for p in paths)
    return [p.name if names[p.name] == 1 else p.as_posix() for p in paths]


def to_record(row: Any, default_id: str, where: str) -> ProblemRecord:
    """One published row as a ProblemRecord, or DataError naming `where` and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    source = detect_format(row)
    if source is None:
        raise DataError(f"{where}: unknown row format (keys: {', '.join(sorted(map(str, row))[:12])}); "
                        "expected LiveCodeBench, TACO, DeepCoder or sandbox problem fields")
    try:
        return _BUILDERS[source](row, default_id, where)
    except ProblemError as e:
        raise DataError(f"{where}: {e}") from None
    except DataError:
        raise
    except Exception as e:  # a shape no check foresaw: still a bad row, named, never a crash
        raise DataError(f"{where}: {type(e).__name__}: {e}") from e


def detect_format(row: dict) -> str | None:
    if "question_content" in row:
        return "lcb"
    if "input_output" in row and "question" in row:
        return "taco"
    if "tests" in row and "problem" in row:
        return "deepcoder"
    if "tests" in row:
        return "sandbox"
    return None


def _lcb(row: dict, default_id: str, where: str) -> ProblemRecord:
    return ProblemRecord(
        id=_id(row, default_id, where), source="lcb",
        question=_text(row, "question_content", where),
        starter_code=_text(row, "starter_code", where, required=False),
        problem=Problem.from_lcb_row(row),
        difficulty=_label(row, "difficulty", where), platform=_label(row, "platform", where),
        contest_date=_date(row.get("contest_date"), where), origin=where)


def _taco(row: dict, default_id: str, where: str) -> ProblemRecord:
    starter = _text(row, "starter_code", where, required=False)
    # TACO's time_limit / memory_limit are prose ("1 second"): the experiment's limits apply.
    try:
        problem = Problem.from_dict({"tests": row["input_output"], "starter_code": starter})
    except ProblemError as e:  # named as the row names it
        raise ProblemError(re.sub(r"^tests\b", "input_output", str(e))) from None
    return ProblemRecord(
        id=_id(row, default_id, where), source="taco", question=_text(row, "question", where),
        starter_code=starter or _stub(problem), problem=problem, difficulty=_label(row, "difficulty", where),
        platform=_label(row, "source", where), origin=where)


def _deepcoder(row: dict, default_id: str, where: str) -> ProblemRecord:
    starter = _text(row, "starter_code", where, required=False)
    fields = {"tests": row["tests"], "starter_code": starter, "metadata": row.get("metadata") or {}}
    problem = Problem.from_dict(_rllm_shapes(fields))
    return ProblemRecord(
        id=_id(row, default_id, where), source="deepcoder", question=_text(row, "problem", where),
        starter_code=starter or _stub(problem), problem=problem, origin=where)


def _stub(problem: Problem) -> str:
    """Starter code for a call-based problem published without any (some TACO / DeepCoder rows): with
    none, the prompt would ask for a stdin program, and the grader calls fn_name. One parameter per
    argument of the first test."""
    if not problem.call_based:
        return ""
    arity = len(problem.tests[0].input.splitlines()) if problem.tests else 0
    return f"def {problem.fn_name}({', '.join(f'arg{i}' for i in range(1, arity + 1))}):\n    "


def _sandbox(row: dict, default_id: str, where: str) -> ProblemRecord:
    if "question" not in row:
        raise DataError(f"{where}: question: missing (a sandbox problem needs the text to prompt with)")
    return ProblemRecord(
        id=_id(row, default_id, where), source="sandbox", question=_text(row, "question", where),
        starter_code=_text(row, "starter_code", where, required=False),
        problem=Problem.from_dict(row), difficulty=_label(row, "difficulty", where),
        platform=_label(row, "platform", where), contest_date=_date(row.get("contest_date"), where),
        origin=where)


_BUILDERS = {"lcb": _lcb, "taco": _taco, "deepcoder": _deepcoder, "sandbox": _sandbox}


def _rllm_shapes(fields: dict) -> dict:
    """Two test shapes of DeepCoder's rows (as rllm reads them) brought to what sandbox.Problem
    reads; every other shape passes through untouched.
    - primeintellect call-based tests, one object per test: {type: "function_call", fn_name,
      input: [args], output: [value]}. That is TACO's object split up: regrouped into it.
    - LiveCodeBench tests carrying the function name in each test's own `metadata.func_name`:
      the name is lifted to the problem's `fn_name`."""
    tests = fields["tests"]
    if isinstance(tests, str) and '"function_call"' not in tests and '"func_name"' not in tests:
        return fields  # the common case: no second decode of megabytes of tests
    try:
        raw = loads_json(tests) if isinstance(tests, str) else tests
    except (ValueError, RecursionError):
        return fields  # Problem names the undecodable field
    if not (isinstance(raw, list) and raw and all(isinstance(t, dict) for t in raw)):
        return fields
    if raw[0].get("type") == "function_call":
        if not raw[0].get("fn_name"):
            raise ProblemError("tests[0].fn_name: missing in a function_call test")
        return {**fields, "tests": {"fn_name": raw[0].get("fn_name"),
                                    "inputs": [t.get("input") for t in raw],
                                    "outputs": [t.get("output") for t in raw]}}
    per_test = raw[0].get("metadata")
    if isinstance(per_test, dict) and per_test.get("func_name"):
        return {**fields, "fn_name": per_test["func_name"]}
    return fields


def _id(row: dict, default: str, where: str) -> str:
    for key in ID_KEYS:
        value = row.get(key)
        if value is not None and value != "":
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise DataError(f"{where}: {key}: expected a string or integer, got {type(value).__name__}")
            return str(value)
    return default


def _text(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"{where}: {key}: expected {'non-empty ' if required else ''}text, "
                        f"got {type(value).__name__ if not isinstance(value, str) else 'an empty string'}")
    return value


def _label(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {key}: expected a string, got {type(value).__name__}")
    return value.strip().lower()


def _date(value: Any, where: str) -> datetime | None:
    """LiveCodeBench writes contest_date as ISO text ("2024-08-03T00:00:00"); parquet may hold a
    timestamp. Kept naive, as LiveCodeBench compares them."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).replace(tzinfo=None)
        except ValueError:
            pass
    raise DataError(f"{where}: contest_date: expected an ISO date, got {value!r}")


def read_rows(path: Path) -> Iterator[tuple[int, Any, str]]:
    """(row number from 0, row, where) for each row of a .json, .jsonl or .parquet file."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".parquet"):
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                        "expected .json, .jsonl or .parquet")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if suffix == ".parquet":
        yield from _parquet_rows(path)
    elif suffix == ".jsonl":
        yield from _jsonl_rows(path)
    else:
        yield from _json_rows(path)


def _json_rows(path: Path):
    try:
        data = loads_json(path.read_text(encoding="utf-8-sig"))  # a byte-order mark, as .jsonl takes it
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: not readable as JSON ({type(e).__name__}: {e})") from None
    rows = data if isinstance(data, list) else [data]  # one object: a single problem file
    for i, row in enumerate(rows):
        yield i, row, f"{path} row {i}"


def _jsonl_rows(path: Path):
    """Lines are decoded one by one, so a line that is not UTF-8 is that row's error, not the file's."""
    row = 0
    try:
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, 1):
                if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                if not raw.strip():
                    continue
                where = f"{path} row {row} (line {line_no})"
                try:
                    value = loads_json(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    value = DataError(f"{where}: not UTF-8 ({e})")  # raised as the row's error
                except (ValueError, RecursionError) as e:
                    value = DataError(f"{where}: undecodable JSON ({e})")
                yield row, value, where
                row += 1
    except OSError as e:
        raise DataError(f"{path}: unreadable after row {row} ({type(e).__name__}: {e})") from None


def _parquet_rows(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.ParquetFile(path)
        batches = table.iter_batches(batch_size=64)  # LCB rows carry megabytes of tests each
        row = 0
        for batch in batches:
            for value in _batch_rows(batch, path, row):
                yield row, value, f"{path} row {row}"
                row += 1
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: unreadable parquet ({type(e).__name__}: {e})") from None


def _batch_rows(batch, path: Path, first: int) -> list:
    """A batch's rows as Python objects; a value Python cannot hold (a date past year 9999) is that row's
    error, not the file's."""
    try:
        return batch.to_pylist()
    except (OverflowError, ValueError):
        rows = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except (OverflowError, ValueError) as e:
                rows.append(DataError(f"{path} row {first + i}: a value Python cannot hold ({e})"))
        return rows
