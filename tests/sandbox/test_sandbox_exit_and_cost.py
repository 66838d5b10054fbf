"""Output as CPython writes it (a replaced sys.stdout is flushed at exit, stdin keeps "\\r"),
the compile step under the solution's own limits, and the grading side's cost on hostile bytes
growing linearly with their size (issue 12, item 2)."""
import json
import os
import subprocess
import sys
import time

import pytest

from sandbox import Verdict
from sandbox_helpers import assert_untouched, call_problem, stdin_problem

AC, WA, TL, ML, RE = (Verdict.ACCEPTED, Verdict.WRONG_ANSWER, Verdict.TIME_LIMIT,
                      Verdict.MEMORY_LIMIT, Verdict.RUNTIME_ERROR)
READ = "a, b = map(int, input().split())\n"

# PyRival's FastIO template (as Codeforces solutions carry it), shortened to what a+b uses.
FASTIO = """import os, sys
from io import BytesIO, IOBase
class FastIO(IOBase):
    newlines = 0
    def __init__(self, file):
        self._fd = file.fileno()
        self.buffer = BytesIO()
        self.writable = "x" in file.mode or "r" not in file.mode
        self.write = self.buffer.write if self.writable else None
    def readline(self):
        while self.newlines == 0:
            b = os.read(self._fd, max(os.fstat(self._fd).st_size, 8192))
            self.newlines = b.count(b"\\n") + (not b)
            ptr = self.buffer.tell()
            self.buffer.seek(0, 2), self.buffer.write(b), self.buffer.seek(ptr)
        self.newlines -= 1
        return self.buffer.readline()
    def flush(self):
        if self.writable:
            os.write(self._fd, self.buffer.getvalue())
            self.buffer.truncate(0), self.buffer.seek(0)
class IOWrapper(IOBase):
    def __init__(self, file):
        self.buffer = FastIO(file)
        self.flush = self.buffer.flush
        self.writable = self.buffer.writable
        self.write = lambda s: self.buffer.write(s.encode("ascii"))
        self.readline = lambda: self.buffer.readline().decode("ascii")
sys.stdin, sys.stdout = IOWrapper(sys.stdin), IOWrapper(sys.stdout)
input = lambda: sys.stdin.readline().rstrip("\\r\\n")
"""


@pytest.mark.parametrize("code", [
    "import sys\nsys.stdout = open(1, 'w')\n" + READ + "print(a + b)\n",
    "import os\nw = os.fdopen(1, 'w')\n" + READ + "w.write(f'{a + b}\\n')\n",
    "import os\ndef main():\n    global w\n    w = os.fdopen(1, 'w')\n    " + READ
    + "    w.write(f'{a + b}\\n')\nmain()\n",
    "import io, sys\nsys.stdout = io.TextIOWrapper(sys.stdout.buffer)\n" + READ + "print(a + b)\n",
    FASTIO + READ + "print(a + b)\n",
    # The original stream's own pending text still comes out too.
    "import sys\nprint(3, end='')\nsys.stdout = open(1, 'w')\n" + READ + "print()\n",
], ids=["open-fd-1", "fdopen-global", "fdopen-global-in-function", "textiowrapper",
        "pyrival-fastio", "mixed"])
def test_replaced_stdout_is_flushed_at_exit(pool, code):
    result = pool.grade(stdin_problem([("1 2\n", "3"), ("10 -7\n", "3")]), code, all_tests=True)
    assert result.verdict is AC, result


def test_stdin_keeps_carriage_returns(pool):
    code = ("import sys\nx = input()\ny = sys.stdin.readline()\nz = [l for l in sys.stdin]\n"
            "print(repr(x), repr(y), repr(z))\n")
    result = pool.grade(stdin_problem([("ab\r\ncd\r\ne\r", "'ab\\r' 'cd\\r\\n' ['e\\r']")]), code)
    assert result.verdict is AC, result


def test_slow_compile_is_the_solutions_time_limit(pool, marker):
    # ~2 s to compile here, more than the limit: killed at the limit, not run, not a sandbox error.
    result = pool.grade(stdin_problem([("", "")]), "a = 1\n" * 300_000, time_limit=0.5)
    assert result.verdict is TL and result.tests == []
    assert "compiling" in result.message and result.compile_time == 0.5
    assert_untouched(pool, marker)
    ok = pool.grade(stdin_problem([("1 2\n", "3")]), READ + "print(a + b)\n")
    assert ok.verdict is AC and 0 < ok.compile_time < 0.5


def test_compile_over_the_memory_limit_is_a_memory_limit(pool, marker):
    # A 3M-element literal needs far more than the ~80 MiB left under 200 MiB of address space.
    result = pool.grade(stdin_problem([("", "")]), "x = [" + "0," * 3_000_000 + "]\n", memory_mb=200)
    assert result.verdict is ML and "compiling" in result.message
    assert_untouched(pool, marker)


def test_a_test_cannot_forge_a_killed_compile(pool, marker):
    # The flag that makes a server's death "killed while compiling" is shared with the zygote
    # only: a test's child, which finds the zygote object by walking its frames, has no mapping.
    code = """import sys
f = sys._getframe()
while f is not None and type(f.f_locals.get("self")).__name__ != "Zygote":
    f = f.f_back
f.f_locals["self"].compiling[0] = 1
print("wrote")
"""
    result = pool.grade(stdin_problem([("", "wrote")]), code)
    assert result.verdict is RE and result.tests[0].exit_code == -11  # SIGSEGV
    assert_untouched(pool, marker)


# ---- the grading side's cost on hostile bytes: linear in their size ----

def _payloads(n: int) -> dict:
    """Hostile captures of about n bytes, each against the step that reads it."""
    from sandbox.compare import stdout_matches, typed_return_matches
    from sandbox.grader import parse_status
    half = n // 2
    quotes = '"' + '\\"' * half  # an unterminated string of escaped quotes: was quadratic
    return {
        "status: escaped quotes": (parse_status, quotes.encode()),
        "status: a typed value of escaped quotes": (
            parse_status, json.dumps({"ok": True, "typed": quotes}).encode()),
        "status: brackets": (parse_status, b"[" * n),
        "typed: escaped quotes": (lambda got: typed_return_matches(got, "[1]"), quotes),
        "typed: quotes in a list": (lambda got: typed_return_matches(got, "[1]"), "[" + quotes + '"]'),
        "typed: empty lists": (lambda got: typed_return_matches(got, "[1]"), "[" + "[]," * (n // 3) + "0]"),
        "typed: long number strings": (
            lambda got: typed_return_matches(got, "[1.5]"),
            json.dumps([{"decimal": "9" * (n // 3)}, {"complex": ["1" * (n // 3), 0]}])),
        # numpy pads each string to the longest: 70 x n characters unless refused.
        "typed: numpy strings padded": (
            lambda got: typed_return_matches(got, json.dumps(["a"] * 80)),
            json.dumps({"ndarray": ["<U1", [71], ["a" * half] + ["b"] * 70]})),
        "stdout: tokens": (lambda got: stdout_matches(got, "2"), "1 " * half),
        "stdout: lines": (lambda got: stdout_matches(got, "1\n2"), "1\n" * half),
        "stdout: one long number": (lambda got: stdout_matches(got, "1 2", 1e-4), "1" * n + " 2"),
    }


def measure_cost() -> dict:
    """Seconds per step at 1, 4 and 16 MiB (best of a few runs). Run in a subprocess."""
    out = {}
    for mib in (1, 4, 16):
        for name, (step, payload) in _payloads(mib << 20).items():
            best = float("inf")
            for _ in range(2 if mib == 16 else 3):
                start = time.perf_counter()
                step(payload)
                best = min(best, time.perf_counter() - start)
            out.setdefault(name, []).append(best)
    return out


def test_grading_cost_grows_linearly_with_hostile_input():
    # In a subprocess with a deadline: a quadratic step would take hours at 16 MiB.
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, here])}
    run = subprocess.run([sys.executable, "-c", "import json, test_sandbox_exit_and_cost as t; "
                          "print(json.dumps(t.measure_cost()))"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=here)
    assert run.returncode == 0, run.stderr[-2000:]
    costs = json.loads(run.stdout)
    for name, (t1, t4, t16) in costs.items():
        # Linear: 16x the bytes cost ~16x (caches make it up to ~25x), quadratic 256x. Generous
        # margins for a loaded machine, and a floor for steps too quick to time.
        assert t4 <= 12 * t1 + 0.05 and t16 <= 64 * t1 + 0.2, (name, t1, t4, t16)


def test_a_test_that_exits_in_time_is_not_timed_out_by_a_slow_next_input(monkeypatch):
    """While a test ran the zygote read the next test's whole input, then looked at the clock before the
    child: a grader slow to write that input (a busy grading thread, hundreds of MB) turned a program
    that had long exited into time_limit. Here the grader pauses between an input's frame and its bytes."""
    from sandbox import SandboxPool, ipc

    send = ipc.send

    def slow_send(fd, obj, raw=None, files=None):
        if raw is None:
            return send(fd, obj, raw, files)
        send(fd, obj)
        time.sleep(1.5)
        ipc._write_all(fd, memoryview(raw))

    monkeypatch.setattr(ipc, "send", slow_send)  # the grading side only: the zygote is its own process
    with SandboxPool(workers=1, time_limit=1.0, memory_mb=512) as pool:
        result = pool.grade(stdin_problem([("1 2", "3"), ("2 2", "4"), ("5 5", "10")]), READ + "print(a + b)\n",
                            all_tests=True)
    assert [t.verdict for t in result.tests] == [AC, AC, AC], result
    assert max(t.time for t in result.tests) < 0.5


def test_arguments_too_big_for_the_memory_limit_are_a_memory_limit(pool):
    """They were parsed before the child reported ready, so a MemoryError there was a sandbox_error."""
    problem = call_problem("f", [(json.dumps(list(range(3_000_000))), "3000000")])
    assert pool.grade(problem, "def f(a):\n    return len(a)\n", memory_mb=200).verdict is ML
    assert pool.grade(problem, "def f(a):\n    return len(a)\n", memory_mb=1024).verdict is AC
