"""A scripted OpenAI-compatible server, for testing anything that talks to a model API.

It stands in for a paid provider at the one boundary Keel does not own, over real HTTP on
127.0.0.1. Per model it answers a scripted reply (or echoes), and can be told to fail the
next requests with 429, 500 or a timeout. It counts requests per model so tests can
assert what reached the "provider".

Run it as a process: ``python -m keel.testing.scripted --port 8999``. Control endpoints:

- ``POST /_script`` ``{"model": "m", "reply": "text", "fail": [429, 500, "timeout"],
  "usage": [prompt_tokens, completion_tokens]}``: ``fail`` entries are used up one per
  request, in order.
- ``GET /_calls``: ``{"m": 3, ...}``; ``POST /_reset``: forget scripts and counts.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI(title="keel scripted model server")
_scripts: dict[str, dict[str, Any]] = {}
_calls: dict[str, int] = defaultdict(int)


@app.post("/_script")
async def script(body: dict[str, Any]) -> dict[str, Any]:
    model = str(body["model"])
    _scripts[model] = {
        "reply": body.get("reply"),
        "fail": list(body.get("fail", [])),
        "usage": body.get("usage"),
        "delay_s": float(body.get("delay_s", 0.0)),
    }
    return {"ok": True}


@app.get("/_calls")
async def calls() -> dict[str, int]:
    return dict(_calls)


@app.post("/_reset")
async def reset() -> dict[str, bool]:
    _scripts.clear()
    _calls.clear()
    return {"ok": True}


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model"} for m in _scripts]}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    model = str(body.get("model", ""))
    _calls[model] += 1
    plan = _scripts.get(model, {})
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
    text = plan.get("reply")
    if text is None:
        text = f"echo: {messages[-1].get('content', '')}"
    prompt_tokens, completion_tokens = plan.get("usage") or (
        max(1, sum(len(str(m.get("content", ""))) for m in messages) // 4),
        max(1, len(text) // 4),
    )
    return JSONResponse(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


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
