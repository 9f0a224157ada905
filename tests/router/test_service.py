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
    # The shipped router reads the words; what it cannot read goes by the heuristic.
    assert decision["reason"].startswith("content classifier p=") and "plan +" in decision["reason"]
    body["messages"] = [{"role": "user", "content": "zzz qqq"}]
    decision = httpx.post(f"{default_router}/v1/route", json=body, timeout=30).json()
    assert decision["tier"] == "large" and decision["reason"].startswith("plan 0.70")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": "x"}], "keel": {"kind": "dance"}}, "kind"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "huge"}, "model"),
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


RESTART = {
    "type": "function",
    "function": {
        "name": "restart_service",
        "description": "Restart a service that is down",
        "parameters": {
            "type": "object",
            "properties": {"service": {"type": "string", "default": "checkout"}},
            "required": ["service"],
        },
    },
}
READ = {
    "type": "function",
    "function": {
        "name": "read_logs",
        "description": "Read the logs of a service",
        "parameters": {"type": "object", "properties": {"service": {"type": "string"}}},
    },
}


def test_the_rules_tier_calls_tools_natively_then_answers(default_router: str) -> None:
    api = openai.OpenAI(base_url=f"{default_router}/v1", api_key="unused", max_retries=0)
    asked = [{"role": "user", "content": "checkout is down: restart the service"}]
    first = api.chat.completions.create(model="large", messages=asked, tools=[READ, RESTART])
    calls = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    assert calls[0].function.name == "restart_service"
    assert json.loads(calls[0].function.arguments) == {"service": "checkout"}
    # With the tool's answer in the history, the rules answer in text instead of calling.
    history = [
        *asked,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "restarted"},
    ]
    final = api.chat.completions.create(model="large", messages=history, tools=[READ, RESTART])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "done: restarted"
    streamed = api.chat.completions.create(
        model="large", messages=asked, tools=[READ, RESTART], stream=True
    )
    names = [
        d.function.name
        for chunk in streamed
        for choice in chunk.choices
        for d in choice.delta.tool_calls or []
        if d.function and d.function.name
    ]
    assert names == ["restart_service"]


def test_the_local_model_answers_with_tool_calls_and_streams(default_router: str) -> None:
    """The small tier itself (SmolLM2 on llama.cpp), asked directly at its endpoint."""
    local = f"{default_router}/local/v1/chat/completions"
    body = {
        "messages": [{"role": "user", "content": "The checkout service is down. Fix it."}],
        "tools": [RESTART, READ],
        "tool_choice": "required",
        "max_tokens": 64,
    }
    resp = httpx.post(local, json=body, timeout=120).json()
    choice = resp["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] in ("restart_service", "read_logs")
    # The grammar keeps it to a declared function and an object of arguments (a string in
    # it may hold a raw newline, which strict JSON refuses: arguments are validated anyway).
    assert isinstance(json.loads(call["arguments"], strict=False), dict)

    plain = {"messages": body["messages"], "max_tokens": 16, "stream": True}
    with httpx.stream("POST", local, json=plain, timeout=120) as streamed:
        data = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and len(data) > 3  # tokens as they were made
    text = "".join(
        json.loads(d.removeprefix("data: "))["choices"][0]["delta"].get("content") or ""
        for d in data[:-1]
    )
    assert text.strip()
