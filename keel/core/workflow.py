"""The declarative workflow API: nodes, edges, reducers, retry and timeout per node.

A workflow is a state machine over a pydantic state model. Nodes are plain functions
``fn(state, ctx) -> updates`` (run as Ray tasks, inline for cheap deterministic steps, or,
written ``async def``, on the orchestrator's event loop for steps that only await workers)
or effect nodes whose function proposes the arguments of a ``Tool`` call that the
orchestrator applies exactly once. Edges are fixed or computed from state by a router
function; fields of the state model pick their reducer with ``Annotated[T, reducer]``.

Example::

    class S(BaseModel):
        notes: Annotated[list[str], append] = []

    wf = Workflow("hello", state=S)

    @wf.node()
    def greet(state: S, ctx: NodeContext) -> dict:
        return {"notes": f"hello {ctx.goal}"}

    wf.edge("greet", END)
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, JsonValue, ValidationError

from keel.core.nodes import (
    CONFINED,
    Edge,
    Node,
    NodeFn,
    NoState,
    RetryPolicy,
    RouterFn,
    ToolSource,
    confine,
)
from keel.core.state import Reducer, replace
from keel.core.tool import Tool, check_tool
from keel.errors import InputError, WorkflowError, first_error

END = "__end__"


class Workflow:
    """A named graph of nodes over a typed state."""

    def __init__(
        self,
        name: str,
        *,
        state: type[BaseModel] = NoState,
        inputs: type[BaseModel] | None = None,
        description: str = "",
        uses_models: bool = False,
        signals: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.uses_models = uses_models
        unknown = [f for f in signals if f not in state.model_fields]
        if unknown:
            raise WorkflowError(f"signals {unknown} are not state fields", field="signals")
        # the state fields a run's episode remembers (what it saw before and after)
        self.signals = tuple(signals)
        self.state_model = state
        self.inputs_model = inputs
        self.description = description
        self.nodes: dict[str, Node] = {}
        self.edges: dict[str, Edge] = {}
        self._start: str | None = None
        self._fingerprint: str | None = None  # cleared by every change of shape below
        self.channels: dict[str, Reducer] = _channels_of(state)

    # -- building -------------------------------------------------------------------
    def add_node(self, node: Node) -> Node:
        if node.name in self.nodes or node.name == END:
            raise WorkflowError(f"duplicate or reserved node name {node.name!r}", field="node")
        for attr in ("result_field", "rejections_field"):
            value = getattr(node, attr)
            if value is not None and value not in self.state_model.model_fields:
                raise WorkflowError(
                    f"node {node.name!r}: {attr} {value!r} is not a state field", field=attr
                )
        if node.is_effect and not node.role:
            raise WorkflowError(f"effect node {node.name!r} needs a role", field="role")
        self.nodes[node.name] = node
        if self._start is None:
            self._start = node.name
        self._fingerprint = None
        return node

    def node(
        self,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
        inline: bool = False,
    ) -> Callable[[NodeFn], NodeFn]:
        """Declare a plain node. It runs as a Ray task, so a slow one never holds up other
        runs. ``inline`` runs it in the orchestrator's thread pool instead: only for cheap,
        deterministic steps. An ``async def`` node runs on the orchestrator's event loop,
        with no task and no thread: for a step that only awaits workers
        (``await workers(ctx).planner.aclassify(...)``); CPU work there stalls every run
        the orchestrator drives."""

        def deco(fn: NodeFn) -> NodeFn:
            self.add_node(Node(name or fn.__name__, fn, retry or RetryPolicy(), timeout_s, inline))
            return fn

        return deco

    def effect(
        self,
        tool: Tool | list[Tool] | ToolSource,
        name: str | None = None,
        *,
        role: str,
        result_field: str | None = None,
        on_reject: str | None = None,
        rejections_field: str | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
        grace_s: float | None = None,
        bind: Mapping[str, str] | None = None,
    ) -> Callable[[NodeFn], NodeFn]:
        """Declare a side-effecting node: ``fn`` returns the tool's arguments (a proposal);
        given a list of tools, it returns ``{"tool": NAME, "args": {...}}`` choosing one.

        The orchestrator validates them against the tool's schema, asks policy whether
        ``role`` may use the tool (allow, deny, or hold for a person's approval), records an
        intent, applies the tool once on the executor, and records the result. A rejected
        proposal goes to ``on_reject`` (typically the planner) with its errors written to
        ``rejections_field``; without ``on_reject`` it fails the run.

        An apply that outlives ``timeout_s`` is waited for ``grace_s`` more (by default as
        long again); a result that arrives then still counts. After that its outcome is
        settled through the tool's ``verify()`` or by a person, never by applying again.

        ``bind`` maps tool arguments to run inputs (``{"root": "root"}``): those arguments
        always take the input's value, and a proposal that names a different one is
        rejected. So the target of an action is fixed when the run starts (by whoever was
        allowed to start it), never chosen by the model.
        """

        single: Tool | None = None
        several: dict[str, Tool] | ToolSource | None = None
        if isinstance(tool, list):
            several = {t.name: t for t in map(check_tool, tool)}
            if len(several) != len(tool):
                raise TypeError(f"effect {name or '?'!r}: two tools share a name")
        elif isinstance(tool, ToolSource) and not isinstance(tool, Tool):
            several = tool
        else:
            single = check_tool(tool)

        def deco(fn: NodeFn) -> NodeFn:
            self.add_node(
                Node(
                    name or fn.__name__,
                    fn,
                    retry=retry or RetryPolicy(),
                    timeout_s=timeout_s,
                    inline=True,
                    tool=single,
                    result_field=result_field,
                    role=role,
                    on_reject=on_reject,
                    rejections_field=rejections_field,
                    tools=several,
                    grace_s=grace_s,
                    bind=dict(bind or {}),
                )
            )
            return fn

        return deco

    def edge(self, source: str, target: str) -> None:
        self._set_edge(source, Edge(target=target))

    def route(self, source: str, router: RouterFn, targets: list[str]) -> None:
        """A conditional edge: ``router(state)`` names the next node, one of ``targets``
        (``END`` allowed)."""
        self._set_edge(source, Edge(router=router, targets=tuple(targets)))

    def _set_edge(self, source: str, edge: Edge) -> None:
        if source in self.edges:
            raise WorkflowError(f"node {source!r} already has an outgoing edge", field="edge")
        self.edges[source] = edge
        self._fingerprint = None

    def set_start(self, name: str) -> None:
        self._start = name
        self._fingerprint = None

    # -- checking ---------------------------------------------------------------------
    @property
    def start(self) -> str:
        if self._start is None:
            raise WorkflowError(f"workflow {self.name!r} has no nodes", field="nodes")
        return self._start

    def validate(self) -> Workflow:
        """Raise ``WorkflowError`` naming the first problem; return self when sound."""
        known = set(self.nodes)
        if self.start not in known:
            raise WorkflowError(f"start node {self.start!r} is not a node", field="start")
        for node in self.nodes.values():
            if node.on_reject is not None and node.on_reject not in known:
                raise WorkflowError(
                    f"node {node.name!r}: on_reject {node.on_reject!r} is not a node",
                    field="on_reject",
                )
        for source, edge in self.edges.items():
            if source not in known:
                raise WorkflowError(f"edge from unknown node {source!r}", field="edges")
            for target in (edge.target,) if edge.router is None else edge.targets:
                if target != END and target not in known:
                    raise WorkflowError(
                        f"edge {source!r} -> {target!r}: unknown node", field="edges"
                    )
        for name in known - set(self.edges):
            raise WorkflowError(
                f"node {name!r} has no outgoing edge (use END to finish)", field="edges"
            )
        return self

    def fingerprint(self) -> str:
        """Changes when the graph's shape changes, so a resumed run can detect it. Kept
        until the shape changes (the engine asks before every step)."""
        if self._fingerprint is None:
            self._fingerprint = self._shape_digest()
        return self._fingerprint

    def _shape_digest(self) -> str:
        shape = {
            "nodes": {n: node.kind for n, node in sorted(self.nodes.items())},
            "edges": {
                s: [e.target] if e.router is None else sorted(e.targets)
                for s, e in sorted(self.edges.items())
            },
            "start": self.start,
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    # -- running ----------------------------------------------------------------------
    def check_inputs(
        self, inputs: Mapping[str, Any], roots: Sequence[str] | None = None
    ) -> dict[str, JsonValue]:
        """Validate run inputs against the declared inputs model; errors name the field.

        With ``roots``, every input declared ``ConfinedPath`` must resolve (symbolic links
        and ``..`` followed) to a place under one of them, and is stored resolved.
        """
        if self.inputs_model is None:
            return dict(inputs)
        if self.inputs_model.model_config.get("extra") != "allow":
            known = self.inputs_model.model_fields
            for name in inputs:
                if name not in known:
                    raise InputError(
                        f"unknown input (expected: {', '.join(known) or 'none'})",
                        field=f"inputs.{name}",
                    )
        try:
            model = self.inputs_model.model_validate(dict(inputs))
        except ValidationError as exc:
            field, msg = first_error(exc, "inputs")
            raise InputError(msg, field=field) from None
        data: dict[str, JsonValue] = model.model_dump(mode="json")
        if roots is not None:
            for name, info in self.inputs_model.model_fields.items():
                if CONFINED in info.metadata and data.get(name) is not None:
                    data[name] = confine(str(data[name]), roots, f"inputs.{name}")
        return data

    def initial_data(self) -> dict[str, JsonValue]:
        try:
            data: dict[str, JsonValue] = self.state_model().model_dump(mode="json")
        except ValidationError as exc:
            raise WorkflowError(
                f"state model {self.state_model.__name__} needs defaults for every field: {exc}",
                field="state",
            ) from None
        return data

    def state_of(self, data: Mapping[str, Any]) -> BaseModel:
        return self.state_model.model_validate(dict(data))

    def next_node(self, source: str, state: BaseModel) -> str | None:
        edge = self.edges[source]
        if edge.router is None:
            target = edge.target
        else:
            target = edge.router(state)
            if target not in edge.targets:
                raise WorkflowError(
                    f"router of {source!r} chose {target!r}, not one of {list(edge.targets)}",
                    field="edges",
                )
        return None if target == END else target


def _channels_of(model: type[BaseModel]) -> dict[str, Reducer]:
    """Reducers declared as ``Annotated`` metadata on the state model's fields."""
    channels: dict[str, Reducer] = {}
    hints = typing.get_type_hints(model, include_extras=True)
    for name in model.model_fields:
        hint = hints.get(name)
        for meta in getattr(hint, "__metadata__", ()):
            if callable(meta) and not isinstance(meta, type):
                channels[name] = meta
        channels.setdefault(name, replace)
    return channels
