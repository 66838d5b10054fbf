"""Second red-team pass: what a program can make the *grading side* do with what it sends back
(64 MiB of adversarial stdout, a typed return value or a forged status that is cheap to write and
was expensive to compare or decode), and verdicts a program can fake (a self-raised SIGXCPU).
Also attacks that held, pinned so they keep holding. See docs/sandbox.md."""
import time
from fractions import Fraction

import numpy as np
import pytest

from sandbox import Verdict
from sandbox.compare import encode_return, stdout_matches, typed_return_matches
from sandbox.grader import OUTPUT_CAP, parse_status
from sandbox_helpers import assert_untouched, call_problem, stdin_problem

AC, RE, WA, TL = Verdict.ACCEPTED, Verdict.RUNTIME_ERROR, Verdict.WRONG_ANSWER, Verdict.TIME_LIMIT
CAP = OUTPUT_CAP - 64  # just under the capture cap: no output_limit verdict


def timed(f, *args):
    start = time.monotonic()
    result = f(*args)
    return result, time.monotonic() - start


def settle(pool):
    """Wait until each zygote is back to one child, the server forked ahead: a server that held
    64 MiB captures takes a moment to exit, and other tests look at the zygote's children."""
    for w in pool._workers:
        pid = w.proc.pid
        for _ in range(100):
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                if len(f.read().split()) == 1:
                    break
            time.sleep(0.02)


# ---- stdout: comparing 64 MiB of adversarial output must stay cheap ----

@pytest.mark.parametrize("make_got, want", [
    (lambda: "1 " * (CAP // 2), "2"),  # one line of 32M numbers: was 32M Decimals, 4 GB, 5.5 s
    (lambda: "1\n" * (CAP // 2), "1"),  # 32M lines: was 32M strings before counting them
    (lambda: "1 " * (CAP // 2), "1 2\n3"),
    (lambda: "\n".join(["1 " * (CAP // 4), "1 " * (CAP // 4)]), "1 1\n1 1"),  # right line count
])
def test_huge_stdout_compares_fast(make_got, want):
    ok, seconds = timed(stdout_matches, make_got(), want)
    assert ok is False
    assert seconds < 3  # one pass over 64 MiB; the growth itself: test_sandbox_exit_and_cost


@pytest.mark.parametrize("got, want, ok", [
    ("1 2", "1 2.0", True), ("1 2 3", "1 2", False), ("1 2", "1 2 3", False),
    ("1\u00a02\u20033", "1 2 3", True),  # Unicode whitespace splits as str.split() does
    ("1 x", "1 y", False), ("1.0   2", "1 2", True), ("sNaN 1", "0 1", None), ("sNaN x", "0 1", False),
    ("a\n1.0\n", "a\n1", True), ("a\n\n1", "a\n1", False), ("", "", True), ("  \n", "", True),
])
def test_stdout_rules_unchanged(got, want, ok):
    assert stdout_matches(got, want) is ok


def test_huge_stdout_program_is_judged_fast(pool, marker):
    code = f"import os\nos.write(1, b'1 ' * {CAP // 2})\n"
    result, seconds = timed(pool.grade, stdin_problem([("", "1")]), code)
    assert result.verdict is WA
    assert seconds < 5
    settle(pool)
    assert_untouched(pool, marker)


# ---- typed return values: a huge one must not cost the grader seconds and gigabytes ----

@pytest.mark.parametrize("make_got, ok", [
    (lambda: "[" + "[]," * (CAP // 3 - 1) + "[]]", False),  # 21M empty lists: was 25 s, 3 GB
    (lambda: "[" + "0," * (CAP // 2 - 1) + "0]", False),  # 32M ints: was 9.5 s
    (lambda: '{"dict": [' + '[1, {"tuple": []}], ' * (CAP // 20) + '[1, 2]]}', False),
    (lambda: '["' + "," * CAP + '"]', False),  # commas inside one string: one value
    (lambda: '{"ndarray": ["<i8", [' + str(CAP // 3) + '], [' + "0, " * (CAP // 3 - 1) + '0]]}', None),
])
def test_huge_typed_return_compares_fast(make_got, ok):
    result, seconds = timed(typed_return_matches, make_got(), "[1]")
    assert result is ok  # (a big top-level numpy array makes LCB's comparison raise: None)
    assert seconds < 3  # one pass over 64 MiB; the growth itself: test_sandbox_exit_and_cost


@pytest.mark.parametrize("value, want", [
    ([np.complex128(1)] * 2000, [1] * 2000),  # the costliest encoding of a value equal to 1
    ([[np.array([[[1]]])]] * 500, [[[[[1]]]]] * 500),
    ({str(i): Fraction(2 * i, 2) for i in range(2000)}, {str(i): i for i in range(2000)}),
    (["a,b:[c{" * 5] * 2000, ["a,b:[c{" * 5] * 2000),
    (tuple(range(5000)), list(range(5000))),
])
def test_big_equal_values_still_pass(value, want):
    import json
    assert typed_return_matches(encode_return(value), json.dumps(want)) is True


# ---- the status file: a forged 64 MiB one must be refused cheaply (in the root server too) ----

@pytest.mark.parametrize("make_raw", [
    lambda: b"[" + b"[]," * (CAP // 3 - 1) + b"[]]",  # was 7 s and 1.9 GB in json.loads
    lambda: b"[" + b"0," * (CAP // 2 - 1) + b"0]",
    lambda: b'{"ok": [' + b'"",' * (CAP // 3 - 3) + b'""]}',
    lambda: b'""' * (CAP // 2), lambda: b'"' + b"\\" * CAP, lambda: b'"' + b"a" * CAP,
])
def test_forged_huge_status_is_refused_fast(make_raw):
    status, seconds = timed(parse_status, make_raw())
    assert status == {}
    assert seconds < 3  # one pass over 64 MiB; the growth itself: test_sandbox_exit_and_cost


def test_honest_big_status_still_parses():
    typed = encode_return(['a"b,'] * 100_000)
    raw = ('{"ok": true, "typed": %s}' % __import__("json").dumps(typed)).encode()
    assert parse_status(raw) == {"ok": True, "typed": typed}


def test_forged_huge_status_program_is_judged_fast(pool, marker):
    code = (f"import os\nos.write(3, b'[' + b'[],' * {CAP // 3 - 1} + b'[]]')\nos._exit(0)\n"
            "def f(a):\n    return a\n")
    result, seconds = timed(pool.grade, call_problem("f", [("1", "1")]), code)
    assert result.verdict is RE
    assert seconds < 5
    settle(pool)
    assert_untouched(pool, marker)


# ---- verdicts a program can fake ----

def test_self_raised_sigxcpu_is_not_a_time_limit(pool, marker):
    code = "import signal\nprint('ok')\nsignal.raise_signal(signal.SIGXCPU)\n"
    assert pool.grade(stdin_problem([("", "ok")]), code).verdict is RE
    # Lowering its own CPU limit: a real SIGXCPU, but long before the test's limit.
    code = ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 9))\n"
            "while True:\n    pass\n")
    assert pool.grade(stdin_problem([("", "ok")]), code, time_limit=4).verdict is RE
    assert_untouched(pool, marker)


def test_cpu_limit_signal_is_still_a_time_limit(pool):
    # Two threads burning CPU reach RLIMIT_CPU (1 s) before the wall clock limit (1 s) when two
    # cores are free; either way the verdict is time_limit.
    code = ("import threading\ndef spin():\n    while True:\n        pass\n"
            "threading.Thread(target=spin, daemon=True).start()\nspin()\n")
    assert pool.grade(stdin_problem([("", "ok")]), code, time_limit=1).verdict is TL


# ---- attacks that held ----

@pytest.mark.parametrize("code, verdict", [
    ("import signal\nprint('ok')\nsignal.raise_signal(signal.SIGSTOP)\n", TL),  # killed while stopped
    ("import signal\nprint('ok')\nsignal.raise_signal(signal.SIGTSTP)\n", TL),
    # Writes after the program ended (daemon thread) are not waited for, as in an interpreter.
    ("import threading, time, os\ndef late():\n    time.sleep(2)\n    os.write(1, b'ok')\n"
     "threading.Thread(target=late, daemon=True).start()\n", WA),
    ("import os\nos.dup2(0, 1)\nprint('ok')\n", WA),  # stdout into its own stdin file
    ("import os\nos.ftruncate(1, 0)\nos.lseek(1, 10 << 20, 0)\nos.write(1, b'ok')\n", WA),  # sparse
])
def test_attacks_that_held(pool, marker, code, verdict):
    assert pool.grade(stdin_problem([("", "ok")]), code, time_limit=1).verdict is verdict
    assert_untouched(pool, marker)
