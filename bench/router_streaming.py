"""Streaming through the router, beside litellm streaming from the provider directly.

Run with ``python -m bench.router_streaming``. The provider is the scripted
OpenAI-compatible server (a real process on 127.0.0.1) streaming a reply of ``--words``
chunks as fast as it can, so what is measured is what the router adds:

- time to first token: from sending the request to the first content chunk;
- overhead per streamed chunk: (router's total - direct total) / chunks.

Both paths read the stream with litellm-compatible clients: litellm's own streaming for
the direct path, and an HTTP stream of the router's server-sent events (what the
official ``openai`` client reads) for the router. All traffic is on loopback and bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import httpx
import litellm
import ray
from ray import serve
from rich.console import Console
from rich.table import Table

from bench import write_results
from keel.config import RouterConfig, TierConfig
from keel.router.service import deploy
from keel.testing.scripted import launch

console = Console()
MESSAGES = [{"role": "user", "content": "checkout is down"}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def direct(base: str) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, chunks = 0.0, 0
    resp = await litellm.acompletion(
        model="openai/bench-model", api_base=f"{base}/v1", api_key="unused",
        messages=MESSAGES, stream=True,
    )  # fmt: skip
    async for chunk in resp:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            first = first or time.perf_counter() - t0
    return first, time.perf_counter() - t0, chunks


async def routed(client: httpx.AsyncClient) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, chunks = 0.0, 0
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line.removeprefix("data: ")).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                chunks += 1
                first = first or time.perf_counter() - t0
    return first, time.perf_counter() - t0, chunks


def start_provider(words: int) -> tuple[Any, str]:
    proc, base = launch()
    reply = " ".join(f"w{i}" for i in range(words))
    httpx.post(f"{base}/_script", json={"model": "bench-model", "reply": reply}).raise_for_status()
    return proc, base


async def run(n: int, words: int, provider: tuple[Any, str]) -> dict[str, Any]:
    proc, base = provider
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    port = 18000 + os.getpid() % 1000
    config = RouterConfig(
        tiers=[
            TierConfig(
                name="remote", model="openai/bench-model", api_base=f"{base}/v1", max_score=1.0
            )
        ],
        http_port=port,
    )
    deploy(config)
    results: dict[str, Any] = {"n": n, "words": words}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for name, fn in (
                ("litellm direct", lambda: direct(base)),
                ("router", lambda: routed(client)),
            ):
                with console.status(f"{name}: {n} streamed requests"):
                    for _ in range(10):  # warm
                        await fn()
                    rows = [await fn() for _ in range(n)]
                results[name] = {
                    "ttft_p50_ms": pct([r[0] for r in rows], 0.5),
                    "ttft_p99_ms": pct([r[0] for r in rows], 0.99),
                    "total_p50_ms": pct([r[1] for r in rows], 0.5),
                    "chunks": rows[-1][2],
                }
    finally:
        serve.shutdown()
        ray.shutdown()
        proc.terminate()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="streaming through the router vs litellm")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--words", type=int, default=100)
    args = parser.parse_args()
    results = asyncio.run(run(args.n, args.words, start_provider(args.words)))
    base, mine = results["litellm direct"], results["router"]
    table = Table(title=f"Streaming, {args.n} requests of {args.words} chunks, scripted provider")
    for col in ("path", "TTFT p50 ms", "TTFT p99 ms", "total p50 ms", "chunks"):
        table.add_column(col, no_wrap=True)
    for name in ("litellm direct", "router"):
        row = results[name]
        table.add_row(
            name,
            f"{row['ttft_p50_ms']:.2f}",
            f"{row['ttft_p99_ms']:.2f}",
            f"{row['total_p50_ms']:.2f}",
            str(row["chunks"]),
        )
    console.print(table)
    per_chunk = (mine["total_p50_ms"] - base["total_p50_ms"]) / max(1, mine["chunks"])
    results["overhead_per_chunk_ms"] = per_chunk
    results["ttft_ratio"] = mine["ttft_p50_ms"] / base["ttft_p50_ms"]
    console.print(
        f"TTFT through the router: {results['ttft_ratio']:.2f}x direct; "
        f"overhead per streamed chunk: {per_chunk:.3f} ms"
    )
    write_results("router_streaming", results)


if __name__ == "__main__":
    main()
