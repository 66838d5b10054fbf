"""Problems and their tests, loaded from the LiveCodeBench/DeepCoder and TACO shapes.

Expected outputs stay in the grading process: a Test holds them, a child never receives a Test.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import pickle
import re
import uuid
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

DEFAULT_TIME_LIMIT = 15.0
DEFAULT_MEMORY_MB = 4096
LCB_TIME_LIMIT = 6.0  # lcb_runner's default --timeout, seconds per test
LCB_MAX_DECOMPRESSED = 1 << 31  # bytes: a bound on private_test_cases after zlib
MAX_TIME_LIMIT = 86_400.0  # seconds: far beyond any test, and within what select/poll accept
MIN_MEMORY_MB, MAX_MEMORY_MB = 64, 1 << 20  # the warm interpreter alone maps ~120 MiB


class ProblemError(ValueError):
    """A malformed problem; the message names the offending field."""


def check_time_limit(value: Any, name: str = "time_limit") -> float:
    """Seconds per test, or ValueError naming `name`. Shared by problems, options and the CLI."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (math.isfinite(value) and 0 < value <= MAX_TIME_LIMIT):
        raise ValueError(f"{name}: expected seconds in (0, {MAX_TIME_LIMIT:g}], got {value!r}")
    return float(value)


def check_memory_mb(value: Any, name: str = "memory_mb") -> int:
    """An address-space limit in MiB, or ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_MEMORY_MB <= value <= MAX_MEMORY_MB:
        raise ValueError(f"{name}: expected an integer in [{MIN_MEMORY_MB}, {MAX_MEMORY_MB}], got {value!r}")
    return value


def loads_json(text: str) -> Any:
    """json.loads without Python 3.11's 4300-digit int limit: huge ints become exact Decimals."""
    return json.loads(text, parse_int=lambda s: int(s) if len(s) < 4000 else Decimal(s))


_BIG_INT = 10 ** 4000  # str() of an int refuses more than 4300 digits


def dumps_json(value: Any) -> str:
    """json.dumps that writes integers of any size (loads_json's Decimals, or ints past the
    4300-digit limit of str()) in full: json.dumps refuses both."""
    marker, digits = f"\0{uuid.uuid4().hex}:", []

    def plain(v):  # the value with each huge integer replaced by a marker string
        if isinstance(v, Decimal) or (type(v) is int and abs(v) >= _BIG_INT):
            digits.append(str(Decimal(v)))
            return f"{marker}{len(digits) - 1}"
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v

    text = json.dumps(plain(value))
    pattern = re.escape(json.dumps(marker)[:-1]) + r'(\d+)"'
    return re.sub(pattern, lambda m: digits[int(m[1])], text) if digits else text


@dataclass(frozen=True)
class Test:
    """One test. stdin tests: `input` is the program's stdin, `output` the expected stdout.

    Call-based tests: `input` holds one JSON value per line (the arguments), `output` the JSON
    text of the expected return value. `unwrap` allows TACO's habit of wrapping the expected
    return value in a one-element list.
    """

    input: str
    output: str
    unwrap: bool = False

    def __post_init__(self):  # from_dict names the test; this guards a Test built directly
        for name in ("input", "output"):
            if not isinstance(getattr(self, name), str):
                raise ProblemError(f"test {name}: expected a string, got {type(getattr(self, name)).__name__}")


@dataclass(frozen=True)
class Problem:
    tests: tuple[Test, ...]
    fn_name: str | None = None  # set: call-based tests
    starter_code: str = ""
    time_limit: float = DEFAULT_TIME_LIMIT  # seconds of wall clock, per test
    memory_mb: int = DEFAULT_MEMORY_MB
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):  # every way a Problem is made (from_dict, directly, replace) is checked
        if isinstance(self.tests, list):
            object.__setattr__(self, "tests", tuple(self.tests))
        if not isinstance(self.tests, tuple) or not all(isinstance(t, Test) for t in self.tests):
            raise ProblemError("tests: expected Test objects")
        if not self.tests:
            raise ProblemError("tests: empty")
        if self.fn_name is not None and (not isinstance(self.fn_name, str) or not self.fn_name.isidentifier()):
            raise ProblemError(f"fn_name: not a Python identifier: {self.fn_name!r}")
        if not isinstance(self.starter_code, str):
            raise ProblemError("starter_code: expected a string")
        try:
            object.__setattr__(self, "time_limit", check_time_limit(self.time_limit))
            object.__setattr__(self, "memory_mb", check_memory_mb(self.memory_mb))
        except ValueError as e:
            raise ProblemError(str(e)) from None

    @property
    def call_based(self) -> bool:
        return self.fn_name is not None

    @classmethod
    def from_dict(cls, row: dict) -> "Problem":
        """Build from a dataset row or problem file: `tests` (list, TACO object, or JSON text of
        either), optional `fn_name` / `metadata.func_name`, `starter_code`, `time_limit`,
        `memory_mb`. A LiveCodeBench row (no `tests`) goes to from_lcb_row."""
        if not isinstance(row, dict):
            raise ProblemError(f"problem: expected a JSON object, got {type(row).__name__}")
        if "tests" in row:
            return cls._build(row)
        if "public_test_cases" in row or "input_output" in row:
            return cls.from_lcb_row(row, row.get("time_limit", LCB_TIME_LIMIT),
                                    row.get("memory_mb", DEFAULT_MEMORY_MB))
        raise ProblemError("tests: missing")

    @classmethod
    def from_lcb_row(cls, row: dict, time_limit: float = LCB_TIME_LIMIT,
                     memory_mb: int = DEFAULT_MEMORY_MB) -> "Problem":
        """Build from a LiveCodeBench code_generation(_lite) row: `public_test_cases` (JSON
        text), `private_test_cases` (JSON text, or base64 -> zlib -> pickle -> JSON text),
        `metadata` (JSON text with `func_name`), `starter_code`. As in lcb_runner, the tests are
        public then private, and `func_name` alone decides call-based vs stdin (a test's
        `testtype` is not consulted). Also accepts lcb_runner's evaluation sample
        `{"input_output": JSON {inputs, outputs, fn_name}}`. The time limit defaults to
        lcb_runner's 6 s per test.

        The pickle is decoded with an Unpickler that refuses every global (class or function),
        so it can only build plain str/bytes/int/float/list/tuple/dict/set values: a crafted
        row cannot run code, only fail to load."""
        if not isinstance(row, dict):
            raise ProblemError(f"problem: expected a LiveCodeBench row (object), got {type(row).__name__}")
        limits = {"time_limit": time_limit, "memory_mb": memory_mb}
        if "input_output" in row and "public_test_cases" not in row:
            sample = _decoded(row["input_output"], "input_output")
            if not isinstance(sample, dict):
                raise ProblemError("input_output: expected an object with inputs/outputs")
            return cls._build({"tests": sample, **limits})
        metadata = _decoded(row.get("metadata") or {}, "metadata")
        if not isinstance(metadata, dict):
            raise ProblemError("metadata: expected an object")
        call_based = bool(metadata.get("func_name"))
        public = _decoded(row.get("public_test_cases") or "[]", "public_test_cases")
        private = _lcb_private_tests(row.get("private_test_cases") or "[]")
        tests, labels = [], []  # labels: each test's published name, for errors
        for name, group in (("public_test_cases", public), ("private_test_cases", private)):
            if not isinstance(group, list):
                raise ProblemError(f"{name}: expected a list of tests")
            for i, t in enumerate(group):
                if not isinstance(t, dict):
                    raise ProblemError(f"{name}[{i}]: expected an object with input/output")
                tests.append({"input": t.get("input"), "output": t.get("output"),
                              "testtype": "functional" if call_based else "stdin"})
                labels.append(f"{name}[{i}]")
        return cls._build({"tests": tests, "metadata": metadata,
                           "starter_code": row.get("starter_code") or "", **limits}, labels)

    @classmethod
    def _build(cls, row: dict, labels: list[str] | None = None) -> "Problem":
        """From the fields of from_dict, which every shape is brought to; `labels` name a list of tests
        in errors (default tests[i])."""
        metadata = _decoded(row.get("metadata") or {}, "metadata")
        if not isinstance(metadata, dict):
            raise ProblemError("metadata: expected an object")
        tests_raw = _decoded(row["tests"], "tests")
        sources = [("fn_name", row.get("fn_name")), ("metadata.func_name", metadata.get("func_name"))]
        if isinstance(tests_raw, dict):
            sources.append(("tests.fn_name", tests_raw.get("fn_name")))
        source, fn_name = next(((k, v) for k, v in sources if v), ("fn_name", None))
        if fn_name is not None and (not isinstance(fn_name, str) or not fn_name.isidentifier()):
            raise ProblemError(f"{source}: not a Python identifier: {fn_name!r}")
        tests = _taco_tests(tests_raw, fn_name) if isinstance(tests_raw, dict) else \
            _lcb_tests(tests_raw, fn_name, labels)
        return cls(tuple(tests), fn_name, row.get("starter_code") or "", row.get("time_limit", DEFAULT_TIME_LIMIT),
                   row.get("memory_mb", DEFAULT_MEMORY_MB), metadata)

    @classmethod
    def from_file(cls, path: str | Path) -> "Problem":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ProblemError(f"problem file {path}: {e}") from None
        return cls.from_dict(_decoded(text, f"problem file {path}"))


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle's opcodes build by themselves; any class or function is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _lcb_private_tests(value: Any) -> Any:
    """LiveCodeBench's private tests: JSON text, or base64 of zlib of a pickle of JSON text."""
    if not isinstance(value, str):
        return value
    name = "private_test_cases"
    try:
        return loads_json(value)
    except RecursionError:
        raise ProblemError(f"{name}: JSON nested too deep") from None
    except ValueError:
        pass
    try:
        packed = base64.b64decode(value.encode("ascii"), validate=False)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, LCB_MAX_DECOMPRESSED)
        if inflater.unconsumed_tail:
            raise ProblemError(f"{name}: more than {LCB_MAX_DECOMPRESSED} bytes once decompressed")
        text = _PlainUnpickler(io.BytesIO(raw)).load()
    except ProblemError:
        raise
    except (UnicodeEncodeError, binascii.Error, zlib.error, pickle.UnpicklingError, EOFError,
            ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as e:
        raise ProblemError(f"{name}: neither JSON nor base64/zlib/pickle ({type(e).__name__}: {e})") from None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        raise ProblemError(f"{name}: the pickle holds {type(text).__name__}, expected JSON text")
    return _decoded(text, name)


def call_args(text: str, loads=loads_json) -> list:
    """The arguments of a call-based test: one JSON value per non-blank line. (The child passes
    json.loads: it has no digit limit, and the solution must get big integers as ints.)"""
    return [loads(line) for line in text.split("\n") if line.strip()]


def _decoded(value: Any, name: str, loads=loads_json) -> Any:
    """DeepCoder rows carry `tests` and `metadata` as JSON text; decode those."""
    if not isinstance(value, str):
        return value
    try:
        return loads(value)
    except RecursionError:
        raise ProblemError(f"{name}: JSON nested too deep") from None
    except ValueError as e:
        raise ProblemError(f"{name}: undecodable JSON ({e})") from None


def _lcb_tests(raw: Any, fn_name: str | None, labels: list[str] | None = None) -> list[Test]:
    if not isinstance(raw, list):
        raise ProblemError("tests: expected a list or an object with inputs/outputs, "
                           f"got {type(raw).__name__}")
    tests = []
    for i, t in enumerate(raw):
        where = labels[i] if labels else f"tests[{i}]"
        if not isinstance(t, dict):
            raise ProblemError(f"{where}: expected an object with input/output")
        for key in ("input", "output"):
            if not isinstance(t.get(key), str):
                raise ProblemError(f"{where}.{key}: expected a string")
        kind = t.get("testtype", "functional" if fn_name else "stdin")
        if kind not in ("stdin", "functional"):
            raise ProblemError(f"{where}.testtype: expected 'stdin' or 'functional', got {kind!r}")
        if kind == "functional":
            if fn_name is None:
                raise ProblemError(f"fn_name: missing, but {where} is a functional test")
            _decoded(t["input"], f"{where}.input", call_args)
            _decoded(t["output"], f"{where}.output")
        elif fn_name is not None:
            raise ProblemError(f"{where}.testtype: 'stdin' test in a call-based problem (fn_name set)")
        tests.append(Test(t["input"], t["output"]))
    return tests


def _taco_tests(raw: dict, fn_name: str | None) -> list[Test]:
    inputs, outputs = raw.get("inputs"), raw.get("outputs")
    if not isinstance(inputs, list):
        raise ProblemError("tests.inputs: expected a list")
    if not isinstance(outputs, list):
        raise ProblemError("tests.outputs: expected a list")
    if len(inputs) != len(outputs):
        raise ProblemError(f"tests.outputs: {len(outputs)} outputs for {len(inputs)} inputs")
    tests = []
    for i, (inp, out) in enumerate(zip(inputs, outputs)):
        if fn_name is None:  # stdin; TACO sometimes stores text as a list of lines
            tests.append(Test(_text(inp, f"tests.inputs[{i}]"), _text(out, f"tests.outputs[{i}]")))
            continue
        if isinstance(inp, str):  # lcb_runner's sample shape: JSON lines in, JSON text out
            _decoded(inp, f"tests.inputs[{i}]", call_args)
            if not isinstance(out, str):
                raise ProblemError(f"tests.outputs[{i}]: expected JSON text for a JSON-lines input")
            _decoded(out, f"tests.outputs[{i}]")
            tests.append(Test(inp, out))
            continue
        # TACO call-based inputs are already the argument list, not JSON text lines.
        if not isinstance(inp, list):
            raise ProblemError(f"tests.inputs[{i}]: expected the list of call arguments")
        args = "\n".join(_encoded(a, f"tests.inputs[{i}]") for a in inp)
        tests.append(Test(args, _encoded(out, f"tests.outputs[{i}]"), unwrap=True))
    return tests


def _encoded(value: Any, name: str) -> str:
    try:
        return dumps_json(value)
    except RecursionError:
        raise ProblemError(f"{name}: nested too deep") from None
    except (TypeError, ValueError) as e:
        raise ProblemError(f"{name}: not JSON-encodable ({e})") from None


def _text(value: Any, name: str) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if not isinstance(value, str):
        raise ProblemError(f"{name}: expected a string")
    return value
