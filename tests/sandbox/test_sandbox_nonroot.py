"""A whole pool as an unprivileged user (issue 12, item 4): the hostile suite run again as
nobody, the interpreter, the venv and the project made readable for that user in a private
mount namespace (here the interpreter lives under /root, mode 0700)."""
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

NOBODY = 65534
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Run as root in a fresh process: a private mount namespace where every directory that keeps
# nobody from a path it needs is covered by a tmpfs with only the needed entries bound back;
# then become nobody and run pytest.
RUNNER = textwrap.dedent("""
    import ctypes, os, subprocess, sys
    libc = ctypes.CDLL(None, use_errno=True)
    def check(ret, what):
        if ret != 0:
            raise OSError(ctypes.get_errno(), what)
    check(libc.unshare(0x20000), "unshare")  # CLONE_NEWNS
    check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None), "private")  # MS_REC|MS_PRIVATE
    needed = {}  # a directory nobody cannot enter -> the entries under it to bring back
    for path in sys.argv[2:]:
        parts = os.path.realpath(path).split("/")
        for i in range(2, len(parts)):
            directory = "/".join(parts[:i]) or "/"
            if not os.stat(directory).st_mode & 0o001:
                needed.setdefault(directory, set()).add(parts[i])
                break
    for directory, entries in needed.items():
        fds = {e: os.open(os.path.join(directory, e), os.O_PATH) for e in entries}
        check(libc.mount(b"tmpfs", directory.encode(), b"tmpfs", 0, b"mode=0755,size=1m"), directory)
        for entry, fd in fds.items():
            target = os.path.join(directory, entry)
            os.mkdir(target, 0o755)
            check(libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, 0x1000, None), target)
    os.setgroups([]), os.setgid(%(uid)d), os.setuid(%(uid)d)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    sys.exit(subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "no:randomly", sys.argv[1]], env=env).returncode)
""") % {"uid": NOBODY}


def test_hostile_suite_holds_with_a_non_root_pool():
    if os.geteuid() != 0:
        pytest.skip("not root: the whole sandbox suite already runs as this user")
    paths = [sys.executable, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], ROOT]
    run = subprocess.run([sys.executable, "-c", RUNNER, "tests/sandbox/test_sandbox_hostile.py", *paths],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "isolation degraded: no root" in run.stdout  # it did run without root
