"""The small tier as the deployment builds it: tool calls from llama.cpp's grammar over the
tools' schemas, loosened; and a classification's token log-probabilities, its confidence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from keel.actors import planner
from keel.actors.planner import classify_request
from keel.actors.worker_messages import ClassifyRequest
from keel.core.calls import ModelCall, TokenLogprob
from keel.core.tool import tool_schema
from keel.examples.incident import LABELS, MITIGATION_TOOLS
from keel.router.local_model import _loosened, _response_format, gguf_path

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def llm() -> Iterator[Any]:
    yield llama_cpp.Llama(
        model_path=str(gguf_path()), n_ctx=2048, n_threads=1, logits_all=True, verbose=False
    )


def test_the_incident_tools_get_a_call_from_the_small_model(llm: Any) -> None:
    """The full schemas (a file name limited to 100 characters, say) make a grammar that
    llama.cpp refuses at generation time; loosened, the model answers with a call."""
    tools = [
        {"type": "function", "function": {"name": t.name, "parameters": tool_schema(t)}}
        for t in MITIGATION_TOOLS
    ]
    handler = llama_cpp.llama_chat_format.get_chat_completion_handler("chatml-function-calling")
    out = handler(
        llama=llm,
        messages=[{"role": "user", "content": "Delete the corrupt data file orders.db."}],
        tools=_loosened(tools),
        tool_choice="auto",
        max_tokens=96,
        temperature=0.0,
    )
    calls = out["choices"][0]["message"].get("tool_calls") or []
    assert calls and calls[0]["function"]["name"] in {t.name for t in MITIGATION_TOOLS}
    assert isinstance(json.loads(calls[0]["function"]["arguments"], strict=False), dict)


def test_a_classification_comes_with_the_probability_of_its_label(llm: Any) -> None:
    req, schema = classify_request(
        ClassifyRequest(text="data/orders.db checksum mismatch: data corrupt", labels=LABELS)
    )
    assert req.logprobs is True
    out = llm.create_chat_completion(
        messages=[m.model_dump(exclude_none=True) for m in req.messages],
        response_format=_response_format(req.response_format or {}),
        max_tokens=req.max_tokens,
        temperature=0.0,
        logprobs=True,
        top_logprobs=1,
    )
    choice = out["choices"][0]
    tokens = [
        TokenLogprob(token=t["token"], logprob=t["logprob"]) for t in choice["logprobs"]["content"]
    ]
    made = ModelCall(
        tier="small", model="m", routed_tier="small", reason="", score=0.1, prompt_tokens=1,
        completion_tokens=1, cost=0.0, latency_s=0.0, content=choice["message"]["content"],
        logprobs=tokens,
    )  # fmt: skip
    judged = planner.judged(made, schema, 0.5)
    assert judged.confidence is not None and 0.0 < judged.confidence <= 1.0
    assert judged.confidence_floor == 0.5


def test_only_keywords_are_dropped_never_fields() -> None:
    schema = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "pattern": "^a+$", "maxLength": 3},
            "format": {"type": "string", "format": "date"},
        },
        "required": ["pattern"],
    }
    assert _loosened(schema) == {
        "type": "object",
        "properties": {"pattern": {"type": "string"}, "format": {"type": "string"}},
        "required": ["pattern"],
    }
