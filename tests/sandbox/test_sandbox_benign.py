"""Benign programs that must pass, and the pool's parallel, asyncio and crash-recovery paths."""
import asyncio
import os
import signal
import threading
import time

import pytest

from sandbox import SandboxPool, Verdict
from sandbox_helpers import call_problem, sandbox_processes, stdin_problem

SUM = stdin_problem([("1 2 3\n", "6"), ("10 20\n", "30")])

BENIGN = {
    "threads": """
import threading
from concurrent.futures import ThreadPoolExecutor
nums = list(map(int, input().split()))
with ThreadPoolExecutor(4) as ex:
    parts = list(ex.map(lambda x: x, nums))
t = threading.Thread(target=lambda: print(sum(parts)))
t.start(); t.join()
""",
    "main_in_a_big_stack_thread": """
import sys, threading
def main():
    print(sum(map(int, input().split())))
sys.setrecursionlimit(10**6)
threading.stack_size(1 << 27)
threading.Thread(target=main).start()  # not joined: the interpreter waits for it
""",
    "numpy": """
import numpy as np
a = np.array(input().split(), dtype=np.int64)
m = np.linalg.inv(np.eye(3) * 2)
print(int(a.sum() * m[0, 0] * 2))
""",
    "stdin_buffer": "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))",
    "sys_exit_after_print": "import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)",
    "exit_after_print": "print(sum(map(int, input().split())))\nexit()",
    "atexit_output": "import atexit\natexit.register(lambda: print(sum(map(int, input().split()))))",
}


@pytest.mark.parametrize("name", BENIGN)
def test_benign_programs_pass(pool, name):
    result = pool.grade(SUM, BENIGN[name], all_tests=True)
    assert result.passed, result


def test_recursion_depth_100k(pool):
    plain = "import sys\nsys.setrecursionlimit(10**6)\ndef f(n): return 0 if n == 0 else 1 + f(n - 1)\nprint(f(int(input())))"
    cached = ("import sys, functools\nsys.setrecursionlimit(10**6)\n@functools.lru_cache(None)\n"
              "def f(n): return 0 if n == 0 else 1 + f(n - 1)\nprint(f(int(input())))")  # C-level recursion
    problem = stdin_problem([("100000", "100000")])
    assert pool.grade(problem, plain).passed
    assert pool.grade(problem, cached).passed


def test_big_integers(pool):
    digits = "7" * 5000
    code = "n = int(input())\nprint(n * 3)"
    assert pool.grade(stdin_problem([(digits, "2" + "3" * 4999 + "1")]), code).passed
    call = call_problem("double", [(digits, "1" + "5" * 4999 + "4")])
    assert pool.grade(call, "def double(n): return 2 * n").passed


def test_early_stop_on_a_50_test_problem(pool):
    problem = stdin_problem([(str(i), str(i)) for i in range(50)])
    pid = pool._workers[0].proc.pid
    for _ in range(50):  # the stop races the next test's start: repeat to catch a bad race
        result = pool.grade(problem, "print(int(input()) + 1)")
        assert result.verdict is Verdict.WRONG_ANSWER and len(result.tests) == 1 and result.num_tests == 50
    assert pool._workers[0].proc.pid == pid  # the zygote never crashed
    assert sandbox_processes(pool) == []


def test_grade_many_and_async(pool):
    pairs = [(SUM, "print(sum(map(int, input().split())))"), (SUM, "print(0)")] * 3
    results = pool.grade_many(pairs)
    assert [r.passed for r in results] == [True, False] * 3

    async def main():
        return await asyncio.gather(*(pool.grade_async(p, c) for p, c in pairs))
    assert [r.passed for r in asyncio.run(main())] == [True, False] * 3


def test_two_workers_run_in_parallel():
    sleeper = stdin_problem([("", "ok")])
    with SandboxPool(workers=2, time_limit=5) as two:
        uids = {w.info["uid"] for w in two._workers}
        assert len(uids) == 2  # one uid per slot
        start = time.monotonic()
        results = two.grade_many([(sleeper, "import time\ntime.sleep(2)\nprint('ok')")] * 2)
        assert all(r.passed for r in results)
        assert time.monotonic() - start < 3.5  # one after the other: >= 4 s


def test_crashed_zygote_is_replaced_between_jobs(pool):
    worker = pool._workers[0]
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    assert pool.grade(SUM, "print(sum(map(int, input().split())))").passed
    assert worker.proc.poll() is None


def test_job_rerun_when_zygote_dies_mid_job(pool):
    worker = pool._workers[0]
    problem = stdin_problem([("", "ok")])
    old_pid, old_uid = worker.proc.pid, worker.info["uid"]
    killer = threading.Timer(0.5, os.kill, (old_pid, signal.SIGKILL))
    killer.start()
    result = pool.grade(problem, "import time\ntime.sleep(1.5)\nprint('ok')", time_limit=3)
    killer.join()
    assert result.passed and worker.proc.pid != old_pid  # re-run on a fresh zygote, not lost
    assert sandbox_processes(pool, uids={old_uid}) == []  # its child died with it


def test_zygote_that_keeps_dying_gives_sandbox_error():
    with SandboxPool(workers=1) as p:
        worker = p._workers[0]
        real_send = worker.send

        def send(op, **payload):  # kill the zygote under every run request
            if op == "run":
                os.kill(worker.proc.pid, signal.SIGKILL)
            return real_send(op, **payload)
        worker.send = send
        result = p.grade(SUM, "print(6)")
        assert result.verdict is Verdict.SANDBOX_ERROR
        assert "zygote lost" in result.message
