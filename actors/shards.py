"""A deployment's orchestrators as one: the runs shared among several actors.

One orchestrator actor drives every run of a deployment by default, and it is then where
a cluster stops scaling: each run's commits and worker calls pass through its one event
loop. With ``orchestrator.shards`` above one, each run lives with the orchestrator its id
hashes to, and those actors spread over the cluster's nodes. The hash is stable (CRC-32,
not Python's salted ``hash``), so every process that calls the orchestrators (clients,
API replicas) sends a run's calls to the same actor without asking anyone.

Each shard is an instance of its own with its own lease, so the rules between instances
hold between shards: a shard that stays down past its lease has its runs taken over by
another, and a call for such a run is sent on to the shard that now owns it.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

import ray

from keel.actors.messages import OrchestratorSettings
from keel.actors.orchestrator import get_orchestrator
from keel.errors import ConfigError
from keel.storage.leases import owner_id, split_owner


def shard_names(name: str, shards: int) -> list[str]:
    """The orchestrators' actor names: the first keeps the deployment's own name, so a
    deployment of one (the default) is what it always was."""
    return [name, *(f"{name}-{i}" for i in range(1, shards))]


def shard_of(run_id: str, shards: int) -> int:
    return zlib.crc32(run_id.encode()) % shards


class Orchestrators:
    """The handles of a deployment's orchestrators, each looked up (or created) once.

    ``check_storage`` (for a synchronous caller, which may block on the answer) asks each
    orchestrator for its storage the first time it is used: a client configured for other
    storage must not silently drive (or look for) its runs somewhere else.
    """

    def __init__(
        self, settings: OrchestratorSettings, cls: Any = None, *, check_storage: bool = False
    ) -> None:
        self.settings = settings
        self.names = shard_names(settings.name, settings.shards)
        self.cls = cls
        self.check_storage = check_storage
        self._handles: dict[int, Any] = {}
        self._lock = threading.Lock()

    def index(self, run_id: str | None) -> int:
        """The shard a run lives with (the first, for calls about no run)."""
        return 0 if run_id is None else shard_of(run_id, len(self.names))

    def for_run(self, run_id: str | None) -> Any:
        return self.at(self.index(run_id))

    def at(self, i: int) -> Any:
        with self._lock:
            handle = self._handles.get(i)
        if handle is not None:
            return handle
        name = self.names[i]
        handle = get_orchestrator(
            self.settings.model_copy(update={"name": name}), name, self.cls, index=i
        )
        if self.check_storage:
            mine = self.settings.storage_url
            theirs = ray.get(handle.info.remote())["storage"]
            if theirs != mine:
                raise ConfigError(
                    f"orchestrator {name!r} in this cluster keeps runs in {theirs}, not "
                    f"{mine}; give this deployment its own orchestrator.name",
                    field="orchestrator.name",
                )
        with self._lock:
            self._handles[i] = handle
        return handle

    def known(self) -> list[Any]:
        """The handles looked up so far (those this process may have started)."""
        with self._lock:
            return list(self._handles.values())

    def forget(self, i: int) -> None:
        """Drop a handle whose actor was killed for good; the next call creates it again."""
        with self._lock:
            self._handles.pop(i, None)

    def owning(self, owner: str | None) -> int | None:
        """Which of these orchestrators writes as ``owner`` (``<host>.<cluster>.<name>@n``),
        if any; the longest name wins, so ``orchestrator-1`` is never read as
        ``orchestrator``."""
        base = split_owner(owner or "")[0]
        found = [(len(n), i) for i, n in enumerate(self.names) if base.endswith("." + owner_id(n))]
        return max(found)[1] if found else None
