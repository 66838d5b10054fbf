"""LiveCodeBench's output comparison, run in the grading process only."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from .problem import loads_json

FLOAT_TOLERANCE = 1e-4


def _numbers(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except InvalidOperation:
        return None


def _line_equal(got: str, want: str, tolerance: float | None) -> bool:
    if got == want:
        return True
    a, b = _numbers(got), _numbers(want)
    if a is None or b is None or len(a) != len(b):
        return False
    if tolerance is None:
        return a == b
    tol = Decimal(str(tolerance))
    # NaN compares unequal and infinities must match exactly, as with plain Decimal equality.
    return all(x == y or (x.is_finite() and y.is_finite() and abs(x - y) <= tol * max(1, abs(y)))
               for x, y in zip(a, b))


def stdout_matches(got: str, want: str, tolerance: float | None = None) -> bool:
    """Strip both, split into lines, strip each line; equal line counts; each line equal as text
    or as whitespace-separated Decimals ("1.0" == "1", "1e3" == "1000")."""
    got_lines = [line.strip() for line in got.strip().split("\n")]
    want_lines = [line.strip() for line in want.strip().split("\n")]
    return len(got_lines) == len(want_lines) and all(
        _line_equal(g, w, tolerance) for g, w in zip(got_lines, want_lines))


def return_matches(got_json: str, want_json: str, unwrap: bool = False) -> bool:
    """`==` on JSON values (the child already turned tuples into lists). With `unwrap`, a
    TACO expected value wrapped in a one-element list also matches its element."""
    try:
        got, want = loads_json(got_json), loads_json(want_json)
    except (ValueError, RecursionError):
        return False
    if got == want:
        return True
    return unwrap and isinstance(want, list) and len(want) == 1 and got == want[0]
