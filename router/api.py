"""The runs API on Ray Serve: start runs, read them and their ledger, approve, cancel.

Mounted at ``/v1/runs`` on Serve's 127.0.0.1 proxy. Every request carries an API key
(``Authorization: Bearer KEY`` or ``X-API-Key``); keys are stored hashed in configuration
and map to principals, and policy decides what each principal may do. Errors are
``application/problem+json`` naming the field and the reason.
"""

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from ray import serve

from keel.config import RunBudgets
from keel.errors import InputError, KeelError, PolicyError, RunNotFoundError, RunStateError

APP_NAME = "keel-runs"
ROUTE_PREFIX = "/v1/runs"
MAX_BODY = 1_000_000
runs_api = FastAPI(title="Keel runs API", version="1")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=300)
    goal: str = Field(default="", max_length=20_000)
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    budgets: RunBudgets | None = Field(default=None, description="this run's tighter limits")


class ApprovalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approved: bool
    reason: str = Field(default="", max_length=2_000)


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2_000)


def problem(status: int, title: str, detail: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def keel_problem(exc: KeelError) -> JSONResponse:
    if isinstance(exc, PolicyError):
        return problem(403, "forbidden", exc.message, exc.field)
    if isinstance(exc, RunNotFoundError):
        return problem(404, "not found", exc.message, exc.field)
    if isinstance(exc, RunStateError):
        return problem(409, "conflict", exc.message, exc.field)
    if isinstance(exc, InputError) or exc.field:
        return problem(400, "bad request", exc.message, exc.field)
    return problem(502, "upstream error", exc.message)


@runs_api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path"))
    return problem(400, "bad request", str(err["msg"]), loc or None)


@runs_api.exception_handler(KeelError)
async def _keel(request: Request, exc: KeelError) -> JSONResponse:
    return keel_problem(exc)


@runs_api.middleware("http")
async def _limits_and_auth(request: Request, call_next: Any) -> Any:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY:
        return problem(413, "body too large", f"{size} bytes; at most {MAX_BODY}", "body")
    scope = request.scope
    if scope["path"].rstrip("/") == scope.get("root_path", "").rstrip("/"):
        scope["path"] = scope.get("root_path", "").rstrip("/") + "/"  # /v1/runs is the collection
    return await call_next(request)


class _Unauthorized(KeelError):
    pass


@runs_api.exception_handler(_Unauthorized)
async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
    return problem(401, "unauthorized", "a valid API key is required", "authorization")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100)
@serve.ingress(runs_api)
class RunsAPI:
    def __init__(self, config: dict[str, Any], keys: dict[str, str]) -> None:
        from keel.client import Keel
        from keel.config import KeelConfig

        self.keel = Keel(KeelConfig.model_validate(config))
        self.keys = dict(keys)  # sha256(key) -> principal
        self._orch: Any = None
        from policy.engine import PolicyEngine

        # One enforcer per replica; it re-reads the files itself when they change.
        self.policy = PolicyEngine(self.keel.config.policy.model, self.keel.config.policy.policy)

    def _orchestrator(self) -> Any:
        if self._orch is None:
            from actors.orchestrator import get_orchestrator

            self._orch = get_orchestrator(self.keel.settings(), self.keel.config.orchestrator.name)
        return self._orch

    def _principal(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        key = key or request.headers.get("x-api-key", "")
        principal = self.keys.get(hash_key(key)) if key else None
        if principal is None:
            raise _Unauthorized("a valid API key is required", field="authorization")
        return principal

    async def _may(self, principal: str, workflow: str, action: str) -> None:
        decision = self.policy.decide(principal, f"run:{workflow}", action)
        if decision.effect != "allow":
            raise PolicyError(f"{principal} may not {action} runs of {workflow}", field="principal")

    @runs_api.post("/", status_code=201)
    async def start(self, body: StartBody, request: Request) -> Any:
        from actors.messages import StartRun
        from keel.workflows import load_workflow, resolve_ref

        principal = self._principal(request)
        ref = resolve_ref(body.workflow, self.keel.config.workflows)
        clean = load_workflow(ref).check_inputs(body.inputs)
        budgets = body.budgets.model_dump(exclude_none=True) if body.budgets else None
        msg = StartRun(
            workflow=ref, goal=body.goal, inputs=clean, principal=principal, budgets=budgets
        )
        state = await self._orchestrator().start_run.remote(msg)
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
        self._principal(request)
        rows = await asyncio.to_thread(self.keel.runs, status, workflow)
        return {"runs": rows[offset : offset + limit], "total": len(rows)}

    async def _view(self, run_id: str, request: Request) -> Any:
        principal = self._principal(request)
        view = await asyncio.to_thread(self.keel.show, run_id)
        await self._may(principal, view.state.workflow, "read")
        return view

    @runs_api.get("/{run_id}")
    async def get_run(self, run_id: str, request: Request) -> Any:
        view = await self._view(run_id, request)
        return {"state": view.state.model_dump(mode="json"), "warnings": view.warnings}

    @runs_api.get("/{run_id}/events")
    async def events(self, run_id: str, request: Request, follow: bool = False) -> Any:
        view = await self._view(run_id, request)
        if not follow:
            return {"events": [e.model_dump(mode="json") for e in view.events]}
        return StreamingResponse(self._stream(run_id), media_type="text/event-stream")

    async def _stream(self, run_id: str) -> AsyncIterator[str]:
        from actors.messages import WatchRun

        after = 0
        while True:
            view = await self._orchestrator().watch.remote(
                WatchRun(run_id=run_id, after_seq=after, timeout_s=10)
            )
            for ev in view.events:
                after = ev.seq
                data = json.dumps(ev.model_dump(mode="json"))
                yield f"id: {ev.seq}\nevent: {ev.type}\ndata: {data}\n\n"
            if view.state.status != "running" and not view.events:
                yield f"event: end\ndata: {json.dumps({'status': str(view.state.status)})}\n\n"
                return

    @runs_api.post("/{run_id}/approval")
    async def approval(self, run_id: str, body: ApprovalBody, request: Request) -> Any:
        from actors.messages import ApproveRun

        principal = self._principal(request)
        await asyncio.to_thread(self.keel.show, run_id)
        msg = ApproveRun(
            run_id=run_id, principal=principal, approved=body.approved, reason=body.reason
        )
        state = await self._orchestrator().approve.remote(msg)
        return state.model_dump(mode="json")

    @runs_api.post("/{run_id}/cancel")
    async def cancel(self, run_id: str, body: CancelBody, request: Request) -> Any:
        from actors.messages import CancelRun

        principal = self._principal(request)
        view = await asyncio.to_thread(self.keel.show, run_id)
        await self._may(principal, view.state.workflow, "start")
        state = await self._orchestrator().cancel.remote(
            CancelRun(run_id=run_id, by=principal, reason=body.reason)
        )
        return state.model_dump(mode="json")


def deploy_runs_api(config: dict[str, Any], keys: dict[str, str]) -> Any:
    """Run the API on Serve; ``keys`` maps sha256(api key) to principal."""
    return serve.run(
        RunsAPI.bind(config, keys),  # type: ignore[attr-defined]
        name=APP_NAME,
        route_prefix=ROUTE_PREFIX,
        blocking=False,
    )


def build(args: dict[str, Any]) -> Any:
    """Serve application builder (``import_path: router.api:build``): API keys come from
    ``api.keys`` in keel.yaml, already hashed."""
    from keel.config import load_config

    config = load_config(args.get("config"))
    return RunsAPI.options(**config.api.replicas.serve_options()).bind(  # type: ignore[attr-defined]
        config.model_dump(mode="json"), dict(config.api.keys)
    )
