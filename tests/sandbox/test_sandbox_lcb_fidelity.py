"""Agreement with LiveCodeBench's own grader, case by case.

tests/sandbox/data/lcb_fidelity_cases.json holds programs, tests and the verdict LiveCodeBench's
grader gave them: lcb_runner/evaluation/testing_util.py at LiveCodeBench commit 28fef95, run the
way compute_code_generation_metrics.check_correctness runs it (a worker process per solution,
timeout=1 s, tests in the given order, stop at the first failure). `lcb_results` is its raw result
list: True, False or -2 (wrong answer), -3 (time limit), -4 (runtime error, also "error during
testing"), -1 (the worker died: no result at all). Our verdict is the first failing test in the
problem's order.

Tags:
- equal: our verdict must be LCB's (a runtime error may be our syntax_error or memory_limit).
- deliberate: a documented difference (docs/sandbox.md, "LiveCodeBench quirks"); `ours` pins
  our verdict so the difference stays a decision.
"""
import base64
import json
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from sandbox import Problem, ProblemError, Verdict
from sandbox.compare import (Opaque, decode_return, encode_return, stdout_matches,
                             typed_return_matches)
from sandbox.problem import call_args
from sandbox_helpers import call_problem

sys.set_int_max_str_digits(0)  # the table holds 5000-digit numbers

CASES = json.loads((Path(__file__).parent / "data" / "lcb_fidelity_cases.json").read_text("utf-8"))
TIME_LIMIT = 1.0  # the table was made with LCB's timeout=1

ALLOWED = {
    "accepted": {"accepted"},
    "wrong_answer": {"wrong_answer"},
    "time_limit": {"time_limit"},
    "runtime_error": {"runtime_error", "syntax_error", "memory_limit"},
    "worker_died": {"runtime_error", "time_limit", "memory_limit"},
}


def _problem(case) -> Problem:
    kind = "functional" if case["fn_name"] else "stdin"
    return Problem.from_dict({"fn_name": case["fn_name"], "tests": [
        {"input": i, "output": o, "testtype": kind} for i, o in case["tests"]]})




def _first_failure(result) -> str:
    ordered = sorted(result.tests, key=lambda t: t.index)
    return next((t.verdict.value for t in ordered if t.verdict is not Verdict.ACCEPTED), result.verdict.value)


def test_table_shape():
    assert len(CASES) >= 150 and len({c["id"] for c in CASES}) == len(CASES)
    assert {c["tag"] for c in CASES} == {"equal", "deliberate"}
    assert all("ours" in c and "note" in c for c in CASES if c["tag"] == "deliberate")


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in CASES])
def test_verdict_agrees_with_livecodebench(pool, case):
    result = pool.grade(_problem(case), case["code"], all_tests=True, time_limit=TIME_LIMIT)
    ours = _first_failure(result)
    if case["tag"] == "deliberate":
        assert ours == case["ours"], f"deliberate difference changed: LCB {case['lcb_verdict']}, {case['note']}"
        assert ours not in ALLOWED[case["lcb_verdict"]] or case["id"] in _DELIBERATE_SAME_VERDICT
    else:
        assert ours in ALLOWED[case["lcb_verdict"]], f"LCB {case['lcb_results']}, ours {ours}"


# Deliberate differences in mechanism whose verdict happens to agree (both fail).
_DELIBERATE_SAME_VERDICT = {"prog_keyboardinterrupt"}


def test_lcb_exact_mode_agrees_on_every_case(pool):
    # lcb_exact=True reproduces LCB's verdict on all cases, the deliberate differences included,
    # but the always-equal reward hack (the child could forge any claim about its value's ==).
    results = pool.grade_many([(_problem(c), c["code"]) for c in CASES], all_tests=True,
                              time_limit=TIME_LIMIT, lcb_exact=True)
    differ = [(c["id"], c["lcb_verdict"], _first_failure(r)) for c, r in zip(CASES, results)
              if _first_failure(r) not in ALLOWED[c["lcb_verdict"]]]
    assert differ == [("call_always_equal_object", "accepted", "wrong_answer")]
    deliberate = [c for c in CASES if c["tag"] == "deliberate"]
    assert len(deliberate) == 32  # each now graded as LCB grades it (above)


# ---- the parent's side of typed return values, with the child's encoding done in-process ----

def _returns_normally(case) -> bool:
    return (case["fn_name"] and case["tag"] != "deliberate"
            and (case["lcb_verdict"] in ("accepted", "wrong_answer") or case["id"] == "call_numpy_array_size2"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in CASES if _returns_normally(c)])
def test_typed_return_comparison_agrees_with_livecodebench(case):
    """Runs the table's own (trusted) call-based programs here, encodes the return value as the
    child should (compare.encode_return), and judges it with the parent's comparison."""
    namespace = {}
    exec("from typing import *\n" + case["code"], namespace)  # noqa: S102 - the table's code
    solution = namespace.get("Solution")
    fn = getattr(solution(), case["fn_name"]) if solution else namespace[case["fn_name"]]
    verdict = "accepted"
    for inp, out in case["tests"]:
        ok = typed_return_matches(encode_return(fn(*call_args(inp))), out)
        if ok is not True:
            verdict = "wrong_answer" if ok is False else "runtime_error"
            break
    assert verdict in ALLOWED[case["lcb_verdict"]]


@pytest.mark.parametrize("value,expected,ok", [
    ((1, 2), "[1, 2]", True),  # a top-level tuple becomes a list
    ([(1, 2)], "[[1, 2]]", False),  # an inner one does not
    ({1: 2}, '{"1": 2}', False),  # int keys are not JSON's string keys
    ({"1": (2,)}, '{"1": [2]}', False),
    (1.0, "1", True),
    (True, "1", True),
    (None, "null", True),
    ({1, 2}, "[1, 2]", False),
    (iter([1]), "[1]", False),
    (b"x", '"x"', False),
    (float("nan"), "NaN", False),
    (float("inf"), "Infinity", True),
    (3 ** 5000, str(3 ** 5000), True),
    ("h\u00e9llo \U0001F600", '"h\\u00e9llo \\ud83d\\ude00"', True),
    ("[1, 2]", '"[1, 2]"', True),
    ([1, 2], '"[1, 2]"', False),
])
def test_typed_return_values(value, expected, ok):
    assert typed_return_matches(encode_return(value), expected) is ok


def test_typed_return_numpy_and_numbers():
    np = pytest.importorskip("numpy")
    from decimal import Decimal
    from fractions import Fraction
    assert typed_return_matches(encode_return(np.int64(3)), "3") is True
    assert typed_return_matches(encode_return(np.bool_(True)), "true") is True
    assert typed_return_matches(encode_return(np.array([3])), "[3]") is True
    assert typed_return_matches(encode_return(np.array([1, 2])), "[1, 2]") is None  # LCB: runtime error
    assert typed_return_matches(encode_return(np.zeros((0, 3))), "[]") is None
    assert typed_return_matches(encode_return(Decimal("1.50")), "1.5") is True
    assert typed_return_matches(encode_return(Fraction(1, 2)), "0.5") is True
    assert typed_return_matches(encode_return(complex(2, 0)), "2") is True
    assert typed_return_matches(encode_return(np.array(["a"], dtype=object)), '["a"]') is False  # opaque
    # item() of these gives the numpy scalar back: the encoder recursed until it gave up (opaque).
    assert typed_return_matches(encode_return(np.longdouble(2.5)), "2.5") is True
    assert typed_return_matches(encode_return(np.array([2.5], dtype=np.longdouble)), "[2.5]") is True
    assert typed_return_matches(encode_return(np.clongdouble(2)), "2") is True


def test_typed_return_subclasses_cannot_cheat():
    class Sneaky(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__

    class AlwaysEqual:
        def __eq__(self, other):
            return True

    assert typed_return_matches(encode_return(Sneaky(5)), "7") is False
    assert typed_return_matches(encode_return([AlwaysEqual()]), "[7]") is False
    assert typed_return_matches(encode_return(AlwaysEqual()), "7") is False


def test_typed_return_taco_unwrap():
    assert typed_return_matches(encode_return(5), "[5]", unwrap=True) is True
    assert typed_return_matches(encode_return(5), "[5]") is False


def test_decode_return_builds_only_plain_values():
    assert decode_return('{"tuple": [1, {"dict": [["a", {"decimal": "1.5"}]]}]}') == (1, {"a": 1.5})
    assert isinstance(decode_return('{"opaque": "set"}'), Opaque)
    for bad in ('{"a": 1}', '{"tuple": 1}', '{"ndarray": ["O", [1], [1]]}', '{"npscalar": ["V8", 1]}',
                '{"dict": [[[1], 2]]}', '{"dict": [1]}', '{"x": 1, "y": 2}'):
        assert typed_return_matches(bad, "1") is False, bad
    assert encode_return(_deep(20_000)).startswith('{"opaque"')


def _deep(n):
    v = []
    for _ in range(n):
        v = [v]
    return v


def test_stdout_snan_comparison_is_lcb_runtime_error():
    assert stdout_matches("sNaN", "sNaN") is True  # equal text: no Decimal compare
    assert stdout_matches("sNaN", "snan") is None
    assert stdout_matches("1\nsNaN", "2\nsnan") is False  # the first unequal line decides
    assert stdout_matches("sNaN", "1", tolerance=1e-4) is None


# ---- loaders: LiveCodeBench rows, DeepCoder rows, TACO ----

def _lcb_private(tests) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def _lcb_row(fn_name, public, private, private_encoded=True):
    return {"question_title": "t", "question_content": "q", "platform": "leetcode", "question_id": "1",
            "contest_id": "c", "contest_date": "2024-09-01T00:00:00", "difficulty": "easy",
            "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        " if fn_name else "",
            "public_test_cases": json.dumps(public),
            "private_test_cases": _lcb_private(private) if private_encoded else json.dumps(private),
            "metadata": json.dumps({"func_name": fn_name} if fn_name else {})}


def test_lcb_row_call_based(pool):
    t = lambda i, o: {"input": i, "output": o, "testtype": "functional"}  # noqa: E731
    row = _lcb_row("add", [t("1\n2", "3")], [t("40\n2", "42"), t("-1\n1", "0")])
    p = Problem.from_lcb_row(row)
    assert p.fn_name == "add" and [x.input for x in p.tests] == ["1\n2", "40\n2", "-1\n1"]
    assert p.time_limit == 6.0 and p.starter_code.startswith("class Solution")
    good = "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n"
    assert pool.grade(p, good, all_tests=True).passed
    assert pool.grade(p, good.replace("a + b", "a + b if a > 0 else 1")).verdict is Verdict.WRONG_ANSWER


def test_lcb_row_stdin_and_plain_json_private(pool):
    t = lambda i, o: {"input": i, "output": o, "testtype": "stdin"}  # noqa: E731
    for encoded in (True, False):
        p = Problem.from_lcb_row(_lcb_row(None, [t("1 2\n", "3\n")], [t("5 6\n", "11\n")], encoded))
        assert not p.call_based and len(p.tests) == 2
        assert pool.grade(p, "print(sum(map(int, input().split())))", all_tests=True).passed


def test_lcb_row_through_from_dict_and_cli(tmp_path):
    t = {"input": "1 2\n", "output": "3\n", "testtype": "stdin"}
    row = _lcb_row(None, [t], [t])
    assert Problem.from_dict(row).time_limit == 6.0 and len(Problem.from_dict(row).tests) == 2
    (tmp_path / "p.json").write_text(json.dumps(row))
    (tmp_path / "s.py").write_text("import sys\nprint(sum(map(int, input().split())))\nsys.exit(1)\n")
    run = subprocess.run([sys.executable, "-m", "sandbox", "grade", "--problem", str(tmp_path / "p.json"),
                          "--code", str(tmp_path / "s.py")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and json.loads(run.stdout)["verdict"] == "accepted", run.stderr


def test_lcb_row_testtype_is_not_consulted():
    # lcb_runner decides by metadata.func_name alone.
    row = _lcb_row("add", [{"input": "1\n2", "output": "3", "testtype": "stdin"}], [])
    assert Problem.from_lcb_row(row).call_based


def test_lcb_row_pickle_refuses_globals():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    row = _lcb_row("add", [], [])
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(ProblemError, match="private_test_cases.*refused global"):
        Problem.from_lcb_row(row)
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps([1, 2]))).decode()
    with pytest.raises(ProblemError, match="private_test_cases: the pickle holds list"):
        Problem.from_lcb_row(row)
    row["private_test_cases"] = "not base64 @@@"
    with pytest.raises(ProblemError, match="private_test_cases"):
        Problem.from_lcb_row(row)


def test_lcb_evaluation_sample_shape(pool):
    sample = {"input_output": json.dumps({"inputs": ["1\n2", "3\n4"], "outputs": ["3", "7"], "fn_name": "add"})}
    p = Problem.from_lcb_row(sample)
    assert p.fn_name == "add" and p.tests[1].input == "3\n4" and not p.tests[0].unwrap
    assert pool.grade(p, "def add(a, b):\n    return a + b", all_tests=True).passed
    sample = {"input_output": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"], "fn_name": None})}
    assert not Problem.from_lcb_row(sample).call_based


def test_deepcoder_rows(pool):
    lcb_style = {"problem": "p", "starter_code": "",
                 "tests": json.dumps([{"input": "[1, 2]\n3", "output": "[3, 4]", "testtype": "functional"}]),
                 "metadata": json.dumps({"func_name": "shift"})}
    p = Problem.from_dict(lcb_style)
    assert pool.grade(p, "def shift(xs, k):\n    return tuple(x + k - 1 for x in xs)\n").passed
    taco_style = {"problem": "p", "starter_code": "", "metadata": "{}",
                  "tests": json.dumps({"inputs": ["2\n1 2\n", "1\n5\n"], "outputs": [["3"], "5\n"]})}
    p = Problem.from_dict(taco_style)
    assert not p.call_based and p.tests[0].output == "3"
    assert pool.grade(p, "input()\nprint(sum(map(int, input().split())))", all_tests=True).passed


def test_taco_call_based_inputs_are_argument_lists(pool):
    taco = {"inputs": [[[1, 2, 3], "ab"], [[], ""]], "outputs": [["ab6"], "0"], "fn_name": "tag"}
    p = Problem.from_dict({"tests": json.dumps(taco)})
    assert p.tests[0].input == '[1, 2, 3]\n"ab"' and p.tests[0].unwrap
    code = "def tag(xs, s):\n    return s + str(sum(xs))\n"
    assert pool.grade(p, code, all_tests=True).passed  # "ab6" matches the wrapped ["ab6"]


def test_a_lone_surrogate_in_an_input_is_graded_as_livecodebench_grades_it(pool):
    """JSON may hold one; encoding it for the zygote raised out of grade(). LiveCodeBench passes it to a
    call as it is, and fails to encode it for a stdin program (a runtime error)."""
    call = call_problem("f", [('"a\\ud800"', "2")])
    assert pool.grade(call, "def f(s):\n    return len(s)\n").verdict is Verdict.ACCEPTED
    stdin = Problem.from_dict(json.loads('{"tests": [{"input": "a\\ud800\\n", "output": "2", "testtype": "stdin"}]}'))
    assert stdin.tests[0].input == "a\ud800\n"
    assert pool.grade(stdin, "print(len(input()))\n").verdict is Verdict.RUNTIME_ERROR
