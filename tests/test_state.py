"""The workflow fold, called directly: no NATS, no clock."""

from __future__ import annotations

from bus import encode
from bus.events import PlanRejected, StepFailed, WorkflowFailed
from bus.plan import ErrorInfo
from store import StoredEvent, WorkflowState, fold
from tests.conftest import ev, requested
from tests.log_contract import happy_run


def stored(events: list) -> list[StoredEvent]:  # type: ignore[type-arg]
    return [StoredEvent(i + 1, f"cadre.evt.{e.workflow_id}.{e.type}", e, encode(e)) for i, e in enumerate(events)]


def test_statuses_along_a_run() -> None:
    events = stored(happy_run("wf"))
    statuses = [fold("wf", events[: i + 1]).status for i in range(len(events))]
    assert statuses == ["requested", "planned", "planned", "completed"]
    assert fold("wf", []) == WorkflowState(workflow_id="wf")


def test_fold_continues_from_a_state() -> None:
    events = stored(happy_run("wf"))
    assert fold("wf", events[2:], fold("wf", events[:2])) == fold("wf", events)
    assert fold("wf", events).last_seq == 4
    assert fold("wf", events).tasks["q"].status == "pending"


def test_failure_and_rejection() -> None:
    root = requested("wf")
    events = stored(
        [
            root,
            ev(PlanRejected(revision=1), "wf", cause=root.id, i=1),
            ev(StepFailed(task_id="t", step_id="s", tool="x", error=ErrorInfo(code="e", message="m")), "wf", i=2),
            ev(WorkflowFailed(reason="no_plan", message="no plan matched"), "wf", i=3),
        ]
    )
    assert fold("wf", events[:2]).status == "requested"
    end = fold("wf", events)
    assert (end.status, end.failure, end.done) == ("failed", ErrorInfo(code="no_plan", message="no plan matched"), True)
