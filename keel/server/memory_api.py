"""The memory API on Ray Serve: long-term memory per namespace, the same operations as
``keel memory`` (``keel.runtime.memory_book``), behind the runs API's keys and policy.

Mounted at ``/v1/memory``. Errors are problem+json naming the field; a namespace a
principal may not read is 403 naming ``namespace`` (namespaces, unlike runs, are names
people choose and share, so their existence is not a secret).
"""

import asyncio
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from keel.config import KeelConfig, load_config
from keel.errors import KeelError
from keel.policy.engine import PolicyEngine
from keel.runtime.memory_book import MemoryBook
from keel.server.http import (
    BodyLimit,
    KeyRing,
    TooMany,
    Unauthorized,
    keel_problem,
    key_of,
    problem,
    run_app,
)
from keel.storage import open_store
from keel.storage.memory import MemoryStore

APP_NAME = "keel-memory"
ROUTE_PREFIX = "/v1/memory"

memory_api = FastAPI(title="Keel memory API", version="1")
memory_api.add_middleware(BodyLimit)


class AddBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=1_000_000)
    title: str = Field(default="", max_length=1_000)
    tags: list[str] = Field(default_factory=list, max_length=50)
    kind: str = "document"


@memory_api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path"))
    return problem(400, "bad request", str(err["msg"]), loc or None)


@memory_api.exception_handler(KeelError)
async def _keel(request: Request, exc: KeelError) -> JSONResponse:
    if isinstance(exc, Unauthorized):
        return problem(401, "unauthorized", "a valid API key is required", "authorization")
    if isinstance(exc, TooMany):
        response = problem(429, "too many requests", exc.message, exc.field)
        response.headers["Retry-After"] = "60"
        return response
    return keel_problem(exc)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100)
@serve.ingress(memory_api)
class MemoryAPI:
    def __init__(self, config: dict[str, Any], keys: dict[str, str]) -> None:
        self.config = KeelConfig.model_validate(config)
        storage = self.config.storage
        store = open_store(self.config.storage_url(), dict(storage.options), fsync=False)
        policy = PolicyEngine(self.config.policy.model, self.config.policy.policy)
        self.book = MemoryBook(MemoryStore(store), policy)
        self.keyring = KeyRing(keys, self.config.api.rate_limit)

    def _principal(self, request: Request) -> str:
        return self.keyring.principal(key_of(request.headers))

    @memory_api.post("/{namespace}/items", status_code=201)
    async def add(self, namespace: str, body: AddBody, request: Request) -> Any:
        principal = self._principal(request)
        item = await asyncio.to_thread(
            self.book.add,
            principal,
            item_id=body.id,
            text=body.text,
            namespace=namespace,
            kind=body.kind,
            title=body.title,
            tags=tuple(body.tags),
        )
        return item.model_dump(mode="json")

    @memory_api.get("/{namespace}/items")
    async def listing(self, namespace: str, request: Request, kind: str | None = None) -> Any:
        principal = self._principal(request)
        items = await asyncio.to_thread(self.book.listing, principal, namespace, kind)
        return {"items": [i.model_dump(mode="json") for i in items]}

    @memory_api.get("/search")
    async def search(
        self,
        request: Request,
        q: Annotated[str, Query(max_length=20_000)] = "",
        k: int = 5,
        namespace: Annotated[list[str] | None, Query()] = None,
    ) -> Any:
        principal = self._principal(request)
        where = namespace or ["shared"]
        found = await asyncio.to_thread(self.book.search, principal, q, where, k)
        return {"results": [{**i.model_dump(mode="json"), "score": s} for i, s in found]}

    @memory_api.delete(
        "/{namespace}/items/{kind}/{item_id}", status_code=204, response_class=Response
    )
    async def forget(self, namespace: str, kind: str, item_id: str, request: Request) -> Response:
        principal = self._principal(request)
        await asyncio.to_thread(self.book.forget, principal, item_id, namespace, kind)
        return Response(status_code=204)


def deploy_memory_api(config: dict[str, Any], keys: dict[str, str]) -> Any:
    """Serve the memory API at ``/v1/memory``; ``keys`` maps sha256(api key) to principal."""
    return run_app(MemoryAPI.bind(config, keys), APP_NAME, ROUTE_PREFIX)  # type: ignore[attr-defined]


def build(args: dict[str, Any]) -> Any:
    """Serve application builder (``import_path: keel.server.memory_api:build``)."""
    config = load_config(args.get("config"))
    return MemoryAPI.options(**config.api.replicas.serve_options()).bind(  # type: ignore[attr-defined]
        config.model_dump(mode="json"), dict(config.api.keys)
    )
