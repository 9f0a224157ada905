"""OS-isolated tool execution with bubblewrap (Linux namespaces) and resource limits.

Every command runs with: a read-only view of the host's root, fresh /dev, /proc and a
private writable /tmp (its scratch), only the declared working directory bind-mounted
read-write, no network unless declared (a new, empty network namespace), its own PID,
IPC and UTS namespaces, dying with its parent; and limits on wall time, address space,
CPU seconds, file size and, through a pids cgroup where the host offers one, processes.

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
import tempfile
import time
import uuid
from functools import lru_cache
from pathlib import Path

from keel.errors import ErrorCode, SandboxError
from sandbox.base import KillReason, SandboxResult, SandboxSpec

log = logging.getLogger("keel.sandbox")

CGROUP_PIDS = Path("/sys/fs/cgroup/pids")


@lru_cache(maxsize=1)
def isolation() -> tuple[bool, str]:
    """Whether bubblewrap can isolate a command here, and if not, why not."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    probe = subprocess.run(
        [exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return False, f"bubblewrap cannot create namespaces here: {probe.stderr.strip()[:200]}"
    return True, "bubblewrap"


@lru_cache(maxsize=1)
def _interpreter_paths() -> tuple[str, ...]:
    """This Python's install trees that sit under /tmp, which the sandbox replaces with a
    private scratch; everything else is already visible through the read-only root."""
    import sys

    found = []
    for prefix in {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}:
        real = os.path.realpath(prefix)
        if real == "/tmp" or real.startswith("/tmp/"):
            found.append(real)
    return tuple(sorted(found))


def _pids_cgroup(max_procs: int) -> Path | None:
    """A fresh pids cgroup limited to ``max_procs``, where the host lets us make one."""
    if not CGROUP_PIDS.is_dir() or not os.access(CGROUP_PIDS, os.W_OK):
        return None
    group = CGROUP_PIDS / f"keel-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(max_procs))
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        return None
    return group


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

    def argv(self, spec: SandboxSpec, scratch: str) -> list[str]:
        cmd = [
            "bwrap",
            "--die-with-parent",
            "--new-session",
            "--unshare-all",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--bind", scratch, "/tmp",
            "--setenv", "HOME", "/tmp",
            "--setenv", "TMPDIR", "/tmp",
        ]  # fmt: skip
        for path in _interpreter_paths():  # /tmp is private: keep Python visible if it lives there
            cmd += ["--ro-bind", path, path]
        if spec.network:
            cmd.append("--share-net")
        if spec.workdir:
            workdir = str(Path(spec.workdir).resolve())
            cmd += ["--bind", workdir, workdir, "--chdir", workdir]
        for key, value in spec.env.items():
            cmd += ["--setenv", key, value]
        return [*cmd, "--", *spec.argv]

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
        with tempfile.TemporaryDirectory(prefix="keel-sbx-") as scratch:
            os.chmod(scratch, 0o1777)
            argv = self.argv(spec, scratch) if ok else list(spec.argv)
            return self._execute(argv, spec, Path(scratch), isolated=ok)

    def _execute(
        self, argv: list[str], spec: SandboxSpec, scratch: Path, *, isolated: bool
    ) -> SandboxResult:
        group = _pids_cgroup(spec.max_procs) if isolated else None
        limits = [
            (resource.RLIMIT_AS, spec.memory_mb * 1024 * 1024),
            (resource.RLIMIT_CPU, spec.cpu_s),
            (resource.RLIMIT_FSIZE, max(64 * 1024 * 1024, spec.output_cap * 4)),
            (resource.RLIMIT_CORE, 0),
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
