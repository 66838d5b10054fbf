"""What runs inside the forked child: lock the process down, then run the solution once.

The child receives the compiled solution and one test's input, never an expected output.
It reports through fds set up by the zygote: 0 stdin, 1 stdout, 2 stderr, 3 status (JSON),
4 "ready" pipe. The ready byte is written after the lock-down and before any solution code runs,
so a solution cannot pass its own failure off as a sandbox failure.
"""
from __future__ import annotations

import atexit
import _io
import fcntl
import json
import os
import resource
import signal
import sys
import threading
import traceback
import types
from dataclasses import dataclass

from . import lcb_exact, seccomp_filter
from .rootfs import WORKDIR
from .compare import encode_return
from .grader import cpu_seconds
from .linux import PR_SET_DUMPABLE, PR_SET_PDEATHSIG, check, libc
from .problem import call_args

SETUP_FAILED = 125
THREAD_STACK = 32 << 20  # default stack of solution threads (glibc would take RLIMIT_STACK)
RECURSION_LIMIT = 50_000  # what LiveCodeBench's preamble sets
TRACEBACK_FRAMES = 20


@dataclass
class Job:
    """Everything the child needs; built by the zygote, inherited through fork."""

    code: types.CodeType
    fn_name: str | None  # set: call-based
    solution_class: bool  # call-based: the code holds the text "class Solution"
    args_text: bytearray  # call-based arguments, one JSON value per line (UTF-8)
    time_limit: float
    memory_bytes: int
    output_cap: int
    max_threads: int
    uid: int | None  # drop to this uid (when running as root)
    root: str  # the chroot target (a read-only root), or else the private working directory
    chroot: bool
    zygote_pid: int
    bpf: bytes
    modules: dict  # "__main__" (stdin) and "solution" (call-based), pre-filled with the prelude
    lcb_exact: bool = False  # run every test as lcb_runner does (args_text: the inputs, JSON)
    cpu_limit: float | None = None  # seconds of CPU for the whole process (default: time_limit)
    global_names: frozenset = frozenset()  # what the code can bind as a global (global_names)


def _lock_down(job: Job, fds: tuple[int, ...]) -> None:
    # Own process group: the zygote kills the group. (setsid would too, but costs ~2 ms here:
    # a new session makes a new scheduler autogroup.)
    os.setpgid(0, 0)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 256) for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(len(fds), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if job.chroot:
        os.chroot(job.root)
        os.chdir(WORKDIR)
    else:
        os.chdir(job.root)
    if job.uid is not None:
        os.setgroups([])
        os.setgid(job.uid)
        os.setuid(job.uid)
    # After setuid: a credential change clears the parent-death signal.
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
    if os.getppid() != job.zygote_pid:
        os._exit(SETUP_FAILED)
    check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "PR_SET_DUMPABLE")
    cpu = cpu_seconds(job.cpu_limit or job.time_limit)
    limits = [
        (resource.RLIMIT_AS, job.memory_bytes),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, job.output_cap),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ]
    if job.uid is not None:  # counts every thread of the uid, which is this slot's alone
        limits.append((resource.RLIMIT_NPROC, job.max_threads))
    for res, soft, *hard in limits:
        resource.setrlimit(res, (soft, hard[0] if hard else soft))


def prepare_zygote(modules: dict) -> None:
    """Interpreter state every child starts from, set up once in the zygote (saves ~0.4 ms a
    test). The std streams are bound to fds 0-2, which the child points at its capture files;
    the zygote itself never uses them, so each child inherits them empty."""
    threading.stack_size(THREAD_STACK)
    sys.setrecursionlimit(RECURSION_LIMIT)
    sys.argv = ["solution.py"]
    # newline="\n" as CPython's own std streams on POSIX: input() keeps a "\r" (so does LCB).
    sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", newline="\n", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", newline="\n", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace",
                                       closefd=False, buffering=1)
    for module in modules.values():  # the prelude's `from sys import *` names
        module.__dict__.update(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr)


def _finish_like_an_interpreter() -> None:
    """What interpreter shutdown would do: wait for non-daemon threads, run atexit handlers."""
    main = threading.main_thread()
    for t in threading.enumerate():
        if t is not main and not t.daemon:
            t.join()
    atexit._run_exitfuncs()


def _flush(stream) -> None:
    closed = False
    try:  # as CPython's file_is_closed: an object without a working `closed` counts as open
        closed = bool(stream.closed)
    except Exception:  # noqa: BLE001
        pass
    if not closed:  # closing stdout at the end is legal and flushed it
        stream.flush()


def _flush_at_exit(out, err, module, names) -> BaseException | None:
    """Flush what interpreter shutdown flushes, in its order: the current sys.stdout and
    sys.stderr (a reopened fd 1, an io.TextIOWrapper, PyRival's FastIO), then files the
    program's globals hold (finalizing them closes, so flushes, them; errors there are
    ignored), then the original streams. Returns the first error of the std streams (CPython
    then exits with status 120). `names`: the globals to look at, those the code names (see
    global_names)."""
    error, seen = None, set()

    def flush(stream, keep_error: bool) -> None:
        nonlocal error
        if stream is None or id(stream) in seen:
            return
        seen.add(id(stream))
        try:
            _flush(stream)
        except BaseException as e:  # noqa: BLE001
            if keep_error and error is None:
                error = e

    flush(getattr(sys, "stdout", None), True)
    flush(getattr(sys, "stderr", None), True)
    for name in names:
        value = module.__dict__.get(name)
        # The C base of every io class (io.IOBase's subclasses too): an ABC's isinstance
        # caches per type, in this process only, at a cost.
        if isinstance(value, _io._IOBase):
            flush(value, False)
    flush(out, True)
    flush(err, True)
    return error


def global_names(code: types.CodeType) -> frozenset:
    """Every name the code and its nested functions and classes refer to: a superset of the
    globals the program binds (module level, or `global` in a function). Looking only at those
    at exit, not at the ~600 names of the prelude, leaves the prelude objects untouched: reading
    them would write their reference counts, a copy-on-write fault per page (~0.6 ms a test)."""
    names, stack = set(), [code]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return frozenset(names)


def _error(e: BaseException) -> dict:
    # numpy raises a MemoryError subclass; the grader keys on the base name.
    name = "MemoryError" if isinstance(e, MemoryError) else type(e).__name__
    return {"error": name, "errno": getattr(e, "errno", None)}


def _run_solution(job: Job, args: list | None) -> dict:
    name = "__main__" if job.fn_name is None else "solution"
    module = sys.modules[name] = job.modules[name]  # a fresh fork: no need to copy it
    try:
        exec(job.code, module.__dict__)
        if job.fn_name is None:
            _finish_like_an_interpreter()
            return {"ok": True}
        # LiveCodeBench's rule: the *text* "class Solution" anywhere in the code means
        # Solution().fn_name (a missing Solution is then a runtime error), else the module's.
        target = getattr(module.Solution(), job.fn_name) if job.solution_class \
            else module.__dict__[job.fn_name]
        value = target(*args)
        _finish_like_an_interpreter()
        # The value with the Python types LCB's `==` sees (nested tuples, int keys, numpy
        # scalars...); the grader rebuilds plain values from it. Never raises.
        return {"ok": True, "typed": encode_return(value)}
    except SystemExit as e:
        if job.fn_name is None:
            # LiveCodeBench swallows SystemExit around a stdin program whatever its code, and
            # judges the output: end as the interpreter would (threads joined, atexit run).
            if e.code is not None and not isinstance(e.code, int):
                try:  # what the interpreter prints for exit("msg"), if stderr still works
                    if sys.stderr is not None:  # (print(file=None) would go to stdout)
                        print(e.code, file=sys.stderr)
                except Exception:  # noqa: BLE001 - a closed or broken stderr: print nothing
                    pass
            _finish_like_an_interpreter()
            return {"ok": True}
        return {"error": "SystemExit", "detail": repr(e.code)[:200]}
    except BaseException as e:  # noqa: BLE001 - every failure of the program is a verdict
        # The innermost frames only: formatting 50 000 recursive frames takes seconds.
        traceback.print_exc(limit=-TRACEBACK_FRAMES)
        return _error(e)


def run(job: Job, fds: tuple[int, ...]) -> None:
    """Never returns. fds: stdin, stdout, stderr, status, ready-pipe write end."""
    try:
        _lock_down(job, fds)
        text = job.args_text.decode("utf-8", "surrogatepass")  # as pool.send_input encoded it
        try:
            # json.loads: no digit limit here, and big integers must reach the solution as ints.
            args = json.loads(text) if job.lcb_exact else \
                None if job.fn_name is None else call_args(text, json.loads)
            too_big = None
        except MemoryError as e:  # arguments that alone exceed the memory limit: the test's verdict
            args, too_big = None, e
        out, err = sys.stdout, sys.stderr  # kept: the solution may rebind sys.stdout
        seccomp_filter.install(job.bpf)
        os.write(4, b"R")
        os.close(4)
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"sandbox set-up failed: {e!r}\n".encode())
        os._exit(SETUP_FAILED)
    if too_big is not None:
        os.write(3, json.dumps(_error(too_big)).encode())
        os._exit(1)
    if job.lcb_exact:
        report = lambda record: os.write(3, (json.dumps(record) + "\n").encode())  # noqa: E731
        lcb_exact.run_all(job.code, job.fn_name, job.solution_class, args, job.time_limit, report)
        os._exit(0)
    status = _run_solution(job, args)
    error = _flush_at_exit(out, err, job.modules["__main__" if job.fn_name is None else "solution"],
                           job.global_names)
    if error is not None and status.get("ok"):
        status = _error(error)
    os.write(3, json.dumps(status).encode())
    os._exit(0 if status.get("ok") else 1)
