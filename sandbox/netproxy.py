"""Network for a sandboxed tool: only the destinations it declared, never the host's stack.

The sandbox has its own network namespace, with nothing in it but loopback. For each
declared ``HOST:PORT`` the host side listens on a Unix socket in the sandbox's scratch
directory and connects each accepted stream to that one destination; inside, a small
forwarder (``FORWARDER``, stdlib only) listens on the same ``HOST:PORT`` on the sandbox's
own loopback and relays to the socket. So a tool talks to ``127.0.0.1:PORT`` as it would
outside, and can reach nothing else: not Ray's ports, not the metadata service, not the
internet.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from types import TracebackType

# Runs inside the sandbox: argv = [N, HOST, PORT, SOCKET] * N + the tool's own argv.
FORWARDER = r"""
import socket, subprocess, sys, threading
n = int(sys.argv[1])
spec, argv = sys.argv[2 : 2 + 3 * n], sys.argv[2 + 3 * n :]
def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
def serve(srv, path):
    while True:
        conn, _ = srv.accept()
        up = socket.socket(socket.AF_UNIX)
        try:
            up.connect(path)
        except OSError:
            conn.close()
            continue
        threading.Thread(target=pump, args=(conn, up), daemon=True).start()
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()
for i in range(n):
    host, port, path = spec[3 * i], int(spec[3 * i + 1]), spec[3 * i + 2]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)
    threading.Thread(target=serve, args=(srv, path), daemon=True).start()
sys.exit(subprocess.call(argv))
"""


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class HostRelay:
    """The host side: one Unix socket per declared destination, for one sandbox run."""

    def __init__(self, scratch: Path, destinations: list[str]) -> None:
        self.routes: list[tuple[str, int, Path]] = []
        for i, dest in enumerate(destinations):
            host, _, port = dest.rpartition(":")
            self.routes.append((host.strip("[]"), int(port), scratch / f".net-{i}.sock"))
        self._servers: list[socket.socket] = []
        self._stop = threading.Event()

    def forwarder_argv(self, python: str, inner_scratch: str) -> list[str]:
        """The command prefix that starts the in-sandbox forwarder."""
        args = [python, "-c", FORWARDER, str(len(self.routes))]
        for host, port, path in self.routes:
            args += [host, str(port), f"{inner_scratch}/{path.name}"]
        return args

    def __enter__(self) -> HostRelay:
        for host, port, path in self.routes:
            srv = socket.socket(socket.AF_UNIX)
            srv.bind(str(path))
            path.chmod(0o777)
            srv.listen(64)
            srv.settimeout(0.2)
            self._servers.append(srv)
            threading.Thread(target=self._serve, args=(srv, host, port), daemon=True).start()
        return self

    def _serve(self, srv: socket.socket, host: str, port: int) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            try:
                out = socket.create_connection((host, port), timeout=10)
            except OSError:
                conn.close()
                continue
            out.settimeout(None)
            threading.Thread(target=_pump, args=(conn, out), daemon=True).start()
            threading.Thread(target=_pump, args=(out, conn), daemon=True).start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for srv in self._servers:
            srv.close()
