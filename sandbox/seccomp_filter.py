"""The child's seccomp filter: an allow-list with a kill-process default.

The filter is built once per zygote with libseccomp and exported as raw BPF; each forked
child loads those bytes with prctl, which costs microseconds instead of the ~3 ms libseccomp
needs to generate the program.
"""
import ctypes
import errno
import tempfile

import pyseccomp as sc

from .linux import (CLONE_NS_ALL, CLONE_THREAD, PR_GET_NAME, PR_SET_NAME, PR_SET_NO_NEW_PRIVS,
                    PR_SET_SECCOMP, SECCOMP_MODE_FILTER, check, libc)

# What CPython, numpy, threads and ordinary file I/O inside the private directory need.
ALLOWED = """
read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2 lseek close close_range
fstat stat lstat newfstatat statx fstatfs statfs open openat access faccessat faccessat2 readlink
readlinkat getdents64 getcwd chdir fchdir mkdir mkdirat unlink unlinkat rename renameat renameat2
rmdir ftruncate truncate fsync fdatasync fcntl flock dup dup2 dup3 pipe pipe2 ioctl sendfile
copy_file_range fchmod chmod utimensat mmap munmap mprotect mremap brk madvise mincore msync
rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigsuspend sigaltstack
pause alarm setitimer getitimer futex futex_waitv set_robust_list get_robust_list set_tid_address
rseq exit exit_group getpid gettid getppid getuid geteuid getgid getegid getgroups getresuid
getresgid getpgrp getpgid getsid gettimeofday time clock_gettime clock_getres clock_nanosleep
nanosleep sched_yield
sched_get_priority_max sched_get_priority_min getpriority getrandom getrusage times sysinfo uname
getrlimit setrlimit poll ppoll select pselect6 epoll_create epoll_create1 epoll_ctl
epoll_wait epoll_pwait eventfd2 arch_prctl membarrier getcpu tgkill tkill capget
""".split()

# Denied with an errno, so the program sees a clean OSError (anything unlisted kills the process).
DENIED = """
execve execveat fork vfork ptrace process_vm_readv process_vm_writev unshare setns mount umount2
pivot_root chroot bpf keyctl add_key request_key personality kexec_load kexec_file_load
init_module finit_module delete_module kill socket socketpair memfd_create userfaultfd
perf_event_open setsid setpgid setuid setgid setreuid setregid setresuid setresgid setgroups
""".split()
ENOSYS = "io_uring_setup io_uring_enter io_uring_register clone3".split()
# Allowed on the calling process only (pid argument 0), EPERM on any other: without a uid drop
# (not root) the kernel would let the program act on the zygote and its other children.
SELF_ONLY = "prlimit64 sched_getaffinity sched_setaffinity sched_getparam sched_getscheduler".split()


def build_bpf() -> bytes:
    """Generate the BPF program; x32 and foreign-architecture syscalls kill the process."""
    f = sc.SyscallFilter(sc.KILL_PROCESS)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_NNP, 1)
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary search over syscall numbers: a shorter run per call
    for name in ALLOWED:
        f.add_rule(sc.ALLOW, name)
    for name in DENIED:
        f.add_rule(sc.ERRNO(errno.EPERM), name)
    for name in ENOSYS:  # glibc falls back from clone3 to clone, which we can inspect
        f.add_rule(sc.ERRNO(errno.ENOSYS), name)
    for name in SELF_ONLY:
        f.add_rule(sc.ALLOW, name, sc.Arg(0, sc.EQ, 0))
        f.add_rule(sc.ERRNO(errno.EPERM), name, sc.Arg(0, sc.NE, 0))
    # Namespace flags must stay clear even on a thread clone.
    mask = CLONE_THREAD | CLONE_NS_ALL
    f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, mask, CLONE_THREAD))
    f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    f.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, PR_SET_NAME))
    f.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, PR_GET_NAME))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(bpf: bytes) -> None:
    """Load a BPF program built by build_bpf into the calling (single-threaded) process."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "PR_SET_SECCOMP")
