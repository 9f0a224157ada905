"""Escaping the sandbox, tried for real as root (how Keel runs here and in most
containers). Each attempt must fail and leave the host as it was."""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.sandbox.base import SandboxSpec
from keel.sandbox.bwrap import BubblewrapSandbox, isolation

pytestmark = pytest.mark.skipif(not isolation()[0], reason=isolation()[1])
PY = sys.executable


@pytest.fixture
def box() -> BubblewrapSandbox:
    return BubblewrapSandbox()


def run(box: BubblewrapSandbox, script: str, **spec: object) -> tuple[int, str]:
    result = box.run(SandboxSpec(argv=["sh", "-c", script], timeout_s=20, **spec))  # type: ignore[arg-type]
    return result.exit_code, result.stdout + result.stderr


def test_runs_as_root_outside_but_nobody_inside_with_no_capabilities(
    box: BubblewrapSandbox,
) -> None:
    assert os.geteuid() == 0, "these attacks are meant to be tried as root"
    code, out = run(box, "id -u; grep CapEff /proc/self/status; grep CapBnd /proc/self/status")
    assert code == 0, out
    lines = out.split()
    assert lines[0] == "65534"
    assert "CapEff:" in out and "0000000000000000" in out.split("CapEff:")[1].split()[0]
    assert out.split("CapBnd:")[1].split()[0] == "0000000000000000"


def test_remounting_the_root_read_write_fails_and_the_host_is_unchanged(
    box: BubblewrapSandbox, tmp_path: Path
) -> None:
    victim = Path(f"/etc/keel-escape-{uuid.uuid4().hex[:8]}")
    _code, out = run(
        box,
        f"mount -o remount,bind,rw / ; mount -o remount,rw /usr ; echo pwned > {victim}; "
        "echo pwned > /usr/keel-escape; echo done",
    )
    assert "done" in out
    assert not victim.exists() and not Path("/usr/keel-escape").exists()
    assert "must be superuser" in out or "Operation not permitted" in out or "denied" in out


def test_no_nested_user_namespace_or_mount_syscalls(box: BubblewrapSandbox) -> None:
    _code, out = run(box, "unshare -Ur true; echo unshare=$?")
    assert "unshare=0" not in out
    script = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for name, flag in (('user', 0x10000000), ('mount', 0x20000), ('net', 0x40000000)):\n"
        "    rc = libc.unshare(flag)\n"
        "    print(name, rc, os.strerror(ctypes.get_errno()))\n"
        "rc = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\n"
        "print('mount', rc, os.strerror(ctypes.get_errno()))\n"
        "rc = libc.ptrace(16, 1, 0, 0)\n"
        "print('ptrace', rc, os.strerror(ctypes.get_errno()))\n"
    )
    result = box.run(SandboxSpec(argv=[PY, "-c", script], timeout_s=20))
    assert result.exit_code == 0, result.stderr
    for line in result.stdout.splitlines():
        name, rc, *why = line.split()
        assert rc == "-1", f"{name} succeeded inside the sandbox"
        assert "not permitted" in " ".join(why), line


def test_secrets_on_the_host_are_not_visible(box: BubblewrapSandbox, tmp_path: Path) -> None:
    home = Path.home()
    token = home / f".ray-keel-test-{uuid.uuid4().hex[:6]}"
    store = tmp_path / "store"
    (store / "runs").mkdir(parents=True)
    (store / "runs" / "ledger").write_text("secret ledger")
    config = tmp_path / "keel.yaml"
    config.write_text("api: {keys: {abc: alice}}")
    token.write_text("ray auth token")
    work = tmp_path / "work"
    work.mkdir()
    try:
        targets = [str(token), str(store / "runs" / "ledger"), str(config), "/etc/shadow"]
        _code, out = run(
            box,
            "; ".join(f"cat {t} 2>&1" for t in targets) + f"; ls {home} 2>&1; ls /work 2>&1",
            workdir=str(work),
        )
    finally:
        token.unlink()
    for secret in ("ray auth token", "secret ledger", "alice", "root:"):
        assert secret not in out, f"{secret!r} leaked into the sandbox"
    assert out.count("No such file or directory") >= 4, out


def test_a_read_tool_cannot_write_its_directory(box: BubblewrapSandbox, tmp_path: Path) -> None:
    work = tmp_path / "svc"
    work.mkdir()
    (work / "service.json").write_text('{"ok": true}')
    _code, out = run(box, "echo broken > service.json; cat service.json", workdir=str(work))
    assert "Read-only file system" in out
    assert (work / "service.json").read_text() == '{"ok": true}'


@pytest.fixture
def two_listeners() -> Iterator[tuple[int, int, list[int]]]:
    """Two TCP servers on the host's loopback: one declared, one (standing for Ray's GCS
    or a metadata service) that must stay out of reach. Returns which ones were reached."""
    reached: list[int] = []
    servers = []
    for _ in range(2):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.settimeout(0.2)
        servers.append(srv)
    stop = threading.Event()

    def accept(srv: socket.socket) -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            reached.append(srv.getsockname()[1])
            conn.sendall(b"hello")
            conn.close()

    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield servers[0].getsockname()[1], servers[1].getsockname()[1], reached
    stop.set()
    for s in servers:
        s.close()


def test_a_networked_tool_reaches_only_what_it_declared(
    box: BubblewrapSandbox, two_listeners: tuple[int, int, list[int]]
) -> None:
    allowed, forbidden, reached = two_listeners
    script = (
        "import socket\n"
        f"for port in ({allowed}, {forbidden}):\n"
        "    try:\n"
        "        s = socket.create_connection(('127.0.0.1', port), timeout=3)\n"
        "        print(port, 'ok', s.recv(5))\n"
        "    except OSError as e:\n"
        "        print(port, 'refused', e)\n"
        "try:\n"
        "    socket.create_connection(('10.0.0.1', 80), timeout=2)\n"
        "    print('outside ok')\n"
        "except OSError as e:\n"
        "    print('outside refused', e)\n"
    )
    result = box.run(
        SandboxSpec(argv=[PY, "-c", script], connect=[f"127.0.0.1:{allowed}"], timeout_s=20)
    )
    assert result.exit_code == 0, result.stderr
    assert f"{allowed} ok b'hello'" in result.stdout
    assert f"{forbidden} refused" in result.stdout
    assert "outside refused" in result.stdout
    assert reached == [allowed]
