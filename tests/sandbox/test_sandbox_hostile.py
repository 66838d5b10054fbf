"""Hostile programs, one test per entry of docs/sandbox.md's list. Each checks the verdict and
that nothing outside the sandbox changed (assert_untouched)."""
import os
import signal
import textwrap

import pytest

from sandbox import Verdict
from sandbox_helpers import SECRET_ENV, assert_untouched, call_problem, stdin_problem

RE, WA, TL, ML, OL = (Verdict.RUNTIME_ERROR, Verdict.WRONG_ANSWER, Verdict.TIME_LIMIT,
                      Verdict.MEMORY_LIMIT, Verdict.OUTPUT_LIMIT)
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"


def grade(pool, code, tests=(("", "ok"),), **kw):
    return pool.grade(stdin_problem(list(tests)), textwrap.dedent(code), **kw)


def test_reading_expected_output_by_stack_walk_and_gc(pool, marker):
    # The expected output exists only in this process: the child finds no trace of it.
    # The program knows the answer's prefix only, like a policy that learned the format.
    code = """
    import gc, sys
    prefix = "EXPEC" + "TED-"
    def scan(obj):
        if isinstance(obj, bytes):
            obj = obj.decode("latin-1")
        if isinstance(obj, str) and prefix in obj and len(obj) > len(prefix):
            print(obj[obj.index(prefix):].split()[0]); sys.exit(0)
    f = sys._getframe()
    while f:
        for v in list(f.f_locals.values()) + list(f.f_globals.values()):
            scan(v)
        f = f.f_back
    for o in gc.get_objects():
        for v in (o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else [o]):
            scan(v)
    print("not found")
    """
    result = grade(pool, code, [("", "EXPECTED-" + marker)], all_tests=True)
    assert result.verdict is WA
    assert_untouched(pool, marker)


def test_monkeypatching_the_comparison(pool, marker):
    code = """
    import sys
    for name, mod in list(sys.modules.items()):
        if name.startswith("sandbox"):
            for attr in ("stdout_matches", "typed_return_matches", "judge", "parse_status"):
                if hasattr(mod, attr):
                    setattr(mod, attr, lambda *a, **k: True)
    print("anything")
    """
    assert grade(pool, code, [("", "something else")]).verdict is WA
    # Call-based: the child itself encodes the return value (compare.encode_return, imported
    # by sandbox.child), so a solution can patch the encoder too. Whatever it makes the child
    # send is only a claim about its own return value, judged in the parent like any other.
    patches = [
        "import sandbox.compare as c\nc.typed_return_matches = lambda *a, **k: True\n",
        "import sandbox.grader as g\ng.judge = lambda *a, **k: g.Verdict.ACCEPTED\n",
        "import sandbox.child as c\nc.encode_return = lambda v: '{\"opaque\": \"ok\"}'\n",
        "import sandbox.child as c\nc.encode_return = lambda v: 5\n",  # not even a string
        "import sandbox.compare as c\nc._encode = lambda v, d: {'npscalar': ['<i8', {'decimal': '1e999999999'}]}\n",
        "import sandbox.compare as c, json\nc.Opaque.__eq__ = lambda s, o: True\n"
        "c.encode_return = lambda v: json.dumps({'opaque': 'x'})\n",
    ]
    for patch in patches:
        code_call = patch + "def f(a):\n    return 0\n"
        assert pool.grade(call_problem("f", [("1", "1")]), code_call).verdict in (WA, RE), patch
    assert_untouched(pool, marker)


def test_proc_of_the_parent(pool, marker):
    code = """
    import os
    ppid = os.getppid()
    for path in (f"/proc/{ppid}/environ", f"/proc/{ppid}/mem", f"/proc/{ppid}/cmdline",
                 "/proc/1/environ", "/proc/self/environ"):
        try:
            print(open(path, "rb").read(100))
        except OSError as e:
            print(type(e).__name__)
    """
    # Without /proc in the chroot, every open fails: the program prints five error names.
    assert grade(pool, code, [("", "FileNotFoundError\n" * 5)]).verdict is Verdict.ACCEPTED
    assert_untouched(pool, marker)


def test_inherited_fds(pool, marker):
    code = """
    import os
    found = []
    for fd in range(3, 4096):
        try:
            os.fstat(fd)
            found.append(fd)
        except OSError:
            pass
    print(found)
    """
    # fd 3 is the child's own status channel; nothing of the zygote or the grader is open.
    assert grade(pool, code, [("", "[3]")]).verdict is Verdict.ACCEPTED
    assert_untouched(pool, marker)


def test_files_holding_answers(pool, marker, tmp_path):
    answers = tmp_path / "answers.json"
    answers.write_text("EXPECTED-" + marker)
    code = f"""
    import os
    try:
        print(open({str(answers)!r}).read())
    except OSError:
        print(sorted(os.listdir(".")), os.getcwd())
    """
    # The private directory is empty; nothing of the host file system but the read-only views
    # is visible (test_sandbox_stdlib).
    assert grade(pool, code, [("", "[] /tmp")]).verdict is Verdict.ACCEPTED
    assert_untouched(pool, marker)


@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET"])
def test_sockets(pool, marker, tcp_server, family):
    port = tcp_server.getsockname()[1]
    code = f"""
    import socket
    s = socket.socket(socket.{family}, socket.SOCK_DGRAM if socket.{family} == socket.AF_NETLINK else socket.SOCK_STREAM)
    s.connect(("127.0.0.1", {port}))
    """
    result = grade(pool, code)
    assert result.verdict is RE and "PermissionError" in result.tests[0].stderr
    assert_untouched(pool, marker, tcp_server)


@pytest.mark.parametrize("attack", [
    "os.execv('/bin/sh', ['sh', '-c', 'touch /tmp/{m}'])",
    "os.system('touch /tmp/{m}'); print(open('/tmp/{m}').read())",
    "import subprocess; subprocess.run(['touch', '/tmp/{m}'])",
    "os.posix_spawn('/bin/touch', ['touch', '/tmp/{m}'], {{}})",
])
def test_exec_system_subprocess(pool, marker, attack):
    result = grade(pool, "import os\n" + attack.format(m=marker))
    assert result.verdict is RE
    assert_untouched(pool, marker)


def test_ptrace_and_process_vm(pool, marker):
    code = LIBC + textwrap.dedent("""
    ppid = os.getppid()
    buf = ctypes.create_string_buffer(64)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
    results = [libc.ptrace(16, ppid, 0, 0), libc.ptrace(0, 0, 0, 0),
               libc.syscall(310, ppid, iov, 1, iov, 1, 0), libc.syscall(311, ppid, iov, 1, iov, 1, 0)]
    print(results, ctypes.get_errno())
    """)
    # Each is refused with EPERM (1).
    assert grade(pool, code, [("", "[-1, -1, -1, -1] 1")]).verdict is Verdict.ACCEPTED
    assert_untouched(pool, marker)


def test_namespaces_mount_bpf_keyctl_personality_kexec_modules(pool, marker):
    # unshare, setns, mount, umount2, bpf, keyctl, add_key, personality, kexec_load,
    # kexec_file_load, init_module, finit_module, delete_module, pivot_root, chroot
    numbers = [272, 308, 165, 166, 321, 250, 248, 135, 246, 320, 175, 313, 176, 155, 161]
    code = LIBC + textwrap.dedent(f"""
    out = []
    for nr in {numbers}:
        ret = libc.syscall(nr, 0x10000000, 0, 0, 0, 0)
        out.append((ret, ctypes.get_errno()))
    print(set(out))
    """)
    assert grade(pool, code, [("", "{(-1, 1)}")]).verdict is Verdict.ACCEPTED
    assert_untouched(pool, marker)


def test_io_uring(pool, marker):
    code = LIBC + textwrap.dedent("""
    params = ctypes.create_string_buffer(120)
    print(libc.syscall(425, 8, params), ctypes.get_errno())
    """)
    assert grade(pool, code, [("", "-1 38")]).verdict is Verdict.ACCEPTED  # ENOSYS
    assert_untouched(pool, marker)


def test_x32_abi_kills_the_process(pool, marker):
    code = LIBC + "print(libc.syscall(0x40000000 + 39))\n"  # getpid through the x32 ABI
    result = grade(pool, code, [("", "")])
    assert result.verdict is RE and result.tests[0].exit_code == -signal.SIGSYS
    assert_untouched(pool, marker)


def test_unlisted_syscall_kills_the_whole_process_from_a_thread(pool, marker):
    # reboot is on no list: the default action must be KILL_PROCESS, not KILL_THREAD, so the
    # main thread never gets to print.
    code = LIBC + textwrap.dedent("""
    import threading
    t = threading.Thread(target=libc.syscall, args=(169, 0, 0, 0, 0))
    t.start(); t.join()
    print("survived")
    """)
    result = grade(pool, code, [("", "survived")])
    assert result.verdict is RE and result.tests[0].exit_code == -signal.SIGSYS
    assert_untouched(pool, marker)


@pytest.mark.parametrize("attack", ["os.kill(-1, 9)", "os.kill(os.getppid(), 9)", "os.killpg(os.getpgid(os.getppid()), 9)"])
def test_kill_everything_and_the_parent(pool, marker, attack):
    result = grade(pool, f"import os\n{attack}\nprint('ok')")
    assert result.verdict is RE and "PermissionError" in result.tests[0].stderr
    assert_untouched(pool, marker)
    assert pool.grade(stdin_problem([("", "1")]), "print(1)").passed  # the grader still works


@pytest.mark.parametrize("attack", ["os.setsid()", "os.setpgid(0, 0)",
                                    "pid = os.fork()\nif pid == 0:\n    os.fork()\n    import time; time.sleep(100)"])
def test_escape_the_group_kill(pool, marker, attack):
    result = grade(pool, f"import os\n{attack}\nprint('ok')")
    assert result.verdict is RE
    assert_untouched(pool, marker)


def test_fork_bomb(pool, marker):
    result = grade(pool, f"import os\n# {marker}\nwhile True:\n    os.fork()")
    assert result.verdict is RE
    assert_untouched(pool, marker)


def test_thread_bomb(pool, marker):
    code = """
    import threading, time
    while True:
        threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
    """
    result = grade(pool, code)
    assert result.verdict is RE and "can't start new thread" in result.tests[0].stderr
    assert_untouched(pool, marker)


@pytest.mark.parametrize("code", ["while True: pass",
                                  "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass"])
def test_infinite_loops(pool, marker, code):
    result = grade(pool, code, time_limit=1.0)
    assert result.verdict is TL and result.tests[0].time < 3
    assert_untouched(pool, marker)


def test_sleeping_forever(pool, marker):
    result = grade(pool, "import time\ntime.sleep(10**6)", time_limit=1.0)
    assert result.verdict is TL and result.tests[0].cpu_time < 0.5
    assert_untouched(pool, marker)


def test_blocking_on_stdin(pool, marker):
    code = "import sys\nsys.stdin.read()\nsys.stdin.read()\nimport os\nos.read(0, 1)\nwhile True:\n    input()"
    result = grade(pool, code, [("some input", "ok")])
    assert result.verdict is RE and "EOFError" in result.tests[0].stderr and result.tests[0].time < 1.5
    assert_untouched(pool, marker)


@pytest.mark.parametrize("bomb", [
    "x = []\nwhile True:\n    x.append(bytearray(1 << 20))",
    "x = bytearray(1 << 34)",
    "import mmap\nm = mmap.mmap(-1, 1 << 34)",
    "import numpy as np\na = np.ones(1 << 32)",
    "import numpy as np\nxs = []\nwhile True:\n    xs.append(np.ones(1 << 24))",
])
def test_memory_bombs(pool, marker, bomb):
    result = grade(pool, bomb, memory_mb=512, time_limit=10)  # generous: a loaded machine is slow, not a bomb
    assert result.verdict is ML
    assert_untouched(pool, marker)


def test_deep_recursion(pool, marker):
    plain = grade(pool, "def f(n): return f(n + 1)\nf(0)")
    assert plain.verdict is RE and "RecursionError" in plain.tests[0].stderr
    # With no recursion limit the C stack or the address space runs out: a verdict, no crash.
    code = "import sys, functools\nsys.setrecursionlimit(10**9)\n@functools.lru_cache(None)\ndef f(n): return f(n + 1)\nf(0)"
    # generous time: on a loaded machine the recursion can need more than the default to fill 512 MB
    assert grade(pool, code, memory_mb=512, time_limit=20).verdict in (RE, ML)
    assert_untouched(pool, marker)


@pytest.mark.parametrize("stream", ["sys.stdout", "sys.stderr"])
def test_output_floods(pool, marker, stream):
    result = grade(pool, f"import sys\nwhile True:\n    {stream}.write('x' * (1 << 20))")
    assert result.verdict is OL and len(result.tests[0].stderr) <= 1000
    assert_untouched(pool, marker)


def test_filling_the_disk(pool, marker):
    code = f"""
    import os
    try:
        open("/tmp/{marker}", "w").write("x")
    except OSError:
        pass
    i = 0
    while True:  # many files, each below the file-size limit, until the private tmpfs is full
        with open(f"f{{i}}", "wb") as f:
            f.write(b"x" * (8 << 20))
        i += 1
    """
    result = grade(pool, code)
    assert result.verdict is RE and "No space left" in result.tests[0].stderr
    assert_untouched(pool, marker)
    assert grade(pool, "open('f', 'wb').write(b'x' * (32 << 20))\nprint('ok')").passed  # freed again


def test_files_left_for_a_later_test(pool, marker):
    code = """
    import os
    print("stale" if os.path.exists("state") else "fresh")
    open("state", "w").write("x")
    """
    result = grade(pool, code, [("1", "fresh"), ("22", "fresh"), ("333", "fresh")])
    assert result.passed and len(result.tests) == 3
    assert_untouched(pool, marker)


def test_secrets_in_the_environment(pool, marker):
    assert os.environ[SECRET_ENV]
    code = f"import os\nprint(os.environ.get({SECRET_ENV!r}, 'absent'), len(os.environ))"
    assert grade(pool, code, [("", "absent 0")]).verdict is Verdict.ACCEPTED
    assert grade(pool, code, [("", os.environ[SECRET_ENV] + " 0")]).verdict is WA
    assert_untouched(pool, marker)


def test_segfault_through_ctypes(pool, marker):
    result = grade(pool, "import ctypes\nctypes.string_at(0)")
    assert result.verdict is RE and result.tests[0].exit_code == -signal.SIGSEGV
    assert_untouched(pool, marker)
