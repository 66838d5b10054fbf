"""LiveCodeBench's output comparison, run in the grading process only.

Also the encoding of call-based return values (`encode_return`, run in the child, and
`decode_return`, run here): LiveCodeBench compares the *Python* value the function returned with
`json.loads(expected)` using `==`, so a nested tuple, a dict with int keys, a numpy scalar or a
Decimal behave differently from their JSON text. The child therefore sends a typed encoding that
keeps those types, and the parent rebuilds a value made only of plain types (never arbitrary
objects) and compares it the way LiveCodeBench does.
"""
from __future__ import annotations

import functools
import json
import re
from json.decoder import scanstring
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, InvalidOperation
from fractions import Fraction

from .problem import loads_json

FLOAT_TOLERANCE = 1e-4


def _numbers(tokens: list[str]) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in tokens]
    except ArithmeticError:  # LCB: any failure means "not numbers" (e.g. an exponent past 10**18)
        return None


# Tolerance arithmetic on untrusted numbers: exponents of any size Decimal parses (up to about
# 10**18), with overflow and underflow giving infinities and zeros instead of raising. Only an
# invalid operation (a signalling NaN) still raises, as in LCB's plain comparison.
_TOLERANCE_CONTEXT = Context(prec=28, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation])


_TOKEN = re.compile(r"\S+")  # str.split()'s tokens (both use Python's Unicode whitespace)


def _line_equal(got: str, want: str, tolerance: float | None) -> bool | None:
    if got == want:
        return True
    # Unequal token counts fail whatever the tokens are. Count the program's tokens lazily and
    # stop past the expected count: a 64 MiB line of "1 1 1 ..." would otherwise become 32M
    # Decimals (4 GB and seconds in the grading process) before the counts are compared.
    want_tokens = want.split()
    got_tokens = [m.group() for _, m in zip(range(len(want_tokens) + 1), _TOKEN.finditer(got))]
    if len(got_tokens) != len(want_tokens):
        return False
    a, b = _numbers(got_tokens), _numbers(want_tokens)
    if a is None or b is None:
        return False
    try:
        if tolerance is None:
            return a == b
        ctx, tol = _TOLERANCE_CONTEXT, _decimal_tolerance(tolerance)
        # NaN compares unequal and infinities must match exactly, as with plain Decimal equality.
        return all(x == y or (x.is_finite() and y.is_finite() and
                              ctx.abs(ctx.subtract(x, y)) <= ctx.multiply(tol, max(Decimal(1), ctx.abs(y))))
                   for x, y in zip(a, b))
    except ArithmeticError:  # "sNaN" parses, but comparing it raises: LCB's grader errors out
        return None


@functools.lru_cache(maxsize=8)
def _decimal_tolerance(tolerance: float) -> Decimal:
    return Decimal(str(tolerance))  # built once, not per compared line


def stdout_matches(got: str, want: str, tolerance: float | None = None) -> bool | None:
    """Strip both, split into lines, strip each line; equal line counts; each line equal as text
    or as whitespace-separated Decimals ("1.0" == "1", "1e3" == "1000"). Lines are checked in
    order and the first unequal line decides. None: comparing the Decimals raised (a signalling
    "sNaN"), which LiveCodeBench reports as a runtime error."""
    got, want = got.strip(), want.strip()
    # Line counts first, before splitting: 64 MiB of "1\n" would be 32M strings.
    if got.count("\n") != want.count("\n"):
        return False
    got_lines = [line.strip() for line in got.split("\n")]
    want_lines = [line.strip() for line in want.split("\n")]
    for g, w in zip(got_lines, want_lines):
        equal = _line_equal(g, w, tolerance)
        if not equal:
            return equal
    return True


# ---- typed return values ----
#
# Encoding (JSON text): null, booleans, strings, ints and floats (NaN/Infinity allowed) stand for
# themselves, a JSON list is a Python list, and every JSON object is a one-key tag:
#   {"tuple": [...]}, {"dict": [[key, value], ...]}, {"decimal": "1.5"}, {"fraction": [n, d]},
#   {"complex": [re, im]}, {"npscalar": [dtype, value]}, {"ndarray": [dtype, shape, nested list]},
#   {"opaque": "typename"}  (sets, generators, bytes, objects...: never equal to a JSON value).
# Subclasses of list / dict / str / int / float encode as the base type: their == is the base's
# unless they override it, and an overriding __eq__ (an "always equal" object) is exactly what
# must not reach the grader.

_NUMPY_KINDS = "biufcU"  # bool, int, uint, float, complex, unicode: rebuilt as real numpy arrays
_DTYPE_TEXT = re.compile(r"[<>=|]?[biufcU]\d{1,9}")


def _encode(v, depth: int):
    if depth > 10_000:
        raise RecursionError("value nested too deeply")
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):  # the base type's own conversions: a subclass cannot override them
        return str.__str__(v)
    if isinstance(v, int):
        return int.__index__(v)
    if isinstance(v, float):
        return float.__float__(v)
    if isinstance(v, list):
        return [_encode(x, depth + 1) for x in v]
    if isinstance(v, tuple):
        return {"tuple": [_encode(x, depth + 1) for x in v]}
    if isinstance(v, dict):
        return {"dict": [[_encode(k, depth + 1), _encode(x, depth + 1)] for k, x in v.items()]}
    if isinstance(v, Decimal):
        return {"decimal": str(v)}
    if isinstance(v, Fraction):
        return {"fraction": [v.numerator, v.denominator]}
    if isinstance(v, complex):
        return {"complex": [v.real, v.imag]}
    module = type(v).__module__ or ""
    if module == "numpy" or module.startswith("numpy."):
        import numpy as np  # only when the solution returned a numpy value
        if isinstance(v, (np.generic, np.ndarray)) and v.dtype.kind in _NUMPY_KINDS:
            # item() and tolist() of longdouble / clongdouble give numpy scalars again: those
            # values are carried as float64 / complex128.
            wide = {"f": np.float64, "c": np.complex128}.get(v.dtype.kind)
            plain = v.astype(wide) if wide is not None and v.dtype.itemsize > np.dtype(wide).itemsize else v
            if isinstance(v, np.generic):
                return {"npscalar": [v.dtype.str, _encode(plain.item(), depth + 1)]}
            return {"ndarray": [v.dtype.str, list(v.shape), _encode(plain.tolist(), depth + 1)]}
    return {"opaque": type(v).__name__[:100]}


def encode_return(value) -> str:
    """The child's side: JSON text of `value` with the types LCB's `==` can see. Never raises."""
    try:
        return json.dumps(_encode(value, 0))
    except (RecursionError, ValueError, TypeError, OverflowError, MemoryError) as e:
        return json.dumps({"opaque": f"unencodable: {type(e).__name__}"})


class Opaque:
    """Stands for a returned value that is no JSON value: equal to nothing, hashable."""

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other):
        return False

    def __hash__(self):
        return id(self)

    def __repr__(self):
        return f"<{self.name}>"


class DecodeError(ValueError):
    pass


def _decode(v):
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) != 1:
        raise DecodeError("a tag object has exactly one key")
    (tag, body), = v.items()
    if tag == "tuple" and isinstance(body, list):
        return tuple(_decode(x) for x in body)
    if tag == "dict" and isinstance(body, list):
        out = {}
        for pair in body:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise DecodeError("dict entries are [key, value] pairs")
            key = _decode(pair[0])
            # JSON keys are strings, so a dict with any other key equals no JSON value. Numeric
            # keys are also the ones a program can make collide (k * (2**61 - 1) all hash to 0:
            # quadratic inserts here); str hashes are salted per process.
            if type(key) is not str:
                return Opaque("dict with a non-string key")
            out[key] = _decode(pair[1])
        return out
    if tag == "decimal" and isinstance(body, str):
        return Decimal(body)
    if tag == "fraction" and isinstance(body, list) and len(body) == 2:
        return Fraction(_small_int(body[0]), _small_int(body[1]))
    if tag == "complex" and isinstance(body, list) and len(body) == 2:
        return complex(float(body[0]), float(body[1]))
    if tag == "npscalar" and isinstance(body, list) and len(body) == 2:
        import numpy as np
        dtype = _numpy_dtype(np, body[0])
        with np.errstate(all="ignore"):  # a forged 1e10 as float16: inf, not a warning in the grader
            return dtype.type(_decode_numpy(body[1]))
    if tag == "ndarray" and isinstance(body, list) and len(body) == 3:
        import numpy as np
        dtype = _numpy_dtype(np, body[0])
        shape = body[1]
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise DecodeError("bad ndarray shape")
        data = _decode_numpy(body[2])
        if dtype.kind == "U":
            _check_padded_strings(data)
        with np.errstate(all="ignore"):
            return np.array(data, dtype=dtype).reshape(shape)
    if tag == "opaque":
        return Opaque(str(body))
    raise DecodeError(f"unknown tag {tag!r}")


def _small_int(v) -> int:
    # A JSON integer of 4000+ digits arrives as a Decimal; converting that to an int takes time
    # quadratic in its length (minutes for a forged million-digit one): refused, never converted.
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise DecodeError("expected an integer of under 4000 digits")


def _decode_numpy(v):
    """The contents of a numpy scalar or array: lists, bools, small ints, floats, strings and
    complex numbers only (numpy would convert anything else with int(), e.g. a Decimal
    1e999999999 into a billion-digit int)."""
    if isinstance(v, list):
        return [_decode_numpy(x) for x in v]
    if isinstance(v, dict) and len(v) == 1 and "complex" in v:
        return _decode(v)
    if v is None or isinstance(v, (bool, int, float, str)):  # (a 4000+-digit int is a Decimal)
        return v
    raise DecodeError("bad numpy contents")


_PADDED_CHARS = 1 << 22  # a numpy string array may take this many characters, or 4x its contents


def _check_padded_strings(data) -> None:
    """numpy pads every element of a string array to the longest one: one 16 MiB string among
    a thousand short ones would take 64 GB in the grading process. Refused past a bound."""
    count, longest, total, stack = 0, 0, 0, [data]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        else:
            n = len(v) if isinstance(v, str) else 32  # a number's longest str() form, about
            count, longest, total = count + 1, max(longest, n), total + n
    if count * longest > max(4 * total, _PADDED_CHARS):
        raise DecodeError("numpy string array too large once padded")


def _numpy_dtype(np, text):
    # dtype.str's form only: np.dtype of an alias such as "a" warns in the grading process
    if not isinstance(text, str) or not _DTYPE_TEXT.fullmatch(text):
        raise DecodeError("bad dtype")
    dtype = np.dtype(text)
    if dtype.kind not in _NUMPY_KINDS:
        raise DecodeError("dtype not allowed")
    if dtype.kind == "U":  # "<U99999999" would make every element 400 MB: let numpy size it
        dtype = np.dtype((np.str_, 0)).newbyteorder(dtype.byteorder)
    return dtype


def decode_return(text: str):
    """The parent's side: rebuild the value from `encode_return`'s text (plain types, Decimal,
    Fraction, complex, numpy scalars and arrays of simple dtypes, or Opaque)."""
    return _decode(loads_json(text))


_NODE_FACTOR = 8  # an equal value costs at most ~7 per expected element (a complex npscalar)


def json_size(text: str, limit: float = float("inf")) -> int:
    """A cheap measure of the number of values in JSON text, without building them: the
    separators and brackets outside strings, plus one per string. Strings are skipped with
    json's own C scanner, so the cost is linear in the text (a regular expression that needs
    a closing quote rescans an unterminated string from each escaped quote: quadratic). A
    string json.loads would refuse (unterminated, a bad escape) ends the count: parsing stops
    there too. Stops counting once past `limit` (each string counts: 64 MiB of '""' stops soon)."""
    size, pos = 0, 0
    while True:
        quote = text.find('"', pos)
        end = len(text) if quote < 0 else quote
        size += sum(text.count(c, pos, end) for c in ",:[{")
        if quote < 0 or size > limit:
            return size
        size += 1
        try:
            pos = scanstring(text, quote + 1, True)[1]
        except ValueError:
            return size


def _too_big_to_equal(got_text: str, want_json: str) -> bool:
    """Whether the returned value has far more elements than the expected one, so it cannot be
    equal: up to 64 MiB of "[[],[],...]" from the child would take the grading process 25 s and
    3 GB to rebuild."""
    bound = _NODE_FACTOR * (json_size(want_json) + 8)
    quick = sum(got_text.count(c) for c in ',:[{"')  # an overestimate: strings' contents count
    return quick > bound and json_size(got_text, bound) > bound


def typed_return_matches(got_text: str, want_json: str, unwrap: bool = False) -> bool | None:
    """LiveCodeBench's call-based check on the rebuilt return value: a top-level tuple becomes a
    list, then `prediction == expected`; a failing or raising comparison fails the test; a numpy
    array result counts by its first element. Returns None when LCB's comparison itself raises
    (LCB then reports a runtime error)."""
    if _too_big_to_equal(got_text, want_json):
        # Not equal; but a top-level numpy array that large (or empty) makes LCB's comparison
        # raise (an ambiguous truth value, or shapes that do not broadcast): a runtime error.
        return None if got_text.startswith('{"ndarray": ') else False
    try:
        got, want = decode_return(got_text), loads_json(want_json)
    except (ValueError, TypeError, OverflowError, RecursionError, ArithmeticError):
        return False
    if isinstance(got, tuple):
        got = list(got)
    ok = _lcb_equal(got, want)
    if ok is False and unwrap and isinstance(want, list) and len(want) == 1:
        ok = _lcb_equal(got, want[0])
    return ok


def _lcb_equal(got, want) -> bool | None:
    try:
        result = got == want
        if not result:
            return False
    except Exception:  # noqa: BLE001 - e.g. the truth value of a 2-element numpy array
        return None
    if type(result).__module__ == "numpy":  # LCB keeps .item(0) of an array and bool() of np.bool_
        try:
            result = result.item(0) if hasattr(result, "ndim") and result.ndim else result.item()
        except (IndexError, ValueError):
            return None
    try:
        return bool(result > 0)  # LCB: np.all(results > 0)
    except TypeError:
        return bool(result)

