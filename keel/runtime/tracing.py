"""OpenTelemetry spans for runs, made from the ledger as it is committed.

One trace per run: its id is derived from the run id, so every incarnation of the
orchestrator adds to the same trace. Each ``node_completed``, ``model_called``,
``policy_decided`` and ``effect_result`` event gets one span (and the span's ids are written
into the event), so spans and ledger match one to one by construction. Spans follow the
GenAI semantic conventions where they apply: a model call is ``chat``, a tool's effect
``execute_tool``, and the node of an agent's turn (a node whose model call offered tools as
functions) ``invoke_agent``, with the turn's ``chat`` nested under it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from keel.core.events import (
    EffectIntent,
    EffectResult,
    Event,
    ModelCalled,
    NodeCompleted,
    PolicyDecided,
)

Exporter = Literal["none", "console", "memory", "otlp"]
DEFAULT_OTLP = "http://127.0.0.1:4318/v1/traces"
TRACED = (NodeCompleted, ModelCalled, PolicyDecided, EffectResult)
_T = TypeVar("_T")


def run_trace_id(run_id: str) -> int:
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:32], 16) or 1


def _root_span_id(run_id: str) -> int:
    return int(hashlib.sha256(f"root:{run_id}".encode()).hexdigest()[:16], 16) or 1


def run_context(run_id: str) -> Any:
    """An OpenTelemetry context inside the run's trace, under its root span."""
    ctx = SpanContext(
        trace_id=run_trace_id(run_id),
        span_id=_root_span_id(run_id),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def in_run_trace(run_id: str, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` with the run's trace as the current context: a tool that traces (or
    runs in the sandbox, which passes it on as ``TRACEPARENT``) joins the run's trace."""
    token = otel_context.attach(run_context(run_id))
    try:
        return fn(*args)
    finally:
        otel_context.detach(token)


def run_traceparent(run_id: str) -> str:
    """The run's trace as a W3C ``traceparent``, sent with its model calls: a provider or
    proxy that traces puts its spans in the run's trace, under the run's root."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=run_context(run_id))
    return carrier["traceparent"]


class RunTracer:
    """Turns committed events into spans; ``exporter`` picks where they go."""

    def __init__(self, exporter: Exporter = "none", endpoint: str | None = None) -> None:
        self.memory: InMemorySpanExporter | None = None
        self.provider = TracerProvider(resource=Resource.create({"service.name": "keel"}))
        sink: SpanExporter | None = None
        if exporter == "console":
            sink = ConsoleSpanExporter()
        elif exporter == "memory":
            sink = self.memory = InMemorySpanExporter()
        elif exporter == "otlp":
            # Batched, off the orchestrator's event loop: export never delays a commit.
            otlp = OTLPSpanExporter(endpoint=endpoint or DEFAULT_OTLP, timeout=10)
            self.provider.add_span_processor(BatchSpanProcessor(otlp))
            sink = otlp
        if sink is not None and exporter != "otlp":
            self.provider.add_span_processor(SimpleSpanProcessor(sink))
        self.enabled = sink is not None
        self.tracer = self.provider.get_tracer("keel")

    def annotate(self, run_id: str, events: Sequence[Event]) -> list[Event]:
        """Emit a span per traced event; return the events with trace and span ids set."""
        if not self.enabled:
            return list(events)
        out: list[Event] = []
        tools = {e.key: e.tool for e in events if isinstance(e, EffectIntent)}
        parent = run_context(run_id)
        now = time.time_ns()
        nodes = [e for e in events if isinstance(e, NodeCompleted)]
        node_ctx = parent
        if nodes:  # the node's span first, so what happened in it nests under it
            node = nodes[0]
            turn = any(isinstance(e, ModelCalled) and _offers_tools(e) for e in events)
            span = self._span(node, parent, now, run_id, tools, agent=turn)
            node_ctx = trace.set_span_in_context(span)
        for ev in events:
            if not isinstance(ev, TRACED):
                out.append(ev)
                continue
            if isinstance(ev, NodeCompleted) and nodes and ev is nodes[0]:
                span_obj = trace.get_current_span(node_ctx)
            else:
                span_obj = self._span(ev, node_ctx, now, run_id, tools)
            ids = span_obj.get_span_context()
            out.append(
                ev.model_copy(
                    update={"trace_id": f"{ids.trace_id:032x}", "span_id": f"{ids.span_id:016x}"}
                )
            )
        return out

    def _span(
        self,
        ev: Event,
        parent: Any,
        now: int,
        run_id: str,
        tools: dict[str, str],
        *,
        agent: bool = False,
    ) -> Any:
        name, attrs, seconds = describe(ev, tools, agent=agent)
        attrs = {"keel.run_id": run_id, "keel.seq": ev.seq, **attrs}
        span = self.tracer.start_span(
            name, context=parent, start_time=now - int(seconds * 1e9), attributes=attrs
        )
        span.end(end_time=now)
        return span

    def flush(self) -> bool:
        return bool(self.provider.force_flush(10_000))

    def finished(self) -> list[Any]:
        return list(self.memory.get_finished_spans()) if self.memory else []


def provider_of(model: str) -> str:
    """``gen_ai.provider.name`` from a litellm model string (``openai/gpt-4o`` -> openai)."""
    prefix = model.split("/", 1)[0] if "/" in model else "openai"
    return {"ollama_chat": "ollama", "azure_ai": "azure.ai.inference"}.get(prefix, prefix)


def _offers_tools(ev: ModelCalled) -> bool:
    return bool((ev.request or {}).get("functions"))


def describe(
    ev: Event, tools: dict[str, str] | None = None, *, agent: bool = False
) -> tuple[str, dict[str, Any], float]:
    """Span name, attributes and duration for one traced event, named as OpenTelemetry's
    GenAI semantic conventions name them (``chat``, ``execute_tool``, ``invoke_agent`` for
    the node of an agent's turn) where they apply."""
    if isinstance(ev, NodeCompleted):
        attrs = {"keel.node": ev.node, "keel.step": ev.step, "keel.attempt": ev.attempt}
        attrs = {**attrs, "keel.worker": ev.worker}
        if agent:
            named = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": ev.node}
            return f"invoke_agent {ev.node}", {**named, **attrs}, ev.duration_s
        return f"node {ev.node}", attrs, ev.duration_s
    if isinstance(ev, ModelCalled):
        judged = {
            name: value
            for name, value in (
                ("keel.confidence", ev.confidence),
                ("keel.confidence_floor", ev.confidence_floor),
                ("keel.escalated_from", ev.escalated_from),
            )
            if value is not None
        }
        return (
            f"chat {ev.model}",
            {
                **judged,
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider_of(ev.model),
                "gen_ai.request.model": ev.model,
                "gen_ai.response.model": ev.model,
                "gen_ai.response.finish_reasons": [ev.finish_reason],
                "gen_ai.usage.input_tokens": ev.prompt_tokens,
                "gen_ai.usage.output_tokens": ev.completion_tokens,
                "keel.tool_calls": len(ev.tool_calls),
                "keel.cost_usd": ev.cost,
                "keel.tier": ev.tier,
                "keel.worker": ev.worker,
                "keel.node": ev.node,
            },
            ev.latency_s,
        )
    if isinstance(ev, PolicyDecided):
        return (
            f"policy {ev.object}",
            {
                "keel.policy.subject": ev.subject,
                "keel.policy.action": ev.action,
                "keel.policy.effect": ev.effect,
                "keel.policy.rule": ", ".join(ev.rule),
                "keel.policy.version": ev.policy_version,
            },
            0.0,
        )
    assert isinstance(ev, EffectResult)
    tool = (tools or {}).get(ev.key, "")
    effect: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.call.id": ev.key,  # the idempotency key: one per call, kept on retry
        "keel.effect.key": ev.key,
        "keel.effect.ok": ev.ok,
    }
    if tool:
        effect["gen_ai.tool.name"] = tool
    return f"execute_tool {tool or ev.key}", effect, ev.duration_s
