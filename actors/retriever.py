"""The retriever: ranks memory (runbooks, summaries of past runs) for a query.

Memory helps reasoning and never enters run state. Ranking is BM25+ over the items' title,
tags and text (``keel.storage.memory.rank``); items that do not match at all are left out,
and so are items without every tag the request names. A request reads one namespace: the
shared one, or that of the principal whose run asks (the node's handle sees to that).
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from keel.actors.worker_messages import RetrievedItem, RetrieveRequest, RetrieveResponse
from keel.storage import open_store
from keel.storage.memory import MemoryIndex, MemoryItem, MemoryStore
from keel.storage.memory import rank as rank_items

ROLE = "retriever"


def _item(m: MemoryItem, score: float) -> RetrievedItem:
    return RetrievedItem(id=m.id, kind=m.kind, title=m.title, text=m.text, score=score)


def rank(items: list[MemoryItem], query: str, k: int) -> list[RetrievedItem]:
    return [_item(m, score) for m, score in rank_items(items, query, k)]


def retrieve(memory: MemoryIndex, msg: RetrieveRequest) -> list[RetrievedItem]:
    """The items of ``msg``'s namespace and kind that carry all its tags, ranked."""
    items = memory.items(msg.kind, msg.namespace)
    if msg.tags:
        items = [m for m in items if set(msg.tags) <= set(m.tags)]
    return rank(items, msg.query, msg.k)


@ray.remote
class RetrieverWorker:
    def __init__(self, name: str, storage_url: str, options: dict[str, Any]) -> None:
        self.name = name
        self.memory = MemoryIndex(MemoryStore(open_store(storage_url, options)))

    async def retrieve(self, msg: RetrieveRequest) -> RetrieveResponse:
        items = await asyncio.to_thread(retrieve, self.memory, msg)
        return RetrieveResponse(items=items, method="bm25", worker=self.name)
