"""Back a process's large buffers with transparent huge pages: the entry points call this first.

XLA on CPU allocates every execution's temporaries afresh: one 5 GB buffer per update step of the
~100M benchmark model. glibc maps such a buffer with mmap, and the kernel faults it in and zeroes it
4 KiB at a time: 1.5M page faults and ~5 s of kernel time per step. glibc's `glibc.malloc.hugetlb=1`
tunable marks those mappings MADV_HUGEPAGE (transparent huge pages in "madvise" mode, the usual
default): 2 MiB faults, ~4,000 of them per update. glibc reads tunables only when a process
starts, so the process runs itself again once with the tunable set.
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` opts out.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """The kernel's THP mode ("always", "madvise" or "never"), "" where there is none to read."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def tunables_with_huge_pages(current: str | None) -> str | None:
    """GLIBC_TUNABLES with hugetlb=1 added, or None when the caller already chose a hugetlb value."""
    settings = [s for s in (current or "").split(":") if s]
    if any(s.split("=")[0] == TUNABLE for s in settings):
        return None
    return ":".join([*settings, f"{TUNABLE}=1"])


def reexec_with_huge_pages() -> None:
    """Run this process again with hugetlb=1 (once), where the kernel madvises THP; else do nothing."""
    # "always" needs no advice and "never" takes none.
    if sys.platform != "linux" or not sys.executable or thp_mode() != "madvise":
        return
    tunables = tunables_with_huge_pages(os.environ.get("GLIBC_TUNABLES"))
    if tunables is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})
