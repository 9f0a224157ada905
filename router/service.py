"""The model router as a Ray Serve application on 127.0.0.1.

HTTP, OpenAI-compatible so any OpenAI client (or litellm) can use it:
``POST /v1/chat/completions`` (``model: "auto"`` routes by complexity, a tier name sets
the floor; tools, tool choice and parallel tool calls pass through to the tier; ``stream``
answers with server-sent chunks), ``GET /v1/models`` (the tiers), and errors in OpenAI's
shape. ``POST /v1/route`` explains the choice without calling a model. Every answer says
under ``keel`` where it went. Workers call the router through a Serve handle.
"""

import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorAlreadyExistsError
from ray.serve.exceptions import RayServeException
from sse_starlette import EventSourceResponse

from keel.config import ROUTER_APP, RouterConfig, load_config
from keel.core.calls import ChatMessage, ModelCall, RouteDecision, RouteRequest, StepKind
from keel.errors import KeelError
from keel.router.local_model import deploy_local_model

if TYPE_CHECKING:
    from keel.router.gateway import ModelGateway

APP_NAME = ROUTER_APP
api = FastAPI(title="Keel model router", version="1")


class KeelHints(BaseModel):
    """Optional routing features an OpenAI client may add under ``keel``."""

    model_config = ConfigDict(extra="forbid")

    kind: StepKind = "chat"
    tools: int = Field(default=0, ge=0, le=1000)
    failures: int = Field(default=0, ge=0, le=1000)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = "auto"
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    keel: KeelHints = Field(default_factory=KeelHints)

    def to_route(self) -> RouteRequest:
        return RouteRequest(
            messages=self.messages,
            kind=self.keel.kind,
            tools=max(self.keel.tools, len(self.tools or [])),
            failures=self.keel.failures,
            min_tier=None if self.model == "auto" else self.model,
            response_format=self.response_format,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            functions=self.tools,
            tool_choice=self.tool_choice,
            parallel_tool_calls=self.parallel_tool_calls,
        )


def completion_body(call: ModelCall) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object, plus what Keel recorded under ``keel``."""
    message: dict[str, Any] = {"role": "assistant", "content": call.content or None}
    if call.tool_calls:
        message["tool_calls"] = call.tool_calls
    elif message["content"] is None:
        message["content"] = ""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [{"index": 0, "message": message, "finish_reason": call.finish_reason}],
        "usage": {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.prompt_tokens + call.completion_tokens,
        },
        "keel": call.model_dump(exclude={"content", "request", "tool_calls", "finish_reason"}),
    }


def _http_error(exc: KeelError) -> HTTPException:
    status = 400 if exc.field else 502
    return HTTPException(status, detail=exc.to_dict())


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}


def openai_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error object, so its clients raise their own typed errors."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


# The request's own names for what the router calls otherwise.
_PARAMS = {"min_tier": "model", "functions": "tools"}


@api.exception_handler(HTTPException)
async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    detail = exc.detail
    if isinstance(detail, dict):
        field = detail.get("field")
        if field is None:
            return openai_error(exc.status_code, str(detail.get("message")))
        param = _PARAMS.get(field, field)
        return openai_error(exc.status_code, f"{param}: {detail.get('message')}", param)
    return openai_error(exc.status_code, str(detail))


@api.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return openai_error(400, f"{param}: {first.get('msg')}", param)


# Above the class: serve.ingress pickles the app as the class is defined, so whatever its
# routes call must exist by then.
async def _sse(decision: RouteDecision, chunks: AsyncIterator[dict[str, Any]]) -> Any:
    """Server-sent events as OpenAI streams them, ending with ``[DONE]``; the first chunk
    carries the routing decision under ``keel``. A failure mid-stream is sent as an error
    event (the status line has gone already)."""
    first = True
    try:
        async for chunk in chunks:
            if first:
                chunk["keel"] = decision.model_dump()
                first = False
            yield {"data": json.dumps(chunk)}
    except Exception as exc:  # the provider broke off: say so in the stream
        error = {"message": f"the stream broke off: {exc}", "type": "api_error", "code": None}
        yield {"data": json.dumps({"error": error})}
    yield {"data": "[DONE]"}


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
    """One router replica: a ``ModelGateway`` behind HTTP and a Serve handle.

    Only the replica loads the gateway: it imports litellm, about 4 s of CPU, which a
    process that merely deploys the router (``keel run``, a test) would otherwise pay too.
    """

    gateway: "ModelGateway"

    def __init__(self, config: dict[str, Any]) -> None:
        from keel.router.gateway import ModelGateway  # noqa: PLC0415  # litellm: replica only

        router = RouterConfig.model_validate(config)
        self.gateway = ModelGateway(router)
        self.keys = dict(router.keys)

    @api.post("/v1/chat/completions", response_model=None)
    async def chat(
        self, body: ChatCompletionBody, authorization: str | None = Header(default=None)
    ) -> dict[str, Any] | EventSourceResponse:
        _authorised(self.keys, authorization)
        try:
            if body.stream:
                usage = body.stream_options is not None and body.stream_options.include_usage
                decision, chunks = await self.gateway.stream(body.to_route(), include_usage=usage)
                return EventSourceResponse(_sse(decision, chunks), ping=15)
            call = await self.gateway.complete(body.to_route())
        except KeelError as exc:
            raise _http_error(exc) from None
        return completion_body(call)

    @api.get("/v1/models")
    async def models(self, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        _authorised(self.keys, authorization)
        tiers = [
            {
                "id": t.name,
                "object": "model",
                "created": 0,
                "owned_by": "keel",
                "keel": {"model": t.model, "max_score": t.max_score},
            }
            for t in self.gateway.tiers
        ]
        auto = {"id": "auto", "object": "model", "created": 0, "owned_by": "keel"}
        return {"object": "list", "data": [auto, *tiers]}

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


def _replica_options(config: RouterConfig) -> dict[str, Any]:
    """The replicas' options, with the tiers' API keys from this process's environment: on
    a cluster the router's replicas run on nodes that never saw the shell that exported
    them (the deployment's runtime_env carries them, so Ray's GCS holds them; a cluster
    that must not, sets them on its nodes, as deploy/rayservice.yaml does from a secret)."""
    options = config.replicas.serve_options()
    keys = {
        t.api_key_env: os.environ[t.api_key_env]
        for t in config.resolved_tiers()
        if t.api_key_env and os.environ.get(t.api_key_env)
    }
    if keys:
        options["ray_actor_options"] = {"num_cpus": 0, "runtime_env": {"env_vars": keys}}
    return options


def deploy(config: RouterConfig) -> Any:
    """Start Serve's HTTP proxy on 127.0.0.1, the local model if a tier uses it, and the
    router; return the router's handle."""
    serve.start(http_options={"host": "127.0.0.1", "port": config.http_port})
    if config.uses_local_model():
        deploy_local_model()
    return serve.run(
        ModelRouter.options(**_replica_options(config)).bind(  # type: ignore[attr-defined]
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
    return ModelRouter.options(**_replica_options(router)).bind(  # type: ignore[attr-defined]
        router.model_dump(mode="json")
    )
