"""Fakes at the one boundary Keel does not own (paid model APIs), over real HTTP."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from keel.actors.messages import orchestrator_settings
from keel.actors.shards import shard_names
from keel.actors.workers import worker_names
from keel.config import (
    APIConfig,
    KeelConfig,
    OrchestratorConfig,
    RouterConfig,
    StorageConfig,
    TierConfig,
)
from keel.router.service import APP_NAME, deploy
from keel.server.a2a import deploy_a2a
from keel.server.memory_api import deploy_memory_api
from keel.server.runs_api import deploy_runs_api, hash_key
from keel.testing.scripted import launch

PRICES = {"small": (1e-6, 2e-6), "large": (1e-5, 3e-5)}


class Scripted:
    """Handle on the scripted OpenAI-compatible server process."""

    def __init__(self, base: str) -> None:
        self.base = base

    def script(self, model: str, **plan: object) -> None:
        httpx.post(f"{self.base}/_script", json={"model": model, **plan}).raise_for_status()

    def calls(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(f"{self.base}/_calls").json()
        return data

    def last(self) -> dict[str, dict[str, object]]:
        """The body of the last request, per model."""
        data: dict[str, dict[str, object]] = httpx.get(f"{self.base}/_last").json()
        return data

    def headers(self) -> dict[str, dict[str, str | None]]:
        """The Authorization and traceparent headers of the last request, per model."""
        data: dict[str, dict[str, str | None]] = httpx.get(f"{self.base}/_headers").json()
        return data

    def reset(self) -> None:
        httpx.post(f"{self.base}/_reset").raise_for_status()


def _reserve_mcp_port() -> None:
    """The test MCP server's address, fixed at import (before Ray starts) so Ray workers
    inherit it and the test workflow can name the server."""

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if os.environ.get("KEEL_TEST_MCP_WORKER") == worker:
        return  # set by this process's parent for it (a subprocess of the suite)
    os.environ["KEEL_TEST_MCP_WORKER"] = worker  # an xdist worker picks ports of its own
    os.environ["KEEL_TEST_MCP_URL"] = f"http://127.0.0.1:{free_port()}/mcp"
    markers = tempfile.mkdtemp(prefix="keel-mcp-")
    atexit.register(shutil.rmtree, markers, ignore_errors=True)
    os.environ["KEEL_TEST_MCP_MARKERS"] = markers


def free_port() -> int:

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def scripted_server() -> Iterator[Scripted]:
    """The scripted OpenAI-compatible provider, a real process on 127.0.0.1."""

    proc, base = launch()
    yield Scripted(base)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def scripted(scripted_server: Scripted) -> Scripted:
    scripted_server.reset()
    return scripted_server


def two_tier_config(base: str, *, cooldown_s: float = 30.0, timeout_s: float = 5.0) -> RouterConfig:
    """Both tiers on the scripted server, with prices, so cost can be checked; routed by
    the heuristic (kind, length, tools, failures), so each test's request goes to the tier
    it scripts whatever its words (the content classifier has tests of its own)."""
    return RouterConfig(
        route_by="heuristic",
        tiers=[
            TierConfig(
                name=name,
                model=f"openai/{name}-model",
                api_base=f"{base}/v1",
                max_score=limit,
                input_cost_per_token=PRICES[name][0],
                output_cost_per_token=PRICES[name][1],
                timeout_s=timeout_s,
            )
            for name, limit in (("small", 0.45), ("large", 1.0))
        ],
        num_retries=0,
        allowed_fails=0,
        cooldown_s=cooldown_s,
    )


@pytest.fixture(scope="session")
def serve_port(ray_session: None) -> Iterator[int]:
    """Serve's HTTP proxy for the session, on a free loopback port (Serve keeps the
    options of its first start, so every router config in the session uses this port)."""

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


_reserve_mcp_port()


def scripted_keel_config(
    tmp_path: Any, scripted: Scripted, serve_port: int, **sections: Any
) -> Any:
    """A Keel config for one test: its own storage and orchestrator, both router tiers on
    the scripted provider, plus any other sections (budgets, telemetry, ...)."""

    return KeelConfig(
        storage=StorageConfig(url=str(tmp_path / "store"), fsync=False),
        orchestrator=OrchestratorConfig(name=f"orch-{tmp_path.name}", node_num_cpus=0.25),
        router=two_tier_config(scripted.base).model_copy(update={"http_port": serve_port}),
        **sections,
    )


def script_triage(scripted: Scripted) -> None:
    """The provider's answers for the triage workflow: a label, then a plan."""
    scripted.script("small-model", reply='{"label": "bad_config"}', usage=[30, 6])
    scripted.script(
        "large-model",
        reply='{"tool": "restore_config", "args": {"service": "checkout"}}',
        usage=[200, 20],
    )


class _Router:
    """The router configuration Serve runs now. A deployment costs a replica process and
    litellm's import (about 10 s on 2 cores), so tests that want the same one share it;
    every test that needs a router says which, through the fixtures below."""

    running: str | None = None


def use_router(config: RouterConfig) -> None:
    """Serve runs ``config`` as the router when this returns, deployed only if it is not
    the one running already."""
    key = config.model_dump_json()
    if _Router.running == key:
        try:
            serve.get_app_handle(APP_NAME)
            return
        except RayServeException:
            pass
    deploy(config)
    _Router.running = key


@pytest.fixture(scope="module")
def local_router(serve_port: int) -> int:
    """The shipped router (the local model and the rules tier) on Serve."""
    use_router(RouterConfig(http_port=serve_port))
    return serve_port


@pytest.fixture
def scripted_router(serve_port: int, scripted: Scripted) -> Scripted:
    """Both router tiers on the scripted provider (reset for this test), on Serve."""
    use_router(two_tier_config(scripted.base).model_copy(update={"http_port": serve_port}))
    return scripted


@contextmanager
def runs_api(
    serve_port: int,
    store: Path,
    name: str,
    workflows: list[str],
    keys: dict[str, str],
    *,
    a2a: bool = False,
    memory: bool = False,
    **api: Any,
) -> Iterator[str]:
    """The runs API on Serve over ``store``, its orchestrator named ``orch-NAME``, and with
    ``a2a`` and ``memory`` the A2A facade and the memory API too; ``keys`` maps API keys
    to principals, ``api`` sets more of ``api`` in keel.yaml. Yields the API's base URL."""
    config = KeelConfig(
        storage=StorageConfig(url=str(store), fsync=False),
        orchestrator=OrchestratorConfig(name=f"orch-{name}", node_num_cpus=0.25),
        api=APIConfig(workflows=workflows, **api),
        router=RouterConfig(http_port=serve_port),
    )
    hashed = {hash_key(k): p for k, p in keys.items()}
    deploy_runs_api(config.model_dump(mode="json"), hashed)
    if a2a:
        deploy_a2a(config.model_dump(mode="json"), hashed)
    if memory:
        deploy_memory_api(config.model_dump(mode="json"), hashed)
    try:
        yield f"http://127.0.0.1:{serve_port}/v1/runs"
    finally:
        if memory:
            serve.delete("keel-memory")
        if a2a:
            serve.delete("keel-a2a")
        serve.delete("keel-runs")
        stop_deployment(config)


# Workers built with a deployment's own store (the others serve a router, or nothing in
# particular, and are shared by every deployment in the session).
STORE_ROLES = ("retriever", "executor")


def stop_deployment(config: KeelConfig) -> None:
    """Stop a test's deployment: its orchestrator and the workers that hold its store.
    They are detached, so otherwise they would idle on the session's Ray until it ends,
    each costing a little CPU that every later test pays."""
    env = orchestrator_settings(config).node_env()
    orchestrators = shard_names(config.orchestrator.name, config.orchestrator.shards)
    for name in [*orchestrators, *worker_names(env, STORE_ROLES)]:
        with contextlib.suppress(ValueError):  # never started, or gone already
            ray.kill(ray.get_actor(name, namespace="keel"), no_restart=True)
