"""The embedded instance: one local Ray and orchestrator per store and host.

Every ``keel`` command on the embedded default first looks for a live instance that drives
its store (the orchestrator's lease record names its Ray address); it attaches to that one,
or else starts Ray in its own process and becomes the host. A host lives as long as its
process, and waits for attached processes before it stops. ``keel up`` hosts an instance
that outlives terminals (in the background with ``--detach``), and ``keel down`` stops it;
``keel run --detach`` starts one when none is up, so a run it leaves behind keeps going.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from keel.client import Keel
from keel.errors import ConfigError, KeelError
from keel.storage.leases import OwnerRecord


def instance_log(keel: Keel) -> Path:
    """Where a background instance writes its output: beside a local store, else /tmp."""
    url = keel.config.storage_url()
    if "://" in url:
        return Path(tempfile.gettempdir()) / "keel-instance.log"
    return Path(f"{url}-instance.log")


def start_background(keel: Keel, cli_args: Sequence[str], timeout_s: float = 180.0) -> OwnerRecord:
    """Start ``keel up`` as a detached process and wait until its instance is live.

    Raises:
        ConfigError: the configuration names a Ray cluster (nothing embedded to start).
        KeelError: the instance did not come up; its log says why.
    """
    if keel.config.ray.address is not None:
        raise ConfigError(
            "a Ray address is configured: the cluster hosts Keel, not this machine",
            field="ray.address",
        )
    running = keel.embedded_instance()
    if running is not None:
        return running
    log = instance_log(keel)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keel.cli", *cli_args, "up"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in this terminal's process group: ^C spares it
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = keel.embedded_instance()
        if running is not None:
            return running
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    how = (
        f"exited with {proc.returncode}"
        if proc.poll() is not None
        else f"was not live within {timeout_s:g}s"
    )
    raise KeelError(
        f"the background instance did not start ({how}); see {log}, which ends:\n" + _tail(log),
        retryable=True,
    )


TAIL_BYTES = 16_384


def _tail(log: Path, lines: int = 12) -> str:
    """The end of the instance's log, so whoever reads the error sees why at once (a
    test's or a script's folder, and the log in it, may be gone by the time anyone looks)."""
    try:
        with open(log, "rb") as fh:  # the log is appended to by every start: read its end
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - TAIL_BYTES))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def serve_forever(keel: Keel, ready: Callable[[OwnerRecord | None], None]) -> None:
    """Host an embedded instance until SIGTERM or SIGINT; ``ready`` is told the record of
    the instance that already drives the store (then this one does not start), or None."""
    keel.connect()
    if keel.attached is not None:
        ready(keel.attached)
        keel.close()
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_a: stop.set())
    keel.orchestrator()
    deadline = time.monotonic() + 60
    while keel.embedded_instance() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    ready(None)
    try:
        stop.wait()
    finally:
        keel.close()


def stop_instance(keel: Keel, timeout_s: float = 60.0) -> OwnerRecord | None:
    """Ask the live embedded instance of this store to stop; wait until its host is gone.
    Returns the record of the instance stopped, or None when none was running."""
    running = keel.embedded_instance()
    if running is None or not running.host_pid:
        return None
    try:
        os.kill(running.host_pid, signal.SIGTERM)
    except ProcessLookupError:
        return running
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(running.host_pid, 0)
        except ProcessLookupError:
            return running
        time.sleep(0.2)
    raise KeelError(f"instance pid {running.host_pid} did not stop within {timeout_s:g}s")
