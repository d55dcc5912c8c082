"""Workflow state as a pure fold over its events: no I/O, no clock, callable from anywhere.

``fold(events)`` is the only way to learn a workflow's state: nothing else holds truth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, assert_never

import msgspec

from bus.events import (
    PlanProposed,
    PlanRejected,
    PlanValidated,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsProposed,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRequested,
)
from bus.plan import Plan
from store.records import StoredEvent

Status = Literal["new", "requested", "planned", "running", "completed", "failed"]


class WorkflowState(msgspec.Struct, frozen=True, kw_only=True):
    """What a workflow's events add up to (``last_seq`` is the stream sequence folded up to)."""

    workflow_id: str
    status: Status = "new"
    request: str = ""
    plan: Plan | None = None
    revision: int = 0
    steps_ready: int = 0
    step_outputs: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    failed_steps: tuple[str, ...] = ()
    result: Any = None
    failure: str | None = None
    events: int = 0
    last_seq: int = 0

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")


def apply(state: WorkflowState, stored: StoredEvent) -> WorkflowState:
    """The state after one more event."""
    data = stored.event.data
    base: dict[str, Any] = {"events": state.events + 1, "last_seq": stored.seq}
    match data:
        case WorkflowRequested():
            changes: dict[str, Any] = {"status": "requested", "request": data.request, "plan": data.plan}
        case PlanProposed():
            changes = {"status": "planned", "plan": data.plan, "revision": data.revision}
        case PlanValidated():
            changes = {"status": "running"}
        case PlanRejected():
            changes = {"status": "requested"}
        case StepsProposed():
            changes = {}
        case StepReady():
            changes = {"steps_ready": state.steps_ready + 1}
        case StepCompleted():
            changes = {"step_outputs": {**state.step_outputs, data.step_id: data.output}}
        case StepFailed():
            changes = {"failed_steps": (*state.failed_steps, data.step_id)}
        case WorkflowCompleted():
            changes = {"status": "completed", "result": data.result}
        case WorkflowFailed():
            changes = {"status": "failed", "failure": f"{data.reason}: {data.message}"}
        case _:
            assert_never(data)
    return msgspec.structs.replace(state, **base, **changes)


S = TypeVar("S")
E = TypeVar("E")


def fold_with(step: Callable[[S, E], S], initial: S, events: Iterable[E]) -> S:
    """Left fold: ``step(…step(step(initial, e0), e1)…)``."""
    state = initial
    for e in events:
        state = step(state, e)
    return state


def fold(workflow_id: str, events: Iterable[StoredEvent], state: WorkflowState | None = None) -> WorkflowState:
    """The workflow's state after ``events`` (continuing from ``state`` when given)."""
    return fold_with(apply, state or WorkflowState(workflow_id=workflow_id), events)
