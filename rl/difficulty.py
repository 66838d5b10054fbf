"""`python -m rl.difficulty RESULTS --problems FILE... [--min 0.05] [--max 0.95] --out FILE.jsonl`

The offline difficulty filter both seeds used: keep the problems the current model solves sometimes,
dropping those it always or never solves (they give no group signal). First sample k completions per
problem with the model, then filter on their pass rate:

    python -m rl.evaluate --model DIR --problems train.jsonl --n 8 --k 1 --temperature 1.0 --out ev
    python -m rl.difficulty ev --problems train.jsonl --min 0.05 --max 0.95 --out train.filtered.jsonl

The kept rows are written as published (one JSON object per line), so the output is a problem file
like the input. AReaL's 14B code run kept pass rates in [0.05, 0.95], the default here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from datetime import date, time
from pathlib import Path

from rl.cli import out_file
from rl.data import DataError, id_prefixes, read_rows, to_record
from rl.evaluation import EvaluationError, load_results


def pass_rates(results: dict) -> dict[str, float]:
    """Problem id -> c / n of an rl.evaluate results file."""
    return {row["id"]: row["c"] / row["n"] for row in results["problems"] if row["n"]}


def keep_window(paths, rates: dict[str, float], low: float, high: float):
    """Yield (raw row, verdict, where) for every row of the problem files; verdict is "kept", "too_easy",
    "too_hard", "not_evaluated" or "bad_row"."""
    paths = [Path(p) for p in paths]
    for path, prefix in zip(paths, id_prefixes(paths)):
        for i, row, where in read_rows(path):
            try:
                record = to_record(row, f"{prefix}#{i}", where)  # the ids load_problems gave rl.evaluate
            except DataError:
                yield row, "bad_row", where
                continue
            rate = rates.get(record.id)
            verdict = ("not_evaluated" if rate is None else "too_hard" if rate < low else "too_easy" if rate > high
                       else "kept")
            yield row, verdict, where


def json_line(row) -> str:
    """A row as one line of strict JSON. Parquet rows may hold what JSON cannot: NaN (pandas' missing
    value) becomes null, UTF-8 bytes become text, dates ISO text. Other bytes raise UnicodeDecodeError."""
    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, (date, time)):
            return value.isoformat()
        return value
    return json.dumps(plain(row), default=str, allow_nan=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl.difficulty", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("results", type=Path, help="an rl.evaluate --out folder (or its results.json)")
    p.add_argument("--problems", type=Path, nargs="+", required=True, help="the problem files it evaluated")
    p.add_argument("--min", type=float, default=0.05, help="lowest pass rate kept")
    p.add_argument("--max", type=float, default=0.95, help="highest pass rate kept")
    p.add_argument("--out", type=out_file, required=True, help="the filtered problem file (.jsonl)")
    args = p.parse_args(argv)
    if any(args.out.resolve() == f.resolve() for f in args.problems):
        p.error(f"--out {args.out} is one of the --problems files: write the filtered set elsewhere")
    if not 0 <= args.min <= args.max <= 1:
        p.error(f"--min {args.min} / --max {args.max}: need 0 <= min <= max <= 1")
    try:
        rates = pass_rates(load_results(args.results))
        counts, kept = Counter(), []
        for row, verdict, where in keep_window(args.problems, rates, args.min, args.max):
            if verdict == "kept":
                try:
                    kept.append(json_line(row))
                except UnicodeDecodeError as e:
                    verdict = "unwritable"
                    print(f"warning: {where}: left out, it holds bytes that are not UTF-8 text, which JSON cannot "
                          f"carry ({e})", file=sys.stderr)
            counts[verdict] += 1
    except (EvaluationError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".tmp")
    try:
        tmp.write_text("".join(kept))
        tmp.replace(args.out)
    except OSError as e:  # a full disk, no permission, a folder in the way: the inputs are untouched
        print(f"error: cannot write {args.out}: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "window": [args.min, args.max], **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
