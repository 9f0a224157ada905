"""The model router as a Ray Serve application on 127.0.0.1.

HTTP: ``POST /v1/chat/completions`` (OpenAI-compatible, so any OpenAI client can use it;
``model: "auto"`` routes by complexity, a tier name sets the floor) and ``POST /v1/route``
(explains the choice without calling a model). Workers call it through a Serve handle.
"""

import hashlib
import time
import uuid
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorAlreadyExistsError
from ray.serve.exceptions import RayServeException

from keel.config import RouterConfig, load_config
from keel.core.calls import ChatMessage, ModelCall, RouteDecision, RouteRequest, StepKind
from keel.errors import KeelError
from keel.router.gateway import ModelGateway
from keel.router.local_model import deploy_local_model

APP_NAME = "keel-router"
api = FastAPI(title="Keel model router", version="1")


class KeelHints(BaseModel):
    """Optional routing features an OpenAI client may add under ``keel``."""

    model_config = ConfigDict(extra="forbid")

    kind: StepKind = "chat"
    tools: int = Field(default=0, ge=0, le=1000)
    failures: int = Field(default=0, ge=0, le=1000)


class ChatCompletionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = "auto"
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    tools: list[dict[str, Any]] | None = None
    keel: KeelHints = Field(default_factory=KeelHints)

    def to_route(self) -> RouteRequest:
        return RouteRequest(
            messages=self.messages,
            kind=self.keel.kind,
            tools=max(self.keel.tools, len(self.tools or [])),
            failures=self.keel.failures,
            min_tier=None if self.model == "auto" else self.model,
            response_format=self.response_format,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )


def completion_body(call: ModelCall) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object, plus what Keel recorded under ``keel``."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": call.content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.prompt_tokens + call.completion_tokens,
        },
        "keel": call.model_dump(exclude={"content", "request"}),
    }


def _http_error(exc: KeelError) -> HTTPException:
    status = 400 if exc.field else 502
    return HTTPException(status, detail=exc.to_dict())


def _authorised(keys: dict[str, str], authorization: str | None) -> None:
    """With keys configured, an HTTP caller must present one (``Authorization: Bearer``).
    The embedded default has none and listens on 127.0.0.1 only; Serve handles (Keel's own
    workers) never pass through here."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme != "Bearer" or not token or hashlib.sha256(token.encode()).hexdigest() not in keys:
        raise HTTPException(status_code=401, detail="a valid API key is required")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress(api)
class ModelRouter:
    """One router replica: a ``ModelGateway`` behind HTTP and a Serve handle."""

    def __init__(self, config: dict[str, Any]) -> None:
        router = RouterConfig.model_validate(config)
        self.gateway = ModelGateway(router)
        self.keys = dict(router.keys)

    @api.post("/v1/chat/completions")
    async def chat(
        self, body: ChatCompletionBody, authorization: str | None = Header(default=None)
    ) -> dict[str, Any]:
        _authorised(self.keys, authorization)
        try:
            call = await self.gateway.complete(body.to_route())
        except KeelError as exc:
            raise _http_error(exc) from None
        return completion_body(call)

    @api.post("/v1/route")
    async def explain(
        self, body: ChatCompletionBody, authorization: str | None = Header(default=None)
    ) -> RouteDecision:
        _authorised(self.keys, authorization)
        try:
            return self.gateway.route(body.to_route())
        except KeelError as exc:
            raise _http_error(exc) from None

    async def complete(self, req: RouteRequest, escalated_from: str | None = None) -> ModelCall:
        """For workers, through a Serve handle."""
        return await self.gateway.complete(req, escalated_from=escalated_from)

    async def next_tier(self, tier: str) -> str | None:
        return self.gateway.next_tier(tier)


def deploy(config: RouterConfig) -> Any:
    """Start Serve's HTTP proxy on 127.0.0.1, the local model if a tier uses it, and the
    router; return the router's handle."""
    serve.start(http_options={"host": "127.0.0.1", "port": config.http_port})
    if config.uses_local_model():
        deploy_local_model()
    return serve.run(
        ModelRouter.options(**config.replicas.serve_options()).bind(  # type: ignore[attr-defined]
            config.model_dump(mode="json")
        ),
        name=APP_NAME,
        route_prefix="/",
        blocking=False,
    )


def ensure_router(config: dict[str, Any] | None = None) -> Any:
    """The running router's handle, deploying it (from ``config``) if it is not running."""

    try:
        return serve.get_app_handle(APP_NAME)
    except RayServeException:
        pass
    try:
        return deploy(RouterConfig.model_validate(config or {}))
    except ActorAlreadyExistsError:
        # Another process is starting Serve at the same moment: use what it deploys.
        deadline = time.monotonic() + 120
        while True:
            try:
                return serve.get_app_handle(APP_NAME)
            except RayServeException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def build(args: dict[str, Any]) -> Any:
    """Serve application builder (``import_path: keel.router.service:build``)."""

    config = load_config(args.get("config"))
    router = config.router
    return ModelRouter.options(**router.replicas.serve_options()).bind(  # type: ignore[attr-defined]
        router.model_dump(mode="json")
    )
