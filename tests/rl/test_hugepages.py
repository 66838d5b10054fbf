"""rl.hugepages: the entry points' one re-execution with glibc's THP tunable, and what it buys."""
import os
import subprocess
import sys

import pytest

from rl.hugepages import TUNABLE, reexec_with_huge_pages, thp_mode, tunables_with_huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_madvise = pytest.mark.skipif(sys.platform != "linux" or thp_mode() != "madvise",
                                   reason=f"transparent huge pages are {thp_mode() or 'absent'!r}, not 'madvise'")


def test_tunables_are_added_to_the_callers_and_never_override_a_choice():
    assert tunables_with_huge_pages(None) == f"{TUNABLE}=1"
    assert tunables_with_huge_pages("") == f"{TUNABLE}=1"
    assert tunables_with_huge_pages("glibc.malloc.arena_max=2") == f"glibc.malloc.arena_max=2:{TUNABLE}=1"
    assert tunables_with_huge_pages(f"glibc.malloc.arena_max=2:{TUNABLE}=0") is None
    assert tunables_with_huge_pages(f"{TUNABLE}=1") is None


def run_python(code: str, tunables: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.split("\n")[:-1]


REEXEC = ("import os; from rl.hugepages import reexec_with_huge_pages as r; print('start', flush=True); r(); "
          "print(os.environ.get('GLIBC_TUNABLES'))")


@needs_madvise
def test_the_process_runs_again_once_with_the_tunable():
    # "start" twice: the code ran before and after the one re-execution, then stopped.
    assert run_python(REEXEC, None) == ["start", "start", f"{TUNABLE}=1"]
    assert run_python(REEXEC, "glibc.malloc.arena_max=4") == ["start", "start", f"glibc.malloc.arena_max=4:{TUNABLE}=1"]


def test_an_explicit_choice_is_kept_without_running_again():
    assert run_python(REEXEC, f"{TUNABLE}=0") == ["start", f"{TUNABLE}=0"]


def test_no_reexecution_outside_linux_thp_madvise(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr("rl.hugepages.thp_mode", lambda: "never")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    reexec_with_huge_pages()
    assert calls == []


# numpy madvises its own large arrays; switched off here, its buffer is plain malloc memory, as XLA's are.
FAULTS = ("import resource, numpy as np; np._core.multiarray._set_madvise_hugepage(False); "
          "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
          "a = np.ones(2**27, np.float32); f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
          "print(f1 - f0)")


@needs_madvise
def test_a_large_buffer_faults_in_far_fewer_pages():
    """512 MiB touched once: 131,072 faults of 4 KiB without the tunable, a few hundred of 2 MiB with it."""
    without = int(run_python(FAULTS, f"{TUNABLE}=0")[-1])
    with_thp = int(run_python(FAULTS, f"{TUNABLE}=1")[-1])
    assert without > 100_000
    assert with_thp * 8 < without, (with_thp, without)
