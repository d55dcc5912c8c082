"""Child workflows at run time: the planner's part, and the relay between parents and children.

A task whose tool is ``workflow.run`` (:mod:`cadre.planner.children`) is not decomposed: when it is
ready the planner emits ``child_requested`` instead of ``task_ready`` (:func:`spawn_instead`), with
the child's first event in it. The parent then waits durably: nothing is held in memory, the task is
``running`` until an event says how its child ended.

The **relay** (:func:`relay_spec`) carries events between workflows, which a handler cannot (its
outputs go to its input's workflow). It runs with the planner, signs as the planner, has a durable
consumer of its own and is not replayed (like the intake, it delivers; what it writes is an input of
the workflow it writes to):

* ``child_requested`` on a parent that is still going: the child's ``workflow_requested``, appended
  to the child's workflow only if it has no events yet (a redelivery starts nothing);
* a child's ``workflow_completed`` / ``workflow_failed`` / ``workflow_cancelled``: ``child_completed``
  or ``child_failed`` on its parent (ids derived from the child's event: stored once);
* a parent's ``cancel_requested``, or its end while children still run: ``cancel_requested``
  (``by`` = "parent") on each running child, which then ends ``cancelled`` as any cancelled workflow.

The planner turns ``child_completed`` into the task's completion (its output: the child's id and
result) and ``child_failed`` into the task's failure (or a retry: a new attempt is a new child).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from cadre.actors.context import Context
from cadre.actors.outcome import Outcome
from cadre.actors.planner_rules import after_task, fail_task
from cadre.actors.runtime import ActorSpec
from cadre.bus.errors import ConcurrencyConflict
from cadre.bus.events import (
    CancelRequested,
    ChildCompleted,
    ChildFailed,
    ChildRequested,
    Envelope,
    Event,
    TaskReady,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    derive_id,
    make_event,
)
from cadre.bus.plan import ErrorInfo
from cadre.planner import children as rules
from cadre.planner.refs import RefError, resolve
from cadre.planner.scheduler import upstream
from cadre.store.jetstream import JetStreamLog
from cadre.store.records import StoredEvent
from cadre.store.state import WorkflowState, current_child

log = logging.getLogger("cadre.actors.children")

RELAY: str = "children"
"""The relay's name: the ``actor`` of what it writes, and its consumer's (``<prefix>_planner_pool_children``)."""

BY_PARENT: str = "parent"
"""Who cancels a child whose parent was cancelled or ended (``cancel_requested.by``)."""

RELAY_HANDLES = frozenset(
    {
        ChildRequested.TYPE,
        WorkflowCompleted.TYPE,
        WorkflowFailed.TYPE,
        WorkflowCancelled.TYPE,
        CancelRequested.TYPE,
    }
)


# -- the planner's part (pure) -------------------------------------------------------------------


def spawn_instead(
    state: WorkflowState, events: list[Event], max_depth: int, flows: rules.FlowHook | None = None
) -> list[Event]:
    """The planner's ``events`` with each ``task_ready`` of a child task replaced by its
    ``child_requested`` (or by the workflow's failure when the child cannot start: its inputs, or
    the depth limit seen only now). ``flows``: the deployment's flows, for a ``flow`` input (the
    hook :data:`planner.children.FlowHook`; None: there are none)."""
    if not any(isinstance(e, TaskReady) and rules.is_child(e.task) for e in events):
        return events
    out: list[Event] = []
    for e in events:
        if not (isinstance(e, TaskReady) and rules.is_child(e.task)):
            out.append(e)
            continue
        task = e.task
        depth = rules.depth_of(state.request) + 1
        if depth > max_depth:
            why = ErrorInfo(code="child_depth", message=f"a child at depth {depth} is past the limit of {max_depth}")
            return fail_task(task.id, why, e.attempt)
        try:
            request = rules.child_request(state.request, state.workflow_id, task, _resolved(state, task.id), flows)
        except (rules.ChildInputError, RefError) as exc:
            return fail_task(task.id, ErrorInfo(code="invalid_input", message=str(exc)), e.attempt)
        child = rules.child_id(state.workflow_id, task.id, e.attempt)
        if state.request is not None and state.request.dry_run:
            request = msgspec.structs.replace(request, dry_run=True)
        out.append(ChildRequested(task_id=task.id, child_id=child, attempt=e.attempt, request=request))
    return out


def _resolved(state: WorkflowState, task_id: str) -> dict[str, Any]:
    """The child task's inputs with references (in its ``request`` only) resolved from upstream outputs."""
    t = state.tasks[task_id]
    inputs = dict(t.task.inputs)
    if "request" in inputs and state.plan is not None:
        ids = upstream(state.plan, task_id)
        outputs: dict[str, Mapping[str, Any]] = {
            d: out for d in ids if (u := state.tasks.get(d)) is not None and (out := u.output) is not None
        }
        inputs["request"] = resolve(inputs["request"], outputs, root="inputs.request")
    return inputs


def on_child_completed(state: WorkflowState, data: ChildCompleted) -> list[Event]:
    """The tasks the child's task made ready, or the workflow's end (``state`` includes ``data``)."""
    task = state.tasks.get(data.task_id)
    child = state.children.get(data.child_id)
    if state.done or state.plan is None or task is None or child is None or task.status != "completed":
        return []
    if child.attempt != task.attempt:
        return []
    return after_task(state, data.task_id)  # a flow's sub-flow node chooses its way on first


def on_child_failed(state: WorkflowState, data: ChildFailed) -> list[Event]:
    """A retry of the task (a new child) when its plan allows, else the workflow's failure."""
    task = state.tasks.get(data.task_id)
    if state.done or task is None or task.status in ("completed", "failed"):
        return []
    child = current_child(state, data.task_id)
    if child is None or child.child_id != data.child_id:
        return []  # an earlier attempt's child
    error = ErrorInfo(
        code=f"child_{data.status}", message=f"child workflow {data.child_id} {data.status}: {data.error.message}"
    )
    if data.status != "cancelled" and task.attempt <= task.task.retries:
        return [TaskReady(task=task.task, attempt=task.attempt + 1)]
    return fail_task(data.task_id, error, task.attempt)


# -- the relay -------------------------------------------------------------------------------------


def running_children(state: WorkflowState) -> list[str]:
    """The children of ``state`` that have not ended, in the order started."""
    return [c.child_id for c in state.children.values() if c.status == "running"]


def end_of_child(state: WorkflowState, rec: StoredEvent) -> Event | None:
    """What the end ``rec`` of child workflow ``state`` tells its parent (None: it has no parent)."""
    req = state.request
    if req is None or req.parent is None:
        return None
    data = rec.event.data
    task_id, child = req.parent.task_id, state.workflow_id
    if isinstance(data, WorkflowCompleted):
        result = data.result
        if req.dry_run and isinstance(result, dict) and result.get("dry_run") is True:
            result = result.get("output")  # a dry run's child: its placeholder output, as a simulated step's
        return ChildCompleted(
            task_id=task_id, child_id=child, output=rules.task_output(child, result), child_event=rec.event.id
        )
    if isinstance(data, WorkflowFailed):
        error = ErrorInfo(code=data.reason, message=data.message)
        return ChildFailed(task_id=task_id, child_id=child, status="failed", error=error, child_event=rec.event.id)
    if isinstance(data, WorkflowCancelled):
        said = f"cancelled by {data.by}" + (f": {data.reason}" if data.reason else "")
        error = ErrorInfo(code="cancelled", message=said)
        return ChildFailed(task_id=task_id, child_id=child, status="cancelled", error=error, child_event=rec.event.id)
    return None


def relay_spec(elog: JetStreamLog) -> ActorSpec:
    """The relay (module docstring) writing through ``elog`` (signed as the planner)."""

    async def append(workflow_id: str, env: Envelope, *, new: bool = False) -> None:
        try:
            await elog.append(workflow_id, [env], expected_seq=0 if new else None)
        except ConcurrencyConflict:
            if not new:
                raise
            # The child has events already: it was started (an earlier delivery of this input).

    async def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        e, data = rec.event, rec.event.data
        if isinstance(data, ChildRequested):
            if state.done or state.cancel is not None:
                return []  # the parent ended or is being cancelled: the child is not started
            first = make_event(
                data.request,
                workflow_id=data.child_id,
                actor="intake",
                at=ctx.now(),
                event_id=derive_id(e.id, RELAY, 0),
            )
            await append(data.child_id, first, new=True)
            return []
        if isinstance(data, WorkflowCompleted | WorkflowFailed | WorkflowCancelled):
            end = end_of_child(state, rec)
            if end is not None and state.request is not None and state.request.parent is not None:
                parent = state.request.parent.workflow_id
                told = make_event(
                    end, workflow_id=parent, actor=RELAY, at=ctx.now(), causation_id=e.id, index=f"{RELAY}:end"
                )
                await append(parent, told)
            if isinstance(data, WorkflowCompleted):
                return []
        # The workflow is cancelled, or ended otherwise: its running children are cancelled (once: a
        # workflow cancelled after a cancel_requested had them cancelled then).
        if isinstance(data, WorkflowCancelled) and state.cancel is not None:
            return []
        reason = (
            f"parent {state.workflow_id} cancelled" + (f": {data.reason}" if data.reason else "")
            if isinstance(data, CancelRequested | WorkflowCancelled)
            else f"parent {state.workflow_id} failed"
        )
        for child in running_children(state):
            order = make_event(
                CancelRequested(reason=reason, by=BY_PARENT),
                workflow_id=child,
                actor=RELAY,
                at=ctx.now(),
                causation_id=e.id,
                index=f"{RELAY}:cancel:{child}",
            )
            await append(child, order)
        return []

    return ActorSpec(kind="planner", handles=RELAY_HANDLES, handler=handle, pool=RELAY)
