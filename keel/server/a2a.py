"""Keel's runs as A2A tasks, through the official A2A SDK (protocol 1.0, JSON-RPC).

Another agent discovers Keel from its agent card (one skill per workflow offered to the
API), sends a message to start a run, reads the task, and streams its updates. A task is a
run: the message's text is the goal, a data part ``{"workflow": ..., "inputs": {...}}``
names what to run, and the run's id is ``a2a-`` and the task's id, so the ledger, the
console and the runs API all see it. The run's ledger events arrive as ``working`` status
updates. An action waiting for approval makes the task ``auth-required``: a person with the
approve permission answers out of band (console, CLI or runs API), and the task goes on. A
run handed back to a person is ``input-required``; the end is ``completed``, ``failed`` or
``canceled``. The last two carry the run's final state as a data artifact.

Behind the same keys and policy as the runs API: every JSON-RPC call carries an API key
(the card, which says so, is public), the key's principal owns the task (the SDK keeps
tasks per user), and policy decides whether it may start the workflow.

The SDK keeps task records in the replica's memory, so the facade runs as one replica and
a restarted replica forgets tasks (never the runs: the runs API, console and CLI still
have them).
"""

from __future__ import annotations

from typing import Any

from a2a.auth.user import User
from a2a.helpers import (
    get_data_parts,
    get_message_text,
    new_data_artifact,
    new_task,
    new_text_message,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes import (
    DefaultServerCallContextBuilder,
    create_agent_card_routes,
    create_jsonrpc_routes,
)
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    TaskState,
)
from ray import serve
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.actors.messages import CancelRun, orchestrator_settings
from keel.actors.rayerrors import RayTaskError, unwrap
from keel.actors.shards import Orchestrators
from keel.config import KeelConfig, load_config
from keel.core.events import RunStatus
from keel.core.state import RunState
from keel.core.timeline import describe
from keel.errors import InputError, KeelError
from keel.policy.engine import PolicyEngine
from keel.server.following import follow
from keel.server.http import KeyRing, TooMany, key_of, problem, run_app
from keel.server.starting import Starter

APP_NAME = "keel-a2a"
ROUTE_PREFIX = "/a2a"
RUN_PREFIX = "a2a-"
ENDINGS = {
    RunStatus.SUCCEEDED: TaskState.TASK_STATE_COMPLETED,
    RunStatus.FAILED: TaskState.TASK_STATE_FAILED,
    RunStatus.CANCELLED: TaskState.TASK_STATE_CANCELED,
    RunStatus.NEEDS_HUMAN: TaskState.TASK_STATE_INPUT_REQUIRED,
}


class Principal(User):
    """The principal an API key maps to, as the SDK's user (it scopes tasks by name)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def user_name(self) -> str:
        return self.name


class KeyContext(DefaultServerCallContextBuilder):
    """The user of a call is the principal the key check below put in the request (the
    rest of the context, headers included, as the SDK builds it)."""

    def build_user(self, request: Request) -> User:
        return Principal(request.scope["state"]["keel_principal"])


class RequireKey:
    """Every call but the agent card's carries an API key that maps to a principal;
    otherwise 401 as problem+json, before the SDK sees the request."""

    def __init__(self, app: ASGIApp, keyring: KeyRing) -> None:
        self.app, self.keyring = app, keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith("/.well-known/agent-card.json"):
            await self.app(scope, receive, send)
            return
        try:
            principal = self.keyring.principal(key_of(Headers(scope=scope)))
        except KeelError as exc:
            many = isinstance(exc, TooMany)
            title = "too many requests" if many else "unauthorized"
            detail = exc.message if many else "a valid API key is required"
            await problem(429 if many else 401, title, detail, "authorization")(
                scope, receive, send
            )
            return
        scope.setdefault("state", {})["keel_principal"] = principal
        await self.app(scope, receive, send)


def request_of(context: RequestContext) -> tuple[str, str, dict[str, Any]]:
    """The workflow, goal and inputs a message asks for.

    Raises:
        InputError: naming ``workflow`` or ``inputs``, for a message that does not say.
    """
    if context.message is None:
        raise InputError("a message starts a run", field="message")
    goal = get_message_text(context.message)
    data = [d for d in get_data_parts(list(context.message.parts)) if isinstance(d, dict)]
    asked = data[0] if data else {}
    workflow = asked.get("workflow")
    if not isinstance(workflow, str) or not workflow:
        raise InputError(
            'a data part {"workflow": NAME, "inputs": {...}} names what to run', field="workflow"
        )
    inputs = asked.get("inputs", {})
    if not isinstance(inputs, dict):
        raise InputError("must be an object", field="inputs")
    return workflow, goal, inputs


class RunExecutor(AgentExecutor):
    """Starts the run a message asks for and relays its ledger as the task's updates."""

    def __init__(self, starter: Starter, settings: Any) -> None:
        self.starter = starter
        self.settings = settings
        self._orch: Orchestrators | None = None

    def _orchestrator(self, run_id: str | None) -> Any:
        if self._orch is None:
            self._orch = Orchestrators(self.settings)
        return self._orch.for_run(run_id)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = str(context.task_id), str(context.context_id)
        updater = TaskUpdater(event_queue, task_id, context_id)
        if context.current_task is not None:  # a follow-up message to a task already run
            await updater.reject(self._say(updater, "this task's run is already started"))
            return
        history = [context.message] if context.message is not None else []
        await event_queue.enqueue_event(
            new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=history)
        )
        principal = context.call_context.user.user_name
        try:
            workflow, goal, inputs = request_of(context)
            msg = self.starter.message(
                principal, workflow, goal, inputs, run_id=RUN_PREFIX + task_id
            )
            state = await self._orchestrator(msg.run_id).start_run.remote(msg)
        except KeelError as raised:
            exc = _cause(raised)
            where = f"{exc.field}: " if exc.field else ""
            await updater.reject(self._say(updater, f"{where}{exc.message}"))
            return
        await updater.start_work(self._say(updater, f"started run {state.run_id}"))
        await self._follow(updater, state.run_id)

    async def _follow(self, updater: TaskUpdater, run_id: str) -> None:
        view = None
        async for view in follow(self._orchestrator(run_id), run_id, 0, _ended):
            for ev in view.events:
                node, text = describe(ev)
                line = f"{node}: {text}" if node else text
                waits = ev.type == "run_paused" and ev.status == RunStatus.AWAITING_APPROVAL
                # A person approves out of band (console, CLI, runs API): the task waits on
                # that authorisation and goes on when it comes.
                state = (
                    TaskState.TASK_STATE_AUTH_REQUIRED if waits else TaskState.TASK_STATE_WORKING
                )
                await updater.update_status(state, self._say(updater, line))
        if view is None:
            return
        status = view.state.status
        final = view.state.model_dump(mode="json")
        await updater.add_artifact(
            list(new_data_artifact("run", {"run_id": run_id, **final}).parts), name="run"
        )
        said = self._say(updater, f"run {status}: {view.state.reason}".rstrip(": "))
        await updater.update_status(ENDINGS[status], said)

    def _say(self, updater: TaskUpdater, text: str) -> Any:
        return new_text_message(text, context_id=updater.context_id, task_id=updater.task_id)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = str(context.task_id), str(context.context_id)
        updater = TaskUpdater(event_queue, task_id, context_id)
        principal = context.call_context.user.user_name
        run_id = RUN_PREFIX + task_id
        await self._orchestrator(run_id).cancel.remote(
            CancelRun(run_id=run_id, by=principal, reason="cancelled over A2A")
        )
        await updater.cancel(self._say(updater, "cancelled"))


def _ended(state: RunState) -> bool:
    return state.status in ENDINGS


def _cause(raised: KeelError) -> KeelError:
    cause = unwrap(raised) if isinstance(raised, RayTaskError) else raised
    return cause if isinstance(cause, KeelError) else raised


def agent_card(config: KeelConfig, starter: Starter) -> AgentCard:
    url = (config.api.public_url or f"http://127.0.0.1:{config.router.http_port}").rstrip("/")
    skills = [
        AgentSkill(
            id=name,
            name=name,
            description=f"start a run of the {name} workflow; the message's text is its goal",
            tags=["keel", "workflow"],
            examples=[f'text: the goal; data: {{"workflow": "{name}", "inputs": {{...}}}}'],
        )
        for name in sorted(starter.offered)
    ]
    bearer = SecurityScheme(
        http_auth_security_scheme=HTTPAuthSecurityScheme(
            scheme="bearer", description="a Keel API key"
        )
    )
    return AgentCard(
        name="Keel",
        description="Durable, governed agent runs: policy, approvals, sandboxed tools, audit",
        supported_interfaces=[
            AgentInterface(
                url=f"{url}{ROUTE_PREFIX}/", protocol_binding="JSONRPC", protocol_version="1.0"
            )
        ],
        version="1",
        capabilities=AgentCapabilities(streaming=True),
        security_schemes={"apiKey": bearer},
        security_requirements=[SecurityRequirement(schemes={"apiKey": StringList(list=[])})],
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain", "application/json"],
        skills=skills,
    )


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100)
@serve.ingress()
class A2AFacade:
    def __init__(self, config: dict[str, Any], keys: dict[str, str]) -> None:
        self.config = KeelConfig.model_validate(config)
        self.keys = dict(keys)  # sha256(key) -> principal
        policy = PolicyEngine(self.config.policy.model, self.config.policy.policy)
        self.starter = Starter(self.config, policy)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        card = agent_card(self.config, self.starter)
        executor = RunExecutor(self.starter, orchestrator_settings(self.config))
        handler = DefaultRequestHandlerV2(executor, InMemoryTaskStore(), card)
        routes = [
            *create_agent_card_routes(card),
            *create_jsonrpc_routes(handler, rpc_url="/", context_builder=KeyContext()),
        ]
        return RequireKey(Starlette(routes=routes), KeyRing(self.keys, self.config.api.rate_limit))


def deploy_a2a(config: dict[str, Any], keys: dict[str, str]) -> Any:
    """Serve the facade at ``/a2a``; ``keys`` maps sha256(api key) to principal."""
    return run_app(A2AFacade.bind(config, keys), APP_NAME, ROUTE_PREFIX)  # type: ignore[attr-defined]


def build(args: dict[str, Any]) -> Any:
    """Serve application builder (``import_path: keel.server.a2a:build``). One replica:
    the SDK's task records live in its memory (the runs they stand for are durable)."""
    config = load_config(args.get("config"))
    return A2AFacade.bind(  # type: ignore[attr-defined]
        config.model_dump(mode="json"), dict(config.api.keys)
    )
