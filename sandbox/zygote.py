"""The warm zygote: one per pool slot. It pre-imports what solutions may import (after the uid
drop and chroot, nothing can be imported from disk) and builds the seccomp filter once. Each
solution is served by a fork of it, which compiles the solution once and forks one locked-down
child per test.

It never sees expected outputs: it returns the child's raw stdout / return value and the grading
process compares. Run as `python -m sandbox.zygote`; it speaks ipc frames on fds 0 (requests)
and 1 (replies).
"""
from __future__ import annotations

import atexit
import builtins
import gc
import importlib
import linecache
import mmap
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
import warnings
import weakref

from . import ipc, rootfs, seccomp_filter
from . import lcb_exact as lcb_exact_mode
from .child import Job, global_names, prepare_zygote, run
from .linux import (CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, MNT_DETACH, MS_NODEV,
                    MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC, PR_SET_PDEATHSIG, check, libc)

STACK_BYTES = 1 << 30  # main-thread stack room for deep recursion; reserved at exec time
TMPFS_BYTES = 64 << 20  # disk budget of one test's private directory
TMPFS_INODES = 16_384  # and its file count: tmpfs inodes are kernel memory that `size` does not cap
STDERR_TAIL = 2000

# Imported ahead, for speed: solutions can import the whole standard library (rootfs).
PRELOAD = """
abc argparse array ast atexit base64 bisect binascii builtins calendar cmath codecs collections
collections.abc contextlib copy csv ctypes dataclasses datetime decimal difflib dis enum errno
fractions functools gc graphlib hashlib heapq hmac inspect io itertools json keyword locale math
mmap numbers operator os pprint queue random re reprlib resource secrets select signal socket
statistics string struct subprocess sys textwrap threading time timeit tokenize traceback types
typing unicodedata uuid warnings weakref zlib _strptime encodings.ascii encodings.latin_1
encodings.utf_16 encodings.utf_32 encodings.cp1252 numpy numpy.linalg numpy.fft numpy.random
numpy.polynomial sortedcontainers
_bz2 _crypt _curses _curses_panel _lzma _sqlite3 _ssl _uuid readline
""".split()
# (The last line: extension modules linked to shared libraries outside the read-only views of
# the standard library (rootfs); loaded here, their Python modules import from the views. Not
# `nis`, the deprecated NIS client: its Kerberos libraries would add 53 mappings to every fork.)



def _isolate() -> dict:
    """Private mount and network namespaces, with a small tmpfs on /tmp for test dirs. Not root:
    also a user namespace (root inside) and a pid namespace, in which this process goes on as a
    fork, pid 1: the slot has no uid of its own, so only the pid namespace keeps a program from
    naming the user's other processes."""
    info = {"root": os.geteuid() == 0, "namespaces": False, "chroot": False, "views": False}
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | (0 if info["root"] else CLONE_NEWUSER | CLONE_NEWPID)
    if libc.unshare(flags) != 0:
        return info
    if not info["root"]:  # be root inside our own user namespace: enough for mount and chroot
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        _enter_pid_namespace()
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return info
    try:
        sources = rootfs.open_views(rootfs.views())
    except (OSError, ImportError) as e:  # e.g. an interpreter this user cannot read
        sources = OSError(str(e))
    # The solutions' root: the read-only views and the mount point of the tests' own tmpfs.
    opts = b"size=1m,nr_inodes=1024,mode=0755"
    if libc.mount(b"tmpfs", rootfs.ROOT.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) != 0:
        return info
    info["namespaces"] = info["chroot"] = True
    try:
        if isinstance(sources, OSError):
            raise sources
        rootfs.build(sources)
        info["views"] = True
    except OSError as e:  # an empty root then: only what was pre-imported can be imported
        print(f"sandbox: no read-only views of the standard library: {e}", file=sys.stderr)
    return info


def _enter_pid_namespace() -> None:
    """Go on as the first child, pid 1 of the new pid namespace: a zygote that forks a server per
    solution cannot have its first server be pid 1 (the namespace ends when that one exits).
    The parent only waits and passes the exit status on; the child dies with it (and with the
    child, pid 1, everything in the namespace). Were the parent killed before the prctl, the
    child would still end: its requests pipe closes when the pool stops the worker."""
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        os._exit(max(0, os.waitstatus_to_exitcode(status)))
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")


def _preload() -> dict:
    """Import PRELOAD; return the modules solutions run in, with LiveCodeBench's prelude."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    prelude = {}
    for name in lcb_exact_mode.PRELUDE_STAR:  # LiveCodeBench's preamble
        module = sys.modules[name]
        exported = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        prelude.update({n: getattr(module, n) for n in exported if hasattr(module, n)})
        if name not in lcb_exact_mode.PRELUDE_NOT_BOUND:
            prelude[name] = module
    modules = {}
    for name in ("__main__", "solution"):
        modules[name] = types.ModuleType(name)
        modules[name].__dict__.update(prelude)
        modules[name].__dict__.update(__name__=name, __builtins__=builtins)
        # LiveCodeBench's reliability guard sets builtins.quit and .help to None before its
        # preamble's `from builtins import *` copies them, so `quit()` is a TypeError there. Only
        # the solution's namespace gets them; the harness's builtins stay as they are.
        modules[name].__dict__.update(quit=None, help=None)
    return modules


class Zygote:
    def __init__(self, requests: int, replies: int, uid_base: int):
        self.requests, self.replies = requests, replies
        sys.set_int_max_str_digits(0)  # 5000-digit answers; also lets compile() take big literals
        # Import before the tmpfs covers /tmp: a checkout (and its venv) may live under /tmp.
        self.modules = _preload()
        self.isolation = _isolate()
        prepare_zygote(self.modules)
        os.environ.clear()  # children inherit an empty environment
        self.bpf = seccomp_filter.build_bpf()
        # One uid per slot, unique among live zygotes (the pool picks the base: pool.resolve_uid_base).
        self.uid = uid_base + os.getpid() if self.isolation["root"] else None
        if not self.isolation["chroot"]:  # a host directory per test
            self.base = tempfile.mkdtemp(prefix="coderl-sbx-")
            os.chmod(self.base, 0o711)
        self.code = None
        self.names = frozenset()  # the code's global names (child.global_names)
        self.fn_name = None
        self.solution_class = False
        self.counter = 0
        self.next = None  # during a run: the grader's next message, once read (op_run)
        self.unread = False  # whether self.next is an input whose bytes are still in the pipe
        self.pid = os.getpid()
        # Set by a server while it compiles, so that its death then is the solution's verdict.
        self.compiling = mmap.mmap(-1, 1)  # shared with the forks
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        atexit._clear()  # children run atexit handlers of the solution only
        # weakref.finalize registered its atexit hook in this process, and _clear dropped it: let a
        # solution's finalize register it again, or its callbacks never run at exit.
        weakref.finalize._registered_with_atexit = False
        gc.freeze()  # children then do not touch (and copy) the pre-imported objects' pages

    def serve(self) -> None:
        ipc.send(self.replies, {"pid": self.pid, "uid": self.uid, **self.isolation})
        while True:
            # Each solution is served by a fork of this pristine zygote, which never reads a
            # request: the solution, its inputs and whatever was allocated for them die with
            # the fork, so no later child finds them in inherited (freed) memory - a sibling
            # sample's accepted source, say. Forked ahead: it waits for the next request.
            pid = os.fork()
            if pid == 0:
                self._serve_one_solution()
            _, status = os.waitpid(pid, 0)
            if self.compiling[0] and os.WIFSIGNALED(status):
                # Killed while compiling the solution (SIGALRM: its time limit): its verdict.
                self.compiling[0] = 0
                ipc.send(self.replies, {"compile_killed": os.WTERMSIG(status)})
            elif status != 0:  # the grader is gone (or a crash): end, as a lost zygote
                return

    def _serve_one_solution(self) -> None:
        """Never returns. Requests up to the end of one solution's run; exit status 0 when
        served, 1 when the grader went away or anything failed."""
        served = False
        try:
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or \
                    os.getppid() != self.pid:
                os._exit(1)
            # The tests' children must not get the flag: one could set it and then (not root:
            # same uid) kill this server, to have the zygote report a compile it never ran.
            self.compiling.madvise(mmap.MADV_DONTFORK)
            while not served:
                op, payload = ipc.recv(self.requests)
                if op != "stop":  # a stop that raced the end of a run has nothing left to stop
                    served = getattr(self, "op_" + op)(**payload)
        except EOFError:
            pass
        except BaseException:  # noqa: BLE001 - report it; the grader then restarts the zygote
            traceback.print_exc()
        os._exit(0 if served else 1)

    def _read_message(self, body: bool = True) -> bytearray | str:
        """The grader's next message during a run: a test's input, or "stop". Exit if the
        grader is gone. The input is read straight into a buffer of its own, which is zeroed
        once its test ends (_scrub): no later test finds it in memory it inherits. With
        body=False only its frame is read and the buffer is filled later (_read_body)."""
        try:
            op, payload = ipc.recv(self.requests)
            if op != "input":
                return op
            buffer = bytearray(payload["size"])
            if body:
                ipc.recv_into(self.requests, buffer)
            else:
                self.unread = True
            return buffer
        except EOFError:
            os._exit(1)

    def _read_body(self, buffer: bytearray) -> None:
        """The bytes of an input whose frame _wait read while a test ran."""
        self.unread = False
        try:
            ipc.recv_into(self.requests, buffer)
        except EOFError:
            os._exit(1)

    def op_load(self, code: str, fn_name: str | None, time_limit: float, memory_bytes: int,
                lcb_exact: bool = False) -> bool:
        """Compile the solution under its own limits; True when that ends it (a syntax error,
        or out of memory). Past the time limit the server dies of SIGALRM (a compile cannot be
        interrupted otherwise) and the zygote reports it (serve)."""
        self.code = None
        self.names = frozenset()
        self.fn_name = fn_name
        self.solution_class = False
        address_space = resource.getrlimit(resource.RLIMIT_AS)
        self.compiling[0] = 1
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, address_space[1]))
        signal.setitimer(signal.ITIMER_REAL, time_limit)  # SIGALRM's default action ends us
        start = time.monotonic()
        try:
            # All of it under the limits: the AST lcb_exact rewrites takes ~500x the text.
            if lcb_exact:  # the program text lcb_runner compiles
                code = lcb_exact_mode.transform(code, fn_name is not None)
            self.solution_class = "class Solution" in code  # LiveCodeBench decides by the text
            # Tracebacks in the child cannot read solution.py from disk: give them the source.
            linecache.cache["solution.py"] = (len(code), None, code.splitlines(True), "solution.py")
            with warnings.catch_warnings():  # a SyntaxWarning would print on the grader's console
                warnings.simplefilter("ignore")
                self.code = compile(code, "solution.py", "exec", dont_inherit=True)
            self.names = global_names(self.code)
            reply = {"ok": True}
        except MemoryError:
            reply = {"memory_error": "MemoryError while compiling"}
        except SystemError as e:  # CPython's tokenizer, when an allocation fails under the limit
            reply = {"memory_error": f"SystemError while compiling: {e}"}
        except (SyntaxError, ValueError, OverflowError, RecursionError) as e:
            reply = {"syntax_error": f"{type(e).__name__}: {e}"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            resource.setrlimit(resource.RLIMIT_AS, address_space)
            self.compiling[0] = 0
        ipc.send(self.replies, {**reply, "compile_time": time.monotonic() - start})
        return self.code is None

    def op_run(self, count: int, **limits) -> bool:
        """Run `count` tests, sending each result as soon as it is known, so the grader judges
        test k while test k+1 runs. Inputs come one at a time: the grader sends inputs 0 and 1,
        then, for each result k, the input k+2 or "stop" (first failure), which ends the run,
        killing a test already started; then {"done": True}. So the input of test k+1 is read
        only after test k's child was forked, and a child never holds another test's input."""
        self.next = self._read_message()
        for index in range(count):
            stdin, self.next = self.next, None
            if not isinstance(stdin, bytearray):  # "stop"
                break
            result = self._run_one(stdin, **limits)
            _scrub(stdin)
            if result is None:  # stopped while it ran
                break
            if self.unread:
                self._read_body(self.next)
            if index + 1 < count and self.next is None:  # the reply to the previous result
                self.next = self._read_message()
            self._send_result(index, result)
        ipc.send(self.replies, {"done": True})
        return True

    def _send_result(self, index: int, result: dict) -> None:
        captures = result.pop("captures")
        ipc.send(self.replies, {"index": index, **result}, files=captures)
        for fd, _, _ in captures.values():
            os.close(fd)

    def op_run_all(self, count: int, time_limit: float, **limits) -> bool:
        """LiveCodeBench-exact mode: one child runs every test (lcb_exact.run_all), with the
        inputs as one JSON list, under lcb_runner's overall timeout; one result."""
        inputs, self.next = self._read_message(), None
        if isinstance(inputs, bytearray):
            result = self._run_one(inputs, time_limit, exact=True,
                                   deadline=(time_limit + 1) * count + 5, **limits)
            _scrub(inputs)
            if result is not None:
                self._send_result(0, result)
        ipc.send(self.replies, {"done": True})
        return True

    def _run_one(self, stdin: bytearray, time_limit: float, memory_bytes: int, output_cap: int,
                 max_threads: int, exact: bool = False, deadline: float | None = None) -> dict | None:
        if self.isolation["chroot"]:  # the root is shared, read-only; the test's tmpfs is its own
            root, workdir = rootfs.ROOT, rootfs.ROOT + rootfs.WORKDIR
            _mount_test_dir(workdir, self.uid)
        else:
            self.counter += 1
            root = workdir = os.path.join(self.base, f"t{os.getpid()}-{self.counter}")
            os.mkdir(root, 0o700)
            if self.uid is not None:
                os.chown(root, self.uid, self.uid)
        call = self.fn_name is not None or exact  # the input as data, not on fd 0
        fds = [os.memfd_create(name) for name in ("stdin", "stdout", "stderr", "status")]
        if not call:
            os.write(fds[0], stdin)
            os.lseek(fds[0], 0, os.SEEK_SET)
        ready_r, ready_w = os.pipe()
        job = Job(self.code, self.fn_name, self.solution_class, stdin if call else bytearray(),
                  time_limit, memory_bytes, output_cap, max_threads, self.uid, root,
                  self.isolation["chroot"], os.getpid(), self.bpf, self.modules, exact, deadline,
                  self.names)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            run(job, (*fds, ready_w))
        try:
            os.setpgid(pid, pid)  # as the child does: the group exists whichever runs first
        except OSError:
            pass  # the child already exited or set it
        os.close(ready_w)
        unsent = [fds[1], fds[2], fds[3]]  # the captures: closed here, or once sent (_send_result)
        try:
            outcome = self._wait(pid, start + (deadline or time_limit))
            wall = time.monotonic() - start
            _, status, usage = os.wait4(pid, 0)
            if outcome == "stopped":
                return None
            captures = {"stdout": _capture(fds[1], output_cap),
                        "stderr": _capture(fds[2], STDERR_TAIL, tail=True),
                        "status": _capture(fds[3], output_cap)}
            unsent = []
            return {
                "exit": os.waitstatus_to_exitcode(status),
                "timed_out": outcome == "timed_out",
                "wall": wall,
                "cpu": usage.ru_utime + usage.ru_stime,
                "maxrss": usage.ru_maxrss * 1024,
                "ready": os.read(ready_r, 1) == b"R",
                **{name + "_size": os.fstat(fd).st_size for name, fd in
                   (("stdout", fds[1]), ("stderr", fds[2]), ("status", fds[3]))},
                "captures": captures,
            }
        finally:
            for fd in (fds[0], ready_r, *unsent):
                os.close(fd)
            if self.isolation["chroot"]:
                # Frees the whole tree at once, however deep or large the program made it
                # (rmtree can fail on a deep one, leaving it to fill the disk for later tests).
                check(libc.umount2(workdir.encode(), MNT_DETACH), f"umount {workdir}")
            else:
                shutil.rmtree(root, ignore_errors=True)

    def _wait(self, pid: int, deadline: float) -> str:
        """Wait for the child until the wall-clock deadline, then kill its whole group; read
        the grader's message meanwhile (the next input, or "stop"). Returns "exited",
        "timed_out" or "stopped"."""
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if self.next is None:
            poller.register(self.requests, select.POLLIN | select.POLLHUP)
        outcome = "exited"
        try:
            while True:
                left = deadline - time.monotonic()
                events = dict(poller.poll(max(left, 0) * 1000 + 1))
                if pidfd in events:  # looked at before the clock: a child that exited in time did
                    break
                if left <= 0:
                    outcome = "timed_out"
                    break
                if self.requests in events:
                    poller.unregister(self.requests)  # one message at most (op_run)
                    # Only its frame: its bytes (maybe hundreds of MB) wait until the test ends, so
                    # reading them never holds up the verdict or the kill.
                    self.next = self._read_message(body=False)
                    if self.next == "stop":
                        outcome = "stopped"
                        break
        finally:
            _kill(pid)
            os.close(pidfd)
        return outcome


def _kill(pid: int) -> None:
    """Kill the child and its process group. Until we reap it, neither id can be recycled."""
    for kill in (os.kill, os.killpg):
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _mount_test_dir(path: str, uid: int | None) -> None:
    """A tmpfs of the test's own, owned by the slot uid, with its size and file count capped."""
    opts = f"size={TMPFS_BYTES},nr_inodes={TMPFS_INODES},mode=0700"
    if uid is not None:
        opts += f",uid={uid},gid={uid}"
    check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts.encode()),
          f"mount tmpfs on {path}")


def _capture(fd: int, keep: int, tail: bool = False) -> tuple[int, int, int]:
    """What ipc.send sends of a capture file: (fd, offset, count), its first (or last) `keep`
    bytes. Only the grader reads them (the status, which the program can write too, with
    grader.parse_status): this server never holds what a test printed or returned."""
    size = os.fstat(fd).st_size
    offset = max(0, size - keep) if tail else 0
    return fd, offset, min(size, keep)


def _scrub(buffer: bytearray) -> None:
    """Zero a test's input before it is freed: the next test's child inherits freed memory."""
    buffer[:] = bytes(len(buffer))


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = STACK_BYTES if hard == resource.RLIM_INFINITY else min(hard, STACK_BYTES)
    if soft != want and os.environ.get("CODERL_ZYGOTE_STACK") != "1":
        # The main thread's stack room is fixed when a program is exec'd: re-exec once.
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))
        os.environ["CODERL_ZYGOTE_STACK"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    Zygote(requests, replies, int(sys.argv[sys.argv.index("--uid-base") + 1])).serve()
    os._exit(0)


if __name__ == "__main__":
    main()
