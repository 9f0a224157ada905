"""The operators' console: runs, their timelines and traces, cost, and approvals, as web
pages served by the runs API itself (same Serve deployment, same keys, same policy).

Pages are rendered on the server (Jinja), so everything reads without JavaScript: forms
post and redirect. htmx, vendored under ``static/``, adds the live parts: a run's page
follows its ledger over server-sent events and swaps in new rows, its status and the
approval panel as they change.

Signing in stores the API key in a cookie that is ``HttpOnly`` and ``SameSite=Strict``
and scoped to the console's path, so other sites cannot make a browser act with it; a form
post whose ``Origin`` is another site is refused as well. The JSON API never reads the
cookie.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse, ServerSentEvent

from keel.actors.messages import ApproveRun
from keel.actors.rayerrors import RayTaskError, unwrap
from keel.core.events import Event, RunStatus
from keel.core.state import RunState
from keel.core.timeline import timeline, timeline_row, trace_tree
from keel.errors import ErrorKind, InputError, KeelError, http_status
from keel.runtime.engine import RunView
from keel.server.following import follow
from keel.server.http import FollowerSlot

HERE = Path(__file__).resolve().parent
COOKIE = "keel_console"
PREFIX = "/console"
STATIC = {
    "htmx.min.js": "text/javascript",
    "sse.js": "text/javascript",
    "console.css": "text/css",
}
STATUSES = [s.value for s in RunStatus]

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["when"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
templates.env.filters["clock"] = lambda ts: time.strftime("%H:%M:%S", time.gmtime(ts))
templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
console = APIRouter(prefix=PREFIX, include_in_schema=False)


@console.get("/static/{name}")
def static(name: str) -> Response:
    """The vendored scripts and the style sheet; nothing else on disk is reachable."""
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    body = (HERE / "static" / name).read_bytes()
    headers = {"Cache-Control": "public, max-age=3600"}
    return Response(body, media_type=STATIC[name], headers=headers)


def base_of(request: Request) -> str:
    """The console's URL path wherever the API is mounted (Serve sets the root path)."""
    return str(request.scope.get("root_path", "")).rstrip("/") + PREFIX


def same_origin(request: Request) -> bool:
    """A browser's form post names the page it came from; one from another site is not
    the operator's own click."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


class ConsoleViews:
    """The console's pages, mixed into the runs API's Serve class, whose reader, policy,
    keys and orchestrator they share. The JSON routes' helpers are declared here and
    defined there."""

    def _principal_of_key(self, key: str) -> str:
        raise NotImplementedError

    async def _view_as(self, principal: str, run_id: str) -> RunView:
        raise NotImplementedError

    async def _listing(self, principal: str, status: str | None, workflow: str | None) -> Any:
        raise NotImplementedError

    def _orchestrator(self, run_id: str | None) -> Any:
        """The orchestrator that drives ``run_id``."""
        raise NotImplementedError

    def _follow_slot(self, key: str) -> FollowerSlot:
        raise NotImplementedError

    def _eval_report(self) -> Path | None:
        raise NotImplementedError

    # -- signing in ---------------------------------------------------------------------

    def _signed_in(self, request: Request) -> str | None:
        key = request.cookies.get(COOKIE, "")
        if not key:
            return None
        try:
            return self._principal_of_key(key)
        except KeelError:
            return None

    def _page(self, request: Request, name: str, status: int = 200, /, **context: Any) -> Response:
        context.update(request=request, base=base_of(request))
        return templates.TemplateResponse(request, name, context, status_code=status)

    @console.get("/login")
    async def login_page(self, request: Request) -> Response:
        return self._page(request, "login.html", error="")

    @console.post("/login")
    async def login(self, request: Request, key: str = Form(default="", max_length=500)) -> Any:
        if not same_origin(request):
            return self._page(request, "login.html", 403, error="refused: another site's form")
        try:
            principal = self._principal_of_key(key.strip())
        except KeelError:
            return self._page(request, "login.html", 401, error="That API key is not valid.")
        response = RedirectResponse(base_of(request) + "/", status_code=303)
        response.set_cookie(
            COOKIE, key.strip(), httponly=True, samesite="strict", path=base_of(request)
        )
        response.headers["X-Keel-Principal"] = principal
        return response

    @console.post("/logout")
    async def logout(self, request: Request) -> Any:
        response = RedirectResponse(base_of(request) + "/login", status_code=303)
        response.delete_cookie(COOKIE, path=base_of(request))
        return response

    def _to_login(self, request: Request) -> Response:
        return RedirectResponse(base_of(request) + "/login", status_code=303)

    # -- reading ------------------------------------------------------------------------

    @console.get("/")
    async def runs_page(
        self,
        request: Request,
        status: str = "",
        workflow: str = "",
        owner: str = "",
    ) -> Response:
        principal = self._signed_in(request)
        if principal is None:
            return self._to_login(request)
        try:
            rows = await self._listing(principal, status or None, workflow or None)
        except InputError as exc:
            return self._page(request, "error.html", 400, principal=principal, message=exc.message)
        owners = sorted({r.principal for r in rows})
        workflows = sorted({r.workflow for r in rows})
        shown = [r for r in rows if not owner or r.principal == owner]
        waiting = [r for r in shown if r.status == RunStatus.AWAITING_APPROVAL]
        chosen = {"status": status, "workflow": workflow, "owner": owner}
        page: dict[str, Any] = {"runs": shown, "waiting": waiting, "chosen": chosen}
        page |= {"statuses": STATUSES, "owners": owners, "workflows": workflows}
        return self._page(request, "runs.html", principal=principal, **page)

    async def _run_context(self, principal: str, run_id: str) -> dict[str, Any]:
        view = await self._view_as(principal, run_id)
        return {
            "principal": principal,
            "state": view.state,
            "rows": timeline(view.events),
            "tree": trace_tree(view.events),
            "warnings": view.warnings,
            "last_seq": view.events[-1].seq if view.events else 0,
            "live": not view.state.status.terminal,
        }

    @console.get("/runs/{run_id}")
    async def run_page(self, run_id: str, request: Request) -> Response:
        principal = self._signed_in(request)
        if principal is None:
            return self._to_login(request)
        try:
            context = await self._run_context(principal, run_id)
        except KeelError as exc:
            return self._error(request, principal, exc)
        return self._page(request, "run.html", error="", **context)

    def _error(self, request: Request, principal: str, exc: KeelError) -> Response:
        message = "No such run." if exc.kind == ErrorKind.NOT_FOUND else exc.message
        if exc.kind in (ErrorKind.TRANSIENT, ErrorKind.INTERNAL):
            message = "The request could not be completed; try again."
        return self._page(
            request, "error.html", http_status(exc), principal=principal, message=message
        )

    @console.get("/evals")
    async def evals_page(self, request: Request) -> Response:
        """The evaluation report the API was configured with (``api.eval_report``): its
        gates, metrics, scenarios and charts, read from the report's own JSON."""
        principal = self._signed_in(request)
        if principal is None:
            return self._to_login(request)
        folder = self._eval_report()
        report, charts = None, []
        if folder is not None and (folder / "report.json").is_file():
            report = json.loads((folder / "report.json").read_text())
            charts = sorted(p.name for p in (folder / "charts").glob("*.png"))
        return self._page(request, "evals.html", principal=principal, report=report, charts=charts)

    @console.get("/evals/charts/{name}")
    async def eval_chart(self, name: str, request: Request) -> Response:
        folder = self._eval_report()
        if self._signed_in(request) is None or folder is None:
            return Response("not found", status_code=404, media_type="text/plain")
        charts = {p.name: p for p in (folder / "charts").glob("*.png")}
        if name not in charts:  # only the report's own charts, by exact name
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(charts[name].read_bytes(), media_type="image/png")

    # -- approving ----------------------------------------------------------------------

    @console.post("/runs/{run_id}/approval")
    async def approve(
        self,
        run_id: str,
        request: Request,
        decision: str = Form(...),
        reason: str = Form(default="", max_length=2_000),
    ) -> Response:
        principal = self._signed_in(request)
        if principal is None:
            return self._to_login(request)
        try:
            if not same_origin(request):
                raise InputError("the form came from another site", field="origin")
            if decision not in ("approve", "reject"):
                raise InputError("must be approve or reject", field="decision")
            await self._view_as(principal, run_id)  # 404 for a run this principal cannot see
            msg = ApproveRun(
                run_id=run_id,
                principal=principal,
                approved=decision == "approve",
                reason=reason,
            )
            await self._orchestrator(run_id).approve.remote(msg)
        except KeelError as raised:
            cause = unwrap(raised) if isinstance(raised, RayTaskError) else raised
            exc = cause if isinstance(cause, KeelError) else raised
            if exc.kind == ErrorKind.NOT_FOUND:
                return self._error(request, principal, exc)
            context = await self._run_context(principal, run_id)
            return self._page(request, "run.html", http_status(exc), error=exc.message, **context)
        return RedirectResponse(f"{base_of(request)}/runs/{run_id}", status_code=303)

    # -- following ----------------------------------------------------------------------

    @console.get("/runs/{run_id}/live")
    async def live(self, run_id: str, request: Request, after: int = 0) -> Response:
        """New timeline rows, status and approval panel as HTML fragments over SSE."""
        principal = self._signed_in(request)
        if principal is None:
            return Response("sign in first", status_code=401, media_type="text/plain")
        view = await self._view_as(principal, run_id)
        resumed = request.headers.get("last-event-id", "")
        start = int(resumed) if resumed.isdigit() else after
        slot = self._follow_slot(request.cookies.get(COOKIE, ""))
        stream = self._fragments(request, view, start)
        return EventSourceResponse(_held(slot, stream), ping=15)

    async def _fragments(
        self, request: Request, view: RunView, after: int
    ) -> AsyncIterator[ServerSentEvent]:
        tools = {e.key: e.tool for e in view.events if e.type == "effect_intent"}
        run_id = view.state.run_id
        async for now in follow(self._orchestrator(run_id), run_id, after, _is_terminal):
            for ev in now.events:
                if ev.type == "effect_intent":
                    tools[ev.key] = ev.tool
                row = self._fragment(request, "_row.html", row=timeline_row(ev, tools))
                yield ServerSentEvent(data=row, event="row", id=str(ev.seq))
            if _changes_status(now.events):  # the state the watch returned is current
                state = now.state
                status = self._fragment(request, "_status.html", state=state)
                yield ServerSentEvent(data=status, event="status")
                panel = self._fragment(request, "_approval.html", state=state, error="")
                yield ServerSentEvent(data=panel, event="approval")
        yield ServerSentEvent(data="", event="end")

    def _fragment(self, request: Request, name: str, **context: Any) -> str:
        context.update(request=request, base=base_of(request))
        return templates.get_template(name).render(context)


def _is_terminal(state: RunState) -> bool:
    return state.status.terminal


def _changes_status(events: list[Event]) -> bool:
    return any(
        e.type in ("run_paused", "run_resumed", "run_finished", "approval_decided") for e in events
    )


async def _held(
    slot: FollowerSlot, stream: AsyncIterator[ServerSentEvent]
) -> AsyncIterator[ServerSentEvent]:
    """The stream, holding its follower slot until the browser goes away."""
    try:
        async for item in stream:
            yield item
    finally:
        slot.release()
