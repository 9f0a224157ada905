"""The seccomp filter every sandboxed tool runs under (built with libseccomp).

It refuses, with EPERM, the system calls a tool never needs and an escape always does:
new namespaces (``unshare``, ``setns``, ``clone`` with a ``CLONE_NEW*`` flag; ``clone3``
answers ENOSYS so libc falls back to ``clone``), mounting, ``pivot_root``, ``ptrace``,
kernel modules and ``kexec``, BPF and perf, the kernel keyring, ``userfaultfd``, handles
to arbitrary inodes, and the clock, swap, reboot and accounting calls. Everything else is
allowed: the namespaces, the capability drop and the limits do the rest.
"""

from __future__ import annotations

import errno
import os
import tempfile
from functools import lru_cache

import pyseccomp as seccomp

DENIED = (
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "fsopen",
    "fsmount",
    "fsconfig",
    "move_mount",
    "open_tree",
    "mount_setattr",
)
CLONE_NEW_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


@lru_cache(maxsize=1)
def program() -> bytes:
    """The compiled BPF program (the same for every run)."""
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    deny = seccomp.ERRNO(errno.EPERM)
    for name in DENIED:
        try:
            flt.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            continue  # a call this kernel or architecture does not have
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NEW_FLAGS:
        flt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


def program_fd() -> int:
    """A readable file descriptor holding the program, for bubblewrap's ``--seccomp FD``
    (the caller closes it once bubblewrap has started)."""
    read, write = os.pipe()
    data = program()
    if len(data) > 60_000:  # a pipe holds 64 KiB; the program is a few hundred bytes
        raise RuntimeError("seccomp program unexpectedly large")
    os.write(write, data)
    os.close(write)
    return read
