"""OS-isolated tool execution with bubblewrap (Linux namespaces) and resource limits.

It must hold with root outside, which is how Keel runs in most containers. Every command
runs as uid 65534 in a new user namespace, with every capability dropped, no further user
namespaces (``--disable-userns``) and a seccomp filter (``sandbox.seccomp``); in its own
mount, PID, IPC, UTS and network namespaces, dying with its parent. It sees an empty root
with only the system's programs and libraries (``/usr``, a few files of ``/etc``), this
Python, a private ``/tmp`` (its scratch) and the one working directory it declares,
read-only unless it writes; never ``$HOME``, ``~/.ray``, Keel's store or ``keel.yaml``.
Its network namespace holds loopback only: the ``HOST:PORT`` destinations it declares are
reached through a relay (``sandbox.netproxy``), and nothing else is. Limits: wall time,
address space, CPU seconds, file size, and processes (a pids cgroup, v1 or v2, where the
host offers one; ``RLIMIT_NPROC`` besides).

When bubblewrap cannot run, ``BubblewrapSandbox`` refuses to run anything that writes and
says why; read-only commands run unconfined only when the caller allows it, with a
warning. It never silently runs unconfined.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from functools import lru_cache
from pathlib import Path

from opentelemetry import propagate

from keel.errors import ErrorCode, SandboxError
from keel.sandbox import seccomp
from keel.sandbox.base import KillReason, SandboxResult, SandboxSpec
from keel.sandbox.netproxy import HostRelay

log = logging.getLogger("keel.sandbox")

CGROUP_PIDS = Path("/sys/fs/cgroup/pids")


SANDBOX_UID = 65534
# Files of /etc a program may need; the rest of /etc (shadow, keys, keel.yaml) stays out.
ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "passwd",
    "group",
    "nsswitch.conf",
    "localtime",
    "hosts",
    "ssl/certs",
    "ca-certificates",
    "alternatives",
    "mime.types",
)
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")


def _base_flags() -> list[str]:
    return [
        "--die-with-parent",
        "--new-session",
        "--unshare-all",
        "--unshare-user",
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_UID),
        "--disable-userns",
        "--cap-drop", "ALL",
    ]  # fmt: skip


@lru_cache(maxsize=1)
def isolation() -> tuple[bool, str]:
    """Whether bubblewrap can isolate a command here (with every protection this module
    promises), and if not, why not."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    probe = subprocess.run(
        [exe, *_base_flags(), *_system_binds(), "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return False, f"bubblewrap cannot isolate here: {probe.stderr.strip()[:200]}"
    return True, "bubblewrap"


@lru_cache(maxsize=1)
def _system_binds() -> tuple[str, ...]:
    """Read-only binds for the system's programs and libraries and this Python."""
    binds: list[str] = []
    for path in SYSTEM:
        if os.path.islink(path):
            binds += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            binds += ["--ro-bind", path, path]
    for name in ETC:
        path = f"/etc/{name}"
        if os.path.exists(path):
            binds += ["--ro-bind", path, path]
    for prefix in sorted({sys.prefix, sys.base_prefix}):
        binds += ["--ro-bind", prefix, prefix]
        real = os.path.realpath(prefix)
        if real != prefix:
            binds += ["--ro-bind", real, real]
    return tuple(binds)


def _own_cgroup_v2() -> Path | None:
    """This process's cgroup on a unified (v2) hierarchy, if there is one."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").exists():
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return root / line[3:].lstrip("/")
    return None


def _user_processes() -> int:
    """How many processes this user runs now (what ``RLIMIT_NPROC`` counts against)."""
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += 1
    return count


def _pids_cgroup(max_procs: int) -> Path | None:
    """A fresh pids cgroup limited to ``max_procs``, where the host lets us make one: under
    this process's own cgroup on v2, or in the pids hierarchy on v1."""
    candidates: list[Path] = []
    own = _own_cgroup_v2()
    if own is not None:
        with contextlib.suppress(OSError):
            control = own / "cgroup.subtree_control"
            if "pids" not in control.read_text().split():
                control.write_text("+pids")
        candidates.append(own)
    if CGROUP_PIDS.is_dir():
        candidates.append(CGROUP_PIDS)
    for parent in candidates:
        if not os.access(parent, os.W_OK):
            continue
        group = parent / f"keel-{uuid.uuid4().hex[:12]}"
        try:
            group.mkdir()
            (group / "pids.max").write_text(str(max_procs))
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
            continue
        return group
    log.warning("no pids cgroup here: only RLIMIT_NPROC limits a tool's processes")
    return None


def _drop_cgroup(group: Path | None) -> None:
    if group is None:
        return
    for _ in range(50):
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.02)
    log.warning("could not remove cgroup %s", group)


def _read_capped(path: Path, cap: int) -> tuple[str, bool]:
    with open(path, "rb") as fh:
        data = fh.read(cap + 1)
    return data[:cap].decode(errors="replace"), len(data) > cap


class BubblewrapSandbox:
    """The default sandbox backend. ``allow_unconfined_reads`` lets read-only commands run
    without isolation where bubblewrap is unavailable (with a loud warning)."""

    name = "bubblewrap"

    def __init__(self, *, allow_unconfined_reads: bool = False) -> None:
        self.allow_unconfined_reads = allow_unconfined_reads

    @property
    def isolated(self) -> bool:
        return isolation()[0]

    def argv(
        self, spec: SandboxSpec, scratch: str, seccomp_fd: int, relay: HostRelay | None = None
    ) -> list[str]:
        cmd = [
            "bwrap",
            *_base_flags(),
            "--seccomp", str(seccomp_fd),
            *_system_binds(),
            "--dev", "/dev",
            "--proc", "/proc",
            "--bind", scratch, "/tmp",
            "--setenv", "HOME", "/tmp",
            "--setenv", "TMPDIR", "/tmp",
        ]  # fmt: skip
        for path in spec.read_paths:
            real = str(Path(path).resolve())
            cmd += ["--ro-bind", real, real]
        if spec.workdir:
            workdir = str(Path(spec.workdir).resolve())
            cmd += ["--bind" if spec.writable else "--ro-bind", workdir, workdir]
            cmd += ["--chdir", workdir]
        cmd += ["--remount-ro", "/"]  # the new root itself: nothing to write there
        for key, value in spec.env.items():
            cmd += ["--setenv", key, value]
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the caller's trace (a run's tool call), if it is in one
        if "traceparent" in carrier and "TRACEPARENT" not in spec.env:
            cmd += ["--setenv", "TRACEPARENT", carrier["traceparent"]]
        inner = relay.forwarder_argv(sys.executable, "/tmp") if relay is not None else []
        return [*cmd, "--", *inner, *spec.argv]

    def run(self, spec: SandboxSpec, *, writes: bool = True) -> SandboxResult:
        ok, why = isolation()
        if not ok:
            if writes or not self.allow_unconfined_reads:
                raise SandboxError(
                    f"refusing to run {spec.argv[0]!r} without isolation: {why}",
                    code=ErrorCode.SANDBOX,
                    retryable=False,
                )
            log.warning(
                "ISOLATION UNAVAILABLE (%s): running read-only %s unconfined", why, spec.argv
            )
        if not ok and spec.connect:
            raise SandboxError(
                f"refusing to give {spec.argv[0]!r} network without isolation: {why}",
                retryable=False,
            )
        with tempfile.TemporaryDirectory(prefix="keel-sbx-") as scratch:
            os.chmod(scratch, 0o1777)
            if not ok:
                return self._execute(list(spec.argv), spec, Path(scratch), isolated=False)
            fd = seccomp.program_fd()
            try:
                if not spec.connect:
                    argv = self.argv(spec, scratch, fd)
                    return self._execute(argv, spec, Path(scratch), isolated=True, keep=(fd,))
                with HostRelay(Path(scratch), spec.connect) as relay:
                    argv = self.argv(spec, scratch, fd, relay)
                    return self._execute(argv, spec, Path(scratch), isolated=True, keep=(fd,))
            finally:
                os.close(fd)

    def _execute(
        self,
        argv: list[str],
        spec: SandboxSpec,
        scratch: Path,
        *,
        isolated: bool,
        keep: tuple[int, ...] = (),
    ) -> SandboxResult:
        group = _pids_cgroup(spec.max_procs) if isolated else None
        limits = [
            (resource.RLIMIT_AS, spec.memory_mb * 1024 * 1024),
            (resource.RLIMIT_CPU, spec.cpu_s),
            (resource.RLIMIT_FSIZE, max(64 * 1024 * 1024, spec.output_cap * 4)),
            (resource.RLIMIT_CORE, 0),
            # Counted per user, so on top of what the user already runs; the kernel ignores it
            # for root (the pids cgroup is what holds there).
            (resource.RLIMIT_NPROC, _user_processes() + spec.max_procs + 8),
        ]

        def limit() -> None:  # runs in the child, before exec
            if group is not None:
                (group / "cgroup.procs").write_text(str(os.getpid()))
            for kind, value in limits:
                resource.setrlimit(kind, (value, value))

        out_path, err_path = (
            scratch.parent / f"{scratch.name}.out",
            scratch.parent / f"{scratch.name}.err",
        )
        killed: KillReason | None = None
        started = time.monotonic()
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    preexec_fn=limit,
                    start_new_session=True,
                    pass_fds=keep,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                )
                try:
                    proc.communicate(spec.stdin.encode() or None, timeout=spec.timeout_s)
                except subprocess.TimeoutExpired:
                    killed = "timeout"
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            code = proc.returncode
            if killed is None and code < 0:
                sig = -code
                killed = (
                    "cpu"
                    if sig == signal.SIGXCPU
                    else "memory"
                    if sig == signal.SIGKILL
                    else "signal"
                )
            stdout, t1 = _read_capped(out_path, spec.output_cap)
            stderr, t2 = _read_capped(err_path, spec.output_cap)
        finally:
            _drop_cgroup(group)
            for path in (out_path, err_path):
                with contextlib.suppress(OSError):
                    path.unlink()
        return SandboxResult(
            exit_code=code,
            stdout=stdout,
            stderr=stderr,
            truncated=t1 or t2,
            duration_s=time.monotonic() - started,
            killed=killed,
            isolated=isolated,
        )
