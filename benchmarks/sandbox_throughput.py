"""Sandbox throughput against a fresh interpreter per test.

In one run, with isolation fully on: tests/second of an a+b stdin program and of a call-based one
through SandboxPool on all cores, the same with a fresh `python solution.py` process per test
(the baseline, also on all cores), their ratios, the sandbox's CPU cost per test above the
solution's own CPU time, and early stop on a 50-test problem.

    .venv/bin/python benchmarks/sandbox_throughput.py [--tests 500] [--workers N]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout

from sandbox import Problem, SandboxPool
from sandbox.problem import call_args
from sandbox.compare import encode_return, stdout_matches, typed_return_matches

STDIN_CODE = "a, b = map(int, input().split())\nprint(a + b)\n"
CALL_CODE = "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n"
# The baseline's driver for call-based tests: what a fresh-interpreter grader has to run.
CALL_DRIVER = ("\nimport json, sys\nargs = [json.loads(l) for l in sys.stdin.read().split('\\n') if l.strip()]\n"
               "print(json.dumps(Solution().add(*args)))\n")
TESTS_PER_PROBLEM = 5


def make_problems(n_tests: int, call: bool, rng: random.Random) -> list[Problem]:
    problems = []
    for _ in range(n_tests // TESTS_PER_PROBLEM):
        tests = []
        for _ in range(TESTS_PER_PROBLEM):
            a, b = rng.randrange(10**9), rng.randrange(10**9)
            tests.append({"input": f"{a}\n{b}" if call else f"{a} {b}\n", "output": str(a + b),
                          "testtype": "functional" if call else "stdin"})
        problems.append(Problem.from_dict({"tests": tests, "fn_name": "add" if call else None}))
    return problems


def process_cpu(pid: int) -> float:
    """CPU of a zygote and of its reaped descendants: each solution's server fork (reaped when
    the solution ends) and, through it, the test children it reaped."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def run_pool(pool: SandboxPool, problems: list[Problem], code: str) -> dict:
    zygotes = [w.proc.pid for w in pool._workers]
    z0, p0, t0 = sum(map(process_cpu, zygotes)), time.process_time(), time.perf_counter()
    results = pool.grade_many([(p, code) for p in problems], all_tests=True)
    wall = time.perf_counter() - t0
    grader = time.process_time() - p0
    time.sleep(0.2)  # lets each zygote reap the server of its last solution
    tests = [t for r in results for t in r.tests]
    assert all(r.passed for r in results), [r for r in results if not r.passed][:1]
    assert [w.proc.pid for w in pool._workers] == zygotes, "a zygote was restarted"
    sandbox = sum(map(process_cpu, zygotes)) - z0  # zygotes + servers + children
    children = sum(t.cpu_time for t in tests)
    return {"tests": len(tests), "wall": wall, "rate": len(tests) / wall, "cpu_per_test": (grader + sandbox) / len(tests),
            "split": (grader / len(tests), (sandbox - children) / len(tests), children / len(tests))}


def run_baseline(problems: list[Problem], code: str, call: bool, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "solution.py")
        with open(path, "w") as f:
            f.write(code + (CALL_DRIVER if call else ""))

        def one(test) -> bool:
            out = subprocess.run([sys.executable, path], input=test.input, capture_output=True,
                                 text=True, cwd=tmp, timeout=60).stdout
            if call:
                return typed_return_matches(encode_return(json.loads(out)), test.output)
            return stdout_matches(out, test.output)

        tests = [t for p in problems for t in p.tests]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as ex:
            ok = list(ex.map(one, tests))
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert all(ok)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"tests": len(tests), "wall": wall, "rate": len(tests) / wall, "cpu_per_test": cpu / len(tests)}


def own_cpu(problems: list[Problem], code: str, call: bool) -> float:
    """CPU seconds per test of the solution itself, run in this process with no isolation."""
    compiled = compile(code, "solution.py", "exec")
    tests = [t for p in problems for t in p.tests]
    t0 = time.process_time()
    for t in tests:
        g = {"__name__": "__main__"}
        if call:
            exec(compiled, g)
            encode_return(g["Solution"]().add(*call_args(t.input, json.loads)))
        else:
            sys.stdin = io.StringIO(t.input)
            with redirect_stdout(io.StringIO()):
                exec(compiled, g)
    sys.stdin = sys.__stdin__
    return (time.process_time() - t0) / len(tests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=500, help="tests per program kind (default 500)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="pool slots and baseline "
                        "parallelism (default: all cores)")
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"cores: {os.cpu_count()}, workers: {args.workers}, tests per kind: {args.tests}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    with SandboxPool(workers=args.workers) as pool:
        print(f"isolation: {pool._workers[0].info}")
        for kind, code, call in (("stdin a+b", STDIN_CODE, False), ("call-based add", CALL_CODE, True)):
            problems = make_problems(args.tests, call, rng)
            pool.grade_many([(p, code) for p in problems[: args.workers]])  # warm up
            sb = run_pool(pool, problems, code)
            base = run_baseline(problems, code, call, args.workers)
            mine = own_cpu(problems, code, call)
            print(f"\n[{kind}]")
            print(f"  sandbox pool : {sb['rate']:7.1f} tests/s  ({sb['tests']} tests in {sb['wall']:.2f} s), "
                  f"CPU {sb['cpu_per_test'] * 1e3:.2f} ms/test (grader {sb['split'][0] * 1e3:.2f}, "
                  f"zygote + server {sb['split'][1] * 1e3:.2f}, child {sb['split'][2] * 1e3:.2f})")
            print(f"  fresh python : {base['rate']:7.1f} tests/s  ({base['tests']} tests in {base['wall']:.2f} s), "
                  f"CPU {base['cpu_per_test'] * 1e3:.2f} ms/test")
            print(f"  ratio        : {sb['rate'] / base['rate']:.1f}x tests/s, "
                  f"{base['cpu_per_test'] / sb['cpu_per_test']:.1f}x less CPU per test")
            print(f"  solution's own CPU {mine * 1e3:.3f} ms/test; sandbox overhead above it "
                  f"{(sb['cpu_per_test'] - mine) * 1e3:.2f} ms CPU/test "
                  f"(grader + zygote + child), {(sb['wall'] * args.workers / sb['tests'] - mine) * 1e3:.2f} "
                  f"ms of slot time/test")
        fifty = Problem.from_dict({"tests": [{"input": str(i), "output": str(i), "testtype": "stdin"}
                                             for i in range(50)]})
        t0 = time.perf_counter()
        wrong = pool.grade(fifty, "print(int(input()) + 1)")
        print(f"\n[early stop] wrong solution on a 50-test problem: verdict {wrong.verdict.value}, "
              f"{len(wrong.tests)} of {wrong.num_tests} tests ran, {(time.perf_counter() - t0) * 1e3:.1f} ms")
        t0 = time.perf_counter()
        full = pool.grade(fifty, "print(int(input()) + 1)", all_tests=True)
        print(f"[all tests]  same solution with all_tests=True: {len(full.tests)} tests ran, "
              f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
