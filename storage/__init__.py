"""Checkpoint, ledger and memory storage: a local directory by default, any fsspec URL
(S3 included) on a cluster."""

from __future__ import annotations

from typing import Any

from keel.storage.base import CheckpointStore
from keel.storage.fs import FsspecStore
from keel.storage.local import LocalStore
from keel.storage.memory import MemoryItem, MemoryStore
from keel.storage.runs import LoadedRun, RunStore, SkippedObject

__all__ = [
    "CheckpointStore",
    "LoadedRun",
    "MemoryItem",
    "MemoryStore",
    "RunStore",
    "SkippedObject",
    "open_store",
]


def open_store(
    url: str, options: dict[str, Any] | None = None, *, fsync: bool = True
) -> CheckpointStore:
    """Open the store a URL names: a plain path or ``file://`` is a local directory,
    anything else with a scheme (``s3://``, ``memory://``, ...) goes through fsspec."""
    if "://" not in url:
        return LocalStore(url, fsync=fsync)
    if url.startswith("file://"):
        return LocalStore(url[len("file://") :], fsync=fsync)

    return FsspecStore(url, options)
