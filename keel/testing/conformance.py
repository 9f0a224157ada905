"""The checkpoint-store conformance suite: every backend must pass every check here.

Each check takes a fresh, empty ``CheckpointStore``. Keel runs them all over its own
backends (a local directory, and S3 on a real server process); a third-party store runs
the same list the same way::

    import pytest
    from keel.testing.conformance import CHECKS

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_my_store_conforms(check, tmp_path):
        check(MyStore(tmp_path))
"""

from __future__ import annotations

import threading

import pytest

from keel.errors import (
    CorruptObjectError,
    InputError,
    ObjectExistsError,
    ObjectNotFoundError,
    RunNotFoundError,
    SchemaVersionError,
)
from keel.storage.base import CheckpointStore
from keel.storage.envelope import digest, open_sealed, seal
from keel.storage.memory import MemoryIndex, MemoryItem, MemoryStore
from keel.storage.runs import RunStore


def put_get_roundtrip(store: CheckpointStore) -> None:
    store.put("a/b/one.bin", b"\x00\x01payload")
    assert store.get("a/b/one.bin") == b"\x00\x01payload"


def put_replaces_whole_object(store: CheckpointStore) -> None:
    store.put("obj", b"a much longer first version")
    store.put("obj", b"short")
    assert store.get("obj") == b"short"


def missing_object_raises(store: CheckpointStore) -> None:
    with pytest.raises(ObjectNotFoundError) as info:
        store.get("nope/missing")
    assert info.value.context["key"] == "nope/missing"


def list_is_recursive_sorted_and_scoped(store: CheckpointStore) -> None:
    for key in ("p/2", "p/1", "p/sub/3", "q/4"):
        store.put(key, b"x")
    assert store.list("p") == ["p/1", "p/2", "p/sub/3"]
    assert store.list("absent") == []


def delete_is_idempotent(store: CheckpointStore) -> None:
    store.put("d", b"x")
    store.delete("d")
    store.delete("d")
    with pytest.raises(ObjectNotFoundError):
        store.get("d")


def bad_keys_rejected(store: CheckpointStore) -> None:
    for key in ("", "/abs", "a/../b", "a//b", "a\\b"):
        with pytest.raises(InputError) as info:
            store.put(key, b"x")
        assert info.value.field == "key"


def ledger_roundtrip(store: CheckpointStore) -> None:
    runs = RunStore(store)
    prev = None
    for n in range(3):
        prev = runs.append("r1", n, prev, [{"seq": n + 1, "type": "t", "n": n}])
    loaded = runs.load("r1")
    assert [e["n"] for e in loaded.events] == [0, 1, 2]
    assert loaded.next_n == 3 and loaded.last_digest == prev and not loaded.skipped


def _three_checkpoints(store: CheckpointStore) -> RunStore:
    runs = RunStore(store)
    prev = None
    for n in range(3):
        prev = runs.append("r", n, prev, [{"seq": n + 1, "n": n}])
    return runs


def truncated_checkpoint_skipped(store: CheckpointStore) -> None:
    runs = _three_checkpoints(store)
    key = runs.checkpoint_key("r", 2)
    store.put(key, store.get(key)[:-7])
    loaded = runs.load("r")
    assert [e["n"] for e in loaded.events] == [0, 1]
    assert loaded.next_n == 2
    assert [s.key for s in loaded.skipped] == [key]
    assert "torn" in loaded.skipped[0].reason


def wrong_checksum_skipped(store: CheckpointStore) -> None:
    runs = _three_checkpoints(store)
    key = runs.checkpoint_key("r", 1)
    data = store.get(key)
    store.put(key, data.replace(b'"n":1', b'"n":7'))
    loaded = runs.load("r")
    assert [e["n"] for e in loaded.events] == [0]
    assert loaded.skipped[0].key == key and "checksum" in loaded.skipped[0].reason
    # The later, intact checkpoint follows a bad one: never folded in.
    assert loaded.skipped[1].key == runs.checkpoint_key("r", 2)


def missing_middle_checkpoint_breaks_chain(store: CheckpointStore) -> None:
    runs = _three_checkpoints(store)
    store.delete(runs.checkpoint_key("r", 1))
    loaded = runs.load("r")
    assert [e["n"] for e in loaded.events] == [0]
    assert loaded.skipped[0].key == runs.checkpoint_key("r", 2)


def rewritten_checkpoint_unchains_stale_successors(store: CheckpointStore) -> None:
    runs = _three_checkpoints(store)
    first = runs.load("r")
    # A writer that resumed from checkpoint 0 cannot replace checkpoint 1 (the fence) ...
    with pytest.raises(ObjectExistsError):
        runs.append("r", 1, _digest_of(runs, 0), [{"seq": 2, "n": 10}])
    # ... but once checkpoint 1 was moved aside (quarantined as torn) it writes its own, and
    # the old checkpoint 2, which follows the old 1, no longer chains.
    store.delete(runs.checkpoint_key("r", 1))
    runs.append("r", 1, _digest_of(runs, 0), [{"seq": 2, "n": 10}])
    loaded = runs.load("r")
    assert [e["n"] for e in loaded.events] == [0, 10]
    assert [s.key for s in loaded.skipped] == [runs.checkpoint_key("r", 2)]
    assert first.next_n == 3


def _digest_of(runs: RunStore, n: int) -> str:

    key = runs.checkpoint_key("r", n)
    return digest(open_sealed(runs.store.get(key), key=key, kind="checkpoint"))


def quarantine_moves_bad_objects_aside(store: CheckpointStore) -> None:
    runs = _three_checkpoints(store)
    key = runs.checkpoint_key("r", 2)
    store.put(key, b"garbage")
    moved = runs.quarantine(runs.load("r"))
    assert len(moved) == 1 and moved[0].startswith("quarantine/r/")
    assert store.get(moved[0]) == b"garbage"
    assert not runs.load("r").skipped


def newer_schema_refused(store: CheckpointStore) -> None:
    runs = RunStore(store)
    body = b'{"schema":99,"run_id":"r","n":0,"prev":null,"events":[]}'
    store.put(runs.checkpoint_key("r", 0), seal(body, "checkpoint"))
    with pytest.raises(SchemaVersionError, match="upgrade Keel"):
        runs.load("r")


def unknown_run_raises(store: CheckpointStore) -> None:
    with pytest.raises(RunNotFoundError) as info:
        RunStore(store).load("no-such-run")
    assert info.value.field == "run_id"


def index_roundtrip_and_listing(store: CheckpointStore) -> None:
    runs = RunStore(store)
    runs.write_index("r1", {"run_id": "r1", "status": "running"})
    runs.write_index("r2", {"run_id": "r2", "status": "succeeded"})
    runs.write_index("r1", {"run_id": "r1", "status": "failed"})
    assert sorted(runs.list_run_ids()) == ["r1", "r2"]
    assert runs.read_index("r1") == {"run_id": "r1", "status": "failed"}
    store.put(runs.index_key("r2"), b"{broken")
    assert runs.read_index("r2") is None


def memory_lives_apart_from_runs(store: CheckpointStore) -> None:
    memory = MemoryStore(store)
    memory.put(MemoryItem(id="rb-1", kind="document", text="restart the service"))
    memory.put(MemoryItem(id="ep-1", kind="episode", text="run x restarted it", source_run="x"))
    assert [m.id for m in memory.list("document")] == ["rb-1"]
    assert memory.get("episode", "ep-1").source_run == "x"
    assert RunStore(store).list_run_ids() == []
    assert all(k.startswith(("memory/", "memory-rev/")) for k in store.list(""))


def memory_namespaces_are_apart(store: CheckpointStore) -> None:
    memory = MemoryStore(store)
    memory.put(MemoryItem(id="rb-1", kind="document", text="shared runbook"))
    memory.put(MemoryItem(id="rb-1", kind="document", text="carol's own", namespace="carol"))
    assert [m.text for m in memory.list("document")] == ["shared runbook"]
    assert [m.text for m in memory.list("document", "carol")] == ["carol's own"]
    memory.delete("document", "rb-1", "carol")
    assert memory.list(namespace="carol") == [] and len(memory.list()) == 1


def memory_index_rereads_only_after_a_change(store: CheckpointStore) -> None:
    """A reader's index reads a namespace again only once a writer (here another
    ``MemoryStore`` on the same store, as another process would be) has changed it."""
    index = MemoryIndex(MemoryStore(store))
    writer = MemoryStore(store)
    writer.put(MemoryItem(id="rb-1", kind="document", text="first"))
    assert [m.text for m in index.items("document")] == ["first"]
    assert [m.text for m in index.items("document")] == ["first"] and index.loads == 1
    writer.put(MemoryItem(id="rb-1", kind="document", text="second"))  # same key, new text
    assert [m.text for m in index.items("document")] == ["second"] and index.loads == 2
    writer.put(MemoryItem(id="ep-1", kind="episode", text="x", namespace="carol"))
    assert index.items("document") and index.loads == 2  # another namespace changed
    writer.delete("document", "rb-1")
    assert index.items("document") == [] and index.loads == 3


def corrupt_memory_item_not_loaded(store: CheckpointStore) -> None:
    memory = MemoryStore(store)
    memory.put(MemoryItem(id="rb-2", kind="document", text="x"))
    store.put("memory/document/rb-2.json", b"junk")
    with pytest.raises(CorruptObjectError):
        memory.get("document", "rb-2")


def create_refuses_an_existing_object(store: CheckpointStore) -> None:
    store.create("c/one", b"first")
    with pytest.raises(ObjectExistsError) as info:
        store.create("c/one", b"second")
    assert info.value.context["key"] == "c/one"
    assert store.get("c/one") == b"first"
    store.put("c/two", b"x")
    with pytest.raises(ObjectExistsError):
        store.create("c/two", b"y")


def racing_creates_have_one_winner(store: CheckpointStore) -> None:
    """Eight writers create the same key at once: exactly one succeeds, and its bytes are
    the object's."""
    barrier = threading.Barrier(8)
    won: list[int] = []

    def writer(i: int) -> None:
        barrier.wait()
        try:
            store.create("race/key", f"writer {i}".encode())
            won.append(i)
        except ObjectExistsError:
            pass

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert store.get("race/key") == f"writer {won[0]}".encode()


def checkpoint_numbers_are_fenced(store: CheckpointStore) -> None:
    """Checkpoint n exists once: a second writer is refused, a retry of the very same write
    (its reply lost) is recognised as done, and the writer's name is kept."""
    runs = RunStore(store)
    events = [{"type": "run_created", "seq": 1}]
    first = runs.append("fenced", 0, None, events, "a@1")
    assert runs.append("fenced", 0, None, events, "a@1") == first
    with pytest.raises(ObjectExistsError):
        runs.append("fenced", 0, None, [{"type": "other"}], "b@1")
    loaded = runs.load("fenced")
    assert loaded.owner == "a@1" and loaded.next_n == 1


CHECKS = [
    put_get_roundtrip,
    put_replaces_whole_object,
    missing_object_raises,
    list_is_recursive_sorted_and_scoped,
    delete_is_idempotent,
    bad_keys_rejected,
    ledger_roundtrip,
    truncated_checkpoint_skipped,
    wrong_checksum_skipped,
    missing_middle_checkpoint_breaks_chain,
    rewritten_checkpoint_unchains_stale_successors,
    quarantine_moves_bad_objects_aside,
    newer_schema_refused,
    unknown_run_raises,
    index_roundtrip_and_listing,
    memory_lives_apart_from_runs,
    memory_namespaces_are_apart,
    memory_index_rereads_only_after_a_change,
    corrupt_memory_item_not_loaded,
    create_refuses_an_existing_object,
    racing_creates_have_one_winner,
    checkpoint_numbers_are_fenced,
]
