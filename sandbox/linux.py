"""The Linux constants (from the kernel's uapi headers) and the libc handle of the lock-down."""
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)

CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# Every namespace flag: newtime, newns, newcgroup, newuts, newipc, newuser, newpid, newnet.
CLONE_NS_ALL = 0x00000080 | CLONE_NEWNS | 0x02000000 | 0x04000000 | 0x08000000 | CLONE_NEWUSER \
    | CLONE_NEWPID | CLONE_NEWNET

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME, PR_GET_NAME = 15, 16
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
PR_SET_NO_NEW_PRIVS = 38

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 0x1000, 0x4000, 0x40000
MNT_DETACH = 2


def check(ret: int, what: str) -> None:
    """Raise OSError with libc's errno when a libc call returned non-zero."""
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
