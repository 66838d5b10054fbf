"""LiveCodeBench-exact mode (`lcb_exact=True`): run a solution the way lcb_runner's grader does,
so that evaluation numbers compare with its leaderboard, quirks included (docs/sandbox.md,
"LiveCodeBench quirks").

As there, one process runs all of a solution's tests in order: a stdin program is wrapped in a
function (a last-statement `__name__ == '__main__'` guard inlined, imports hoisted), each test
calls it with a mocked `sys.stdin` and `sys.stdout` captured in a StringIO; call-based code is
run once and `Solution()` built once; the time limit is an alarm that raises an exception the
program can catch. The process is still the sandbox's locked-down child, and expected outputs
still never reach it: the parent compares. The child writes one JSON record per test to its fd
3 (`{"out": text}`, `{"typed": ...}`, or `{"lcb": -3 | -4}` for a time
limit or an error, after which LiveCodeBench stops); records missing at the end mean the
process died (LiveCodeBench: -1, every test failed).
"""
from __future__ import annotations

import ast
import builtins
import io
import json
import os
import signal
import sys
import types

from .compare import encode_return

# lcb_runner's preamble, prepended to every program: `from M import *` for each module, then
# `import M` for all but builtins and typing.
PRELUDE_STAR = ("string re datetime collections heapq bisect copy math random statistics itertools "
                "functools operator io sys json builtins typing").split()
PRELUDE_NOT_BOUND = ("builtins", "typing")
IMPORTS = ("".join(f"from {m} import *\n" for m in PRELUDE_STAR)
           + "".join(f"import {m}\n" for m in PRELUDE_STAR if m not in PRELUDE_NOT_BOUND)
           + "sys.setrecursionlimit(50000)\n")
TIME_LIMIT, RUNTIME_ERROR = -3, -4  # lcb_runner's result codes


def transform(code: str, call_based: bool) -> str:
    """The program text lcb_runner compiles: for stdin programs, a last `if __name__ ==
    '__main__':` (exactly that text) replaced by its body, then every statement but the
    top-level imports moved into `def wrapped_function():`; a program that does not parse
    stays as it is (the compile then fails)."""
    if call_based:
        return IMPORTS + "\n\n" + code
    try:
        tree = ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, ast.If) and ast.unparse(last.test).strip() == "__name__ == '__main__'":
            code = ast.unparse(tree.body[:-1]) + "\n" + ast.unparse(last.body)
    except MemoryError:  # under the compile's memory limit (lcb_runner has none): a verdict
        raise
    except Exception:  # noqa: BLE001 - as lcb_runner: leave the code
        pass
    try:
        tree = ast.parse(code)
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        function = ast.FunctionDef(name="wrapped_function", args=ast.arguments(
            posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]), body=body,
            decorator_list=[], lineno=-1)
        return IMPORTS + "\n" + ast.unparse(imports) + "\n" + ast.unparse(function)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001
        return code


class TimeoutException(Exception):
    pass


def _on_alarm(signum, frame):
    print("timeout occured: alarm went off")  # into the capture, as lcb_runner's handler does
    raise TimeoutException


def _guard() -> None:
    """What lcb_runner's reliability_guard changes that a program can notice."""
    builtins.quit = None
    for name in ("kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg "
                 "rename renames truncate replace unlink fchmod fchown chmod chown chroot "
                 "lchflags lchmod lchown getcwd chdir").split():
        setattr(os, name, None)
    import shutil
    import subprocess
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


class _Buffer:
    def __init__(self, text: str):
        self.data = text.encode("utf-8")

    def read(self, *args):
        return self.data

    def readline(self, *args):  # lcb_runner's: always the first line
        return self.data.split(b"\n")[0] + b"\n"


class _Stdin:
    """lcb_runner's mocked sys.stdin: read() and readlines() of the whole input, a buffer, and
    everything else from a StringIO (not iterable by lines)."""

    def __init__(self, text: str):
        self.text, self._io, self.buffer = text, io.StringIO(text), _Buffer(text)

    def read(self, *args):
        return self.text

    def readline(self, *args):
        return self._io.readline(*args)

    def readlines(self, *args):
        return self.text.split("\n")

    def __getattr__(self, name):
        return getattr(self._io, name)


def _call_with_mocks(method, text: str):
    from unittest.mock import mock_open, patch
    lines = iter(text.split("\n"))
    # lcb_runner stacks these as decorators, which mock enters bottom-up: read, readlines and
    # readline are patched on the *real* sys.stdin (which `from sys import stdin` bound), and
    # only then is sys.stdin replaced by the mock.
    with patch("sys.stdin.read", lambda *a: text), \
            patch("sys.stdin.readlines", lambda *a: text.split("\n")), \
            patch("sys.stdin.readline", lambda *a: next(lines)), \
            patch("sys.stdin", _Stdin(text)), patch("builtins.open", mock_open(read_data=text)):
        try:
            return method()
        except SystemExit:
            pass


def _error_code(e: BaseException) -> int:
    return TIME_LIMIT if "timeoutexception" in repr(e).lower() else RUNTIME_ERROR


def run_all(code: types.CodeType, fn_name: str | None, solution_class: bool, inputs: list[str],
            time_limit: float, report) -> None:
    """Run every test as lcb_runner does; report(record) after each. Returns after the first
    time limit or error, as lcb_runner does; BaseExceptions (SystemExit in call-based code,
    KeyboardInterrupt) propagate and end the process, as they kill lcb_runner's worker."""
    _guard()
    sys.set_int_max_str_digits(50_000)  # lcb_runner's own limit (the zygote lifts it)
    signal.signal(signal.SIGALRM, _on_alarm)
    alarm = lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)  # noqa: E731
    module = types.ModuleType("tmp_sol", "")
    try:
        alarm(time_limit)
        try:
            exec(code, module.__dict__)
            target = module.Solution() if solution_class else module
        finally:
            alarm(0)
        method = getattr(target, fn_name or "wrapped_function")
        if fn_name is not None:
            inputs = [[json.loads(line) for line in text.split("\n")] for text in inputs]
    except Exception:  # noqa: BLE001 - lcb_runner: "Error during testing", -4
        report({"lcb": RUNTIME_ERROR})
        return
    for test in inputs:
        if fn_name is None:
            real, sys.stdout = sys.stdout, io.StringIO()
            capture = sys.stdout  # what is read back, whatever the program rebinds sys.stdout to
            capture.close = lambda x: 1  # lcb_runner's capture: close takes an argument
            try:
                alarm(time_limit)
                _call_with_mocks(method, test)
                record = {}
            except Exception as e:  # noqa: BLE001
                record = {"lcb": _error_code(e)}
            finally:
                alarm(0)
                captured, sys.stdout = capture.getvalue(), real
            report(record or {"out": captured})
        else:
            try:
                alarm(time_limit)
                value = method(*test)
                alarm(0)
                record = {"typed": encode_return(list(value) if isinstance(value, tuple) else value)}
            except Exception as e:  # noqa: BLE001
                record = {"lcb": _error_code(e)}
            finally:
                alarm(0)
            report(record)
        if "lcb" in record:
            return
