"""Who drives runs on a store, and whether they are still alive.

Every engine that drives runs (an orchestrator actor, an in-process engine) keeps a small
record under ``owners/<base>.json`` and renews it every few seconds; the record says until
when it vouches for itself, and where it can be reached. A run's owner is the name written
in its newest checkpoint, ``<base>@<epoch>``. Another engine takes a run over only once that
owner is no longer live: its record expired, or names a later epoch, or its process is
known to be gone (same host, pid no longer running). The checkpoint fence (create-if-absent)
settles the race when two engines try at once; the lease keeps a live owner's runs away
from everyone else.

An engine whose lease lapsed (it was paused, or cut off from storage) renews under the next
epoch, as does an orchestrator that Ray restarted; before it acts on a run last written
under an older epoch it re-takes the run with a fenced write. So another engine that judged
the owner dead and took a run over meanwhile wins that race or loses it cleanly, and an
effect is only ever started by the engine that wrote the run's newest checkpoint.

Timing assumption, as for every lease: an engine starts an effect only while its lease
holds for at least half its term, so an effect call has that long to land before anyone
else may look at its outcome. Set the lease term above twice the slowest effect. A whole
process that dies takes its executors' calls with it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keel.errors import CorruptObjectError, ObjectNotFoundError
from keel.storage.base import CheckpointStore
from keel.storage.envelope import open_sealed, seal

log = logging.getLogger("keel.storage")

PREFIX = "owners"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")

OwnerKind = Literal["embedded", "cluster", "process"]


def owner_id(*parts: str) -> str:
    """A key-safe owner name built from readable parts."""
    return _SAFE.sub("-", ".".join(p for p in parts if p))[:120] or "owner"


def split_owner(owner: str) -> tuple[str, int]:
    """``base@epoch`` as its two parts (a name without an epoch is epoch 0)."""
    base, sep, epoch = owner.rpartition("@")
    if not sep or not epoch.isdigit():
        return owner, 0
    return base, int(epoch)


class OwnerRecord(BaseModel):
    """One owner's lease, as stored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    owner: str
    epoch: int = 1
    expires_at: float
    renewed_at: float
    host: str
    pid: int = Field(description="the process whose death ends all this owner's calls; 0: none")
    pid_started: float | None = None
    kind: OwnerKind = "process"
    address: str | None = None
    host_pid: int | None = None


def _started(pid: int) -> float | None:
    """When the process started (clock ticks since boot, from /proc), so a recycled pid is
    not mistaken for the owner; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return float(fields[19]) if len(fields) > 19 else None


def process_alive(rec: OwnerRecord) -> bool:
    """Whether the record's process still runs, judged only on the same host."""
    if rec.host != socket.gethostname() or rec.pid <= 0:
        return True  # another machine, or no process vouched for: only the expiry can tell
    try:
        os.kill(rec.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if rec.pid_started is None:
        return True
    started = _started(rec.pid)
    return started is None or started == rec.pid_started


class Leases:
    """Reads and writes owner records on a store."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        clock: Callable[[], float] = time.time,
        alive: Callable[[OwnerRecord], bool] = process_alive,
    ) -> None:
        self.store = store
        self.clock = clock
        self.alive = alive

    @staticmethod
    def key(owner: str) -> str:
        return f"{PREFIX}/{owner_id(owner)}.json"

    def write(self, rec: OwnerRecord) -> None:
        body = rec.model_dump_json().encode()
        self.store.put(self.key(rec.owner), seal(body, "owner"))

    def read(self, owner: str) -> OwnerRecord | None:
        key = self.key(owner)
        try:
            raw = open_sealed(self.store.get(key), key=key, kind="owner")
            return OwnerRecord.model_validate(json.loads(raw))
        except ObjectNotFoundError:
            return None
        except (CorruptObjectError, ValidationError, ValueError) as exc:
            log.warning("unreadable owner record %s: %s", key, exc)
            return None

    def release(self, owner: str) -> None:
        self.store.delete(self.key(owner))

    def live(self, owner: str | None) -> bool:
        """Whether ``owner`` (``base@epoch``) still vouches for its runs: its base holds an
        unexpired lease, at that epoch or a later one (a restarted orchestrator carries on
        its predecessor's runs)."""
        if not owner:
            return False
        base, epoch = split_owner(owner)
        rec = self.read(base)
        return rec is not None and rec.epoch >= epoch and self.is_live(rec)

    def is_live(self, rec: OwnerRecord) -> bool:
        return rec.expires_at > self.clock() and self.alive(rec)

    def records(self) -> list[OwnerRecord]:
        out = []
        for key in self.store.list(PREFIX):
            if key.endswith(".json"):
                rec = self.read(key[len(PREFIX) + 1 : -len(".json")])
                if rec is not None:
                    out.append(rec)
        return out

    def find_embedded(self) -> OwnerRecord | None:
        """The live embedded instance on this host that drives this store, if any."""
        here = socket.gethostname()
        for rec in self.records():
            if rec.kind == "embedded" and rec.address and rec.host == here and self.is_live(rec):
                return rec
        return None


class Lease:
    """This engine's own lease: renewed by its owner, checked before every effect.

    ``owner`` is the name it writes into checkpoints; it moves to the next epoch whenever a
    renewal lands after the previous expiry (the lease lapsed).
    """

    def __init__(
        self,
        leases: Leases,
        base: str,
        *,
        ttl_s: float = 15.0,
        kind: OwnerKind = "process",
        address: str | None = None,
        host_pid: int | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.leases = leases
        self.base = owner_id(base)
        self.epoch = 0
        self.ttl_s = ttl_s
        self.kind = kind
        self.address = address
        self.host_pid = host_pid
        self.host = host or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self._pid_started = _started(self.pid) if self.pid > 0 else None
        self.expires_at = 0.0

    @property
    def owner(self) -> str:
        return f"{self.base}@{self.epoch}"

    def renew(self) -> None:
        """Write the record with a fresh expiry (blocking: call it off the event loop).

        The first renewal starts after any epoch an earlier incarnation of this base left;
        a renewal that lands after the previous expiry starts the next epoch."""
        if self.epoch == 0:
            old = self.leases.read(self.base)
            self.epoch = (old.epoch if old is not None else 0) + 1
        previous = self.expires_at
        lapsed = bool(previous) and self.leases.clock() >= previous
        if lapsed:
            self.epoch += 1
        self._write()
        if previous and not lapsed and self.leases.clock() >= previous:
            self.epoch += 1  # the write itself landed too late
            self._write()

    def _write(self) -> None:
        now = self.leases.clock()
        rec = OwnerRecord(
            owner=self.base,
            epoch=self.epoch,
            expires_at=now + self.ttl_s,
            renewed_at=now,
            host=self.host,
            pid=self.pid,
            pid_started=self._pid_started,
            kind=self.kind,
            address=self.address,
            host_pid=self.host_pid,
        )
        self.leases.write(rec)
        self.expires_at = rec.expires_at

    def remaining(self) -> float:
        return self.expires_at - self.leases.clock()

    def fresh(self, margin_s: float | None = None) -> bool:
        """Whether the lease holds for at least ``margin_s`` (half its term by default)."""
        return self.remaining() > (self.ttl_s / 2 if margin_s is None else margin_s)

    def release(self) -> None:
        self.expires_at = 0.0
        self.leases.release(self.base)
