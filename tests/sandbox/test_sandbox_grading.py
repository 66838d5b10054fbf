"""Grading fidelity with LiveCodeBench's rules, problem loading, code extraction and the CLI."""
import decimal
import json
import os
import subprocess
import sys
import warnings

import pytest

from sandbox import Problem, ProblemError, SandboxPool, Verdict, extract_code
from sandbox.problem import Test
from sandbox.compare import stdout_matches
from sandbox.grader import run_order
from sandbox.pool import Worker
from sandbox_helpers import call_problem, stdin_problem

A, W = Verdict.ACCEPTED, Verdict.WRONG_ANSWER

# (what the program writes, expected output, LiveCodeBench's verdict)
STDOUT_TABLE = [
    ("3  \n\n\n", "3", A),  # trailing whitespace and blank lines
    ("  3\r\n", "3\n", A),  # leading spaces, CRLF
    ("1 2\n\n3", "1 2\n3", W),  # an inner blank line is a line
    ("1.0", "1", A),
    ("1e3", "1000", A),
    ("-0", "0", A),
    ("1  2.50", "1 2.5", A),  # numbers token by token
    ("0.333333", "0.3333333333", W),  # no tolerance by default
    ("YES", "yes", W),  # case-sensitive
    ("a  b", "a b", W),  # non-numbers compare as whole lines
    ("1 2", "1 2 3", W),
    ("1" + "0" * 5000, "1" + "0" * 5000, A),  # big integers
]


@pytest.mark.parametrize("printed,expected,verdict", STDOUT_TABLE)
def test_stdout_fidelity(pool, printed, expected, verdict):
    code = f"import sys\nsys.stdout.write({printed!r})\n"
    assert pool.grade(stdin_problem([("", expected)]), code).verdict is verdict


def test_float_tolerance_mode():
    assert not stdout_matches("0.333333", "0.3333333333")
    assert stdout_matches("0.333333", "0.3333333333", tolerance=1e-4)
    assert not stdout_matches("0.33", "0.3333333333", tolerance=1e-4)
    assert stdout_matches("100000.01", "100000.0", tolerance=1e-4)  # relative above 1


def test_float_tolerance_through_pool(pool):
    problem = stdin_problem([("", "0.3333333333")])
    assert pool.grade(problem, "print(0.333333)").verdict is W
    assert pool.grade(problem, "print(0.333333)", float_tolerance=True).verdict is A


def _exact_power(base: int, exp: int) -> str:
    with decimal.localcontext() as ctx:  # str(int) would hit the 4300-digit limit here
        ctx.prec = 20_000
        return str(decimal.Decimal(base) ** exp)


BIG = _exact_power(3, 10000)

# (module-level code defining f, expected JSON, verdict)
CALL_TABLE = [
    ("def f(a, b): return (a, b)", "[1, 2]", A),  # a tuple result becomes a list
    ("def f(a, b): return [a, b]", "[1,2]", A),
    ("def f(a, b): return float(a)", "1", A),  # 1.0 == 1
    ("def f(a, b): return str(a)", "1", W),
    ("def f(a, b): return a == 1", "1", A),  # True == 1, as in Python and LiveCodeBench
    ("def f(a, b): return None", "null", A),
    ("def f(a, b): return {a, b}", "[1, 2]", W),  # a set is never a JSON value
    ("def f(a, b): return 3 ** 10000", BIG, A),  # 4772 digits: past 3.11's int->str limit
    ("def f(a, b): return 3 ** 10000 + 1", BIG, W),
    ("class Solution:\n    def f(self, a: List[int], b): return a + b", "3", A),  # List from the prelude
]


@pytest.mark.parametrize("code,expected,verdict", CALL_TABLE)
def test_call_fidelity(pool, code, expected, verdict):
    problem = call_problem("f", [("1\n2", expected)])
    assert pool.grade(problem, code).verdict is verdict


def test_class_solution_wins_over_module_function(pool):
    code = "def f(a, b): return 0\nclass Solution:\n    def f(self, a, b): return a + b\n"
    assert pool.grade(call_problem("f", [("1\n2", "3")]), code).verdict is A


def test_missing_function_is_a_runtime_error(pool):
    assert pool.grade(call_problem("f", [("1\n2", "3")]), "def g(a, b): return 3").verdict \
        is Verdict.RUNTIME_ERROR


@pytest.mark.parametrize("code", ["print(3)\nexit()", "import sys\nprint(3)\nsys.exit(0)",
                                  "import os, sys\nprint(3, flush=True)\nos._exit(0)",
                                  "import sys\nprint(3)\nsys.stdout.close()"])
def test_exit_after_printing(pool, code):
    assert pool.grade(stdin_problem([("", "3")]), code).verdict is A


@pytest.mark.parametrize("code", ["print(3)\nquit()", "def f(a):\n    quit()\n"])
def test_quit_is_none_as_in_livecodebench(pool, code):
    # LCB's reliability guard sets builtins.quit = None before its preamble copies builtins.
    problem = call_problem("f", [("1", "1")]) if "def f" in code else stdin_problem([("", "3")])
    result = pool.grade(problem, code)
    assert result.verdict is Verdict.RUNTIME_ERROR and "NoneType" in result.tests[0].stderr


def test_stdin_exit_with_a_code_finishes_like_the_interpreter(pool):
    # Threads are joined and atexit handlers run, as when the interpreter exits with that code.
    code = ("import atexit, sys, threading, time\natexit.register(print, 'bye')\n"
            "threading.Thread(target=lambda: (time.sleep(0.05), print(2))).start()\n"
            "print(1)\nsys.exit('stopped here')\n")
    result = pool.grade(stdin_problem([("", "1\n2\nbye")]), code)
    assert result.verdict is A and result.tests[0].exit_code == 0
    assert "stopped here" in result.tests[0].stderr  # printed as the interpreter would


@pytest.mark.parametrize("code,verdict", [
    # The text decides, as in LCB: a mention in a comment or string selects Solution().f ...
    ("# class Solution is not needed\ndef f(a, b):\n    return a + b\n", Verdict.RUNTIME_ERROR),
    ("s = 'class Solution'\ndef f(a, b):\n    return a + b\n", Verdict.RUNTIME_ERROR),
    ("class Solutions:\n    def f(self, a, b):\n        return 0\nSolution = Solutions\n"
     "def f(a, b):\n    return a + b\n", W),  # "class Solutions" holds the text: Solution().f
    # ... and a Solution bound without that text is ignored: the module-level function runs.
    ("class Sol:\n    def f(self, a, b):\n        return 0\nSolution = Sol\n"
     "def f(a, b):\n    return a + b\n", A),
    ("Solution = type('Solution', (), {'f': lambda self, a, b: 0})\ndef f(a, b):\n    return a + b\n", A),
])
def test_solution_class_chosen_by_text(pool, code, verdict):
    assert pool.grade(call_problem("f", [("1\n2", "3")]), code).verdict is verdict


@pytest.mark.parametrize("code", ["print(3)\nexit(1)", "print(3)\nexit('bye')", "print(3)\nraise SystemExit(2)",
                                  "import sys\nprint(3)\nsys.stderr.close()\nsys.exit('bye')",
                                  "import sys\nprint(3)\nsys.stderr = None\nraise SystemExit([1])"])
def test_any_exit_code_after_printing_is_judged_on_output(pool, code):
    # LiveCodeBench swallows SystemExit around a stdin program, whatever its code.
    assert pool.grade(stdin_problem([("", "3")]), code).verdict is A
    assert pool.grade(stdin_problem([("", "4")]), code).verdict is W


def test_exception_after_printing_is_a_runtime_error(pool):
    assert pool.grade(stdin_problem([("", "3")]), "print(3)\nraise ValueError").verdict is Verdict.RUNTIME_ERROR


@pytest.mark.parametrize("code", [
    "import sys\nprint(sum(int(x) for line in sys.stdin for x in line.split()))",  # fails in LCB
    "print(sum(map(int, open(0).read().split())))",  # reads nothing in LCB
    "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))",
    "def main():\n    print(sum(map(int, input().split())))\nif __name__ == '__main__':\n    main()",
    "print(sum(map(int, stdin.readline().split())))",  # `from sys import *` of the prelude
])
def test_stdin_styles(pool, code):
    assert pool.grade(stdin_problem([("1 2\n", "3"), ("40 2\n", "42")]), code).verdict is A


def test_syntax_error_is_a_verdict(pool):
    result = pool.grade(stdin_problem([("", "3")]), "def f(:\n  pass")
    assert result.verdict is Verdict.SYNTAX_ERROR and result.tests == [] and "SyntaxError" in result.message


def test_early_stop_runs_longest_input_first(pool):
    tests = [(f"{i}\n" + " " * i, str(i)) for i in range(8)]
    problem = stdin_problem(tests)
    assert run_order(problem) == list(range(7, -1, -1))
    wrong = "x = int(input())\nprint(x if x < 3 else -1)"
    early = pool.grade(problem, wrong)
    assert early.verdict is W and len(early.tests) == 1 and early.tests[0].index == 7
    full = pool.grade(problem, wrong, all_tests=True)
    assert [t.index for t in full.tests] == list(range(7, -1, -1))
    assert [t.verdict for t in full.tests] == [W] * 5 + [A] * 3 and full.verdict is W
    good = pool.grade(problem, "print(int(input()))")
    assert good.passed and len(good.tests) == 8 and good.num_tests == 8
    assert all(t.time > 0 for t in good.tests)


def test_stderr_excerpt(pool):
    result = pool.grade(stdin_problem([("", "1")]), "import sys\nsys.stderr.write('x' * 5000 + 'the end')\nprint(2)")
    assert result.verdict is W and result.tests[0].stderr.endswith("the end") and len(result.tests[0].stderr) <= 1000


# ---- problem loading ----

def test_loads_deepcoder_row_with_json_strings():
    row = {"problem": "...", "starter_code": "class Solution:\n    def add(self, a, b):\n",
           "tests": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}]),
           "metadata": json.dumps({"func_name": "add"})}
    p = Problem.from_dict(row)
    assert p.fn_name == "add" and p.call_based and p.tests[0].input == "1\n2" and p.starter_code


def test_taco_call_based_problems_grade(pool):
    # TACO inputs are argument lists (not JSON text); outputs are often wrapped in a list.
    taco = {"inputs": [[[1, 2, 3], 2], [[5], 1]], "outputs": [[5], 5], "fn_name": "tail_sum"}
    p = Problem.from_dict({"tests": json.dumps(taco)})
    assert p.fn_name == "tail_sum" and p.tests[0].input == "[1, 2, 3]\n2"
    assert pool.grade(p, "def tail_sum(xs, k):\n    return sum(xs[-k:])", all_tests=True).passed
    assert pool.grade(p, "def tail_sum(xs, k):\n    return sum(xs)").verdict is W


def test_taco_call_based_problem_with_a_5000_digit_answer(pool):
    big = "1" + "0" * 4998 + "7"  # 10**4999 + 7, as JSON text (json.dumps refuses the int)
    p = Problem.from_dict({"tests": '{"inputs": [[5000]], "outputs": [[%s]], "fn_name": "g"}' % big})
    assert p.tests[0].input == "5000" and p.tests[0].output == f"[{big}]"
    assert pool.grade(p, "def g(n):\n    return 10 ** (n - 1) + 7").passed
    assert pool.grade(p, "def g(n):\n    return 10 ** (n - 1) + 8").verdict is W


def test_taco_stdin_with_line_lists(pool):
    p = Problem.from_dict({"tests": {"inputs": [["1", "2"]], "outputs": [["3"]]}})
    assert p.tests[0].input == "1\n2" and not p.call_based
    assert pool.grade(p, "print(int(input()) + int(input()))").passed


@pytest.mark.parametrize("row,field", [
    ({}, "tests"),
    ({"tests": "[{"}, "tests"),
    ({"tests": 7}, "tests"),
    ({"tests": []}, "tests"),
    ({"tests": [{"input": 1, "output": "2"}]}, "tests[0].input"),
    ({"tests": [{"input": "1", "output": "2", "testtype": "weird"}]}, "tests[0].testtype"),
    ({"tests": [{"input": "1", "output": "2", "testtype": "functional"}]}, "fn_name"),
    ({"tests": [{"input": "[1,", "output": "2", "testtype": "functional"}], "fn_name": "f"}, "tests[0].input"),
    ({"tests": {"inputs": [1], "outputs": []}}, "tests.outputs"),
    ({"tests": {"inputs": "x", "outputs": []}}, "tests.inputs"),
    ({"tests": {"inputs": [1], "outputs": [2], "fn_name": "f"}}, "tests.inputs[0]"),
    ({"tests": [{"input": "", "output": ""}], "metadata": "{oops"}, "metadata"),
    ({"tests": [{"input": "", "output": ""}], "fn_name": "not valid"}, "fn_name"),
    ({"tests": [{"input": "", "output": ""}], "time_limit": -1}, "time_limit"),
    ({"tests": [{"input": "", "output": ""}], "starter_code": 3}, "starter_code"),
    ({"tests": [{"input": "", "output": ""}], "metadata": {"func_name": 5}}, "metadata.func_name"),
    ({"tests": "[" * 100_000}, "tests"),
    ({"public_test_cases": "[]", "private_test_cases": "[" * 100_000}, "private_test_cases"),
    ({"tests": {"inputs": [[1]], "outputs": [{1}], "fn_name": "f"}}, "tests.outputs[0]"),
    *[({"tests": [{"input": "", "output": ""}], key: value}, key) for key, value in [
        ("time_limit", float("nan")), ("time_limit", float("inf")), ("time_limit", 0), ("time_limit", None),
        ("memory_mb", 0), ("memory_mb", 10 ** 14), ("memory_mb", 256.0)]],
])
def test_malformed_problem_names_the_field(row, field):
    with pytest.raises(ProblemError) as e:
        Problem.from_dict(row)
    assert str(e.value).startswith(field)


@pytest.mark.parametrize("options", [{"time_limit": -1}, {"time_limit": 0}, {"time_limit": float("nan")},
                                     {"time_limit": float("inf")}, {"memory_mb": 0}, {"memory_mb": 10 ** 14},
                                     {"memory_mb": True}])
def test_pool_refuses_unusable_limits(pool, options):
    # Refused up front: not a sandbox_error from the child, and 0 is no "use the problem's".
    key = next(iter(options))
    with pytest.raises(ValueError, match=f"^{key}: expected"):
        pool.grade(stdin_problem([("", "ok")]), "print('ok')", **options)
    with pytest.raises(ValueError, match=f"^{key}: expected"):
        SandboxPool(workers=1, **options)  # as pool defaults: before any zygote starts


def test_pool_warns_when_isolation_is_degraded(monkeypatch):
    if os.geteuid() == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            SandboxPool(workers=1).close()  # full isolation: silent

    def start(worker):  # a zygote that came up as in an unprivileged container
        worker.info = {"pid": 1, "uid": None, "root": False, "namespaces": False, "chroot": False}
    monkeypatch.setattr(Worker, "start", start)
    with pytest.warns(RuntimeWarning, match="isolation degraded: no root, namespaces, chroot"):
        SandboxPool(workers=1).close()


# ---- extract_code ----

def test_extract_code_takes_last_python_or_bare_block():
    text = "a\n```python\nprint(1)\n```\nb\n```\nprint(2)\n```\n```text\nnot code\n```\n"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("```py\nx = 1\n```") == "x = 1\n"
    assert extract_code("no fences, print(3)") is None
    assert extract_code("```cpp\nint main(){}\n```") is None


@pytest.mark.parametrize("before", ["Wrap it in ```\nSo:\n", "use ```x``` then\n", "```python\nprint(0)\nfinal:\n",
                                    "<think>a stray ``` here\n</think>\n", "```python\nA\n```\n```python\ndraft\n"])
def test_extract_code_pairs_fences_from_the_end(before):
    """A stray or unclosed fence before the answer shifted every later pair (LiveCodeBench pairs the
    last two fence lines), giving prose as code or no code at all."""
    assert extract_code(before + "Sure.\n```python\nprint(2 * int(input()))\n```\n") == "print(2 * int(input()))\n"


def test_extract_code_fence_lines():
    assert extract_code("```python\r\nprint(1)\r\n```\r\n") == "print(1)\n"  # CRLF
    assert extract_code("```python title=sol.py\nprint(1)\n```") == "print(1)\n"
    assert extract_code("```python\nA\n```python\nB\n```") == "B\n"
    assert extract_code("```python\nA\n```\nthen, cut off:\n```python\nB") == "A\n"  # truncated last block
    assert extract_code("```python\n```") == ""


# ---- command line ----

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sandbox", *args], capture_output=True, text=True, timeout=120)


def test_cli_grades_and_prints_one_json_object(tmp_path):
    problem = tmp_path / "p.json"
    problem.write_text(json.dumps({"tests": json.dumps([{"input": "1 2", "output": "3", "testtype": "stdin"},
                                                        {"input": "2 2", "output": "4", "testtype": "stdin"}])}))
    code = tmp_path / "s.py"
    code.write_text("a, b = map(int, input().split())\nprint(a * b if a == 2 else a + b)")
    run = _cli("grade", "--problem", str(problem), "--code", str(code), "--all-tests", "--time-limit", "5")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["passed"] is True and out["verdict"] == "accepted" and len(out["tests"]) == 2
    code.write_text("print(5)")
    out = json.loads(_cli("grade", "--problem", str(problem), "--code", str(code)).stdout)
    assert out["passed"] is False and out["verdict"] == "wrong_answer" and len(out["tests"]) == 1
    # LiveCodeBench's mocked stdin is not iterable: a runtime error in its exact mode only.
    code.write_text("import sys\nfor line in sys.stdin:\n    a, b = map(int, line.split())\n"
                    "    print(a * b if a == 2 else a + b)\n")
    out = json.loads(_cli("grade", "--problem", str(problem), "--code", str(code), "--lcb-exact").stdout)
    assert out["verdict"] == "runtime_error" and out["compile_time"] >= 0


def test_cli_rejects_malformed_problem(tmp_path):
    problem = tmp_path / "p.json"
    problem.write_text(json.dumps({"tests": [{"input": "1", "output": 3}]}))
    code = tmp_path / "s.py"
    code.write_text("print(3)")
    run = _cli("grade", "--problem", str(problem), "--code", str(code))
    assert run.returncode == 2 and "tests[0].output" in run.stderr and run.stdout == ""
    run = _cli("grade", "--problem", str(tmp_path / "missing.json"), "--code", str(code))
    assert run.returncode == 2 and "missing.json" in run.stderr


TESTS = '"tests": [{"input": "", "output": "ok"}]'


@pytest.mark.parametrize("text, field", [
    ('{%s, "time_limit": NaN}' % TESTS, "time_limit"),  # Python's json accepts NaN and Infinity
    ('{%s, "time_limit": Infinity}' % TESTS, "time_limit"),
    ('{%s, "memory_mb": 100000000000000}' % TESTS, "memory_mb"),
    ('{"tests": %s}' % json.dumps("[" * 100_000), "tests"),
    ("[" * 100_000, "problem file"),
])
def test_cli_rejects_unusable_values_in_the_problem_file(tmp_path, text, field):
    problem = tmp_path / "p.json"
    problem.write_text(text)
    code = tmp_path / "s.py"
    code.write_text("print('ok')")
    run = _cli("grade", "--problem", str(problem), "--code", str(code))
    assert run.returncode == 2 and f"malformed problem: {field}" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("flag, value", [("--time-limit", "nan"), ("--time-limit", "inf"), ("--time-limit", "0"),
                                         ("--memory-mb", "100000000000000"), ("--memory-mb", "8")])
def test_cli_rejects_unusable_limits(tmp_path, flag, value):
    problem = tmp_path / "p.json"
    problem.write_text('{"tests": [{"input": "", "output": "ok"}]}')
    run = _cli("grade", "--problem", str(problem), "--code", str(problem), flag, value)
    assert run.returncode == 2 and f"{flag}: expected" in run.stderr and "Traceback" not in run.stderr


def test_cli_help():
    top, grade = _cli("--help"), _cli("grade", "--help")
    assert top.returncode == 0 and "grade" in top.stdout and "python -m sandbox grade --help" in top.stdout
    assert grade.returncode == 0 and "--all-tests" in grade.stdout and "fn_name" in grade.stdout
    assert "Exit status: 0 whatever the verdict" in grade.stdout


@pytest.mark.parametrize("make, message", [
    (lambda: Problem(()), "tests: empty"),
    (lambda: Problem(("x",)), "tests: expected Test objects"),
    (lambda: Problem((Test(1, "2"),)), "test input: expected a string, got int"),
    (lambda: Problem((Test("1", None),)), "test output: expected a string, got NoneType"),
    (lambda: Problem((Test("1", "2"),), time_limit=-1), "time_limit"),
    (lambda: Problem((Test("1", "2"),), time_limit=float("nan")), "time_limit"),
    (lambda: Problem((Test("1", "2"),), memory_mb=1), "memory_mb"),
    (lambda: Problem((Test("1", "2"),), fn_name="not a name"), "fn_name"),
])
def test_a_problem_built_directly_is_checked_as_from_dict_checks_it(make, message):
    """Only from_dict checked: Problem(()) in lcb_exact mode was *accepted* with no test run, and in the
    default mode waited 2 x (time limit + 10 s) for an input that never came."""
    with pytest.raises(ProblemError, match=message):
        make()


def test_bad_code_and_output_cap_are_refused_before_anything_runs(pool):
    """bytes or None as the code crashed the zygote twice (sandbox_error); output_cap 0 made every
    program output_limit, and -1 crashed the zygote."""
    problem = stdin_problem([("1", "1")])
    for code in (b"print(1)", None):
        with pytest.raises(TypeError, match="code: expected the program text"):
            pool.grade(problem, code)
    for cap in (0, -1, "x", True):
        with pytest.raises(ValueError, match="output_cap"):
            pool.grade(problem, "print(1)", output_cap=cap)
    assert pool.grade(problem, "print(1)").verdict is A
