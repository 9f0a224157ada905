"""The bubblewrap sandbox, for real: namespaces, limits, and the host left unchanged."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.errors import SandboxError
from keel.runtime.tracing import in_run_trace, run_traceparent
from keel.sandbox.base import Sandbox, SandboxSpec
from keel.sandbox.bwrap import CGROUP_PIDS, BubblewrapSandbox, isolation

pytestmark = pytest.mark.skipif(not isolation()[0], reason=isolation()[1])
PY = sys.executable


@pytest.fixture
def box() -> BubblewrapSandbox:
    sandbox = BubblewrapSandbox()
    assert isinstance(sandbox, Sandbox) and sandbox.isolated
    return sandbox


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host's loopback that a sandboxed tool must not reach."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    srv.close()
    assert not accepted, "a sandboxed process reached the host network"


def test_no_network_unless_declared(box: BubblewrapSandbox, listener: int) -> None:
    code = f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=2)"
    result = box.run(SandboxSpec(argv=[PY, "-c", code]))
    assert result.exit_code != 0 and "ConnectionRefusedError" in result.stderr


def test_network_when_declared(box: BubblewrapSandbox) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
    result = box.run(SandboxSpec(argv=[PY, "-c", code], connect=[f"127.0.0.1:{port}"]))
    srv.close()
    assert result.ok, result.stderr


def test_writes_outside_scratch_fail_and_host_is_unchanged(
    box: BubblewrapSandbox, tmp_path: Path
) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("original")
    work = tmp_path / "work"
    work.mkdir()
    script = (
        f"echo changed > {outside}; echo $? ; echo x > /etc/keel-test; "
        f"echo scratch > /tmp/s && cat /tmp/s; echo mine > {work}/out.txt"
    )
    result = box.run(SandboxSpec(argv=["sh", "-c", script], workdir=str(work), writable=True))
    assert "Read-only file system" in result.stderr
    assert outside.read_text() == "original"
    assert not Path("/etc/keel-test").exists()
    assert "scratch" in result.stdout  # the private scratch is writable...
    assert (work / "out.txt").read_text() == "mine\n"  # ...and so is the declared workdir
    assert not list(Path("/tmp").glob("s"))  # the scratch was private


def test_fork_bomb_is_contained(box: BubblewrapSandbox) -> None:
    if not CGROUP_PIDS.is_dir():
        pytest.skip("no pids cgroup on this host")
    lines = ["import os", "while True:", "    try:", "        os.fork()", "    except OSError:"]
    bomb = "\n".join([*lines, "        os._exit(3)"])
    result = box.run(SandboxSpec(argv=[PY, "-c", bomb], max_procs=32, timeout_s=10))
    # Stopped by the process limit (forks fail, every process exits), not by the clock.
    assert result.killed is None and result.exit_code == 3 and result.duration_s < 10
    assert not [p for p in CGROUP_PIDS.glob("keel-*") if p.is_dir()], "cgroup left behind"


def test_time_limit_kills(box: BubblewrapSandbox) -> None:
    result = box.run(SandboxSpec(argv=["sleep", "30"], timeout_s=0.5))
    assert result.killed == "timeout" and result.duration_s < 5


def test_memory_limit(box: BubblewrapSandbox) -> None:
    hog = "x = bytearray(400 * 1024 * 1024); print('allocated')"
    result = box.run(SandboxSpec(argv=[PY, "-c", hog], memory_mb=128))
    assert not result.ok and "MemoryError" in result.stderr


def test_output_is_capped(box: BubblewrapSandbox) -> None:
    result = box.run(SandboxSpec(argv=[PY, "-c", "print('y' * 200000)"], output_cap=4096))
    assert result.ok and result.truncated and len(result.stdout) == 4096


def test_refuses_writes_without_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    isolation.cache_clear()
    try:
        sandbox = BubblewrapSandbox(allow_unconfined_reads=True)
        assert not sandbox.isolated
        with pytest.raises(SandboxError, match=r"refusing to run .* without isolation"):
            sandbox.run(SandboxSpec(argv=["/bin/true"]), writes=True)
        strict = BubblewrapSandbox()
        with pytest.raises(SandboxError):
            strict.run(SandboxSpec(argv=["/bin/true"]), writes=False)
        read = sandbox.run(SandboxSpec(argv=["/bin/true"]), writes=False)
        assert read.ok and read.isolated is False
    finally:
        isolation.cache_clear()


def test_a_run_s_trace_reaches_the_sandboxed_process(box: BubblewrapSandbox) -> None:
    """The executor applies a tool inside the run's trace; the sandbox passes it on."""
    spec = SandboxSpec(argv=[PY, "-c", "import os; print(os.environ.get('TRACEPARENT'))"])
    inside = in_run_trace("run-7", box.run, spec)
    assert inside.stdout.strip() == run_traceparent("run-7")
    assert box.run(spec).stdout.strip() == "None"  # outside any run, nothing is made up
