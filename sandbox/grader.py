"""Grade one solution on one zygote: run order, early stop, verdicts, comparison."""
from __future__ import annotations

import errno
import json
import signal
from dataclasses import dataclass

from .compare import FLOAT_TOLERANCE, json_size, stdout_matches, typed_return_matches
from .problem import Problem, Test, check_memory_mb, check_time_limit
from .results import GradeResult, TestResult, Verdict

# Bytes per test of each capture file: stdout, stderr, and the status (a call's JSON result).
OUTPUT_CAP = 64 << 20
MAX_THREADS = 64
ZYGOTE_GRACE = 10.0  # seconds a zygote may take beyond the time limit before it counts as hung


class WorkerCrashed(RuntimeError):
    """The zygote died or hung; the job can be re-run on a fresh one."""


@dataclass(frozen=True)
class Options:
    all_tests: bool = False  # False: stop at the first failing test (rewards)
    time_limit: float | None = None  # None: the problem's
    memory_mb: int | None = None  # None: the problem's
    float_tolerance: bool = False  # compare numbers with FLOAT_TOLERANCE instead of exactly
    output_cap: int = OUTPUT_CAP
    lcb_exact: bool = False  # reproduce lcb_runner's verdicts, quirks included (lcb_exact.py)

    def __post_init__(self):
        # Checked here, not when the child applies them: a bad limit is the caller's error.
        if self.time_limit is not None:
            check_time_limit(self.time_limit)
        if self.memory_mb is not None:
            check_memory_mb(self.memory_mb)
        if isinstance(self.output_cap, bool) or not isinstance(self.output_cap, int) or self.output_cap < 1:
            raise ValueError(f"output_cap: expected a positive number of bytes, got {self.output_cap!r}")


def cpu_seconds(time_limit: float) -> int:
    """A test's soft RLIMIT_CPU, set by the child (the hard limit is one second more)."""
    return max(1, int(time_limit + 0.999))


def run_order(problem: Problem) -> list[int]:
    """Hardest first, taking the longest input as the hardest, so early stop fails fast."""
    return sorted(range(len(problem.tests)), key=lambda i: -len(problem.tests[i].input))


def grade_on(worker, problem: Problem, code: str, opts: Options) -> GradeResult:
    """worker.send(op, **payload) / worker.recv(timeout) talk to a zygote and raise WorkerCrashed."""
    time_limit = problem.time_limit if opts.time_limit is None else opts.time_limit
    memory = (problem.memory_mb if opts.memory_mb is None else opts.memory_mb) << 20
    n = len(problem.tests)
    worker.send("load", code=code, fn_name=problem.fn_name, time_limit=time_limit,
                memory_bytes=memory, lcb_exact=opts.lcb_exact)
    loaded = worker.recv(time_limit + ZYGOTE_GRACE)
    if "compile_killed" in loaded:  # a compile is killed only by its time limit, or a crash
        if loaded["compile_killed"] == signal.SIGALRM:
            return GradeResult(Verdict.TIME_LIMIT, [], n, "compiling took longer than the time "
                               "limit", compile_time=time_limit)
        return GradeResult(Verdict.RUNTIME_ERROR, [], n,
                           f"the compiler crashed (signal {loaded['compile_killed']})")
    compile_time = round(loaded["compile_time"], 6)
    if "memory_error" in loaded:
        return GradeResult(Verdict.MEMORY_LIMIT, [], n, loaded["memory_error"], compile_time)
    if "syntax_error" in loaded:
        return GradeResult(Verdict.SYNTAX_ERROR, [], n, loaded["syntax_error"], compile_time)
    if opts.lcb_exact:
        return _grade_exact(worker, problem, opts, time_limit, memory, compile_time)
    order = run_order(problem)
    worker.send("run", count=n, time_limit=time_limit, memory_bytes=memory,
                output_cap=opts.output_cap, max_threads=MAX_THREADS)
    # Inputs go one at a time (zygote.op_run): tests 0 and 1 now, test k+2 on result k.
    for i in order[:2]:
        worker.send_input(problem.tests[i].input)
    results, stopped = [], False
    while not (run := worker.recv(time_limit + ZYGOTE_GRACE)).get("done"):
        if stopped:
            continue  # finished before the stop arrived: early stop ignores it
        i = order[run["index"]]
        if opts.all_tests and run["index"] + 2 < n:  # else sent after judging
            worker.send_input(problem.tests[order[run["index"] + 2]].input)
        verdict = judge(run, problem.tests[i], problem.call_based, time_limit, memory, opts)
        results.append(TestResult(i, verdict, round(run["wall"], 6), round(run["cpu"], 6),
                                  run["exit"], run["stderr"].decode("utf-8", "replace")[-1000:]))
        if verdict is not Verdict.ACCEPTED and not opts.all_tests:
            worker.send("stop")
            stopped = True
        elif not opts.all_tests and run["index"] + 2 < n:
            worker.send_input(problem.tests[order[run["index"] + 2]].input)
    failed = next((r.verdict for r in results if r.verdict is not Verdict.ACCEPTED), None)
    return GradeResult(failed or Verdict.ACCEPTED, results, n, compile_time=compile_time)


def _grade_exact(worker, problem: Problem, opts: Options, time_limit: float, memory: int,
                 compile_time: float) -> GradeResult:
    """LiveCodeBench-exact mode: one child runs the tests in the problem's order and reports a
    record per test (lcb_exact.run_all); judged here in order up to the first failure (or all
    records, with all_tests). A test without a record is one the process did not live through
    (lcb_runner: -1, every test fails)."""
    n = len(problem.tests)
    worker.send("run_all", count=n, time_limit=time_limit, memory_bytes=memory,
                output_cap=opts.output_cap, max_threads=MAX_THREADS)
    worker.send_input(json.dumps([t.input for t in problem.tests]))
    deadline = (time_limit + 1) * n + 5 + ZYGOTE_GRACE
    run = worker.recv(deadline)
    if run.get("done") or not worker.recv(ZYGOTE_GRACE).get("done"):
        raise WorkerCrashed("the zygote broke the exact mode's protocol")
    records = parse_records(run["status"], n) if run["ready"] else []
    results = []
    for i, test in enumerate(problem.tests):
        if i < len(records):
            verdict = judge_record(records[i], test, problem.fn_name is not None, opts)
        elif not run["ready"]:
            verdict = Verdict.SANDBOX_ERROR
        elif run["timed_out"]:
            verdict = Verdict.TIME_LIMIT
        elif run["status_size"] >= opts.output_cap:  # the records were cut at the cap, as judge counts it
            verdict = Verdict.OUTPUT_LIMIT
        else:
            verdict = Verdict.RUNTIME_ERROR
        stderr = run["stderr"].decode("utf-8", "replace")[-1000:]
        results.append(TestResult(i, verdict, round(run["wall"], 6), round(run["cpu"], 6),
                                  run["exit"], stderr))
        if verdict is not Verdict.ACCEPTED and (not opts.all_tests or i >= len(records)):
            break
    failed = next((r.verdict for r in results if r.verdict is not Verdict.ACCEPTED), None)
    return GradeResult(failed or Verdict.ACCEPTED, results, n, compile_time=compile_time)


def judge_record(record: dict, test: Test, call_based: bool, opts: Options) -> Verdict:
    """Verdict of one lcb_exact record, as lcb_runner gives it. The program shares the process
    that writes the records and can forge them: only the kind its test type takes counts, and a
    forged one must hold the right output itself (expected outputs never reach the child)."""
    if "lcb" in record:
        return Verdict.TIME_LIMIT if record["lcb"] == -3 else Verdict.RUNTIME_ERROR
    value = record.get("typed" if call_based else "out")
    if not isinstance(value, str):
        return Verdict.RUNTIME_ERROR
    if call_based:
        ok = typed_return_matches(value, test.output, test.unwrap)
    else:
        ok = stdout_matches(value, test.output, FLOAT_TOLERANCE if opts.float_tolerance else None)
    if ok is None:
        return Verdict.RUNTIME_ERROR
    return Verdict.ACCEPTED if ok else Verdict.WRONG_ANSWER


_RECORD_TYPES = {"out": str, "typed": str, "lcb": int}


def parse_records(raw: bytes, limit: int) -> list[dict]:
    """The lcb_exact child's first `limit` records (one per test), one JSON object a line, up to
    the first mangled one. The program can write its fd 3 too: only known keys and types count,
    each line checked as cheaply as parse_status checks a status, and lines past `limit` are never
    read (a flood of millions of tiny records cost the grader a minute and 2 GB)."""
    records, start = [], 0
    while len(records) < limit:
        end = raw.find(b"\n", start)
        line = raw[start:] if end < 0 else raw[start:end]
        record = parse_status(line, _RECORD_TYPES) if line else None
        if not record:
            break
        records.append(record)
        if end < 0:
            break
        start = end + 1
    return records


def judge(run: dict, test: Test, call_based: bool, time_limit: float, memory: int,
          opts: Options) -> Verdict:
    """Verdict of one test from what the zygote observed; only here do expected outputs appear."""
    if not run["ready"]:
        return Verdict.SANDBOX_ERROR
    status = parse_status(run["status"])
    code = run["exit"]
    # SIGXCPU counts only when the CPU limit was reached: the program can raise it itself
    # (tgkill), or lower its own RLIMIT_CPU, to pass a quick failure off as a time limit.
    cpu_limit_hit = code == -signal.SIGXCPU and run["cpu"] >= cpu_seconds(time_limit) - 0.1
    if run["timed_out"] or cpu_limit_hit or (code == -signal.SIGKILL and run["cpu"] >= time_limit):
        return Verdict.TIME_LIMIT
    # CPython ignores SIGXFSZ, so a flood usually ends as EFBIG with a capture file at the cap.
    sizes = run["stdout_size"], run["stderr_size"], run["status_size"]
    if code == -signal.SIGXFSZ or max(sizes) >= opts.output_cap:
        return Verdict.OUTPUT_LIMIT
    error = status.get("error")
    near_limit = run["maxrss"] >= 0.9 * memory
    if error == "MemoryError" or status.get("errno") == errno.ENOMEM or (
            code in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT, -signal.SIGKILL) and near_limit):
        return Verdict.MEMORY_LIMIT
    # (A stdin program's SystemExit, whatever its code, ends it normally in the child, as in
    # LiveCodeBench: it is judged on its output.)
    if code != 0 or error:
        return Verdict.RUNTIME_ERROR
    if call_based:
        if "typed" not in status:  # e.g. os._exit(0) inside the function
            return Verdict.RUNTIME_ERROR
        # The return value with its Python types (compare.encode_return).
        ok = typed_return_matches(status["typed"], test.output, test.unwrap)
        if ok is None:  # LCB's own comparison raised (e.g. a 2-element numpy array)
            return Verdict.RUNTIME_ERROR
    else:
        tolerance = FLOAT_TOLERANCE if opts.float_tolerance else None
        ok = stdout_matches(run["stdout"].decode("utf-8", "replace"), test.output, tolerance)
        if ok is None:  # LCB's comparison raised ("sNaN"): its verdict is a runtime error
            return Verdict.RUNTIME_ERROR
    return Verdict.ACCEPTED if ok else Verdict.WRONG_ANSWER


# The child's status (its fd 3) is written by the harness, but the solution can write it too.
# The zygote already passes on only the keys and types the harness writes; the grader does not
# rely on that and checks again: a forged status can fail a test, never crash the grader.
_STATUS_SKELETON = 100
_STATUS_TYPES = {"ok": bool, "typed": str, "error": str, "errno": int, "detail": str}


def parse_status(raw, types: dict = _STATUS_TYPES) -> dict:
    """The child's status: the known keys with the types the harness writes ({} if mangled)."""
    if not isinstance(raw, (bytes, str)) or not raw:
        return {}
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return {}
    # The harness writes one flat object of a few keys: its size (compare.json_size) is tiny.
    # A forged 64 MiB "[[],[],...]" would cost json.loads seconds and gigabytes (in the root
    # server, then here): refused by this cheap look first.
    if json_size(text, _STATUS_SKELETON) > _STATUS_SKELETON:
        return {}
    try:  # numbers the harness writes are errnos: a long digit string would parse in O(n^2)
        status = json.loads(text, parse_int=lambda s: int(s) if len(s) < 20 else None,
                            parse_float=lambda s: None)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return {}
    if not isinstance(status, dict):
        return {}
    return {k: v for k, v in status.items() if isinstance(v, types.get(k, ()))
            and not (k in ("errno", "lcb") and isinstance(v, bool))}
