"""A pool of zygotes that grades (problem, code) pairs in parallel, from threads or asyncio."""
from __future__ import annotations

import asyncio
import dataclasses
import atexit
import functools
import os
import pickle
import queue
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import ipc
from .grader import Options, WorkerCrashed, grade_on
from .problem import Problem
from .results import GradeResult, Verdict

_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
# The zygote's whole environment: nothing of the grading process (tokens, keys) reaches it.
_ZYGOTE_ENV = {
    "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": _PACKAGE_PARENT,
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}
START_TIMEOUT = 120.0

# Slot uid = uid base + zygote pid (unique among live zygotes; pids stay under 2**22). The default
# lies outside the ranges that are usually handed out: real users (< 60000), systemd's dynamic
# users and container ranges (up to 1879048191), useradd's subordinate ranges for rootless
# containers (100000 up to 600100000 by default) and systemd's "foreign" range (from 2147352576);
# and it stays below 2**31, which some tools mishandle (signed uid_t).
UID_BASE_ENV = "CODERL_SANDBOX_UID_BASE"
DEFAULT_UID_BASE = 2_000_000_000
_PID_LIMIT = 1 << 22  # PID_MAX_LIMIT on 64-bit Linux


def resolve_uid_base(value: int | str | None = None) -> int:
    """The uid base to use: `value`, else $CODERL_SANDBOX_UID_BASE, else the default."""
    if value is None:
        value = os.environ.get(UID_BASE_ENV) or DEFAULT_UID_BASE
    try:
        base = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"sandbox uid base: not an integer: {value!r}") from None
    if not 65_536 <= base <= (1 << 32) - 2 - _PID_LIMIT:  # (uid_t)-1 is no uid
        raise ValueError(f"sandbox uid base {base}: must be in "
                         f"[65536, {(1 << 32) - 2 - _PID_LIMIT}]")
    return base


class Worker:
    """One zygote process, restarted on demand."""

    def __init__(self, uid_base: int = DEFAULT_UID_BASE):
        self.uid_base = uid_base
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> None:
        self.stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "utf8", "-m", "sandbox.zygote", "--uid-base",
             str(self.uid_base)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=_ZYGOTE_ENV, cwd="/", close_fds=True)
        try:
            self.info = ipc.recv(self.proc.stdout.fileno(), START_TIMEOUT)
        except (EOFError, TimeoutError, OSError, pickle.UnpicklingError) as e:
            self.stop()
            raise WorkerCrashed(f"zygote failed to start: {e}") from e

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # its children die with it (parent-death signal)
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None

    def send(self, op: str, **payload) -> None:
        if self.proc is None:
            self.start()
        try:
            ipc.send(self.proc.stdin.fileno(), (op, payload))
        except OSError as e:
            self.stop()
            raise WorkerCrashed(f"zygote lost during {op}: {e!r}") from e

    def send_input(self, text: str) -> None:
        """A test's input, as raw bytes after a frame (the server reads them into a buffer it
        zeroes after the test). surrogatepass: JSON strings may hold lone surrogates. As in
        LiveCodeBench, a call's arguments keep them (the child decodes them back) and reading
        one from stdin fails (there it cannot be encoded; here it is not valid UTF-8)."""
        data = text.encode("utf-8", "surrogatepass")
        try:
            ipc.send(self.proc.stdin.fileno(), ("input", {"size": len(data)}), raw=data)
        except OSError as e:
            self.stop()
            raise WorkerCrashed(f"zygote lost sending an input: {e!r}") from e

    def recv(self, timeout: float) -> dict:
        try:
            return ipc.recv(self.proc.stdout.fileno(), timeout)
        except (EOFError, TimeoutError, OSError, pickle.UnpicklingError) as e:
            self.stop()
            raise WorkerCrashed(f"zygote lost: {e!r}") from e


class SandboxPool:
    """`workers` zygotes (default: one per core). grade() is thread-safe; grade_async() awaits it
    on the pool's own threads; grade_many() grades a batch in parallel. `uid_base`: slot uids
    are uid_base + zygote pid (default: $CODERL_SANDBOX_UID_BASE, else 2 000 000 000)."""

    def __init__(self, workers: int | None = None, *, uid_base: int | None = None, **defaults):
        self.size = workers or os.cpu_count() or 1
        self.defaults = Options(**defaults)
        base = resolve_uid_base(uid_base)
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        self._workers = [Worker(base) for _ in range(self.size)]
        try:
            with ThreadPoolExecutor(self.size) as starter:  # start them side by side
                list(starter.map(Worker.start, self._workers))
        except WorkerCrashed:
            for w in self._workers:
                w.stop()
            raise
        for w in self._workers:
            self._idle.put(w)
        _warn_if_degraded(self._workers[0].info)
        self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="sandbox")
        self._closed = False

    def grade(self, problem: Problem | dict, code: str, **options) -> GradeResult:
        """Options (see grader.Options): all_tests, time_limit, memory_mb, float_tolerance."""
        if not isinstance(problem, Problem):
            problem = Problem.from_dict(problem)
        if not isinstance(code, str):
            raise TypeError(f"code: expected the program text (str), got {type(code).__name__}")
        opts = dataclasses.replace(self.defaults, **options)
        worker = self._idle.get()
        try:
            if self._closed:  # a worker used now would start a zygote that nothing stops
                raise RuntimeError("SandboxPool is closed")
            error = None
            for _ in range(2):  # a crashed or hung zygote is replaced and the job re-run once
                try:
                    return grade_on(worker, problem, code, opts)
                except WorkerCrashed as e:
                    error = e
                except BaseException:
                    worker.stop()  # unread replies would reach the next job: start afresh
                    raise
            return GradeResult(Verdict.SANDBOX_ERROR, [], len(problem.tests), str(error))
        finally:
            self._idle.put(worker)

    def grade_many(self, pairs, **options) -> list[GradeResult]:
        return list(self._executor.map(lambda pc: self.grade(*pc, **options), pairs))

    async def grade_async(self, problem: Problem | dict, code: str, **options) -> GradeResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self.grade, problem, code, **options))

    def close(self) -> None:
        """Let grades in progress finish, then stop the zygotes; later grades raise."""
        self._closed = True
        self._executor.shutdown(wait=True)
        # Each worker comes back to the queue when its grade ends: stopping it under a running
        # grade would make that grade fail oddly or restart the zygote.
        workers = [self._idle.get() for _ in self._workers]
        for w in workers:
            w.stop()
            self._idle.put(w)  # wakes grade() calls waiting for a worker: they see the pool closed

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _warn_if_degraded(info: dict) -> None:
    """The zygote's isolation report: say so when it fell back (docs/sandbox.md, Limits)."""
    missing = [name for name in ("root", "namespaces", "chroot", "views") if not info.get(name)]
    if missing:
        warnings.warn(f"sandbox isolation degraded: no {', '.join(missing)} (the zygote runs without "
                      "them; see docs/sandbox.md, 'Limits and known gaps')", RuntimeWarning, stacklevel=3)


_default: SandboxPool | None = None
_default_lock = threading.Lock()


def grade(problem: Problem | dict, code: str, **options) -> GradeResult:
    """Grade with a process-wide pool, started on first use and closed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SandboxPool()
            atexit.register(_default.close)
    return _default.grade(problem, code, **options)
