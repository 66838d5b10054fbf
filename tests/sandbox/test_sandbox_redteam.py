"""Red-team programs beyond docs/sandbox.md's list: forging the child's result channel, reading
earlier solutions out of inherited memory, leaving the private directory unusable for later
tests, raw system calls the filter must catch, and the pool's own edges (shutdown, concurrency,
a lost zygote). Each checks the verdict and that nothing outside changed (assert_untouched)."""
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from sandbox import SandboxPool, Verdict
from sandbox_helpers import assert_untouched, call_problem, sandbox_processes, stdin_problem

AC, RE, WA, TL = Verdict.ACCEPTED, Verdict.RUNTIME_ERROR, Verdict.WRONG_ANSWER, Verdict.TIME_LIMIT
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"


def grade(pool, code, tests=(("", "ok"),), **kw):
    return pool.grade(stdin_problem(list(tests)), textwrap.dedent(code), **kw)


# ---- the result channel: fd 3 is the child's status file, and the solution can write it ----

@pytest.mark.parametrize("forged, verdict", [
    (b"[" * 200_000, RE),  # json.loads in the grader raised RecursionError
    (b'{"ok": true, "typed": 5}', RE),  # a number where the grader json-decodes a string
    (b'{"ok": true, "typed": {"opaque": 1}, "value": "\\"ok\\""}', RE),  # "value": no more
    (b'{"ok": true, "typed": "' + b"[" * 100_000 + b'"}', WA),
    # Decoding must stay cheap: a U dtype of 400 MB per element (was a MemoryError in the
    # grader), int() of a Decimal 1e999999999 or of a million-digit number (minutes).
    (b'{"ok": true, "typed": "{\\"ndarray\\": [\\"<U99999999\\", [2000], [' + b'\\"x\\", ' * 1999
     + b'\\"x\\"]]}"}', RE),  # a 2000-element array == "ok" is ambiguous: LCB raises
    (b'{"ok": true, "typed": "{\\"npscalar\\": [\\"<i8\\", {\\"decimal\\": \\"1e999999999\\"}]}"}', WA),
    (b'{"ok": true, "typed": "{\\"fraction\\": [' + b"7" * 1_000_000 + b', 3]}"}', WA),
    (b'{"ok": true, "typed": "{\\"ndarray\\": [\\"<i8\\", [1], [' + b"7" * 1_000_000 + b']]}"}', WA),
    (b'{"ok": true, "errno": ' + b"9" * 100_000 + b"}", RE),  # a slow int parse
    (b"\xff\xfe not json", RE),
    (b'["ok"]', RE),
])
def test_forged_status_cannot_crash_the_grader(pool, marker, forged, verdict):
    # Write a fake status, then leave before the harness writes the real one. The grader must
    # give a verdict (never raise), and a forged status is never better than an honest one.
    code = f"import os\nos.write(3, {forged!r})\nos._exit(0)\ndef f(a):\n    return a\n"
    assert pool.grade(call_problem("f", [("1", '"ok"')]), code).verdict is verdict
    stdin = pool.grade(stdin_problem([("", "ok")]), code)
    assert stdin.verdict is WA  # stdin verdicts come from the captured stdout: empty here
    assert_untouched(pool, marker)


@pytest.mark.parametrize("raw, call_verdict", [
    (b"[" * 200_000, RE), (b"\xff\xfe", RE), (b'{"ok": true, "errno": ' + b"9" * 100_000 + b"}", RE),
    (b'{"typed": ["x"]}', RE), (b'{"ok": true, "typed": 5}', RE), (b'{"ok": true, "error": {"x": 1}}', RE),
    (b'{"errno": "12"}', RE), (b'{"errno": 12.0}', RE), (b'"ok"', RE), (b"null", RE), (b"", RE), (None, RE),
    (5, RE), ('{"ok": true, "typed": "1"}', AC), (b'{"ok": true, "typed": "' + b"[" * 5000 + b'"}', WA),
])
def test_judge_does_not_rely_on_the_zygote_cleaning(raw, call_verdict):
    # judge() takes the child's status as untrusted on its own, as if the zygote passed it raw:
    # unknown keys and wrong types are dropped, never raised on ("ok" is not needed: the exit
    # status and the typed value decide).
    from sandbox.grader import Options, judge
    from sandbox.problem import Test
    run = {"ready": True, "status": raw, "exit": 0, "timed_out": False, "cpu": 0.0, "wall": 0.0,
           "maxrss": 0, "stdout": b"1", "stdout_size": 1, "stderr_size": 0, "status_size": 0}
    assert judge(run, Test("1", "1"), True, 1.0, 1 << 30, Options()) is call_verdict
    assert judge(run, Test("", "1"), False, 1.0, 1 << 30, Options()) is AC  # judged on stdout


def test_status_written_before_the_harness_and_stdout_redirected(pool, marker):
    code = """
    import os
    os.write(3, b'{"ok": true, "typed": "\\\\"ok\\\\""}')
    os.dup2(3, 1)
    print('{"ok": true}')
    """
    assert grade(pool, code).verdict is WA
    call = "import os\nos.write(3, b'{\"ok\": true, \"typed\": \"1\"}')\ndef f(a):\n    return 2\n"
    assert pool.grade(call_problem("f", [("1", "1")]), call).verdict is not AC
    assert_untouched(pool, marker)


# ---- memory inherited from the zygote ----

SCANNER = """
import ctypes, hashlib, os
libc = ctypes.CDLL(None, use_errno=True)
libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
r, w = os.pipe()
vec = ctypes.create_string_buffer(1)
WANT = {want!r}
found = set()

def readable(a):  # mapped (mincore) and readable (write to a pipe gives EFAULT otherwise)
    if libc.mincore(a, 4096, vec) != 0 or libc.write(w, a, 4096) != 4096:
        return False
    os.read(r, 4096)
    return True

base = id(object()) & ~0xfff
for start in range(max(1 << 16, base - (1 << 30)), base + (1 << 30), 1 << 20):
    data = b"".join(ctypes.string_at(a, 4096) if readable(a) else b"\\0" * 4096
                    for a in range(start, start + (1 << 20), 4096))
    for prefix in (b"SIBLING-", b"INPUT-"):
        i = data.find(prefix)
        while i >= 0:
            tail = data[i + len(prefix):i + len(prefix) + 12]
            if hashlib.sha256(tail).hexdigest() in WANT:
                found.add(prefix.decode())
            i = data.find(prefix, i + 1)
print(sorted(found))
"""


def test_earlier_solutions_and_inputs_are_not_in_inherited_memory(pool, marker):
    # GRPO grades sibling samples of one prompt one after another on the same zygote: a later
    # sample must not find an earlier one's source (or earlier problems' inputs) in memory it
    # inherited. The scanner knows only digests of the secrets, so it cannot find itself.
    source_secret, input_secret = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    victim = f"# SIBLING-{source_secret}\nprint(input()[::-1])\n"
    assert grade(pool, victim, [(f"INPUT-{input_secret}", f"{input_secret[::-1]}-TUPNI")]).passed
    want = {hashlib.sha256(s.encode()).hexdigest() for s in (source_secret, input_secret)}
    result = grade(pool, SCANNER.format(want=want), [("", "[]")], time_limit=8.0)
    assert result.verdict is AC, "an earlier solution or input was found in the child's memory"
    assert_untouched(pool, marker)


# ---- the private directory: every test starts with a fresh, empty, usable one ----

def test_deep_directory_tree_is_freed_for_the_next_test(pool, marker):
    # Deeper than the zygote's open-file limit (20 000 here): rmtree, which holds an fd per
    # level, left it (and the file at the bottom) behind, so later tests found the disk full.
    code = """
    import os
    try:
        for _ in range(21_000):
            os.mkdir("d")
            os.chdir("d")
    except OSError:  # the file-count cap of the test's tmpfs: free one for the file
        os.chdir("..")
        os.rmdir("d")
    open("big", "wb").write(b"x" * (48 << 20))
    print("ok")
    """
    assert grade(pool, code, time_limit=5.0).passed
    after = "import os\nprint(os.listdir('.'))\nopen('f', 'wb').write(b'x' * (60 << 20))\n"
    assert grade(pool, after, [("", "[]")]).passed
    assert_untouched(pool, marker)


def test_inode_bomb_is_capped(pool, marker):
    # tmpfs `size` does not count inodes (kernel memory): millions of empty directories ate
    # memory and then took the zygote longer to remove than the grader waits (sandbox_error).
    code = """
    import errno, os
    n = 0
    try:
        while True:
            os.mkdir(f"d{n}")
            n += 1
    except OSError as e:
        print(n < 100_000, e.errno == errno.ENOSPC)
    """
    start = time.monotonic()
    assert grade(pool, code, [("", "True True")], time_limit=10.0).passed
    assert time.monotonic() - start < 5
    assert grade(pool, "import os\nprint(os.listdir('.'))\nos.mkdir('x')", [("", "[]")]).passed
    assert_untouched(pool, marker)


# ---- raw system calls ----

INT80 = LIBC + """
import mmap
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes([0xb8, 20, 0, 0, 0, 0xcd, 0x80, 0xc3]))  # mov eax, 20 (i386 getpid); int 0x80; ret
print(ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))())
"""


def test_i386_abi_through_int80_kills_the_process(pool, marker):
    result = grade(pool, INT80)
    assert result.verdict is RE and result.tests[0].exit_code == -signal.SIGSYS
    assert_untouched(pool, marker)


def test_process_creation_by_raw_system_calls(pool, marker):
    code = LIBC + textwrap.dedent(f"""
    args = (ctypes.c_uint64 * 11)()
    out = []
    for flags in (0, 0x100, 0x100 | 0x800 | 0x10000, 0x10000000, 1 << 33):  # clone3: ENOSYS
        args[0] = flags
        out.append((libc.syscall(435, args, 88), ctypes.get_errno()))
    out.append((libc.syscall(56, 0x100 | 17, 0, 0, 0, 0), ctypes.get_errno()))  # clone, VM, no THREAD
    out.append((libc.syscall(58), ctypes.get_errno()))  # vfork
    for nr in (319, 323, 298):  # memfd_create, userfaultfd, perf_event_open
        out.append((libc.syscall(nr, 0, 0, 0, 0, 0), ctypes.get_errno()))
    print(out)  # {marker}
    """)
    expected = str([(-1, 38)] * 5 + [(-1, 1)] * 5)
    assert grade(pool, code, [("", expected)]).passed
    assert_untouched(pool, marker)


def test_resources_and_scheduling_of_other_processes(pool, marker):
    # prlimit, sched_setaffinity and tgkill are allowed for the program's own use; on the
    # zygote or pid 1 they are refused (seccomp: pid argument 0 only; tgkill: another uid).
    code = LIBC + textwrap.dedent("""
    import resource

    def tgkill(pid):  # the raw call (os.kill is denied outright), failing as os functions do
        if libc.syscall(234, pid, pid, 9) != 0:
            raise OSError(ctypes.get_errno(), "tgkill")

    out = []
    for pid in (os.getppid(), 1):
        for attempt in (lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (0, 0)),
                        lambda: os.sched_setaffinity(pid, {0}),
                        lambda: tgkill(pid)):
            try:
                attempt()
                out.append("done")
            except OSError as e:
                out.append(e.errno)
    raised = []
    for res in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC):
        soft, hard = resource.getrlimit(res)
        try:
            resource.setrlimit(res, (hard, resource.RLIM_INFINITY))
            raised.append(res)
        except (ValueError, OSError):
            pass
    print(out, raised)
    """)
    assert grade(pool, code, [("", "[1, 1, 1, 1, 1, 1] []")]).passed
    assert_untouched(pool, marker)


def test_resource_and_scheduler_calls_name_only_the_caller(pool, marker):
    # Without a uid drop (not root) the kernel would allow these on the zygote: the filter
    # allows pid 0 (the caller) only. Naming itself by its pid is refused too, which tells the
    # filter's EPERM from the kernel's (as root the kernel refuses other pids anyway).
    code = textwrap.dedent("""
    import os, resource
    out = []
    for pid in (os.getpid(), os.getppid()):
        for attempt in (lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE),
                        lambda: os.sched_setaffinity(pid, os.sched_getaffinity(0)),
                        lambda: os.sched_getaffinity(pid),
                        lambda: os.sched_getparam(pid),
                        lambda: os.sched_getscheduler(pid)):
            try:
                attempt()
                out.append("done")
            except OSError as e:
                out.append(e.errno)
    resource.prlimit(0, resource.RLIMIT_NOFILE, (32, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.sched_setaffinity(0, os.sched_getaffinity(0))
    print(out, resource.getrlimit(resource.RLIMIT_NOFILE), os.sched_getscheduler(0), os.sched_getparam(0))
    """)
    result = grade(pool, code, [("", "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1] (32, 64) 0 posix.sched_param(sched_priority=0)")])
    assert result.passed, result.tests[0].stderr
    assert_untouched(pool, marker)


def test_non_root_zygote_isolates_itself_in_a_pid_namespace():
    # The zygote's start-up as an unprivileged user (uid 65534; made dumpable again, as an
    # exec'd process would be, so it may write its own uid_map): it goes on as pid 1 of a new
    # pid namespace, and forks there as a server would; the exit status reaches the pool.
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    probe = textwrap.dedent("""
    import json, os
    from sandbox import zygote
    from sandbox.linux import PR_SET_DUMPABLE, libc
    os.chdir("/")
    os.setgroups([]), os.setgid(65534), os.setuid(65534)
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    info = zygote._isolate()
    servers = []
    for _ in range(2):  # the first server's exit must not end the namespace
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        servers.append(pid)
        os.waitpid(pid, 0)
    print(json.dumps({**info, "pid": os.getpid(), "servers": servers}), flush=True)
    os._exit(3)
    """)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert run.returncode == 3, run.stderr
    info = json.loads(run.stdout)
    if not info["namespaces"]:
        pytest.skip("no unprivileged user namespaces on this kernel")
    views = info.pop("views")  # (False where this user cannot read the interpreter's files)
    assert info == {"root": False, "namespaces": True, "chroot": True, "pid": 1, "servers": [2, 3]}
    assert isinstance(views, bool)


@pytest.mark.parametrize("attack", ["os.nice(-5)", "os.nice(1)", "os.mkfifo('f')",
                                    "os.symlink('/', 'l')", "os.link('/', 'l')"])
def test_unlisted_calls_kill(pool, marker, attack):
    result = grade(pool, f"import os\n{attack}\nprint('ok')")
    assert result.verdict is RE and result.tests[0].exit_code == -signal.SIGSYS
    assert_untouched(pool, marker)


# ---- output edge cases ----

@pytest.mark.parametrize("code, verdict", [
    ("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x00ok\\n')", WA),  # invalid UTF-8
    ("import os\nprint('ok')\nos._exit(0)", WA),  # never flushed: nothing was printed
    ("import os\nos.close(1)\nos.close(2)\nprint('ok')", RE),
    ("import sys\nsys.stderr.write('x' * (8 << 20))\nprint('ok')", AC),  # no newline, tail kept
])
def test_output_edge_cases(pool, marker, code, verdict):
    result = grade(pool, code)
    assert result.verdict is verdict and len(result.tests[0].stderr) <= 1000
    assert_untouched(pool, marker)


# ---- the pool ----

def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _state(pid: int) -> str:
    """One-letter process state; "X" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


def _alive(pid: int) -> bool:
    """Running, after a moment to die in (a zombie waiting for its reaper counts as dead)."""
    for _ in range(50):
        if _state(pid) in "ZX":
            return False
        time.sleep(0.02)
    return True


def _waiting_server(zygote: int) -> int:
    """The fork the zygote keeps ready for the next solution; the previous one may still be exiting."""
    deadline = time.monotonic() + 5
    while True:
        live = [c for c in _children(zygote) if _state(c) not in "ZX"]
        if len(live) == 1 or time.monotonic() > deadline:
            return live[-1]
        time.sleep(0.02)


def test_grade_during_and_after_close():
    problem = stdin_problem([("", "ok")])
    pool = SandboxPool(workers=1, time_limit=3.0)
    zygote = pool._workers[0].proc
    results = []
    runner = threading.Thread(target=lambda: results.append(
        pool.grade(problem, "import time\ntime.sleep(0.5)\nprint('ok')")))
    runner.start()
    time.sleep(0.2)
    servers = _children(zygote.pid)  # the fork serving the grade (root: not a sandbox uid)
    pool.close()  # waits for the grade in progress instead of killing its zygote under it
    runner.join()
    assert results[0].passed
    with pytest.raises(RuntimeError, match="closed"):
        pool.grade(problem, "print('ok')")  # it used to start a zygote that nothing stopped
    assert all(w.proc is None for w in pool._workers) and zygote.poll() is not None
    assert servers and not any(map(_alive, servers))


def test_many_concurrent_grade_async(pool, marker):
    problem = stdin_problem([("3", "9"), ("4", "16")])

    async def main():
        return await asyncio.gather(*[
            pool.grade_async(problem, f"n = int(input())\nprint(n * n{' + 1' * (i % 2)})")
            for i in range(24)])
    results = asyncio.run(main())
    assert [r.verdict for r in results] == [AC, WA] * 12
    assert_untouched(pool, marker)


def test_job_rerun_when_the_process_serving_it_dies(pool):
    # The zygote serves each solution from a fork; losing that fork loses no job either.
    worker = pool._workers[0]
    old_pid = worker.proc.pid

    server = _waiting_server(old_pid)
    killer = threading.Timer(0.5, os.kill, (server, signal.SIGKILL))
    killer.start()
    result = pool.grade(stdin_problem([("", "ok")]), "import time\ntime.sleep(1)\nprint('ok')",
                        time_limit=3.0)
    killer.join()
    assert result.passed and worker.proc.pid != old_pid
    assert sandbox_processes(pool) == [] and not _alive(server)


# ---- slot uids: base + zygote pid, clear of the subordinate uid ranges of rootless containers ----

UID_PROGRAM = "import os, threading\nt = threading.Thread(target=print, args=(os.getuid(), os.getgid()))\nt.start()\nt.join()\n"


def test_slot_uid_default_base(pool):
    from sandbox.pool import DEFAULT_UID_BASE
    worker = pool._workers[0]
    if worker.info["uid"] is None:
        pytest.skip("not root: no uid drop")
    assert worker.info["uid"] == DEFAULT_UID_BASE + worker.proc.pid
    uid = worker.info["uid"]
    assert pool.grade(stdin_problem([("", f"{uid} {uid}")]), UID_PROGRAM).verdict is AC


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_slot_uid_base_is_configurable(monkeypatch, how):
    base = 3_000_000_000  # above 2**31: setuid, the tmpfs owner and RLIMIT_NPROC work there too
    if how == "environment":
        monkeypatch.setenv("CODERL_SANDBOX_UID_BASE", str(base))
    with SandboxPool(workers=1, time_limit=3.0, **({"uid_base": base} if how == "argument" else {})) as p:
        worker = p._workers[0]
        if worker.info["uid"] is None:
            pytest.skip("not root: no uid drop")
        uid = worker.info["uid"]
        assert uid == base + worker.proc.pid
        assert p.grade(stdin_problem([("", f"{uid} {uid}")]), UID_PROGRAM).verdict is AC
        assert p.grade(stdin_problem([("", "x")]), "open('f', 'w').write('x')\nprint(open('f').read())").verdict is AC
        assert sandbox_processes(p) == []


@pytest.mark.parametrize("value", [0, 1000, 65_535, (1 << 32) - 1, "many", -5])
def test_slot_uid_base_refused(monkeypatch, value):
    with pytest.raises(ValueError, match="uid base"):
        SandboxPool(workers=1, uid_base=value)
    monkeypatch.setenv("CODERL_SANDBOX_UID_BASE", str(value))
    with pytest.raises(ValueError, match="uid base"):
        SandboxPool(workers=1)
