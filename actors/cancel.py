"""Cancel and deadlines: a workflow asked to stop ends ``cancelled``, undoing its steps if it asked to.

A ``cancel_requested`` (a person's, signed and checked by the approvals service; or the planner's
when the workflow's deadline passed) moves the workflow to ``cancelling``: the planner dispatches
nothing more, the validator clears nothing, the agent starts no step (:func:`actors.compensation.frozen`);
a step already running finishes and its result is recorded, a step waiting for approval or for a
rate limit is abandoned when its timer fires. The planner answers the ``cancel_requested``:

* a workflow that compensates (``on_failure: compensate``, as for a failure: :mod:`actors.compensation`)
  and has completed steps a tool can undo emits ``compensation_started`` with reason ``cancelled``;
  once every step is settled it emits ``workflow_cancelled`` with what was and was not undone;
* any other workflow ends at once with ``workflow_cancelled``.

A deadline (``deadline_s`` from the request's time, or an absolute ``deadline``) is a durable timer:
the planner emits ``deadline_set`` with its plan and defers that event to ``until``; redelivered
then, on a workflow that has not ended, it emits ``cancel_requested`` (``by`` = "deadline").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from cadre.actors import compensation
from cadre.actors.outcome import Defer, Outcome
from cadre.bus.events import (
    CancelRequested,
    CompensationStarted,
    DeadlineSet,
    Event,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.planner.catalog import Catalog
from cadre.store.state import WorkflowState

CANCELLED: Final = "cancelled"
"""The reason code of a compensation a cancel started (``compensation_started.reason``)."""

DEADLINE: Final = "deadline"
"""Who cancels a workflow whose deadline passed (``cancel_requested.by``)."""


def deadline_of(request: WorkflowRequested, requested_at: datetime) -> datetime | None:
    """When the workflow of ``request`` (requested at ``requested_at``) is cancelled, if ever."""
    if request.deadline is not None:
        return request.deadline
    if request.deadline_s is not None:
        return requested_at + timedelta(seconds=request.deadline_s)
    return None


def with_deadline(state: WorkflowState, events: list[Event], requested_at: datetime) -> list[Event]:
    """The planner's answer to ``workflow_requested`` with ``deadline_set`` after it, when the request
    sets a deadline and the workflow goes on (it was planned, not failed)."""
    req = state.request
    if req is None or state.deadline is not None or not events or state.done:
        return events
    until = deadline_of(req, requested_at)
    if until is None or any(isinstance(e, WorkflowCancelled | WorkflowFailed) for e in events):
        return events
    return [*events, DeadlineSet(until=until)]


def on_deadline(state: WorkflowState, data: DeadlineSet, now: datetime) -> Outcome:
    """The deadline's timer: wait until it, then cancel the workflow if it is still going."""
    if state.done or state.cancel is not None:
        return []
    if now < data.until:
        return Defer(until=data.until)
    return [CancelRequested(reason=f"the deadline {data.until.isoformat()} passed", by=DEADLINE)]


def on_cancel(state: WorkflowState, catalog: Catalog, default_on_failure: str) -> list[Event]:
    """The planner's answer to ``cancel_requested`` (the module docstring)."""
    c = state.cancel
    if c is None or state.status != "cancelling":
        return []  # ended already, or failing and compensating: it ends as that says
    if compensation.wants(state.request, default_on_failure):
        undo, cannot = compensation.undo_plan(state, catalog)
        if undo:
            said = f"cancelled by {c.by}" + (f": {c.reason}" if c.reason else "")
            return [CompensationStarted(reason=CANCELLED, message=said, steps=undo, not_undone=cannot)]
        return [WorkflowCancelled(reason=c.reason, by=c.by, not_undone=cannot)]
    return [WorkflowCancelled(reason=c.reason, by=c.by)]


def cancelled_after_compensation(
    state: WorkflowState, compensated: tuple[str, ...], not_undone: tuple[str, ...]
) -> Event:
    """The end of a compensation a cancel started."""
    c = state.cancel
    return WorkflowCancelled(
        reason=c.reason if c is not None else "",
        by=c.by if c is not None else "unknown",
        compensated=compensated,
        not_undone=not_undone,
    )
