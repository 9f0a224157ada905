"""The ``large`` tier of the embedded default: a deterministic, rule-based planner.

This is rules, not a model. It is registered with litellm as the custom provider
``keel-rules`` so it is called, retried, timed and costed exactly like a real model, and a
real provider replaces it with one line of ``keel.yaml``. It reads the structured prompt
that Keel's workers send (a JSON object with the goal, observations, and either the tools
on offer or the labels to choose from) and answers JSON:

- with ``tools``: ``{"tool": NAME, "args": {...}, "rationale": TEXT}``, the tool not yet
  ``tried`` whose name and description best match the goal, then the latest observation,
  its arguments filled from ``hints`` or the schema's defaults;
- with ``labels``: ``{"label": LABEL}``, by keyword overlap;
- otherwise a short extractive summary.

Asked with native tools (OpenAI ``tools``), it answers the same choice as a tool call
(``finish_reason: "tool_calls"``), reading the conversation as a model would: settings the
operator wrote in the goal (``max_connections=50``) fill the tool's arguments over the
hints, a call refused for an argument is made again without the refused setting, a tool
refused by policy is not called again, and once a call has run it gives a final text
answer. It streams too, as one chunk.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import litellm
from litellm.llms.custom_llm import CustomLLM
from litellm.types.llms.openai import (
    ChatCompletionToolCallChunk,
    ChatCompletionToolCallFunctionChunk,
)
from litellm.types.utils import (
    ChatCompletionMessageToolCall,
    Choices,
    Function,
    GenericStreamingChunk,
    Message,
    ModelResponse,
    Usage,
)
from litellm.utils import custom_llm_setup

PROVIDER = "keel-rules"
_WORD = re.compile(r"[a-z0-9]+")
_SETTING = re.compile(r"\b([a-z_][a-z0-9_]*)=(\S+)")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


def _prompt_doc(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The structured prompt: the latest JSON object a person or the system wrote (tools'
    answers are JSON too, and are not the prompt)."""
    for message in reversed(messages):
        if message.get("role") not in ("user", "system"):
            continue
        content = str(message.get("content") or "")
        try:
            doc = json.loads(content)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {"goal": " ".join(str(m.get("content") or "") for m in messages)}


def _args_for(tool: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    schema = tool.get("parameters") or {}
    props: dict[str, Any] = schema.get("properties") or {}
    args = {}
    for name, spec in props.items():
        if name in hints:
            args[name] = hints[name]
        elif isinstance(spec, dict) and "default" in spec:
            args[name] = spec["default"]
        elif name in (schema.get("required") or []):
            args[name] = "" if spec.get("type") == "string" else None
    return args


def answer(doc: dict[str, Any]) -> dict[str, Any] | str:
    """The rules themselves, separate from litellm so they can be tested directly."""
    latest = [str(o) for o in (doc.get("observations") or [])[-1:]]
    context = " ".join([str(doc.get("goal", "")), *latest])
    seen = _words(context)
    if doc.get("tools"):
        tools: list[dict[str, Any]] = list(doc["tools"])
        tried = {str(t) for t in doc.get("tried") or []}
        asked, observed = _words(str(doc.get("goal", ""))), _words(" ".join(latest))

        def fit(tool: dict[str, Any]) -> tuple[int, int, int]:
            words = _words(f"{tool.get('name', '')} {tool.get('description', '')}")
            fresh = 0 if tool.get("name") in tried else 1
            return (fresh, len(asked & words), len(observed & words))

        best = max(tools, key=fit)
        return {
            "tool": best.get("name"),
            "args": _args_for(best, dict(doc.get("hints") or {})),
            "rationale": f"best keyword match for: {context[:120]}",
        }
    if doc.get("labels"):
        labels = [str(label) for label in doc["labels"]]
        return {"label": max(labels, key=lambda lb: len(seen & _words(lb.replace("_", " "))))}
    sentences = re.split(r"(?<=[.!?])\s+", context.strip())
    return " ".join(sentences[:2])[:400]


def settings(goal: str, fields: set[str]) -> dict[str, Any]:
    """``key=value`` settings written in the goal, for the tool's own fields."""
    found: dict[str, Any] = {}
    for key, raw in _SETTING.findall(goal):
        if key in fields:
            value = raw.rstrip(".,;")
            try:
                found[key] = json.loads(value)
            except ValueError:
                found[key] = value
    return found


def _refusals(messages: list[dict[str, Any]]) -> tuple[set[str], Counter[str]]:
    """What the conversation's refused calls say: the tools refused outright (by policy, or
    unknown) and how often each argument field was refused."""
    names: dict[str, str] = {}
    tools: set[str] = set()
    fields: Counter[str] = Counter()
    for m in messages:
        for call in m.get("tool_calls") or []:
            names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
        content = str(m.get("content") or "")
        if m.get("role") != "tool" or not content.startswith("refused: "):
            continue
        said = [part.split(":", 1)[0].strip() for part in content[9:].split("; ")]
        args = {f.removeprefix("args.") for f in said if f.startswith("args.")}
        fields.update(args)
        if not args:
            tools.add(names.get(str(m.get("tool_call_id")), ""))
    return tools, fields


def tool_answer(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Message:
    """The rules' choice as a native tool call; once a call has run, a final text."""
    last = messages[-1] if messages else {}
    answered = last.get("role") == "tool" and not str(last.get("content")).startswith("refused")
    if answered:
        results = [str(m.get("content") or "") for m in messages if m.get("role") == "tool"]
        return Message(role="assistant", content="done: " + "; ".join(results)[:400])
    refused_tools, refused_fields = _refusals(messages)
    functions = [dict(t.get("function") or t) for t in tools]
    left = [f for f in functions if f.get("name") not in refused_tools]
    if not left:
        return Message(role="assistant", content="no tool on offer may be used: over to you")
    doc = _prompt_doc(messages)
    fields = {k for f in left for k in ((f.get("parameters") or {}).get("properties") or {})}
    asked = settings(str(doc.get("goal", "")), fields)
    hints = dict(doc.get("hints") or {})
    for field, times in refused_fields.items():  # the operator's setting goes first
        if field in asked:
            del asked[field]
            times -= 1
        if times > 0:
            hints.pop(field, None)
    choice = answer({**doc, "tools": left, "hints": {**hints, **asked}})
    assert isinstance(choice, dict)  # with tools the rules always choose one
    call = ChatCompletionMessageToolCall(
        id=f"call_{uuid.uuid4().hex[:12]}",
        type="function",
        function=Function(name=str(choice["tool"]), arguments=json.dumps(choice["args"])),
    )
    return Message(role="assistant", content=None, tool_calls=[call])


class RulesLLM(CustomLLM):
    """litellm's view of the rules: a provider whose "model" is ``planner``."""

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        messages: list[dict[str, Any]] = list(kwargs.get("messages") or [])
        options: dict[str, Any] = dict(kwargs.get("optional_params") or {})
        tools = options.get("tools") or []
        if tools and options.get("tool_choice") != "none":
            message = tool_answer(messages, tools)
        else:
            out = answer(_prompt_doc(messages))
            message = Message(
                role="assistant", content=out if isinstance(out, str) else json.dumps(out)
            )
        text = message.content or json.dumps([c.model_dump() for c in message.tool_calls or []])
        prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4
        completion = max(1, len(text) // 4)
        return ModelResponse(
            model=f"{PROVIDER}/{kwargs.get('model', 'planner')}",
            choices=[
                Choices(
                    index=0,
                    message=message,
                    finish_reason="tool_calls" if message.tool_calls else "stop",
                )
            ],
            usage=Usage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            ),
        )

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        yield from _as_chunks(self.completion(*args, **kwargs))

    async def astreaming(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        for chunk in _as_chunks(self.completion(*args, **kwargs)):
            yield chunk


def _as_chunks(resp: ModelResponse) -> Iterator[GenericStreamingChunk]:
    """A whole answer as litellm's generic stream: its text, or one chunk per tool call."""
    message: Any = resp.choices[0].message
    u = resp.usage  # type: ignore[attr-defined]
    usage = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }
    calls = message.tool_calls or []
    if not calls:
        yield GenericStreamingChunk(
            text=message.content or "",
            tool_use=None,
            is_finished=True,
            finish_reason="stop",
            usage=usage,  # type: ignore[typeddict-item]
            index=0,
        )
        return
    for i, call in enumerate(calls):
        last = i == len(calls) - 1
        yield GenericStreamingChunk(
            text="",
            tool_use=ChatCompletionToolCallChunk(
                id=call.id,
                type="function",
                function=ChatCompletionToolCallFunctionChunk(
                    name=call.function.name, arguments=call.function.arguments
                ),
                index=i,
            ),
            is_finished=last,
            finish_reason="tool_calls" if last else "",
            usage=usage if last else None,  # type: ignore[typeddict-item]
            index=0,
        )


def register() -> None:
    """Make ``keel-rules/...`` models callable through litellm (idempotent)."""

    current = list(litellm.custom_provider_map or [])
    if not any(p.get("provider") == PROVIDER for p in current):
        current.append({"provider": PROVIDER, "custom_handler": RulesLLM()})
        litellm.custom_provider_map = current

        custom_llm_setup()  # type: ignore[no-untyped-call]
