"""Command line: python -m sandbox grade --problem P.json --code S.py"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from .pool import SandboxPool
from .problem import Problem, ProblemError, check_memory_mb, check_time_limit

GRADE_EPILOG = textwrap.dedent("""\
    Problem file: a JSON object with `tests` (a LiveCodeBench list of {input, output, testtype},
    or a TACO object {inputs, outputs, fn_name?}, possibly as a JSON-encoded string as in
    DeepCoder rows), and optionally `fn_name` (or `metadata.func_name`; metadata may be a JSON
    string) for call-based tests, `starter_code`, `time_limit`, `memory_mb`; or a LiveCodeBench
    code_generation row (public_test_cases, private_test_cases, metadata; 6 s per test unless
    time_limit is given).

    Verdicts: accepted, wrong_answer, time_limit, memory_limit, runtime_error, output_limit,
    syntax_error, sandbox_error.

    Exit status: 0 whatever the verdict; 2 for unusable arguments or a malformed problem file.""")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Grade untrusted Python solutions in the coderl verification sandbox "
                    "(LiveCodeBench grading rules; every test in a locked-down child process). "
                    "For the problem format and exit codes see `python -m sandbox grade --help`.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    grade = sub.add_parser(
        "grade", help="grade one solution against one problem and print a JSON result",
        description="Grade one solution. Prints one JSON object (passed, verdict, tests, ...).",
        epilog=GRADE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    grade.add_argument("--problem", required=True, metavar="P.json", help="problem file (JSON)")
    grade.add_argument("--code", required=True, metavar="S.py",
                       help="the solution program (Python source, not a completion)")
    grade.add_argument("--time-limit", type=float, metavar="S",
                       help="seconds of wall clock per test (default: the problem's, else 15)")
    grade.add_argument("--memory-mb", type=int, metavar="M",
                       help="address-space limit in MiB (default: the problem's, else 4096)")
    grade.add_argument("--all-tests", action="store_true",
                       help="run every test (evaluation) instead of stopping at the first failure")
    grade.add_argument("--float-tolerance", action="store_true",
                       help="numbers in stdout match within 1e-4 (absolute, or relative above 1)")
    grade.add_argument("--lcb-exact", action="store_true",
                       help="reproduce LiveCodeBench's verdicts, its quirks included (mocked "
                            "stdin, one process for all tests, catchable timeouts); for "
                            "comparing with its leaderboard, not for rewards")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:  # the checks the pool applies to these options, with the flags' names
        if args.time_limit is not None:
            check_time_limit(args.time_limit, "--time-limit")
        if args.memory_mb is not None:
            check_memory_mb(args.memory_mb, "--memory-mb")
    except ValueError as e:
        parser.error(str(e))
    try:
        problem = Problem.from_file(args.problem)
    except ProblemError as e:
        parser.exit(2, f"python -m sandbox grade: error: malformed problem: {e}\n")
    try:
        with open(args.code, encoding="utf-8") as f:
            code = f.read()
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f"--code {args.code}: {e}")
    with SandboxPool(workers=1) as pool:
        result = pool.grade(problem, code, all_tests=args.all_tests, time_limit=args.time_limit,
                            memory_mb=args.memory_mb, float_tolerance=args.float_tolerance,
                            lcb_exact=args.lcb_exact)
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
