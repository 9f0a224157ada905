"""The retriever: ranks memory (runbooks, summaries of past runs) for a query.

Memory helps reasoning and never enters run state. Ranking is BM25 over the items' title,
tags and text.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import ray
from rank_bm25 import BM25Okapi

from actors.worker_messages import RetrievedItem, RetrieveRequest, RetrieveResponse
from storage import open_store
from storage.memory import MemoryItem, MemoryStore

ROLE = "retriever"
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def rank(items: list[MemoryItem], query: str, k: int) -> list[RetrievedItem]:
    if not items:
        return []
    corpus = [tokens(f"{m.title} {' '.join(m.tags)} {m.text}") for m in items]
    scores = BM25Okapi(corpus).get_scores(tokens(query))
    order = sorted(range(len(items)), key=lambda i: (-scores[i], items[i].id))
    return [
        RetrievedItem(
            id=items[i].id,
            kind=items[i].kind,
            title=items[i].title,
            text=items[i].text,
            score=float(scores[i]),
        )
        for i in order[:k]
        if scores[i] > 0
    ]


@ray.remote
class RetrieverWorker:
    def __init__(self, name: str, storage_url: str, options: dict[str, Any]) -> None:
        self.name = name
        self.memory = MemoryStore(open_store(storage_url, options))

    async def retrieve(self, msg: RetrieveRequest) -> RetrieveResponse:
        items = await asyncio.to_thread(self.memory.list, msg.kind)
        return RetrieveResponse(
            items=rank(items, msg.query, msg.k), method="bm25", worker=self.name
        )
