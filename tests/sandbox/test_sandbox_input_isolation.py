"""A test's child holds its own input and no other test's (issue 12, item 3): inputs reach the
serving process one at a time, and what a test printed or returned never passes through it.
Checked from outside, as root, by reading each child's whole memory while it sleeps."""
import os
import re
import threading
import time
import uuid

import pytest

from sandbox import Verdict
from sandbox_helpers import call_problem, stdin_problem

SLEEP = 1.5  # seconds each test child sleeps, to be read while alive


def _memory_of(pid: int) -> bytes:
    """Every readable mapping of a process that is writable or anonymous, i.e. all but the
    files' text and constants (root reads even a non-dumpable process)."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            anonymous = len(fields) < 6 or fields[5].startswith("[")
            if "r" not in fields[1] or not ("w" in fields[1] or anonymous):
                continue
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                pass  # [vvar] and the like
    return b"".join(chunks)


def _children_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                if entry.isdigit() and f"Uid:\t{uid}\t" in f.read():
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def _scan_while_grading(pool, problem, code) -> tuple[object, dict]:
    uid = pool._workers[0].info.get("uid")
    if uid is None:
        pytest.skip("not root: no slot uid to find the children by")
    box = {}
    # A loaded machine may take a while to pass 3 MB in and out: the verdict must not hang on it.
    grading = threading.Thread(target=lambda: box.update(
        result=pool.grade(problem, code, all_tests=True, time_limit=SLEEP + 5)))
    grading.start()
    found = {}
    while grading.is_alive():
        for pid in _children_of_uid(uid):
            if not found.get(pid):  # read again until its input shows: it may not have read it yet
                time.sleep(0.2)  # let it read its input and reach its sleep
                try:
                    found[pid] = set(re.findall(rb"IN-([0-9a-f]{32})", _memory_of(pid)))
                except (FileNotFoundError, ProcessLookupError):
                    pass
        time.sleep(0.02)
    grading.join()
    return box["result"], found


@pytest.mark.parametrize("kind", ["stdin", "call"])
def test_a_child_holds_no_other_tests_input(pool, kind):
    secrets = [uuid.uuid4().hex for _ in range(3)]
    # Small, medium and large inputs: freed memory of each kind is reused differently.
    inputs = [f"IN-{s}" + "." * size for s, size in zip(secrets, (10, 100_000, 3_000_000))]
    if kind == "stdin":  # echo it, so the output passes back to the grader too
        code = f"import sys, time\nsys.stdout.write(input())\ntime.sleep({SLEEP})\n"
        problem = stdin_problem([(i + "\n", i) for i in inputs])
    else:
        code = f"import time\ndef echo(s):\n    time.sleep({SLEEP})\n    return s\n"
        problem = call_problem("echo", [(f'"{i}"', f'"{i}"') for i in inputs])
    result, found = _scan_while_grading(pool, problem, code)
    assert result.verdict is Verdict.ACCEPTED and len(result.tests) == 3, result
    scanned = [markers for markers in found.values() if markers]
    assert len(scanned) == 3, found  # each child was read, with its own input in it
    assert all(len(markers) == 1 for markers in scanned), found
    assert set().union(*scanned) == {s.encode() for s in secrets}, found  # each its own, not another's
