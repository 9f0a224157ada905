"""The local model's cost per request, Keel's way beside llama-cpp-python's own.

Run with ``python -m bench.local_model``. The requests are the ones Keel's planner makes
of the small tier in the incident workflow (a classification and a plan, each asking for
token log-probabilities), built by the planner's own functions; the model is the shipped
SmolLM2-135M on llama.cpp, one thread, in this process. Two comparisons, each in the
same run on the same model file:

- log-probabilities: llama-cpp-python's (``logits_all``, ``logprobs=True``) against
  :class:`keel.router.llama_logprobs.LogprobLlama` (read from the sampled rows);
- the prompt cache: the same sequence of requests with and without ``LlamaRAMCache``,
  the way the deployment serves them (runs interleaved, so consecutive prompts differ).

CPU seconds are process time (llama.cpp's threads included). No network.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from llama_cpp import Llama
from llama_cpp.llama_cache import LlamaRAMCache
from rich.console import Console
from rich.table import Table

from bench import write_results
from keel.actors.planner import classify_request, plan_request
from keel.actors.worker_messages import ClassifyRequest, PlanRequest, ToolSpec
from keel.core.tool import tool_schema
from keel.examples.incident import LABELS, MITIGATION_TOOLS
from keel.router.llama_logprobs import LogprobLlama
from keel.router.local_model import _response_format, gguf_path

console = Console()
GOALS = [
    "checkout returns 500 since the config push; max_connections looks wrong",
    "orders.db checksum mismatch: data corrupt after the last migration",
    "checkout is overloaded: too many connections, requests time out",
    "payment service health check failing after a config change",
]


def requests(runs: int) -> list[dict[str, Any]]:
    """A classification then a plan per run, as the planner asks the small tier."""
    tools = [
        ToolSpec(name=t.name, description=t.description, parameters=tool_schema(t))
        for t in MITIGATION_TOOLS
    ]
    out = []
    for i in range(runs):
        goal = GOALS[i % len(GOALS)]
        classify, _ = classify_request(ClassifyRequest(text=goal, labels=LABELS))
        plan = plan_request(PlanRequest(goal=goal, tools=tools, max_tokens=48))
        for req in (classify, plan):
            out.append(
                {
                    "messages": [m.model_dump(exclude_none=True) for m in req.messages],
                    "response_format": _response_format(req.response_format or {}),
                    "max_tokens": req.max_tokens or 48,
                    "temperature": 0.0,
                }
            )
    return out


def timed(llm: Any, reqs: list[dict[str, Any]], theirs: bool) -> tuple[float, int]:
    """CPU seconds for the requests, and the answer tokens made."""
    tokens = 0
    started = time.process_time()
    for req in reqs:
        if theirs:
            out = llm.create_chat_completion(**req, logprobs=True, top_logprobs=1)
        else:
            out = llm.create_chat_completion(**req)
            out["choices"][0]["logprobs"] = llm.chat_logprobs(1, out["usage"]["completion_tokens"])
        json.dumps(out["choices"][0]["logprobs"], default=float)  # what the replica sends
        tokens += out["usage"]["completion_tokens"]
    return time.process_time() - started, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="runs' worth of requests (2 each)")
    args = ap.parse_args()
    reqs = requests(args.runs)
    path = str(gguf_path())

    reference = Llama(model_path=path, n_ctx=2048, n_threads=1, logits_all=True, verbose=False)
    theirs_s, tokens = timed(reference, reqs, theirs=True)
    del reference
    ours = LogprobLlama(model_path=path, n_ctx=2048, n_threads=1, verbose=False)
    ours_s, ours_tokens = timed(ours, reqs, theirs=False)
    ours.reset()
    ours.set_cache(LlamaRAMCache(capacity_bytes=512 << 20))
    cached_s, _ = timed(ours, reqs, theirs=False)
    states = list(ours.cache.cache_state.values()) if ours.cache is not None else []
    held_mb = sum(st.llama_state_size + st.scores.nbytes for st in states) / 2**20

    rows = [
        ("llama-cpp-python's logprobs (logits_all)", theirs_s, tokens),
        ("Keel: logprobs from the sampled rows", ours_s, ours_tokens),
        ("Keel: and the prompt cache (as deployed)", cached_s, ours_tokens),
    ]
    table = Table(title=f"{len(reqs)} small-tier requests ({args.runs} runs), CPU seconds")
    for col in ("path", "CPU s", "per request", "answer tokens", "vs llama-cpp-python"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, cpu, made in rows:
        table.add_row(
            name, f"{cpu:.2f}", f"{cpu / len(reqs):.3f}", str(made), f"{theirs_s / cpu:.2f}x"
        )
    console.print(table)
    console.print(f"prompt cache: {len(states)} saved states holding {held_mb:.0f} MB")
    write_results(
        "local_model",
        {
            "requests": len(reqs),
            "cache_states": len(states),
            "cache_held_mb": round(held_mb, 1),
            "rows": [{"path": n, "cpu_s": round(c, 3), "tokens": t} for n, c, t in rows],
        },
    )


if __name__ == "__main__":
    main()
