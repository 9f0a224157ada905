"""Long-term memory as people and tenants use it: add, list, search and forget items,
each checked against policy first, with bad input refused before anything is written.

Namespaces keep tenants apart: ``shared`` (the runbooks every run may recall) and one per
tenant. A principal reads, writes and forgets in its own namespace (named after it) as it
reads its own runs; anything else is policy's to allow, on the object ``memory:<namespace>``
with the action ``read``, ``add`` or ``forget``. Memory helps reasoning and is never
evidence: nothing here touches a run's state.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ValidationError

from keel.errors import InputError, MemoryNotFoundError, ObjectNotFoundError, PolicyError
from keel.policy.engine import PolicyEngine
from keel.storage.memory import NAME, SHARED, MemoryItem, MemoryKind, MemoryStore, rank

Action = Literal["read", "add", "forget"]
KINDS: tuple[MemoryKind, ...] = ("document", "episode")


def check_name(value: str, field: str) -> str:
    if not re.fullmatch(NAME, value):
        raise InputError(
            f"{value[:60]!r}: letters, digits, '.', '_' and '-', starting with a letter or "
            "digit, at most 128",
            field=field,
        )
    return value


def check_kind(value: str | None) -> MemoryKind | None:
    if value is None or value in KINDS:
        return value
    raise InputError(f"{value!r}: one of {', '.join(KINDS)}", field="kind")


class MemoryBook:
    """Policy-checked memory for one principal at a time."""

    def __init__(self, store: MemoryStore, policy: PolicyEngine) -> None:
        self.store, self.policy = store, policy

    def may(self, principal: str, namespace: str, action: Action) -> None:
        if namespace == principal:
            return
        decision = self.policy.decide(principal, f"memory:{namespace}", action)
        if decision.effect != "allow":
            raise PolicyError(
                f"{principal} may not {action} memory in namespace {namespace!r}",
                field="namespace",
            )

    def add(
        self,
        principal: str,
        *,
        item_id: str,
        text: str,
        namespace: str = SHARED,
        kind: str = "document",
        title: str = "",
        tags: tuple[str, ...] = (),
    ) -> MemoryItem:
        """Raises InputError naming the field (nothing written), or PolicyError."""
        check_name(item_id, "id")
        check_name(namespace, "namespace")
        check_kind(kind)
        self.may(principal, namespace, "add")
        fields = {"id": item_id, "kind": kind, "text": text, "title": title, "tags": tags}
        try:
            item = MemoryItem.model_validate({**fields, "namespace": namespace})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "item"
            raise InputError(str(err["msg"]), field=field) from None
        if not text.strip():
            raise InputError("must not be empty", field="text")
        self.store.put(item)
        return item

    def listing(
        self, principal: str, namespace: str = SHARED, kind: str | None = None
    ) -> list[MemoryItem]:
        check_name(namespace, "namespace")
        self.may(principal, namespace, "read")
        return sorted(self.store.list(check_kind(kind), namespace), key=lambda m: m.id)

    def search(
        self, principal: str, query: str, namespaces: list[str], k: int = 5
    ) -> list[tuple[MemoryItem, float]]:
        """The best ``k`` items for ``query`` across ``namespaces`` (each read-checked)."""
        if not query.strip():
            raise InputError("must not be empty", field="query")
        if not 1 <= k <= 50:
            raise InputError("must be between 1 and 50", field="k")
        items: list[MemoryItem] = []
        for namespace in namespaces:
            items += self.listing(principal, namespace)
        return rank(items, query, k)

    def forget(
        self, principal: str, item_id: str, namespace: str = SHARED, kind: str = "document"
    ) -> None:
        check_name(item_id, "id")
        check_name(namespace, "namespace")
        checked = check_kind(kind) or "document"
        self.may(principal, namespace, "forget")
        try:
            self.store.get(checked, item_id, namespace)
        except ObjectNotFoundError:
            raise MemoryNotFoundError(
                f"no {checked} {item_id!r} in {namespace!r}", field="id"
            ) from None
        self.store.delete(checked, item_id, namespace)
