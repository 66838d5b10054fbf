"""Helpers shared by the sandbox tests (imported by name: pytest puts this folder on sys.path)."""
import os

import pytest

from sandbox import Problem

SECRET_ENV = "CODERL_TEST_SECRET"


def stdin_problem(tests, **kw) -> Problem:
    """tests: list of (input, expected output) pairs."""
    return Problem.from_dict({"tests": [{"input": i, "output": o, "testtype": "stdin"} for i, o in tests], **kw})


def call_problem(fn_name, tests, **kw) -> Problem:
    return Problem.from_dict({"fn_name": fn_name, "tests": [
        {"input": i, "output": o, "testtype": "functional"} for i, o in tests], **kw})


def sandbox_processes(pool, marker=None, uids=()) -> list[int]:
    """Live processes running as a sandbox uid (the pool's, and `uids`), or with the marker in
    their command line."""
    uids = ({w.info.get("uid") for w in pool._workers} | set(uids)) - {None}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, StopIteration):
            continue
        if uid in uids or (marker and marker.encode() in cmdline):
            found.append(int(entry))
    return found


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
