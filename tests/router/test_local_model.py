"""The small tier as the deployment builds it: tool calls from llama.cpp's grammar over the
tools' schemas, loosened; and a classification's token log-probabilities, its confidence."""

from __future__ import annotations

import asyncio
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
from keel.router.local_model import LocalModel, _loosened, _response_format, gguf_path

llama_cpp = pytest.importorskip("llama_cpp")

from keel.router.llama_logprobs import LogprobLlama  # noqa: E402  # with llama_cpp only


@pytest.fixture(scope="module")
def llm() -> Iterator[LogprobLlama]:
    yield LogprobLlama(model_path=str(gguf_path()), n_ctx=2048, n_threads=1, verbose=False)


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
    out: Any = llm.create_chat_completion(
        messages=[m.model_dump(exclude_none=True) for m in req.messages],
        response_format=_response_format(req.response_format or {}),
        max_tokens=req.max_tokens,
        temperature=0.0,
    )
    out["choices"][0]["logprobs"] = llm.chat_logprobs(1, out["usage"]["completion_tokens"])
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


def _classify() -> dict[str, Any]:
    req, _ = classify_request(
        ClassifyRequest(text="checkout errors after a config push", labels=LABELS)
    )
    return {
        "messages": [m.model_dump(exclude_none=True) for m in req.messages],
        "response_format": _response_format(req.response_format or {}),
        "max_tokens": req.max_tokens,
    }


def _free_text() -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "Name three colours, with a word on each."}],
        "max_tokens": 20,  # stops on the limit: the last token was never fed back
    }


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    """llama-cpp-python computing log-probabilities its own way."""
    yield llama_cpp.Llama(
        model_path=str(gguf_path()), n_ctx=2048, n_threads=1, logits_all=True, verbose=False
    )


@pytest.mark.parametrize(
    ("request_of", "top"),
    [(_classify, 1), (_classify, 3), (_free_text, 3)],  # as the planner asks; alternatives
    ids=["classify-1", "classify-3", "free_text-3"],
)
def test_logprobs_from_the_sampled_rows_are_llama_cpps_own(
    llm: LogprobLlama, reference: Any, request_of: Any, top: int
) -> None:
    """Read from the logits each token was sampled from, they are the values
    llama-cpp-python computes over its whole buffer: same tokens, same alternatives in the
    same order, the same log-probabilities (to float32's last bits: it evaluates the
    prompt's rows in one batch)."""
    llm.reset()  # both read the whole prompt, in one batch
    reference.reset()
    kwargs = {**request_of(), "temperature": 0.0}
    theirs: Any = reference.create_chat_completion(**kwargs, logprobs=True, top_logprobs=top)
    ours: Any = llm.create_chat_completion(**kwargs)
    assert ours["choices"][0]["message"] == theirs["choices"][0]["message"]
    got = llm.chat_logprobs(top, ours["usage"]["completion_tokens"])["content"]
    expected = theirs["choices"][0]["logprobs"]["content"]
    assert len(got) == ours["usage"]["completion_tokens"] > 1
    assert [t["token"] for t in got] == [t["token"] for t in expected]
    assert "".join(t["token"] for t in got) == ours["choices"][0]["message"]["content"]
    for mine, want in zip(got, expected, strict=True):
        assert float(mine["logprob"]) == pytest.approx(float(want["logprob"]), abs=1e-4)
        assert [a["token"] for a in mine["top_logprobs"]] == [
            a["token"] for a in want["top_logprobs"]
        ]
        for a, b in zip(mine["top_logprobs"], want["top_logprobs"], strict=True):
            assert float(a["logprob"]) == pytest.approx(float(b["logprob"]), abs=1e-4)


def test_a_prompt_that_begins_like_an_earlier_one_is_read_from_where_they_part(
    llm: LogprobLlama,
) -> None:
    """The prompt cache the deployment sets: a second prompt with the same beginning, asked
    after another prompt, starts from the cached state and gives the same answer."""
    llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=64 << 20))
    try:
        long = {"role": "system", "content": "Tools: " + " ".join(f"t{i}(x)" for i in range(40))}
        ask = [long, {"role": "user", "content": "Which tool first?"}]
        first: Any = llm.create_chat_completion(messages=ask, max_tokens=6, temperature=0.0)
        llm.create_chat_completion(**_free_text(), temperature=0.0)  # another prompt between
        states = len(llm.cache.cache_state)  # type: ignore[union-attr]
        read: list[int] = []  # how many tokens each evaluation reads
        evaluate = llm.eval
        llm.eval = lambda tokens: (read.append(len(tokens)), evaluate(tokens))[1]  # type: ignore[method-assign]
        try:
            again: Any = llm.create_chat_completion(messages=ask, max_tokens=6, temperature=0.0)
        finally:
            del llm.eval  # the class's own again
        assert states == 2
        assert again["choices"][0]["message"] == first["choices"][0]["message"]
        # Restored from the cache: only the prompt's last token was read again.
        assert read[0] == 1 < first["usage"]["prompt_tokens"]
        # What a saved state holds is what the cache counts: the model's state, not a copy
        # of a logits buffer nothing wrote (one row of the vocabulary at most).
        for state in llm.cache.cache_state.values():  # type: ignore[union-attr]
            assert state.scores.nbytes <= 4 * llm.n_vocab() < state.llama_state_size
    finally:
        llm.set_cache(None)


@pytest.fixture(scope="module")
def replica() -> Any:
    """The deployment's class itself, outside Serve: what a replica runs (Serve's ingress
    makes its constructor a coroutine)."""
    cls = LocalModel.func_or_class  # type: ignore[attr-defined]
    made = cls.__new__(cls)
    asyncio.run(cls.__init__(made, prompt_cache_mb=0))
    return made


async def test_a_stream_carries_each_tokens_log_probability(replica: Any) -> None:
    """Streamed, each chunk says the log-probabilities of the tokens it brings: together
    they spell the answer."""
    kwargs = {**_free_text(), "temperature": 0.0}
    chunks = [
        json.loads(event["data"])
        async for event in replica._stream(replica.llm.create_chat_completion, kwargs, 2)
        if event["data"] != "[DONE]"
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    tokens = [t for c in chunks if c["choices"] for t in c["choices"][0]["logprobs"]["content"]]
    assert text and "".join(t["token"] for t in tokens) == text
    assert all(t["logprob"] <= 0 and 1 <= len(t["top_logprobs"]) <= 3 for t in tokens)


def test_a_tool_call_asked_with_log_probabilities_has_none(replica: Any) -> None:
    """As OpenAI answers: logprobs asked of a turn that calls a tool come back empty, not
    as an error."""
    tools = [
        {"type": "function", "function": {"name": t.name, "parameters": tool_schema(t)}}
        for t in MITIGATION_TOOLS
    ]
    handler = llama_cpp.llama_chat_format.get_chat_completion_handler("chatml-function-calling")
    kwargs = {
        "messages": [{"role": "user", "content": "Delete the corrupt data file orders.db."}],
        "max_tokens": 96,
        "temperature": 0.0,
        "llama": replica.llm,
        "tools": _loosened(tools),
        "tool_choice": "auto",
    }
    out = replica._answer(handler, kwargs, 1)
    message = out["choices"][0]["message"]
    assert message.get("tool_calls")
    assert out["choices"][0]["logprobs"] is None
