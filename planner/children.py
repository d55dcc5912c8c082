"""Sub-workflows: a task whose tool is ``workflow.run`` starts a child workflow.

The task's inputs say what the child runs, exactly one of:

* ``request``: a request text, planned by the child's planner as any request (the text may be a
  reference to an upstream output, ``"${task.field}"``, resolved when the child starts);
* ``plan``: an explicit plan (``{"nodes": [...]}``), validated with the parent's plan;
* ``flow``: a registered flow by name, through the hook :data:`FlowHook` that
  :mod:`planner.flows.child` gives for the deployment's flows; refused where there are none.

The child's id derives from the parent's id, the task's id and the task's attempt
(:func:`child_id`), so a redelivery never starts two. The child spends from the tree's budget
(its root's: ``ParentLink.root``), takes the parent's level, mode and ``on_failure``, and its
result is the task's output (``{"workflow_id": …, "result": …}``); its failure is the task's.

Depth: a workflow of its own is at depth 0, its children at 1, theirs at 2… A plan whose child
would be deeper than the deployment's limit (``CADRE_CHILD_MAX_DEPTH``, default 3; 0 allows no
children) is rejected when it is validated; nested explicit plans are checked at once, a request's
plan when the child plans it. Everything here is pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from cadre.bus.events import ParentLink, WorkflowRequested
from cadre.bus.plan import Check, Plan, Task
from cadre.planner.catalog import Catalog, Safety, ToolSpec

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "WORKFLOW_RUN",
    "ChildInputError",
    "check_children",
    "child_id",
    "child_request",
    "depth_of",
    "flow_request",
    "for_validation",
    "is_child",
    "with_workflow_run",
]

WORKFLOW_RUN: Final = "workflow.run"
"""The built-in tool name of a task that runs a child workflow."""

DEFAULT_MAX_DEPTH: Final = 3
"""How deep children may nest by default (``CADRE_CHILD_MAX_DEPTH``)."""


class WorkflowRunInput(BaseModel):
    """What a child workflow runs: exactly one of ``request``, ``plan`` or ``flow``."""

    model_config = ConfigDict(extra="forbid")
    request: str | None = Field(None, description="a request text the child plans, or a reference to one")
    plan: dict[str, JsonValue] | None = Field(None, description='an explicit plan for the child: {"nodes": [...]}')
    flow: str | None = Field(None, description="a registered flow, by name: the child runs its default path")


class WorkflowRunOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow_id: str = Field(description="the child workflow's id")
    result: JsonValue = Field(None, description="the child's result (its workflow_completed result)")


WORKFLOW_RUN_SPEC: Final = ToolSpec(
    name=WORKFLOW_RUN,
    description="Run a child workflow (a request, an explicit plan or a flow); its result is this task's output.",
    input_model=WorkflowRunInput,
    output_model=WorkflowRunOutput,
    safety=Safety.READ_ONLY,
)

FlowHook = Callable[[str, Mapping[str, Any]], Plan | None]
"""Flows (another module) turn a flow's name and the task's inputs into the child's plan; None:
no such flow."""


class ChildInputError(ValueError):
    """A child task's inputs that cannot start a child (the message says why and how to fix it)."""


def is_child(task: Task) -> bool:
    """Whether ``task`` runs a child workflow."""
    return task.tool == WORKFLOW_RUN


def with_workflow_run(catalog: Catalog) -> Catalog:
    """``catalog`` with ``workflow.run``, for checking plans (prompts keep the catalog as it is)."""
    if WORKFLOW_RUN in catalog:
        return catalog
    return Catalog([*catalog.values(), WORKFLOW_RUN_SPEC])


def depth_of(request: WorkflowRequested | None) -> int:
    """The depth of the workflow whose first event is ``request`` (0: not a child)."""
    return request.parent.depth if request is not None and request.parent is not None else 0


def child_id(workflow_id: str, task_id: str, attempt: int = 1) -> str:
    """The id of the child the task's ``attempt`` starts: the same for every redelivery."""
    digest = hashlib.blake2b(f"{workflow_id}\x1f{task_id}\x1f{attempt}".encode(), digest_size=8).hexdigest()
    return f"{workflow_id[:60]}-{task_id[:40]}-{digest}"[-128:]


def flow_request(name: str, inputs: Mapping[str, Any], flows: FlowHook | None) -> Plan:
    """The plan of flow ``name`` for a child (the hook flows plug into); refused while there are none."""
    plan = flows(name, inputs) if flows is not None else None
    if plan is None:
        raise ChildInputError(
            f"flow {name!r} is not registered here (not in this deployment's flows, CADRE_FLOWS); "
            'give the child a "request" or a "plan" instead'
        )
    return plan


def _one_of(inputs: Mapping[str, Any]) -> str:
    given = [k for k in ("request", "plan", "flow") if inputs.get(k) is not None]
    if len(given) != 1:
        said = "none" if not given else " and ".join(given)
        raise ChildInputError(f'a workflow.run task takes exactly one of "request", "plan" or "flow"; it has {said}')
    return given[0]


def child_plan(inputs: Mapping[str, Any]) -> Plan | None:
    """The explicit plan of a child task's inputs (None: it has none); raises :class:`ChildInputError`."""
    if inputs.get("plan") is None:
        return None
    try:
        return msgspec.convert(inputs["plan"], Plan)
    except msgspec.ValidationError as exc:
        raise ChildInputError(f"the child's plan is not a plan: {exc}") from None


def child_request(
    parent: WorkflowRequested | None,
    workflow_id: str,
    task: Task,
    inputs: Mapping[str, Any],
    flows: FlowHook | None = None,
) -> WorkflowRequested:
    """The first event of the child that ``task`` (with its references resolved: ``inputs``) starts
    in workflow ``workflow_id``; raises :class:`ChildInputError`."""
    what = _one_of(inputs)
    plan = child_plan(inputs)
    text = ""
    if what == "request":
        if not isinstance(inputs["request"], str) or not inputs["request"].strip():
            raise ChildInputError('the child\'s "request" must be a non-empty text')
        text = inputs["request"]
    elif what == "flow":
        plan = flow_request(str(inputs["flow"]), inputs, flows)
        text = f"flow {inputs['flow']}"
    root = parent.parent.root if parent is not None and parent.parent is not None else workflow_id
    return WorkflowRequested(
        request=text or task.description,
        plan=plan,
        budget_usd=parent.budget_usd if parent is not None else None,
        intelligence=parent.intelligence if parent is not None else None,
        mode=parent.mode if parent is not None else None,
        on_failure=parent.on_failure if parent is not None else None,
        resolved_steps=True,
        parent=ParentLink(workflow_id=workflow_id, task_id=task.id, root=root, depth=depth_of(parent) + 1),
    )


def for_validation(plan: Plan) -> Plan:
    """``plan`` with each child task's nested plan left out of its inputs: the nested plan's own
    references are its tasks', not the parent's (:func:`check_children` checks it on its own)."""
    if not any(is_child(t) and t.inputs.get("plan") is not None for t in plan.nodes):
        return plan
    nodes = tuple(
        msgspec.structs.replace(t, inputs={**t.inputs, "plan": {}})
        if is_child(t) and t.inputs.get("plan") is not None
        else t
        for t in plan.nodes
    )
    return msgspec.structs.replace(plan, nodes=nodes)


def check_children(
    plan: Plan,
    depth: int,
    max_depth: int,
    validate: Callable[[Plan], list[Check]],
    prefix: str = "",
    flows: FlowHook | None = None,
) -> list[Check]:
    """The checks of ``plan``'s child tasks, for a workflow at ``depth``: the depth limit, the
    inputs' form, and each nested plan (``validate``, then its own children, one level deeper).
    ``flows``: the deployment's flows (the hook; None: it has none, and a ``flow`` input is refused)."""
    checks: list[Check] = []
    for i, task in enumerate(plan.nodes):
        if not is_child(task):
            continue
        who, path = f"task {task.id!r}", f"{prefix}nodes[{i}]"
        if depth + 1 > max_depth:
            limit = "this deployment allows no child workflows" if max_depth <= 0 else f"the limit is {max_depth}"
            checks.append(
                Check(
                    name="child_depth",
                    passed=False,
                    message=f"{who} would start a child workflow at depth {depth + 1}; {limit}",
                    fix="run the work in this plan's own tasks, or raise CADRE_CHILD_MAX_DEPTH",
                    path=f"{path}.tool",
                )
            )
            continue
        checks.append(
            Check(name="child_depth", passed=True, message=f"{who} starts a child at depth {depth + 1}", path=path)
        )
        if task.fallback_tools:
            checks.append(
                Check(
                    name="child_fallbacks",
                    passed=False,
                    message=f"{who} runs a child workflow, which has no fallback tools",
                    fix="remove its fallback_tools",
                    path=f"{path}.fallback_tools",
                )
            )
        try:
            _one_of(task.inputs)
            nested = child_plan(task.inputs)
        except ChildInputError as exc:
            checks.append(
                Check(name="child_inputs", passed=False, message=f"{who}: {exc}", fix=_fix(task), path=f"{path}.inputs")
            )
            continue
        inner = f"{path}.inputs.plan."
        if task.inputs.get("flow") is not None:
            inner = f"{path}.inputs.flow."
            try:
                nested = flow_request(str(task.inputs["flow"]), task.inputs, flows)
            except ChildInputError as exc:
                fix = 'give the child a "request" or a "plan" instead'
                checks.append(
                    Check(name="child_inputs", passed=False, message=f"{who}: {exc}", fix=fix, path=inner[:-1])
                )
                continue
        if nested is None:
            continue
        for c in validate(for_validation(nested)):
            where = f"{inner}{c.path}" if c.path else inner.rstrip(".")
            checks.append(msgspec.structs.replace(c, message=f"{who}'s child plan: {c.message}", path=where))
        checks += check_children(nested, depth + 1, max_depth, validate, inner, flows)
    return checks


def _fix(task: Task) -> str:
    return f'give task {task.id!r} one of {{"request": "..."}}, {{"plan": {{"nodes": [...]}}}} or {{"flow": "name"}}'


def task_output(child: str, result: Any) -> dict[str, Any]:
    """A child task's output: the child's id and result."""
    return {"workflow_id": child, "result": result}
