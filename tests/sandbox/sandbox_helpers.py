"""Helpers shared by the sandbox tests (imported by name: pytest puts this folder on sys.path)."""
import os
import time

import pytest

from sandbox import Problem

SECRET_ENV = "CODERL_TEST_SECRET"


def stdin_problem(tests, **kw) -> Problem:
    """tests: list of (input, expected output) pairs."""
    return Problem.from_dict({"tests": [{"input": i, "output": o, "testtype": "stdin"} for i, o in tests], **kw})


def call_problem(fn_name, tests, **kw) -> Problem:
    return Problem.from_dict({"fn_name": fn_name, "tests": [
        {"input": i, "output": o, "testtype": "functional"} for i, o in tests], **kw})


def sandbox_processes(pool, marker=None, uids=(), settle=3.0) -> list[int]:
    """Live (not zombie) processes running as a sandbox uid (the pool's, and `uids`), or with the
    marker in their command line. Polls up to `settle` seconds for them to go: a process killed by
    its parent-death signal exits asynchronously, a moment after its parent."""
    uids = ({w.info.get("uid") for w in pool._workers} | set(uids)) - {None}
    deadline = time.monotonic() + settle
    while True:
        found = [pid for pid in _live_pids() if _belongs(pid, uids, marker)]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _live_pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _belongs(pid, uids, marker) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    if fields.get("State", "").strip().startswith("Z"):
        return False
    uid = int(fields["Uid"].split()[0])
    return uid in uids or bool(marker and marker.encode() in cmdline)


def assert_untouched(pool, marker, tcp_server=None):
    """Nothing outside the sandbox changed: no marker file, no connection, no leftover process,
    zygotes alive and no secret leaked into them."""
    for d in ("/tmp", "/var/tmp", "/dev/shm", os.getcwd()):
        assert not os.path.exists(os.path.join(d, marker)), f"{d}/{marker} was written"
    if tcp_server is not None:
        with pytest.raises(BlockingIOError):
            tcp_server.accept()  # nothing connected
    assert sandbox_processes(pool, marker) == []
    for w in pool._workers:
        assert w.proc is not None and w.proc.poll() is None, "zygote died"
        with open(f"/proc/{w.proc.pid}/environ", "rb") as f:
            assert os.environ[SECRET_ENV].encode() not in f.read()
