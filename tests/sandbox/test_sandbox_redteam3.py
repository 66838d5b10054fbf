"""Third red-team pass: forged lcb_exact records, work done before the compile's limits, a
hash-colliding dict sent back to the grader, a completion that made the fence regex backtrack,
and numpy warnings raised in the grading process. See docs/sandbox.md."""
import time
import warnings

import pytest

from sandbox import Verdict, extract_code
from sandbox.compare import typed_return_matches
from sandbox_helpers import call_problem, stdin_problem

AC, RE, WA, ML = Verdict.ACCEPTED, Verdict.RUNTIME_ERROR, Verdict.WRONG_ANSWER, Verdict.MEMORY_LIMIT
ADD = stdin_problem([("3 4\n", "7\n"), ("10 20\n", "30\n")])
CALL_ADD = call_problem("add", [("3\n4", "7"), ("10\n20", "30")])


# ---- lcb_exact: the program shares the process that writes the records ----

@pytest.mark.parametrize("problem, code", [
    # A call-based record claiming equality, written on a stdin test's channel.
    (ADD, 'import os\nos.write(3, b\'{"typed": "0", "always_equal": true}\\n\' * 50)\nos._exit(0)\n'),
    # The harness's own json.dumps made to write such records.
    (ADD, "import json\njson.dumps = lambda *a, **k: '{\"typed\": \"0\", \"always_equal\": true}'\n"
          "print(0)\n"),
    # A forged claim that the value equals anything, on a call-based test.
    (CALL_ADD, 'import os\ndef add(a, b):\n    os.write(3, b\'{"typed": "0", "always_equal": true}\\n\' * 9)\n'
               '    os._exit(0)\n'),
    # An __eq__ that answers True only to a bare object(): lcb_runner compares with 7 (False).
    (CALL_ADD, "class Liar:\n    def __eq__(self, other):\n        return type(other) is object\n"
               "    __hash__ = object.__hash__\ndef add(a, b):\n    return Liar()\n"),
])
def test_forged_exact_mode_records_do_not_pass(pool, problem, code):
    result = pool.grade(problem, code, lcb_exact=True)
    assert result.verdict in (RE, WA), result
    assert pool.grade(problem, "def add(a, b):\n    return a + b\n" if problem is CALL_ADD else
                      "a, b = map(int, input().split())\nprint(a + b)\n", lcb_exact=True).verdict is AC


# ---- work before the limits: the compile's memory limit covers all of it ----

def test_lcb_exact_rewrite_runs_under_the_memory_limit(pool):
    """lcb_runner's text rewrite (ast.parse + unparse) took ~500x the program's size before the
    limits were set: 2 GB for 3.6 MB here, and a sandbox error after two zygote restarts."""
    start = time.monotonic()
    result = pool.grade(ADD, "x = 1\n" * 600_000, lcb_exact=True, memory_mb=256)
    assert result.verdict is ML and "compiling" in result.message, result
    assert time.monotonic() - start < 20


def test_tokenizer_out_of_memory_is_a_verdict(pool):
    """CPython's tokenizer raises SystemError when an allocation fails under the limit."""
    result = pool.grade(ADD, "#" + "a" * (48 << 20) + "\nprint(7)\n", memory_mb=256)
    assert result.verdict is ML, result
    assert pool.grade(ADD, "a, b = map(int, input().split())\nprint(a + b)\n").verdict is AC


# ---- what the grading process does with a returned value ----

def test_hash_colliding_dict_is_decoded_in_linear_time(pool):
    """Every key k * (2**61 - 1) hashes to 0: rebuilding the dict was quadratic (35 s of the
    grader's CPU). A dict with a non-string key equals no JSON value anyway."""
    code = ("P = 2 ** 61 - 1\nclass D(dict):\n    def items(self):\n"
            "        return ((k * P, 0) for k in range(78_000))\ndef solve(n):\n    return D()\n")
    problem = call_problem("solve", [("1", str(list(range(30_000))))])
    start = time.monotonic()
    assert pool.grade(problem, code).verdict is WA
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("value, expected, ok", [
    ('{"dict": [["a", 1], ["b", [2]]]}', '{"a": 1, "b": [2]}', True),
    ('{"dict": [[1, 2]]}', '{"1": 2}', False),
    ('{"dict": [["a", {"dict": [[{"tuple": [1]}, 2]]}]]}', '{"a": {"(1,)": 2}}', False),
])
def test_dict_keys(value, expected, ok):
    assert typed_return_matches(value, expected) is ok


@pytest.mark.parametrize("value, expected", [('{"npscalar": ["<f2", 1e10]}', "1"),
                                             ('{"ndarray": ["<f2", [1], [1e10]]}', "[1]")])
def test_numpy_overflow_raises_no_warning_in_the_grader(value, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert typed_return_matches(value, expected) is False


# ---- the completion itself ----

def test_fence_regex_does_not_backtrack():
    start = time.monotonic()
    assert extract_code("Here is my answer.\n```" + " " * 200_000 + "x") is None
    assert time.monotonic() - start < 1
    assert extract_code("```python  \nprint(1)\n```") == "print(1)\n"
    assert extract_code("``` \t py \t\nprint(2)\n```") == "print(2)\n"
    assert extract_code("```c++\nint x;\n```") is None
