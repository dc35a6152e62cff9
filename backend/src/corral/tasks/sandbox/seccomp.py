"""The sandbox's seccomp filter: a deny list compiled to a classic BPF program by libseccomp.

Docker-default style: every syscall is allowed except those that widen the kernel's attack
surface or reach outside the sandbox; a denied call fails with ``EPERM`` (``clone3`` with
``ENOSYS``, so the C library falls back to ``clone``, whose flags a filter can inspect).
A call from a foreign ABI (x32, i386 on x86_64) kills the process.

libseccomp (Debian ``libseccomp2``, a dependency of systemd/util-linux, present on every
Debian/Ubuntu host) is driven through ``ctypes``: no Python package to install, no compiler.
The program is built once per process (a few ms) and cached; ``filter_fd()`` hands bwrap a pipe
holding it for ``--seccomp FD``, and ``bpf_program()`` gives the raw bytes to code that loads it
itself (e.g. a session zygote's child, after it made its namespaces:
``prctl(PR_SET_NO_NEW_PRIVS)`` then ``seccomp(SECCOMP_SET_MODE_FILTER)``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import tempfile

# -- what is denied ------------------------------------------------------------------------------

DENIED_SYSCALLS: tuple[str, ...] = (
    # kernel attack surface with a long CVE history, not needed by scientific Python
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    # the kernel itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "quotactl",
    "lookup_dcookie",
    "vhangup",
    # file systems and namespaces: the sandbox's view of the world is fixed before it starts
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setns",
    "unshare",
    "fanotify_init",
    "open_by_handle_at",
    "name_to_handle_at",
    # other processes' memory; the process's execution domain (e.g. turning off ASLR)
    "personality",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # NUMA placement of other processes
    "migrate_pages",
    "move_pages",
)

# clone(2) with any of these flags makes a new namespace.
NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
AF_PACKET = 17
SOCK_RAW = 3
SOCK_TYPE_MASK = 0xF

# -- libseccomp through ctypes -------------------------------------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO_BASE = 0x00050000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7


def _errno_action(code: int) -> int:
    return SCMP_ACT_ERRNO_BASE | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(RuntimeError):
    """libseccomp is missing or refused to build the filter."""


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(
            f"libseccomp not found ({exc}); install the Debian package libseccomp2"
        ) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_exact_array.restype = ctypes.c_int
    lib.seccomp_rule_add_exact_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    ]  # fmt: skip
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


Cond = tuple[int, int, int, int]  # (argument index, comparison, datum a, datum b)


def _rule(lib: ctypes.CDLL, ctx: int, action: int, name: str, *conds: Cond) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # not a syscall on this architecture (e.g. iopl on aarch64)
        return
    arr = (_ArgCmp * max(1, len(conds)))(*(_ArgCmp(*c) for c in conds))
    rc = lib.seccomp_rule_add_exact_array(ctx, action, nr, len(conds), arr)
    if rc < 0:
        raise SeccompUnavailable(f"libseccomp refused the rule for {name}: {os.strerror(-rc)}")


@functools.cache
def bpf_program() -> bytes:
    """The compiled filter (``struct sock_filter[]`` bytes), built once per process."""
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        eperm = _errno_action(errno.EPERM)
        for name in DENIED_SYSCALLS:
            _rule(lib, ctx, eperm, name)
        _rule(lib, ctx, _errno_action(errno.ENOSYS), "clone3")  # flags live in memory: unseen
        for flag in NAMESPACE_FLAGS.values():
            _rule(lib, ctx, eperm, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        _rule(lib, ctx, eperm, "socket", (0, SCMP_CMP_EQ, AF_PACKET, 0))
        _rule(lib, ctx, eperm, "socket", (1, SCMP_CMP_MASKED_EQ, SOCK_TYPE_MASK, SOCK_RAW))
        with tempfile.TemporaryFile() as fh:
            rc = lib.seccomp_export_bpf(ctx, fh.fileno())
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            fh.seek(0)
            program = fh.read()
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise SeccompUnavailable(f"libseccomp exported a malformed program ({len(program)} bytes)")
    return program


def filter_fd() -> int:
    """A pipe's read end holding the program, for ``bwrap --seccomp FD`` (which reads to EOF).

    The caller passes it to bwrap (``pass_fds``) and closes it after starting bwrap.
    """
    program = bpf_program()
    read_fd, write_fd = os.pipe()
    try:
        if len(program) > 60_000:  # never block on a full pipe: the caller reads later
            raise SeccompUnavailable(f"seccomp program too large for a pipe ({len(program)} B)")
        os.write(write_fd, program)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


# What the self-test runs inside the sandbox: the filter is loaded and blocked calls fail.
PROBE_CODE = (
    "import ctypes, errno, platform\n"
    "assert 'Seccomp:\\t2' in open('/proc/self/status').read(), 'no seccomp filter'\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "def _denied(rc):\n"
    "    return rc == -1 and ctypes.get_errno() == errno.EPERM\n"
    "assert _denied(libc.unshare(0x10000000)), 'unshare(CLONE_NEWUSER) was allowed'\n"
    "nr = {'x86_64': 323, 'aarch64': 282}.get(platform.machine())\n"
    "assert nr is None or _denied(libc.syscall(nr, 1)), 'userfaultfd was allowed'\n"
    "del ctypes, errno, platform, libc, _denied, nr\n"
)
"""Put before the self-test's code by the bwrap backend: the filter is loaded and works."""
