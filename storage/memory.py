"""Memory: context that helps reasoning, kept apart from run state on purpose.

State says what is true and changes only through ledger events; memory (runbooks, summaries
of past runs) is never evidence that something happened. It lives under its own prefix and
its own type, and nothing in ``actors.state`` can refer to it.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rank_bm25 import BM25Plus

from keel.errors import CorruptObjectError, ObjectNotFoundError
from keel.storage.base import CheckpointStore
from keel.storage.envelope import open_sealed, seal

MemoryKind = Literal["document", "episode"]
SHARED = "shared"
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class MemoryItem(BaseModel):
    """One piece of memory: a long-term document or an episodic summary of a past run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=NAME)
    kind: MemoryKind
    namespace: str = Field(default=SHARED, pattern=NAME, description="shared, or a tenant's")
    text: str = Field(max_length=1_000_000)
    title: str = ""
    tags: tuple[str, ...] = ()
    source_run: str | None = None


class MemoryStore:
    """Memory items on a checkpoint store: the shared namespace under
    ``memory/<kind>/<id>.json``, a tenant's under ``memory-ns/<namespace>/<kind>/<id>.json``
    (a prefix of its own, so listing one namespace never reads another's).

    Every write and delete then replaces the namespace's revision marker
    (``memory-rev/<namespace>``) with a fresh token, so a reader that keeps an index
    (``MemoryIndex``) learns that anything changed from one small read, not a listing."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    @staticmethod
    def _rev_key(namespace: str) -> str:
        return f"memory-rev/{namespace}"

    def _bump(self, namespace: str) -> None:
        self.store.put(self._rev_key(namespace), secrets.token_hex(8).encode())

    def revision(self, namespace: str = SHARED) -> str:
        """The namespace's current revision token ("" before its first write)."""
        try:
            return self.store.get(self._rev_key(namespace)).decode()
        except ObjectNotFoundError:
            return ""

    @staticmethod
    def _prefix(namespace: str) -> str:
        return "memory" if namespace == SHARED else f"memory-ns/{namespace}"

    def _key(self, kind: MemoryKind, item_id: str, namespace: str = SHARED) -> str:
        return f"{self._prefix(namespace)}/{kind}/{item_id}.json"

    def put(self, item: MemoryItem) -> None:
        body = item.model_dump_json().encode()
        self.store.put(self._key(item.kind, item.id, item.namespace), seal(body, "memory"))
        self._bump(item.namespace)

    def get(self, kind: MemoryKind, item_id: str, namespace: str = SHARED) -> MemoryItem:
        key = self._key(kind, item_id, namespace)
        return MemoryItem.model_validate(
            json.loads(open_sealed(self.store.get(key), key=key, kind="memory"))
        )

    def delete(self, kind: MemoryKind, item_id: str, namespace: str = SHARED) -> None:
        self.store.delete(self._key(kind, item_id, namespace))
        self._bump(namespace)

    def list(self, kind: MemoryKind | None = None, namespace: str = SHARED) -> list[MemoryItem]:
        base = self._prefix(namespace)
        prefix = f"{base}/{kind}" if kind else base
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
        return [i for i in items if i.namespace == namespace]


class MemoryIndex:
    """A reader's index of memory: each namespace's items, read once and read again only
    when its revision marker has changed, so an unchanged namespace costs one small read
    per query instead of a listing and a read of every item.

    The marker is read before the listing: a writer replaces it after its item is
    written, so an index built from a listing taken after reading a marker holds every
    item written before that marker, and any later write changes the marker again."""

    def __init__(self, memory: MemoryStore) -> None:
        self.memory = memory
        self._cached: dict[str, tuple[str, list[MemoryItem]]] = {}
        self.loads = 0  # how many times a namespace was listed and read (for tests, metrics)

    def items(self, kind: MemoryKind | None = None, namespace: str = SHARED) -> list[MemoryItem]:
        rev = self.memory.revision(namespace)
        cached = self._cached.get(namespace)
        if cached is None or cached[0] != rev or not rev:
            self.loads += 1
            cached = (rev, self.memory.list(None, namespace))
            self._cached[namespace] = cached
        return [m for m in cached[1] if kind is None or m.kind == kind]


_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def rank(items: list[MemoryItem], query: str, k: int) -> list[tuple[MemoryItem, float]]:
    """BM25+ over the items' titles, tags and text, best first; items sharing no term with
    the query are left out."""
    if not items:
        return []
    corpus = [tokens(f"{m.title} {' '.join(m.tags)} {m.text}") for m in items]
    query_tokens = tokens(query)
    # BM25+ keeps idf positive in small corpora (Okapi's is 0 for a term in half the docs).
    scores = BM25Plus(corpus).get_scores(query_tokens)
    wanted = set(query_tokens)
    order = sorted(
        (i for i in range(len(items)) if wanted & set(corpus[i])),
        key=lambda i: (-scores[i], items[i].id),
    )
    return [(items[i], float(scores[i])) for i in order[:k]]
