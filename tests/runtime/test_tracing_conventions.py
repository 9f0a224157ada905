"""Span names and attributes follow OpenTelemetry's GenAI semantic conventions where they
apply (``chat``, ``execute_tool``), read back from the real SDK's in-memory exporter."""

from __future__ import annotations

import pytest

from keel.core.events import EffectIntent, EffectResult, NodeCompleted
from keel.runtime.tracing import RunTracer, provider_of
from tests.ledger import model_called


def test_a_turn_and_its_tool_call_are_chat_and_execute_tool_spans() -> None:
    tracer = RunTracer("memory")
    key = "run-1/3/fix.call/1"
    events = [
        model_called(
            seq=1,
            node="fix",
            step=2,
            model="anthropic/claude-sonnet-4-5",
            finish_reason="tool_calls",
            tool_calls=[{"id": "c1"}, {"id": "c2"}],
            prompt_tokens=120,
            completion_tokens=12,
        ),
        EffectIntent(
            seq=2, node="fix.call", step=3, attempt=1, key=key, tool="restore_config", args={}
        ),
        EffectResult(seq=3, key=key, ok=True, duration_s=0.2),
        NodeCompleted(
            seq=4, node="fix.call", step=3, attempt=1, updates={}, next="fix.result", duration_s=0.3
        ),
    ]
    tracer.annotate("run-1", events)
    spans = {s.name: dict(s.attributes or {}) for s in tracer.finished()}
    chat = spans["chat anthropic/claude-sonnet-4-5"]
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.provider.name"] == "anthropic"
    assert chat["gen_ai.response.model"] == "anthropic/claude-sonnet-4-5"
    assert tuple(chat["gen_ai.response.finish_reasons"]) == ("tool_calls",)
    assert chat["gen_ai.usage.input_tokens"] == 120 and chat["keel.tool_calls"] == 2
    tool = spans["execute_tool restore_config"]
    assert tool["gen_ai.operation.name"] == "execute_tool"
    assert tool["gen_ai.tool.name"] == "restore_config" and tool["gen_ai.tool.call.id"] == key


def test_an_agents_turn_is_an_invoke_agent_span_over_its_chat() -> None:
    tracer = RunTracer("memory")
    offered = {"kind": "plan", "functions": [{"type": "function", "function": {"name": "x"}}]}
    turn = [
        model_called(seq=1, node="fix", step=2, request=offered, finish_reason="tool_calls"),
        NodeCompleted(
            seq=2, node="fix", step=2, attempt=1, updates={}, next="fix.call", duration_s=0.1
        ),
    ]
    plain = [
        model_called(seq=3, node="plan", step=3, request={"kind": "plan"}),
        NodeCompleted(seq=4, node="plan", step=3, attempt=1, updates={}, next=None, duration_s=0.1),
    ]
    tracer.annotate("run-1", turn)
    tracer.annotate("run-1", plain)
    spans = {s.name: s for s in tracer.finished()}
    agent = spans["invoke_agent fix"]
    assert dict(agent.attributes or {})["gen_ai.operation.name"] == "invoke_agent"
    assert dict(agent.attributes or {})["gen_ai.agent.name"] == "fix"
    chats = [s for s in tracer.finished() if s.name.startswith("chat ")]
    assert chats[0].parent is not None and chats[0].parent.span_id == agent.context.span_id
    assert "node plan" in spans and "invoke_agent plan" not in spans  # no tools offered


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("openai/gpt-4o-mini", "openai"),
        ("anthropic/claude-sonnet-4-5", "anthropic"),
        ("ollama_chat/llama3.1", "ollama"),
        ("keel-rules/planner", "keel-rules"),
        ("gpt-4o", "openai"),
    ],
)
def test_the_provider_is_named_from_the_model_string(model: str, provider: str) -> None:
    assert provider_of(model) == provider
