"""Model router overhead: routing plus the Serve hop, beside calling litellm directly.

Run with ``python -m bench.router_overhead`` (``make bench`` runs it too). The model is the
embedded local provider of the ``large`` tier (rules registered with litellm), which
answers in microseconds, so what is measured is the router's own cost:

- litellm direct: ``litellm.acompletion`` in-process, no routing;
- gateway in-process: complexity routing + litellm's Router;
- Serve handle: the same through one router replica (what workers use);
- Serve HTTP: ``POST /v1/chat/completions`` on 127.0.0.1 (what an OpenAI client uses);

then requests per second through one replica over HTTP at a fixed concurrency. All
traffic is on loopback and bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
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
from keel.core.calls import ChatMessage, RouteRequest
from keel.router import rules
from keel.router.gateway import ModelGateway
from keel.router.service import deploy

console = Console()
MESSAGES = [
    {"role": "user", "content": json.dumps({"goal": "checkout is down", "labels": ["a", "b"]})}
]


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    for _ in range(10):  # warm
        await fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def run(n: int, rps_requests: int, concurrency: int) -> dict[str, Any]:

    rules.register()
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    port = 18000 + os.getpid() % 1000
    config = RouterConfig(
        tiers=[TierConfig(name="large", model="keel-rules/planner", max_score=1.0)],
        http_port=port,
    )
    handle = deploy(config)
    gateway = ModelGateway(config)
    req = RouteRequest(messages=[ChatMessage.model_validate(m) for m in MESSAGES], kind="classify")
    body = {"model": "auto", "messages": MESSAGES, "keel": {"kind": "classify"}}
    results: dict[str, Any] = {"n": n}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        async def direct() -> Any:
            return await litellm.acompletion(model="keel-rules/planner", messages=MESSAGES)

        async def in_process() -> Any:
            return await gateway.complete(req)

        async def via_handle() -> Any:
            return await handle.complete.remote(req)

        async def via_http() -> Any:
            resp = await client.post("/v1/chat/completions", json=body)
            resp.raise_for_status()
            return resp

        latency = {}
        for name, fn in (
            ("litellm direct", direct),
            ("gateway in-process", in_process),
            ("Serve handle", via_handle),
            ("Serve HTTP", via_http),
        ):
            with console.status(f"{name}: {n} sequential requests"):
                times = await timed(fn, n)
            latency[name] = {"p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99)}
        results["latency"] = latency

        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                await via_http()

        with console.status(f"{rps_requests} HTTP requests at concurrency {concurrency}"):
            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(rps_requests)))
            elapsed = time.perf_counter() - t0
        results["throughput"] = {
            "requests": rps_requests,
            "concurrency": concurrency,
            "rps": rps_requests / elapsed,
        }
    serve.shutdown()
    ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="router overhead beside direct litellm")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rps-requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    results = asyncio.run(run(args.n, args.rps_requests, args.concurrency))
    base = results["latency"]["litellm direct"]
    table = Table(title=f"Router overhead, {args.n} sequential requests, rules provider")
    for col in ("path", "p50 ms", "p99 ms", "p50 / direct", "p99 / direct"):
        table.add_column(col, no_wrap=True)
    for name, row in results["latency"].items():
        table.add_row(
            name,
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['p50_ms'] / base['p50_ms']:.2f}x",
            f"{row['p99_ms'] / base['p99_ms']:.2f}x",
        )
    console.print(table)
    tp = results["throughput"]
    console.print(
        f"throughput through one router replica: {tp['rps']:.0f} requests/s "
        f"({tp['requests']} requests, concurrency {tp['concurrency']})"
    )
    write_results("router_overhead", results)


if __name__ == "__main__":
    main()
