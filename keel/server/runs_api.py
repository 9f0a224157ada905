"""The runs API on Ray Serve: start runs, read them and their ledger, approve, cancel.

Mounted at ``/v1/runs`` on Serve's 127.0.0.1 proxy. Every request carries an API key
(``Authorization: Bearer KEY`` or ``X-API-Key``); keys are stored hashed in configuration
and map to principals, and policy decides what each principal may do. Errors are
``application/problem+json`` naming the field and the reason, and say nothing about where
or how Keel stores things.

Tenancy: a run belongs to the principal that started it. A principal lists and reads its
own runs, and others' only where policy grants ``read_any`` on the workflow; a run it may
not see answers 404, as a run that does not exist does. Only workflows offered to the API
(``api.workflows``; by default the bundled ones and those named in ``workflows``) can be
started, and permission is checked before any workflow code is imported. Requests are
rate-limited per key, refused approvals more tightly per principal, and bodies are counted
as they arrive, whatever ``Content-Length`` claims.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from ray import serve
from sse_starlette import EventSourceResponse, ServerSentEvent

from keel.actors.messages import (
    ApproveRun,
    CancelRun,
    orchestrator_settings,
)
from keel.actors.rayerrors import RayTaskError, unwrap
from keel.actors.shards import Orchestrators
from keel.config import Budgets, KeelConfig, load_config
from keel.core.events import RunStatus
from keel.core.state import RunState, RunSummary
from keel.errors import InputError, KeelError, PolicyError, RunNotFoundError
from keel.policy.engine import PolicyEngine
from keel.runtime.engine import RunView
from keel.runtime.reader import RunReader
from keel.server.console import ConsoleViews, console
from keel.server.following import follow
from keel.server.http import (
    BodyLimit,
    Followers,
    FollowerSlot,
    KeyRing,
    TooMany,
    Unauthorized,
    hash_key,
    keel_problem,
    key_of,
    problem,
    run_app,
)
from keel.server.starting import Starter
from keel.storage import open_store
from keel.storage.runs import RunStore, check_run_id

APP_NAME = "keel-runs"
ROUTE_PREFIX = "/v1/runs"
PING_S = 15  # a comment line this often keeps proxies from closing a quiet stream


def last_event_id(request: Request) -> int:
    """Where a reconnecting client left off: the ``Last-Event-ID`` its EventSource sends
    (an event's id is its sequence number in the ledger); 0 for a first connection."""
    raw = request.headers.get("last-event-id")
    if raw is None or raw == "":
        return 0
    if not raw.isdigit():
        raise InputError(
            f"must be the id of an event this stream sent (a number), not {raw[:40]!r}",
            field="Last-Event-ID",
        )
    return int(raw)


runs_api = FastAPI(title="Keel runs API", version="1")
runs_api.include_router(console)  # before ``/{run_id}``, which would match ``/console``


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=300)
    goal: str = Field(default="", max_length=20_000)
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    budgets: Budgets | None = Field(default=None, description="this run's tighter limits")


class ApprovalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approved: bool
    reason: str = Field(default="", max_length=2_000)


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2_000)


@runs_api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path", "form"))
    return problem(400, "bad request", str(err["msg"]), loc or None)


@runs_api.exception_handler(KeelError)
async def _keel(request: Request, exc: KeelError) -> JSONResponse:
    if isinstance(exc, RayTaskError):  # the orchestrator's own error, without Ray's wrapper
        cause = unwrap(exc)
        exc = cause if isinstance(cause, KeelError) else exc
    return keel_problem(exc)


runs_api.add_middleware(BodyLimit)


@runs_api.exception_handler(Unauthorized)
async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
    return problem(401, "unauthorized", "a valid API key is required", "authorization")


@runs_api.exception_handler(TooMany)
async def _too_many(request: Request, exc: TooMany) -> JSONResponse:
    response = problem(429, "too many requests", exc.message, exc.field)
    response.headers["Retry-After"] = "60"
    return response


def _not_running(state: RunState) -> bool:
    return state.status != RunStatus.RUNNING


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100)
@serve.ingress(runs_api)
class RunsAPI(ConsoleViews):
    def __init__(self, config: dict[str, Any], keys: dict[str, str]) -> None:
        self.config = KeelConfig.model_validate(config)
        storage = self.config.storage
        self.reader = RunReader(
            RunStore(open_store(self.config.storage_url(), dict(storage.options), fsync=False))
        )
        self.keyring = KeyRing(keys, self.config.api.rate_limit)
        self._orch: Orchestrators | None = None
        # One enforcer per replica; it re-reads the files itself when they change.
        self.policy = PolicyEngine(self.config.policy.model, self.config.policy.policy)
        api = self.config.api
        self.starter = Starter(self.config, self.policy)
        # Per replica, in memory, like the keys' rate.
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_refusal = parse(api.refused_approval_limit)
        self.followers = Followers(api.max_followers)

    def _orchestrator(self, run_id: str | None) -> Any:
        if self._orch is None:
            self._orch = Orchestrators(orchestrator_settings(self.config))
        return self._orch.for_run(run_id)

    def _key(self, request: Request) -> str:
        return key_of(request.headers)

    def _principal_of_key(self, key: str) -> str:
        return self.keyring.principal(key)

    def _principal(self, request: Request) -> str:
        return self._principal_of_key(self._key(request))

    def _follow_slot(self, key: str) -> FollowerSlot:
        return self.followers.take(hash_key(key))

    def _eval_report(self) -> Path | None:
        folder = self.config.api.eval_report
        return Path(folder).expanduser() if folder else None

    async def _may(self, principal: str, workflow: str, action: str) -> None:
        self.starter.may(principal, workflow, action)

    def _sees(self, principal: str, row: Mapping[str, Any]) -> bool:
        """A principal sees its own runs, and others' where policy grants ``read_any``."""
        if row.get("principal") == principal:
            return True
        obj = f"run:{row.get('workflow', '')}"
        return self.policy.decide(principal, obj, "read_any").effect == "allow"

    @runs_api.post("/", status_code=201)
    async def start(self, body: StartBody, request: Request) -> Any:
        principal = self._principal(request)
        budgets = body.budgets.own() if body.budgets else None
        msg = self.starter.message(principal, body.workflow, body.goal, body.inputs, budgets)
        state = await self._orchestrator(msg.run_id).start_run.remote(msg)
        return state.model_dump(mode="json")

    @runs_api.get("/")
    async def list_runs(
        self,
        request: Request,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = Query(default=50, ge=1, le=500),
        offset: int = Query(default=0, ge=0),
    ) -> Any:
        principal = self._principal(request)
        rows = [r.model_dump() for r in await self._listing(principal, status, workflow)]
        return {"runs": rows[offset : offset + limit], "total": len(rows)}

    async def _listing(
        self, principal: str, status: str | None, workflow: str | None
    ) -> list[RunSummary]:
        found = await asyncio.to_thread(self.reader.runs, status, workflow)
        return [r for r in found if self._sees(principal, r.model_dump())]

    async def _view(self, run_id: str, request: Request) -> tuple[str, RunView]:
        principal = self._principal(request)
        return principal, await self._view_as(principal, run_id)

    async def _view_as(self, principal: str, run_id: str) -> RunView:
        check_run_id(run_id)
        view = await asyncio.to_thread(self.reader.show, run_id)
        row = {"principal": view.state.principal, "workflow": view.state.workflow}
        if not self._sees(principal, row):
            raise RunNotFoundError("no such run", field="run_id")  # not even that it exists
        await self._may(principal, view.state.workflow, "read")
        return view

    @runs_api.get("/{run_id}")
    async def get_run(self, run_id: str, request: Request) -> Any:
        _, view = await self._view(run_id, request)
        return {"state": view.state.model_dump(mode="json"), "warnings": view.warnings}

    @runs_api.get("/{run_id}/events")
    async def events(self, run_id: str, request: Request, follow: bool = False) -> Any:
        _, view = await self._view(run_id, request)
        if not follow:
            return {"events": [e.model_dump(mode="json") for e in view.events]}
        after = last_event_id(request)
        slot = self._follow_slot(self._key(request))
        return EventSourceResponse(self._stream(run_id, after, slot), ping=PING_S)

    async def _stream(
        self, run_id: str, after: int, slot: FollowerSlot
    ) -> AsyncIterator[ServerSentEvent]:
        """The run's events after ``after``, each with its sequence number as its id (so
        a client that reconnects resumes where it was), then ``end`` once it stops."""
        try:
            async for item in self._events_after(run_id, after):
                yield item
        finally:
            slot.release()

    async def _events_after(self, run_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
        view = None
        async for view in follow(self._orchestrator(run_id), run_id, after, _not_running):
            for ev in view.events:
                data = json.dumps(ev.model_dump(mode="json"))
                yield ServerSentEvent(data=data, event=ev.type, id=str(ev.seq))
        if view is not None:
            end = json.dumps({"status": str(view.state.status)})
            yield ServerSentEvent(data=end, event="end")

    @runs_api.post("/{run_id}/approval")
    async def approval(self, run_id: str, body: ApprovalBody, request: Request) -> Any:
        principal, _ = await self._view(run_id, request)
        if not self.limiter.test(self.per_refusal, "refused", principal):
            raise TooMany(
                f"more than {self.per_refusal} refused approvals for {principal}",
                field="principal",
            )
        msg = ApproveRun(
            run_id=run_id, principal=principal, approved=body.approved, reason=body.reason
        )
        try:
            state = await self._orchestrator(run_id).approve.remote(msg)
        except PolicyError:
            self.limiter.hit(self.per_refusal, "refused", principal)  # counted, not stored
            raise
        return state.model_dump(mode="json")

    @runs_api.post("/{run_id}/cancel")
    async def cancel(self, run_id: str, body: CancelBody, request: Request) -> Any:
        principal, view = await self._view(run_id, request)
        await self._may(principal, view.state.workflow, "cancel")
        state = await self._orchestrator(run_id).cancel.remote(
            CancelRun(run_id=run_id, by=principal, reason=body.reason)
        )
        return state.model_dump(mode="json")


def deploy_runs_api(config: dict[str, Any], keys: dict[str, str]) -> Any:
    """Run the API on Serve; ``keys`` maps sha256(api key) to principal."""
    return run_app(RunsAPI.bind(config, keys), APP_NAME, ROUTE_PREFIX)  # type: ignore[attr-defined]


def build(args: dict[str, Any]) -> Any:
    """Serve application builder (``import_path: keel.server.runs_api:build``): API keys come from
    ``api.keys`` in keel.yaml, already hashed."""
    config = load_config(args.get("config"))
    return RunsAPI.options(**config.api.replicas.serve_options()).bind(  # type: ignore[attr-defined]
        config.model_dump(mode="json"), dict(config.api.keys)
    )
