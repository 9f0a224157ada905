"""The router as an OpenAI-compatible endpoint, asked by the official `openai` client (sync
and async) and by litellm as a client, over Serve's real HTTP on 127.0.0.1. Both tiers sit
on the scripted provider, so each answer (text, tool calls, streamed or not) is exactly
what the test scripted, and the provider shows what reached it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import litellm
import openai
import pytest

from tests.fakes import Scripted, two_tier_config, use_router

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "restart_service",
            "description": "Restart a service",
            "parameters": {
                "type": "object",
                "properties": {"service": {"type": "string"}},
                "required": ["service"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_logs",
            "description": "Read a service's logs",
            "parameters": {"type": "object", "properties": {"service": {"type": "string"}}},
        },
    },
]
USER = [{"role": "user", "content": "checkout is down"}]
ONE_CALL = [{"name": "restart_service", "arguments": {"service": "checkout"}}]
TWO_CALLS = [*ONE_CALL, {"name": "read_logs", "arguments": {"service": "checkout"}}]
BOTH = [("restart_service", {"service": "checkout"}), ("read_logs", {"service": "checkout"})]


def collect(chunks: list[Any]) -> dict[str, Any]:
    """A streamed answer put back together: text, tool calls, finish reason, usage."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in chunks:
        usage = getattr(chunk, "usage", None) or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            text += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    return {
        "content": text,
        "calls": [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())],
        "finish": finish,
        "usage": usage,
    }


def answer(resp: Any) -> dict[str, Any]:
    message = resp.choices[0].message
    return {
        "content": message.content or "",
        "calls": [
            (c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []
        ],
        "finish": resp.choices[0].finish_reason,
        "usage": resp.usage,
    }


# (case, what the provider is scripted to do, the request, what the client must get back)
CASES = [
    ("plain", {"reply": "all good"}, {}, {"content": "all good", "finish": "stop"}),
    (
        "streamed",
        {"reply": "all good here"},
        {"stream": True},
        {"content": "all good here", "finish": "stop"},
    ),
    (
        "one tool call",
        {"tool_calls": ONE_CALL},
        {"tools": TOOLS, "tool_choice": "required"},
        {"calls": [("restart_service", {"service": "checkout"})], "finish": "tool_calls"},
    ),
    (
        "parallel tool calls",
        {"tool_calls": TWO_CALLS},
        {"tools": TOOLS, "parallel_tool_calls": True},
        {"calls": BOTH, "finish": "tool_calls"},
    ),
    (
        "streamed tool calls",
        {"tool_calls": TWO_CALLS},
        {"tools": TOOLS, "stream": True},
        {"calls": BOTH},
    ),
    (
        "content parts",
        {"reply": "seen"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "checkout?"}]}]},
        {"content": "seen"},
    ),
    (
        "usage in stream",
        {"reply": "counted", "usage": [11, 3]},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"content": "counted", "usage": (11, 3)},
    ),
    (
        "a tool's answer in the history",
        {"reply": "restarted"},
        {
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "restart_service", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            ],
            "tools": TOOLS,
        },
        {"content": "restarted", "finish": "stop"},
    ),
]


def check(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key, value in want.items():
        if key == "usage":
            assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == value
        else:
            assert got[key] == value, (key, got)


@pytest.fixture
def router_url(scripted_router: Scripted, serve_port: int) -> str:
    return f"http://127.0.0.1:{serve_port}/v1"


@pytest.mark.parametrize("client", ["sync", "async"])
@pytest.mark.parametrize(("case", "script", "request_", "want"), CASES, ids=[c[0] for c in CASES])
def test_the_openai_client_gets_what_the_provider_answered(
    router_url: str,
    scripted_router: Scripted,
    client: str,
    case: str,
    script: dict[str, Any],
    request_: dict[str, Any],
    want: dict[str, Any],
) -> None:
    scripted_router.script("small-model", **script)
    kwargs = {"model": "auto", "messages": USER, **request_}
    if client == "sync":
        api = openai.OpenAI(base_url=router_url, api_key="unused", max_retries=0)
        resp = api.chat.completions.create(**kwargs)
        got = collect(list(resp)) if kwargs.get("stream") else answer(resp)
    else:

        async def ask() -> dict[str, Any]:
            api = openai.AsyncOpenAI(base_url=router_url, api_key="unused", max_retries=0)
            resp = await api.chat.completions.create(**kwargs)
            if kwargs.get("stream"):
                return collect([c async for c in resp])
            return answer(resp)

        got = asyncio.run(ask())
    check(got, want)
    # What reached the provider: the tools and the choice passed through, unchanged.
    sent = httpx.get(f"{scripted_router.base}/_last").json()["small-model"]
    for key in ("tools", "tool_choice", "parallel_tool_calls"):
        assert sent.get(key) == request_.get(key), key


def test_a_stream_says_where_it_was_routed(router_url: str, scripted_router: Scripted) -> None:
    scripted_router.script("small-model", reply="routed")
    body = {"messages": USER, "stream": True}
    with httpx.stream("POST", f"{router_url}/chat/completions", json=body, timeout=30) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    first = json.loads(lines[0].removeprefix("data: "))
    assert first["keel"]["tier"] == "small" and "small max" in first["keel"]["reason"]
    assert lines[-1] == "data: [DONE]"


def test_models_lists_the_tiers(router_url: str) -> None:
    api = openai.OpenAI(base_url=router_url, api_key="unused", max_retries=0)
    assert [m.id for m in api.models.list()] == ["auto", "small", "large"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({"messages": USER, "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": USER, "model": "huge"}, "model"),
    ],
)
def test_errors_come_in_openais_shape(router_url: str, body: dict[str, Any], param: str) -> None:
    api = openai.OpenAI(base_url=router_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(**{"model": "auto", **body})
    error = caught.value.body
    assert isinstance(error, dict) and error["param"].startswith(param), error
    assert error["type"] == "invalid_request_error" and param.split(".")[0] in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_as_a_client(router_url: str, scripted_router: Scripted, stream: bool) -> None:
    scripted_router.script("small-model", tool_calls=ONE_CALL)
    resp = litellm.completion(
        model="openai/auto", api_base=router_url, api_key="unused", messages=USER,
        tools=TOOLS, stream=stream,
    )  # fmt: skip
    got = collect(list(resp)) if stream else answer(resp)
    assert got["calls"] == [("restart_service", {"service": "checkout"})]


def test_a_tiers_key_reaches_the_replicas_from_the_deploying_process(
    scripted: Scripted, serve_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is exported after Ray started, so no Ray process inherited it: only the
    deployment's runtime_env brings it to the router's replicas."""
    monkeypatch.setenv("KEEL_TEST_PROVIDER_KEY", "sk-test-from-the-shell")
    tiers = [
        t.model_copy(update={"api_key_env": "KEEL_TEST_PROVIDER_KEY"})
        for t in two_tier_config(scripted.base).tiers
    ]
    config = two_tier_config(scripted.base).model_copy(
        update={"tiers": tiers, "http_port": serve_port}
    )
    use_router(config)
    scripted.script("small-model", reply="hello")
    body = {"model": "auto", "messages": USER, "keel": {"kind": "chat"}}
    resp = httpx.post(f"http://127.0.0.1:{serve_port}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    assert scripted.headers()["small-model"]["authorization"] == "Bearer sk-test-from-the-shell"
