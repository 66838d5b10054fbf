"""The parent's comparisons take untrusted input (the child's stdout, its typed return value) and
must never raise, hang or allocate without bound: a crash here would take the grader down, not
the solution. Regressions first, then hypothesis fuzzing of stdout_matches and the typed-return
decoder (typed_return_matches)."""
import json
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.compare import FLOAT_TOLERANCE, encode_return, stdout_matches, typed_return_matches

# Big numbers below; also the grader's worst case: no int/str digit limit (the decoder must not
# rely on it, e.g. never int() a 4000+-digit number, which takes quadratic time).
sys.set_int_max_str_digits(0)
TOLERANCES = (None, FLOAT_TOLERANCE)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("got,want,exact,tolerant", [
    ("1e999999999", "-1e999999999", False, False),  # tolerance mode raised decimal.Overflow
    ("1e999999999999", "1", False, False),
    ("1e999999999999999999", "1e-999999999999999999", False, False),  # Decimal's largest exponents
    ("1e999999999", "1e999999999", True, True),
    ("1e-999999999", "0", False, True),  # underflows to 0 in the tolerance arithmetic
    ("-1e-999999999999999999", "1e-999999999999999999", False, True),
    ("1e9999999999999999999", "1e9999999999999999998", False, False),  # past Decimal: text
    ("1.00001", "1", False, True),
    ("inf", "1e999999999", False, False),
    ("sNaN", "1", None, None),  # LCB's comparison raises: a runtime error
])
def test_stdout_numbers_at_the_edges(got, want, exact, tolerant):
    start = time.monotonic()
    assert stdout_matches(got, want) is exact
    assert stdout_matches(got, want, FLOAT_TOLERANCE) is tolerant
    assert time.monotonic() - start < 0.5


NUMBERISH = st.sampled_from([
    "0", "-0", "1", "1.0", "+5", ".5", "5.", "1_000", "１２", "0x10", "1e3", "1E+3", "inf", "-Infinity",
    "nan", "NaN", "sNaN", "-sNaN", "1e999999999", "-1e999999999", "1e999999999999", "1e-999999999",
    "1e999999999999999999", "1e-999999999999999999", "1e9999999999999999999", "9" * 5000,
    "0." + "0" * 3000 + "1", "1e-1000000", "abc", "", "é",
])
NUMBER = st.one_of(NUMBERISH, st.decimals(allow_nan=True, allow_infinity=True).map(str),
                   st.floats().map(repr), st.integers().map(str))
# Mostly lines of numbers only: those reach the Decimal comparison.
LINE = st.one_of(st.lists(NUMBER, min_size=1, max_size=3), st.lists(st.one_of(NUMBER, st.text(max_size=8)),
                                                                    max_size=3)).map(" ".join)
OUTPUT = st.lists(LINE, min_size=1, max_size=3).map("\n".join)


@FUZZ
@given(got=OUTPUT, want=OUTPUT)
def test_stdout_matches_never_raises(got, want):
    for tolerance in TOLERANCES:
        assert stdout_matches(got, want, tolerance) in (True, False, None)
        assert stdout_matches(got, got, tolerance) is True  # equal text is always equal


# Typed return values: what a forged or patched child could send, tags and all.
DTYPES = st.sampled_from(["<i8", "<i1", "|u1", "<f8", "<f2", "|b1", "<c16", "<U5", "<U99999999", ">U3",
                          "|S3", "O", "V8", "<M8", "i8,i8", "(2,)i8", "x", 5, None])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6),
                    st.sampled_from([10 ** 4500, -(10 ** 4500), 2 ** 64, -1]))


def _tagged(children):
    body = st.one_of(children, st.lists(children, max_size=4))
    return st.one_of(
        st.lists(children, max_size=4),
        st.builds(lambda b: {"tuple": b}, body),
        st.builds(lambda b: {"dict": b}, st.one_of(body, st.lists(st.lists(children, min_size=2, max_size=2), max_size=3))),
        st.builds(lambda b: {"decimal": b}, st.one_of(NUMBERISH, children)),
        st.builds(lambda n, d: {"fraction": [n, d]}, children, children),
        st.builds(lambda b: {"fraction": b}, body),
        st.builds(lambda r, i: {"complex": [r, i]}, children, children),
        st.builds(lambda t, v: {"npscalar": [t, v]}, DTYPES, children),
        st.builds(lambda t, s, v: {"ndarray": [t, s, v]}, DTYPES,
                  st.one_of(st.lists(st.integers(-1, 3), max_size=3), st.just([10 ** 12]), children), body),
        st.builds(lambda b: {"opaque": b}, children),
        st.dictionaries(st.text(max_size=8), children, max_size=2),
    )


TYPED = st.recursive(SCALARS, _tagged, max_leaves=12)
EXPECTED = st.one_of(
    st.sampled_from(["1", "0", "[1, 2]", "[[1, 2]]", '"a"', '["a"]', "true", "null", "1.5", "[]",
                     '{"1": 2}', "1e999999999", str(10 ** 4500), "[" * 50 + "]" * 50]),
    st.recursive(SCALARS, lambda c: st.lists(c, max_size=3), max_leaves=6).map(json.dumps))


@FUZZ
@given(got=TYPED, want=EXPECTED, unwrap=st.booleans())
def test_typed_return_decoder_never_raises(got, want, unwrap):
    start = time.monotonic()
    assert typed_return_matches(json.dumps(got), want, unwrap) in (True, False, None)
    assert time.monotonic() - start < 2


@FUZZ
@given(text=st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
       want=EXPECTED)
def test_typed_return_decoder_takes_any_text(text, want):
    assert typed_return_matches(text, want) in (True, False, None)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c, max_size=3)),
    max_leaves=10)


@FUZZ
@given(value=JSON_VALUES)
def test_json_values_round_trip(value):
    # A returned plain JSON value equals its own JSON text (LCB: prediction == json.loads(output)).
    assert typed_return_matches(encode_return(value), json.dumps(value)) is True


@pytest.mark.parametrize("typed", [
    {"ndarray": ["<U99999999", [300], ["a"] * 300]},  # was 112 GiB: MemoryError in the grader
    {"npscalar": ["<i8", {"decimal": "1e999999999"}]},  # int() of it: a billion digits
    {"ndarray": ["<i8", [1], [{"decimal": "1e999999999"}]]},
    {"fraction": [int("7" * 100_000), 3]},  # int(Decimal) of 100 000 digits: quadratic
    {"npscalar": ["<i8", int("7" * 100_000)]},
    {"ndarray": ["<f8", [1], [int("7" * 100_000)]]},
    {"dict": [[{"decimal": "sNaN"}, 1]]},  # unhashable signalling NaN
    {"fraction": [1, 0]},
])
def test_typed_return_decoder_stays_cheap(typed):
    start = time.monotonic()
    assert typed_return_matches(json.dumps(typed), '"a"') in (False, None)
    assert time.monotonic() - start < 0.5
