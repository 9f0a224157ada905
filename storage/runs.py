"""Runs on a checkpoint store: numbered, hash-chained checkpoints plus a small index.

Layout under the store root::

    runs/<run_id>/checkpoints/<n:08d>.ckpt   sealed; the ledger events committed at step n
    index/<run_id>.json                      sealed; a summary for fast listing (a hint:
                                             the checkpoints are the truth)
    owners/<owner>.json                      sealed; the leases of the engines driving runs
    quarantine/<run_id>/<n:08d>-<ts>.ckpt    corrupt objects moved aside before a rewrite

Each checkpoint holds only the events since the previous one, so bytes stored grow
linearly with a run, and names the SHA-256 of its predecessor's body, so a checkpoint that
follows a corrupt or missing one is never folded in by mistake. It also names the owner that
wrote it, and it is created only if absent: the checkpoint number is the fence that keeps
one driver per run.

A run exists exactly when its checkpoint 0 exists. Its index entry is written first, marked
``pending``, so listing and recovery find every run whose checkpoint 0 was written; an
entry whose checkpoint 0 never came is not a run and is skipped.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from keel.errors import (
    CorruptObjectError,
    InputError,
    ObjectExistsError,
    ObjectNotFoundError,
    RunNotFoundError,
    SchemaVersionError,
)
from keel.storage.base import CheckpointStore
from keel.storage.envelope import digest, open_sealed, seal

log = logging.getLogger("keel.storage")

SCHEMA_VERSION = 1
PENDING = "pending"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CKPT = re.compile(r"/checkpoints/(\d{8})\.ckpt$")


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise InputError(
            f"invalid run id {run_id!r}: 1-128 letters, digits, '.', '_' or '-'",
            field="run_id",
        )
    return run_id


@dataclass(frozen=True)
class SkippedObject:
    """A checkpoint that was not loaded, and why."""

    key: str
    reason: str


@dataclass
class LoadedRun:
    """Every good checkpoint of a run, in order."""

    run_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    next_n: int = 0
    last_digest: str | None = None
    owner: str | None = None
    skipped: list[SkippedObject] = field(default_factory=list)


class RunStore:
    """Reads and writes runs on any ``CheckpointStore``."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    @staticmethod
    def checkpoint_key(run_id: str, n: int) -> str:
        return f"runs/{check_run_id(run_id)}/checkpoints/{n:08d}.ckpt"

    @staticmethod
    def index_key(run_id: str) -> str:
        return f"index/{check_run_id(run_id)}.json"

    def exists(self, run_id: str) -> bool:
        return bool(self.store.list(f"runs/{check_run_id(run_id)}/checkpoints"))

    def append(
        self,
        run_id: str,
        n: int,
        prev: str | None,
        events: Sequence[dict[str, Any]],
        owner: str | None = None,
    ) -> str:
        """Create checkpoint ``n``; return its digest, which checkpoint ``n + 1`` names.

        Raises:
            ObjectExistsError: another writer created checkpoint ``n`` first: this writer
                no longer drives the run. A retry of this very write that had landed
                (an ambiguous failure) is recognised and counts as success.
        """
        body = json.dumps(
            {
                "schema": SCHEMA_VERSION,
                "run_id": run_id,
                "n": n,
                "prev": prev,
                "owner": owner,
                "events": events,
            },
            separators=(",", ":"),
        ).encode()
        key = self.checkpoint_key(run_id, n)
        sealed = seal(body, "checkpoint")
        try:
            self.store.create(key, sealed)
        except ObjectExistsError:
            try:
                if self.store.get(key) == sealed:
                    return digest(body)
            except ObjectNotFoundError:
                pass
            raise
        return digest(body)

    def load(self, run_id: str) -> LoadedRun:
        """Fold every good checkpoint in order; stop at the first bad or unchained one.

        Raises:
            RunNotFoundError: no checkpoint of this run exists.
            SchemaVersionError: a checkpoint was written by a newer Keel.
        """
        keys = self.store.list(f"runs/{check_run_id(run_id)}/checkpoints")
        numbered = sorted((int(m.group(1)), k) for k in keys if (m := _CKPT.search(k)))
        if not numbered:
            raise RunNotFoundError(f"no run {run_id!r} in {self.store.url}", field="run_id")
        out = LoadedRun(run_id=run_id)
        broken: str | None = None
        for n, key in numbered:
            if broken is not None:
                out.skipped.append(SkippedObject(key, f"follows {broken}"))
                continue
            try:
                body, body_digest = self._read_checkpoint(
                    key, run_id, n, out.last_digest, out.next_n
                )
            except (CorruptObjectError, ObjectNotFoundError) as exc:
                out.skipped.append(SkippedObject(key, exc.message))
                broken = key
                continue
            out.events.extend(body["events"])
            out.last_digest = body_digest
            out.next_n = n + 1
            out.owner = body.get("owner")
        for skipped in out.skipped:
            log.warning("skipped checkpoint %s: %s", skipped.key, skipped.reason)
        return out

    def _read_checkpoint(
        self, key: str, run_id: str, n: int, prev: str | None, expected_n: int
    ) -> tuple[dict[str, Any], str]:
        if n != expected_n:
            raise CorruptObjectError(f"{key}: checkpoint {expected_n} is missing", key=key)
        raw = open_sealed(self.store.get(key), key=key, kind="checkpoint")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise CorruptObjectError(f"{key}: unreadable body ({exc})", key=key) from None
        schema = body.get("schema")
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{key}: checkpoint schema {schema} is newer than this Keel reads "
                f"({SCHEMA_VERSION}); upgrade Keel",
                key=key,
            )
        if body.get("run_id") != run_id or body.get("n") != n:
            raise CorruptObjectError(f"{key}: belongs to another run or step", key=key)
        if body.get("prev") != prev:
            raise CorruptObjectError(f"{key}: does not follow the previous checkpoint", key=key)
        if not isinstance(body.get("events"), list):
            raise CorruptObjectError(f"{key}: no event list", key=key)
        return dict(body), digest(raw)

    def quarantine(self, loaded: LoadedRun) -> list[str]:
        """Move skipped checkpoints aside so the run can be continued from its last good one.

        Only the run's single writer (the orchestrator) calls this, before it writes again.
        """
        moved = []
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for skipped in loaded.skipped:
            try:
                data = self.store.get(skipped.key)
            except ObjectNotFoundError:
                continue
            name = skipped.key.rsplit("/", 1)[-1].replace(".ckpt", f"-{stamp}.ckpt")
            target = f"quarantine/{loaded.run_id}/{name}"
            self.store.put(target, data)
            self.store.delete(skipped.key)
            log.warning("quarantined %s as %s: %s", skipped.key, target, skipped.reason)
            moved.append(target)
        return moved

    def write_index(self, run_id: str, summary: dict[str, Any]) -> None:
        body = json.dumps(summary, separators=(",", ":"), sort_keys=True).encode()
        self.store.put(self.index_key(run_id), seal(body, "run-index"))

    def read_index(self, run_id: str) -> dict[str, Any] | None:
        key = self.index_key(run_id)
        try:
            result: dict[str, Any] = json.loads(
                open_sealed(self.store.get(key), key=key, kind="run-index")
            )
        except ObjectNotFoundError:
            return None
        except CorruptObjectError as exc:
            log.warning("skipped run index %s: %s", key, exc.message)
            return None
        return result

    def list_run_ids(self) -> list[str]:
        ids = []
        for key in self.store.list("index"):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".json"):
                ids.append(name[: -len(".json")])
        return ids
