"""Every model call goes through here: route by complexity, then call through litellm.

litellm's Router does the retries, the fallbacks to the next tier, the cooldown of a tier
that keeps failing, and the cost; this module only decides where a request starts and
records what happened.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from litellm.router import Router

from keel.config import RouterConfig, TierConfig
from keel.core.calls import ModelCall, RouteDecision, RouteRequest, TokenLogprob
from keel.errors import RouterError
from keel.router import rules
from keel.router.classifier import for_config
from keel.router.complexity import choose


def model_list(config: RouterConfig, tiers: list[TierConfig]) -> list[dict[str, Any]]:
    out = []
    for t in tiers:
        params: dict[str, Any] = {"model": t.model, "timeout": t.timeout_s}
        endpoint = config.endpoint(t)
        if endpoint:
            params["api_base"] = endpoint
            params["api_key"] = "keel-local"  # OpenAI-compatible local servers need one
        if t.api_key_env:
            params["api_key"] = f"os.environ/{t.api_key_env}"
        if t.input_cost_per_token or t.output_cost_per_token:
            params["input_cost_per_token"] = t.input_cost_per_token
            params["output_cost_per_token"] = t.output_cost_per_token
        out.append({"model_name": t.name, "litellm_params": params, "model_info": {"id": t.name}})
    return out


class ModelGateway:
    """Routes and calls; one per router replica."""

    def __init__(self, config: RouterConfig) -> None:
        rules.register()
        self.config = config
        self.tiers = config.resolved_tiers()
        self.by_name = {t.name: t for t in self.tiers}
        self.classifier = for_config(config)
        self.router = Router(
            model_list=model_list(config, self.tiers),
            fallbacks=[
                {t.name: [u.name for u in self.tiers[i + 1 :]]}
                for i, t in enumerate(self.tiers[:-1])
            ],
            num_retries=config.num_retries,
            allowed_fails=config.allowed_fails,
            cooldown_time=config.cooldown_s,
        )

    def next_tier(self, tier: str) -> str | None:
        """The tier above ``tier``, where a failed answer escalates to."""
        names = [t.name for t in self.tiers]
        i = names.index(tier) if tier in names else len(names)
        return names[i + 1] if i + 1 < len(names) else None

    def route(self, req: RouteRequest) -> RouteDecision:
        return choose(req, self.tiers, self.config.weights, self.classifier)

    async def complete(self, req: RouteRequest, *, escalated_from: str | None = None) -> ModelCall:
        decision = self.route(req)
        started = time.perf_counter()
        try:
            resp = await self.router.acompletion(
                model=decision.tier, messages=_messages(req), **req.provider_options()
            )
        except Exception as exc:
            raise _failed(decision, exc) from exc
        latency = time.perf_counter() - started
        hidden: dict[str, Any] = getattr(resp, "_hidden_params", {}) or {}
        served = str(hidden.get("model_id") or decision.tier)
        headers = hidden.get("additional_headers") or {}
        usage = getattr(resp, "usage", None)
        reason = decision.reason
        if served != decision.tier:
            reason += f"; {decision.tier} failed or cooling down, served by {served}"
        choice = resp.choices[0]
        return ModelCall(
            tier=served,
            model=self.by_name[served].model if served in self.by_name else str(resp.model),
            routed_tier=decision.tier,
            reason=reason,
            score=decision.score,
            content=str(choice.message.content or ""),
            tool_calls=[tool_call(t) for t in choice.message.tool_calls or []],
            finish_reason=str(choice.finish_reason or "stop"),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost=float(hidden.get("response_cost") or 0.0),
            latency_s=latency,
            fallbacks=int(headers.get("x-litellm-attempted-fallbacks") or 0),
            escalated_from=escalated_from,
            request=req.model_dump(mode="json", exclude_none=True),
            logprobs=_logprobs(choice) if req.logprobs else None,
        )

    async def stream(
        self, req: RouteRequest, *, include_usage: bool = False
    ) -> tuple[RouteDecision, AsyncIterator[dict[str, Any]]]:
        """Route, then stream the tier's answer through litellm: OpenAI
        ``chat.completion.chunk`` objects, tool-call deltas included. A tier that fails
        before its first chunk falls back as a whole call would."""
        decision = self.route(req)
        options = req.provider_options()
        if include_usage:
            options["stream_options"] = {"include_usage": True}
        try:
            resp = await self.router.acompletion(
                model=decision.tier, messages=_messages(req), stream=True, **options
            )
        except Exception as exc:
            raise _failed(decision, exc) from exc

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            async for chunk in resp:
                body: dict[str, Any] = chunk.model_dump(exclude_none=True)
                if not include_usage:
                    body.pop("usage", None)
                yield body

        return decision, chunks()


def tool_call(call: Any) -> dict[str, Any]:
    """One tool call in OpenAI's shape, from litellm's object."""
    return {
        "id": str(call.id),
        "type": "function",
        "function": {"name": call.function.name, "arguments": call.function.arguments or "{}"},
    }


def _logprobs(choice: Any) -> list[TokenLogprob] | None:
    """The answer's token log-probabilities from litellm's choice (an object or, from
    some providers, a dict), or ``None`` when the provider sent none."""
    lp = getattr(choice, "logprobs", None)
    content = lp.get("content") if isinstance(lp, dict) else getattr(lp, "content", None)
    if not content:
        return None

    def field(t: Any, name: str) -> Any:
        return t.get(name) if isinstance(t, dict) else getattr(t, name, None)

    return [
        TokenLogprob(token=str(field(t, "token")), logprob=float(field(t, "logprob")))
        for t in content
    ]


def _messages(req: RouteRequest) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in req.messages]


def _failed(decision: RouteDecision, exc: Exception) -> RouterError:
    return RouterError(
        f"no tier could answer (routed to {decision.tier}): {exc}",
        retryable=True,
        tier=decision.tier,
    )
