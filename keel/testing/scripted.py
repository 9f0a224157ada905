"""A scripted OpenAI-compatible server, for testing anything that talks to a model API.

It stands in for a paid provider at the one boundary Keel does not own, over real HTTP on
127.0.0.1. Per model it answers a scripted reply (or echoes), and can be told to fail the
next requests with 429, 500 or a timeout. It counts requests per model so tests can
assert what reached the "provider".

Run it as a process: ``python -m keel.testing.scripted --port 8999``. Control endpoints:

- ``POST /_script`` ``{"model": "m", "reply": "text", "fail": [429, 500, "timeout"],
  "usage": [prompt_tokens, completion_tokens], "tool_calls": [{"name": "f", "arguments":
  {...}}]}``: ``fail`` entries are used up one per request, in order; with ``tool_calls``
  the answer calls those functions (``finish_reason: "tool_calls"``); ``turns`` (a list of
  such answers) are given one per request, in order, for a conversation; ``logprobs``
  (``{"token": logprob}``) answers a request that asks for log-probabilities with the
  reply split into word and punctuation tokens, each at its scripted value (else 0.0).
- ``GET /_calls``: ``{"m": 3, ...}``; ``GET /_last``: the last request body per model;
  ``GET /_headers``: its Authorization and traceparent headers; ``POST /_reset``: forget
  scripts, counts and requests.

``"stream": true`` is answered with server-sent chunks as OpenAI sends them: the role,
the content a word at a time, each tool call's name and then its arguments in two
pieces, the finish reason, usage when ``stream_options.include_usage`` asks, ``[DONE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

app = FastAPI(title="keel scripted model server")
_scripts: dict[str, dict[str, Any]] = {}
_calls: dict[str, int] = defaultdict(int)
_last: dict[str, dict[str, Any]] = {}
_headers: dict[str, dict[str, str | None]] = {}


@app.post("/_script")
async def script(body: dict[str, Any]) -> dict[str, Any]:
    model = str(body["model"])
    _scripts[model] = {
        "reply": body.get("reply"),
        "fail": list(body.get("fail", [])),
        "usage": body.get("usage"),
        "delay_s": float(body.get("delay_s", 0.0)),
        "tool_calls": list(body.get("tool_calls") or []),
        "turns": list(body.get("turns") or []),
        "logprobs": dict(body.get("logprobs") or {}),
    }
    return {"ok": True}


@app.get("/_calls")
async def calls() -> dict[str, int]:
    return dict(_calls)


@app.get("/_last")
async def last() -> dict[str, dict[str, Any]]:
    return dict(_last)


@app.get("/_headers")
async def headers() -> dict[str, dict[str, str | None]]:
    return dict(_headers)


@app.post("/_reset")
async def reset() -> dict[str, bool]:
    _scripts.clear()
    _calls.clear()
    _last.clear()
    _headers.clear()
    return {"ok": True}


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model"} for m in _scripts]}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    model = str(body.get("model", ""))
    _calls[model] += 1
    _last[model] = body
    _headers[model] = {h: request.headers.get(h) for h in ("authorization", "traceparent")}
    plan = _scripts.get(model, {})
    if plan.get("turns"):  # a conversation: each request takes the next scripted answer
        plan = {**plan, "reply": None, "tool_calls": [], **plan["turns"].pop(0)}
    if plan.get("fail"):
        failure = plan["fail"].pop(0)
        if failure == "timeout":
            await asyncio.sleep(3600)
        code = int(failure)
        return JSONResponse(
            {"error": {"message": f"scripted {code}", "type": "scripted", "code": code}},
            status_code=code,
        )
    if plan.get("delay_s"):
        await asyncio.sleep(plan["delay_s"])
    messages = body.get("messages") or [{"content": ""}]
    calls = [_tool_call(c) for c in plan.get("tool_calls") or []]
    text = plan.get("reply")
    if text is None and not calls:
        text = f"echo: {_text(messages[-1].get('content'))}"
    prompt_tokens, completion_tokens = plan.get("usage") or (
        max(1, sum(len(_text(m.get("content"))) for m in messages) // 4),
        max(1, len(text or json.dumps(calls)) // 4),
    )
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "created": int(time.time()), "model": model}
    finish = "tool_calls" if calls else "stop"
    if body.get("stream"):
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = _chunks(head, text, calls, finish, usage if with_usage else None)
        return StreamingResponse(chunks, media_type="text/event-stream")  # type: ignore[return-value]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    if body.get("logprobs") and text:
        values = plan.get("logprobs") or {}
        choice["logprobs"] = {
            "content": [
                {
                    "token": t,
                    "logprob": float(values.get(t, 0.0)),
                    "bytes": None,
                    "top_logprobs": [],
                }
                for t in re.findall(r"\w+|\W", text)
            ]
        }
    return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": usage})


def _text(content: Any) -> str:
    """A message's text, whether a string, content parts or nothing."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _tool_call(spec: dict[str, Any]) -> dict[str, Any]:
    arguments = spec.get("arguments", {})
    return {
        "id": str(spec.get("id") or f"call_{uuid.uuid4().hex[:12]}"),
        "type": "function",
        "function": {
            "name": str(spec["name"]),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _chunks(
    head: dict[str, Any],
    text: str | None,
    calls: list[dict[str, Any]],
    finish: str,
    usage: dict[str, int] | None,
) -> Iterator[str]:
    def event(delta: dict[str, Any], reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        chunk = {**head, "object": "chat.completion.chunk", "choices": [choice]}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    for i, word in enumerate(text.split(" ") if text else []):
        yield event({"content": word if i == 0 else f" {word}"})
    for i, call in enumerate(calls):
        fn = call["function"]
        start = {"index": i, "id": call["id"], "type": "function"}
        yield event({"tool_calls": [{**start, "function": {"name": fn["name"], "arguments": ""}}]})
        half = len(fn["arguments"]) // 2
        for piece in (fn["arguments"][:half], fn["arguments"][half:]):
            yield event({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    yield event({}, finish)
    if usage is not None:
        body = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


def launch(timeout_s: float = 30.0) -> tuple[Any, str]:
    """Start the server as a process on a free loopback port; wait until it answers.
    Returns the process and its base URL."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "keel.testing.scripted", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{base}/_calls", timeout=1).raise_for_status()
            return proc, base
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("scripted server did not start") from None
            time.sleep(0.1)


def main() -> None:

    parser = argparse.ArgumentParser(description="scripted OpenAI-compatible server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8999)
    args = parser.parse_args()
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
