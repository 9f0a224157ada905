"""Memory, without Ray: long-term memory by namespace under the real Casbin policy, bad
input refused naming the field with nothing written, `keel memory` in-process, and the
episode every run leaves at its end in its principal's memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.cli import main
from keel.core.events import RunStatus
from keel.errors import InputError, MemoryNotFoundError, PolicyError
from keel.policy.engine import PolicyEngine
from keel.runtime.memory_book import MemoryBook
from keel.storage.local import LocalStore
from keel.storage.memory import MemoryStore
from keel.storage.runs import RunStore
from tests.conftest import TEST_POLICY
from tests.runtime.conftest import EngineFactory

MODEL = str(Path(__file__).resolve().parents[2] / "policy" / "model.conf")


@pytest.fixture
def book(tmp_path: Path) -> MemoryBook:
    return MemoryBook(
        MemoryStore(LocalStore(tmp_path / "store", fsync=False)), PolicyEngine(MODEL, TEST_POLICY)
    )


def test_add_list_search_forget_by_namespace(book: MemoryBook) -> None:
    book.add("alice", item_id="rb-restart", text="restart checkout after a bad config change")
    book.add("alice", item_id="rb-disk", text="free disk space under data", tags=("disk",))
    book.add("carol", item_id="mine", text="restart checkout twice", namespace="carol")

    assert [i.id for i in book.listing("bob")] == ["rb-disk", "rb-restart"]  # viewer reads
    found = book.search("carol", "restart checkout", ["shared", "carol"], k=5)
    assert {i.id for i, _ in found} == {"rb-restart", "mine"}
    assert all(score > 0 for _, score in found)
    # Tenants apart: carol (a requester) reads shared and her own, not alice's.
    book.add("alice", item_id="private", text="alice only", namespace="alice")
    with pytest.raises(PolicyError) as refused:
        book.listing("carol", "alice")
    assert refused.value.field == "namespace"
    assert [i.id for i in book.listing("carol", "carol")] == ["mine"]

    book.forget("alice", "rb-disk")
    assert [i.id for i in book.listing("alice")] == ["rb-restart"]
    with pytest.raises(MemoryNotFoundError) as missing:
        book.forget("alice", "rb-disk")
    assert missing.value.field == "id"


@pytest.mark.parametrize(
    ("who", "fields", "error", "field"),
    [
        ("alice", {"item_id": "bad id!"}, InputError, "id"),
        ("alice", {"namespace": "../etc"}, InputError, "namespace"),
        ("alice", {"kind": "secret"}, InputError, "kind"),
        ("alice", {"text": "   "}, InputError, "text"),
        ("alice", {"text": "x" * 1_000_001}, InputError, "text"),
        ("bob", {}, PolicyError, "namespace"),  # a viewer reads, never adds
        ("carol", {}, PolicyError, "namespace"),  # shared is not carol's to add to
    ],
)
def test_bad_adds_name_the_field_and_write_nothing(
    book: MemoryBook, who: str, fields: dict[str, str], error: type[Exception], field: str
) -> None:
    asked = {"item_id": "rb-1", "text": "restart it", **fields}
    with pytest.raises(error) as info:
        book.add(who, **asked)  # type: ignore[arg-type]
    assert getattr(info.value, "field", None) == field
    assert book.store.store.list("") == []


@pytest.mark.parametrize(
    ("query", "k", "field"), [("  ", 3, "query"), ("restart", 0, "k"), ("restart", 51, "k")]
)
def test_bad_searches_name_the_field(book: MemoryBook, query: str, k: int, field: str) -> None:
    with pytest.raises(InputError) as info:
        book.search("alice", query, ["shared"], k)
    assert info.value.field == field


async def test_every_run_leaves_an_episode_in_its_principals_memory(
    engines: EngineFactory, store: RunStore, tmp_path: Path
) -> None:
    engine = engines()
    st = await engine.create(
        "tests.actors.workflows:five", "ship the order", {"dir": str(tmp_path)}, principal="carol"
    )
    final = await engine.wait(st.run_id, 30)
    assert final.status == RunStatus.SUCCEEDED
    memory = MemoryStore(store.store)
    (ep,) = memory.list("episode", "carol")
    assert ep.id == st.run_id and ep.source_run == st.run_id
    assert "goal: ship the order" in ep.text and "outcome: succeeded" in ep.text
    assert "charge: charge" in ep.text and "ship: ship" in ep.text  # what it did, in order
    assert memory.list("episode") == []  # not in shared: other tenants do not see it


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["add", "rb-1", "--text", "restart checkout"], 0, "added document rb-1 to shared"),
        (["list", "--json"], 0, '"id": "rb-1"'),
        (["search", "checkout restart"], 0, "rb-1 (shared/document)"),
        (["add", "bad id", "--text", "x"], 2, "id: 'bad id'"),
        (["add", "rb-2"], 2, "text: give the item's text"),
        (["add", "rb-2", "--text", "x", "--kind", "nope"], 2, "kind: 'nope'"),
        (["search", "x", "-k", "0"], 2, "k: must be between 1 and 50"),
        (["list", "--namespace", "alice", "--as", "carol"], 3, "namespace"),
        (["forget", "nope"], 2, "id: no document 'nope'"),
        (["forget", "rb-1"], 0, "forgot document rb-1 in shared"),
    ],
)
def test_keel_memory_commands(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    says: str,
) -> None:
    storage = tmp_path_factory.getbasetemp() / "memory-cli-store"  # one store, in order
    got = main(["--storage", str(storage), "memory", *args])
    shown = capsys.readouterr()
    assert got == code, shown.out + shown.err
    assert says in shown.out + shown.err
