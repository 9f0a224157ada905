"""The small tier's tool calls: llama.cpp's grammar from the tools' schemas, loosened."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from keel.core.tool import tool_schema
from keel.examples.incident import MITIGATION_TOOLS
from keel.router.local_model import _loosened, gguf_path

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def llm() -> Iterator[Any]:
    yield llama_cpp.Llama(model_path=str(gguf_path()), n_ctx=2048, n_threads=1, verbose=False)


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
