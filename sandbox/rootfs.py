"""The file system a solution sees: a read-only root holding read-only views of the interpreter's
standard library and of the packages solutions may import, and a per-test writable tmpfs at
/tmp (its working directory). Built once per zygote, in its private mount namespace; nothing
else of the host (the grader, the project, problem files) exists in it.
"""
from __future__ import annotations

import os
import sys
import sysconfig

from .linux import (MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REMOUNT, check, libc)

ROOT = "/tmp"  # where the zygote builds the root (its own private tmpfs): the chroot target
WORKDIR = "/tmp"  # inside the root: the test's writable tmpfs and working directory
OFFERED_PACKAGES = ("numpy", "sortedcontainers")  # site-packages a solution may import
# Flags of a source mount that a bind remount must keep (the kernel refuses to clear them in a
# user namespace): noexec, noatime, nodiratime, relatime (ST_* equal MS_* for these).
_KEPT_FLAGS = 8 | 1024 | 2048 | 4096


def views() -> list[str]:
    """Paths made visible read-only: the standard library (with lib-dynload), each offered
    package and its wheel's bundled shared libraries (numpy.libs)."""
    paths = [sysconfig.get_paths()["stdlib"]]
    for name in OFFERED_PACKAGES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            package = os.path.dirname(module.__file__)
            paths += [p for p in (package, package + ".libs") if os.path.isdir(p)]
    # A path under WORKDIR would be covered by each test's tmpfs (a venv under /tmp): its package
    # stays usable through the zygote's pre-import only.
    return [p for p in map(os.path.abspath, paths) if not (p + os.sep).startswith(WORKDIR + os.sep)]


def open_views(paths: list[str]) -> dict[str, int]:
    """O_PATH handles of the views, opened before ROOT is covered (a venv may live under it)."""
    return {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths}


def build(sources: dict[str, int]) -> None:
    """Mount the root on ROOT (already a fresh tmpfs): the views, bound read-only at their own
    paths; a site-packages directory inside the standard library is covered by an empty tmpfs
    first, so only the offered packages show; then everything read-only but the mount point
    of the tests' tmpfs."""
    stdlib = next(iter(sources))
    covers = []
    for site in {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}:
        if os.path.abspath(site).startswith(stdlib + os.sep):
            covers.append(os.path.abspath(site))
    os.makedirs(ROOT + WORKDIR, 0o755, exist_ok=True)
    for path, fd in sources.items():
        target = ROOT + path
        if path != stdlib and any(path.startswith(c + os.sep) for c in covers):
            cover = next(c for c in covers if path.startswith(c + os.sep))
            if not os.path.ismount(ROOT + cover):
                _mount_tmpfs(ROOT + cover)
        os.makedirs(target, 0o755, exist_ok=True)
        _bind_read_only(fd, target)
        os.close(fd)
    for cover in covers:
        if os.path.ismount(ROOT + cover):
            _remount_read_only(ROOT + cover, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _remount_read_only(ROOT, MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _mount_tmpfs(path: str) -> None:
    check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                     b"size=64k,nr_inodes=256,mode=0755"), f"mount tmpfs on {path}")


def _bind_read_only(fd: int, target: str) -> None:
    source = f"/proc/self/fd/{fd}".encode()
    check(libc.mount(source, target.encode(), None, MS_BIND, None), f"bind {target}")
    kept = os.statvfs(target).f_flag & _KEPT_FLAGS
    _remount_read_only(target, MS_BIND | MS_NOSUID | MS_NODEV | kept)


def _remount_read_only(path: str, flags: int) -> None:
    check(libc.mount(None, path.encode(), None, MS_REMOUNT | MS_RDONLY | flags, None),
          f"remount {path} read-only")
