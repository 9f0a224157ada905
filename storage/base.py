"""The checkpoint store seam: whole-object reads and writes under string keys.

This module imports no backend library, so users can implement the protocol for their own
store. Keys are ``/``-separated relative paths. There is no append and no rename, because
S3 has neither: every write replaces a whole object atomically or not at all.

``create`` is the one conditional write, and exactly-once rests on it: checkpoint N of a run
is created only if it is absent, so of two drivers of one run only one can commit each step
(an append with an expected version, as event stores do). A local directory does it with an
exclusive link, S3 with a conditional PUT (``If-None-Match: *``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from keel.errors import InputError


@runtime_checkable
class CheckpointStore(Protocol):
    """A flat object store. Implementations must make ``put`` all-or-nothing."""

    @property
    def url(self) -> str:
        """Where the objects live, as the user configured it."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` as the whole object ``key``, replacing any previous object."""
        ...

    def create(self, key: str, data: bytes) -> None:
        """Write ``data`` as ``key`` only if no object ``key`` exists, all or nothing.

        Raises:
            ObjectExistsError: the object already exists; nothing was written.
        """
        ...

    def get(self, key: str) -> bytes:
        """Read the whole object; raise ``ObjectNotFoundError`` when it does not exist."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursively), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root or collide with its layout."""

    if not key or key.startswith("/") or "\\" in key:
        raise InputError(f"invalid object key {key!r}", field="key")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InputError(f"invalid object key {key!r}", field="key")
    return key
