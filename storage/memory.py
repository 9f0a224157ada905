"""Memory: context that helps reasoning, kept apart from run state on purpose.

State says what is true and changes only through ledger events; memory (runbooks, summaries
of past runs) is never evidence that something happened. It lives under its own prefix and
its own type, and nothing in ``actors.state`` can refer to it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from keel.errors import CorruptObjectError, ObjectNotFoundError
from keel.storage.base import CheckpointStore
from keel.storage.envelope import open_sealed, seal

MemoryKind = Literal["document", "episode"]


class MemoryItem(BaseModel):
    """One piece of memory: a long-term document or an episodic summary of a past run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    kind: MemoryKind
    text: str = Field(max_length=1_000_000)
    title: str = ""
    tags: tuple[str, ...] = ()
    source_run: str | None = None


class MemoryStore:
    """Memory items on a checkpoint store, under ``memory/<kind>/<id>.json``."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    @staticmethod
    def _key(kind: MemoryKind, item_id: str) -> str:
        return f"memory/{kind}/{item_id}.json"

    def put(self, item: MemoryItem) -> None:
        body = item.model_dump_json().encode()
        self.store.put(self._key(item.kind, item.id), seal(body, "memory"))

    def get(self, kind: MemoryKind, item_id: str) -> MemoryItem:
        key = self._key(kind, item_id)
        return MemoryItem.model_validate(
            json.loads(open_sealed(self.store.get(key), key=key, kind="memory"))
        )

    def list(self, kind: MemoryKind | None = None) -> list[MemoryItem]:
        prefix = f"memory/{kind}" if kind else "memory"
        items = []
        for key in self.store.list(prefix):
            try:
                items.append(
                    MemoryItem.model_validate(
                        json.loads(open_sealed(self.store.get(key), key=key, kind="memory"))
                    )
                )
            except (CorruptObjectError, ObjectNotFoundError):
                continue
        return items
