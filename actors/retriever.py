"""The retriever: ranks memory (runbooks, summaries of past runs) for a query.

Memory helps reasoning and never enters run state. Ranking is BM25+ over the items' title,
tags and text; items sharing no word with the query are left out.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import ray
from rank_bm25 import BM25Plus

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
    query_tokens = tokens(query)
    # BM25+ keeps idf positive in small corpora (Okapi's is 0 for a term in half the docs).
    scores = BM25Plus(corpus).get_scores(query_tokens)
    wanted = set(query_tokens)
    order = sorted(
        (i for i in range(len(items)) if wanted & set(corpus[i])),
        key=lambda i: (-scores[i], items[i].id),
    )
    return [
        RetrievedItem(
            id=items[i].id,
            kind=items[i].kind,
            title=items[i].title,
            text=items[i].text,
            score=float(scores[i]),
        )
        for i in order[:k]
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
