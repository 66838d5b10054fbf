"""Fourth red-team pass: a flood of tiny lcb_exact records, a numpy dtype alias that warns in the
grading process, and weakref.finalize callbacks at exit. See docs/sandbox.md."""
import resource
import time
import warnings

import pytest

from sandbox import Verdict
from sandbox.compare import typed_return_matches
from sandbox_helpers import stdin_problem

ADD = stdin_problem([("3 4\n", "7\n"), ("10 20\n", "30\n")])
GOOD = "a, b = map(int, input().split())\nprint(a + b)\n"


def test_a_flood_of_exact_mode_records_is_read_no_further_than_the_tests(pool):
    """1.6M one-line records on fd 3: the grader parsed every one (60 MiB took it a minute of CPU
    and 2 GB); it now reads one per test."""
    start, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    result = pool.grade(ADD, 'import os\nos.write(3, b\'{"lcb":0}\\n\' * 1_600_000)\nos._exit(0)\n', lcb_exact=True)
    assert result.verdict is Verdict.RUNTIME_ERROR
    assert resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu < 3 and time.monotonic() - start < 30
    assert pool.grade(ADD, GOOD, lcb_exact=True).verdict is Verdict.ACCEPTED


@pytest.mark.parametrize("value", ['{"npscalar": ["a", 7]}', '{"ndarray": ["a", [1], [7]]}'])
def test_only_dtype_strings_numpy_writes_are_rebuilt(value):
    """np.dtype("a") is a deprecated alias: it warned in the grading process (an error under -W error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert typed_return_matches(value, "7") is False
        assert typed_return_matches('{"npscalar": ["<f8", 7.0]}', "7") is True  # what the child writes


def test_weakref_finalize_runs_at_exit(pool):
    """The zygote's atexit._clear() dropped the hook weakref.finalize registers once per process, so a
    solution's finalizers never ran (real Python prints the answer)."""
    code = "import weakref\nclass A: pass\na, b = map(int, input().split())\nx = A()\nweakref.finalize(x, print, a + b)\n"
    assert pool.grade(ADD, code).verdict is Verdict.ACCEPTED
