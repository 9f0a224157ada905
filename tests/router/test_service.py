"""The router on Ray Serve over real HTTP on 127.0.0.1, with the embedded default tiers:
the real local SmolLM2 model (``small``) and the rule-based planner (``large``)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from keel.client import Keel
from keel.config import KeelConfig, OrchestratorConfig, RouterConfig, StorageConfig
from keel.core.events import ModelCalled, RunStatus
from tests.actors.conftest import stop_orchestrator


@pytest.fixture
def default_router(local_router: int) -> str:
    return f"http://127.0.0.1:{local_router}"


def test_openai_client_gets_a_routed_completion(default_router: str) -> None:
    client = openai.OpenAI(base_url=f"{default_router}/v1", api_key="unused")
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["bad_config", "disk_full"]}},
        "required": ["label"],
    }
    resp = client.chat.completions.create(
        model="auto",
        messages=[
            {"role": "system", "content": 'Classify. Reply JSON {"label": ...}.'},
            {"role": "user", "content": "invalid value for max_connections in app.conf"},
        ],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        max_tokens=40,
        extra_body={"keel": {"kind": "classify"}},
    )
    keel_meta = resp.model_extra["keel"]  # type: ignore[index]
    assert keel_meta["tier"] == "small" and keel_meta["model"] == "openai/smollm2-135m-instruct"
    assert json.loads(resp.choices[0].message.content or "")["label"] in ("bad_config", "disk_full")
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    assert keel_meta["latency_s"] > 0


def test_route_explains_without_calling_a_model(default_router: str) -> None:
    body = {
        "messages": [{"role": "user", "content": "plan the fix"}],
        "keel": {"kind": "plan", "tools": 3},
    }
    decision = httpx.post(f"{default_router}/v1/route", json=body, timeout=30).json()
    assert decision["tier"] == "large" and decision["model"] == "keel-rules/planner"
    assert "plan 0.70" in decision["reason"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": "x"}], "keel": {"kind": "dance"}}, "kind"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "huge"}, "min_tier"),
    ],
)
def test_bad_requests_name_the_field(
    default_router: str, body: dict[str, object], field: str
) -> None:
    resp = httpx.post(f"{default_router}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code in (400, 422)
    assert field in resp.text


def test_real_small_tier_classification_in_a_run(
    default_router: str, serve_port: int, tmp_path: Path
) -> None:
    keel = Keel(
        KeelConfig(
            storage=StorageConfig(url=str(tmp_path / "store"), fsync=False),
            orchestrator=OrchestratorConfig(name=f"orch-{tmp_path.name}", node_num_cpus=0.25),
            router=RouterConfig(http_port=serve_port),
        )
    )
    try:
        st = keel.start("tests.actors.workflows:triage", "max_connections=abc broke the config")
        final = keel.watch(st.run_id, timeout_s=180)
        events = keel.show(st.run_id).events
    finally:
        stop_orchestrator(keel)
    assert final.status == RunStatus.SUCCEEDED, final.error
    first = next(e for e in events if isinstance(e, ModelCalled) and e.node == "classify")
    assert first.tier == "small" and first.model == "openai/smollm2-135m-instruct"
    assert first.prompt_tokens > 0 and first.completion_tokens > 0 and first.latency_s > 0
    assert final.data["label"] in ("bad_config", "disk_full", "crash_loop")
    planned = next(e for e in events if isinstance(e, ModelCalled) and e.node == "plan")
    assert planned.tier == "large" and planned.model == "keel-rules/planner"
    assert final.data["proposal"]["tool"] == "restore_config"
