"""The demo's real, small system: an HTTP service with a config file, a log and a health
endpoint, run as its own process on 127.0.0.1.

It reads ``service.json`` when it starts (a config change needs a restart) and fails its
requests when the config is invalid or its data file is corrupt, logging why. Faults are
injected by writing its files (see ``inject``). ``POST /admin/restart`` re-executes it.

    python -m keel.examples.demo_service --root DIR --port PORT
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GOOD_CONFIG = {"service": "checkout", "max_connections": 100, "timeout_s": 5}
DATA = b"orders:v1\n" + b"order\n" * 10


def config_digest(root: Path) -> str:
    return hashlib.sha256((root / "service.json").read_bytes()).hexdigest()[:16]


def prepare(root: Path, fault: str | None) -> None:
    """Lay out a healthy service directory, then inject ``fault`` (or none)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "service.json.good").write_text(json.dumps(GOOD_CONFIG, indent=2))
    (root / "service.json").write_text(json.dumps(GOOD_CONFIG, indent=2))
    (root / "data" / "orders.db").write_bytes(DATA)
    (root / "service.log").write_text("")
    inject(root, fault)


FAULTS = ("none", "bad_config", "corrupt_data", "overload")
HOST_CONNECTION_LIMIT = 1000


def inject(root: Path, fault: str | None) -> None:
    """Break the service one way: ``bad_config`` (a config value of the wrong type; fixed by
    restoring the last good config), ``corrupt_data`` (a damaged data file no restart
    fixes), ``overload`` (a connection limit above what the host allows; fixed by lowering
    it), or ``none``."""
    if fault is None or fault == "none":
        return
    if fault == "overload":
        over = {**GOOD_CONFIG, "max_connections": 5000}
        (root / "service.json").write_text(json.dumps(over, indent=2))
    elif fault == "bad_config":
        bad = {**GOOD_CONFIG, "max_connections": "abc"}
        (root / "service.json").write_text(json.dumps(bad, indent=2))
    elif fault == "corrupt_data":
        (root / "data" / "orders.db").write_bytes(b"orders:v1\n\x00\x00garbage")
    else:
        raise ValueError(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")


class Service:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started = time.time()
        self.problems: list[str] = []
        self.config: dict[str, Any] = {}
        self.load()

    def log(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(self.root / "service.log", "a") as fh:
            fh.write(f"{stamp} {level} {message}\n")

    def load(self) -> None:
        self.problems = []
        try:
            self.config = json.loads((self.root / "service.json").read_text())
        except (OSError, ValueError) as exc:
            self.problems.append(f"config unreadable: {exc}")
            self.config = {}
        limit = self.config.get("max_connections")
        if not isinstance(limit, int) or limit <= 0:
            self.problems.append(
                f"invalid config value max_connections={limit!r} in service.json; "
                "the last good config is service.json.good"
            )
        elif limit > HOST_CONNECTION_LIMIT:
            self.problems.append(
                f"connection overload: max_connections={limit} is above the host's limit of "
                f"{HOST_CONNECTION_LIMIT}; requests time out, too many open connections"
            )
        data = self.root / "data" / "orders.db"
        if not data.exists() or data.read_bytes() != DATA:
            self.problems.append(
                "data/orders.db checksum mismatch: data corrupt; requests time out, "
                "too many open connections"
            )
        self.log("INFO", f"started with config {config_digest(self.root)}")
        for problem in self.problems:
            self.log("ERROR", problem)

    def health(self) -> tuple[int, dict[str, Any]]:
        body = {
            "status": "ok" if not self.problems else "failing",
            "problems": self.problems,
            "config": config_digest(self.root),
            "pid": os.getpid(),
            "started": self.started,  # a restart re-executes in the same process
        }
        return (200 if not self.problems else 503), body


def serve(root: Path, port: int) -> None:
    service = Service(root)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(*service.health())
            elif service.problems:
                service.log("ERROR", f"GET {self.path} -> 500: {service.problems[0]}")
                self._send(500, {"error": service.problems[0]})
            else:
                service.log("INFO", f"GET {self.path} -> 200")
                self._send(200, {"orders": 10})

        def do_POST(self) -> None:
            if self.path == "/admin/restart":
                service.log("INFO", "restart requested")
                self._send(202, {"restarting": True})
                self.wfile.flush()
                server.shutdown_request(self.request)
                os.execv(
                    sys.executable, [sys.executable, "-m", "keel.examples.demo_service", *ARGS]
                )
            self._send(404, {"error": "not found"})

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.allow_reuse_address = True
    server.serve_forever()


ARGS: list[str] = []


def main() -> None:
    parser = argparse.ArgumentParser(description="the Keel demo service")
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ARGS.extend(["--root", args.root, "--port", str(args.port)])
    serve(Path(args.root), args.port)


if __name__ == "__main__":
    main()


def free_port() -> int:
    """A port nothing listens on yet, on 127.0.0.1 (for the service, or Serve's proxy)."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(root: Path, port: int, *, timeout_s: float = 30.0) -> Any:
    """Start the service as a subprocess on 127.0.0.1 and wait until it answers."""

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keel.examples.demo_service",
            "--root",
            str(root),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return proc
        except urllib.error.HTTPError:
            return proc  # answering, if unhealthy
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"demo service did not start on port {port}")


def health(port: int) -> tuple[int, dict[str, Any]]:

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def stop(proc: Any) -> None:
    """Stop the service and anything it re-executed into (same session)."""

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
