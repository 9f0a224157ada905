"""The retrieval evaluation: its labelled set, its measures, and BM25+ on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from keel.evals import retrieval
from keel.evals.retrieval import KS, bm25, fused, load_set, main, score
from keel.storage.memory import MemoryItem

DATA = load_set()


def test_the_shipped_set_has_enough_labelled_queries() -> None:
    assert len(DATA.queries) >= 30 and len(DATA.documents) >= 20
    assert {q.relevant for q in DATA.queries} <= {d.id for d in DATA.documents}


def test_a_label_naming_no_document_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "set.yaml"
    bad.write_text(
        "documents: [{id: a, title: A, text: alpha}]\nqueries: [{query: q, relevant: b}]\n"
    )
    with pytest.raises(ValidationError, match=r"queries\[0\]\.relevant: no document 'b'"):
        load_set(bad)


@pytest.mark.parametrize(
    ("order", "recall1", "recall3", "mrr"),
    [
        (["a", "b", "c"], 1.0, 1.0, 1.0),
        (["b", "c", "a"], 0.0, 1.0, 1 / 3),
        (["b", "c"], 0.0, 0.0, 0.0),  # left out: not ranked at all
    ],
)
def test_recall_and_mrr(order: list[str], recall1: float, recall3: float, mrr: float) -> None:
    data = DATA.model_copy(
        update={
            "documents": [MemoryItem(id=i, kind="document", text=i) for i in "abc"],
            "queries": [DATA.queries[0].model_copy(update={"relevant": "a"})],
        }
    )
    got = score("fixed", lambda _items, _q: order, data)
    assert got.recall[1] == recall1 and got.recall[3] == recall3
    assert got.mrr == round(mrr, 3)
    assert set(got.recall) == set(KS)


def test_rank_fusion_puts_first_what_both_rank_high() -> None:
    items = [MemoryItem(id=i, kind="document", text=i) for i in "abcd"]
    one = fused(lambda _i, _q: ["a", "b", "c", "d"], lambda _i, _q: ["b", "d", "a"])
    assert one(items, "q")[:2] == ["b", "a"]  # b: 1/62 + 1/61 beats a: 1/61 + 1/63


def test_bm25_on_the_shipped_set() -> None:
    """A floor under the retriever's ranking: a change that makes it worse fails here."""
    got = score("bm25+", bm25, DATA)
    assert got.recall[3] >= 0.9 and got.mrr >= 0.85, got.misses


def test_the_command_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrieval, "embedder", lambda: None)  # as without the extra
    assert main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| bm25+ | 40 |" in out
    assert "embeddings not measured: install the embeddings extra" in out
    assert (tmp_path / "retrieval.json").exists()
