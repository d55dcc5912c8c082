"""The workflow fold, called directly: no NATS, no clock."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cadre.bus import encode
from cadre.bus.events import EVENT_TYPES, PlanRejected, StepFailed, WorkflowFailed
from cadre.bus.plan import ErrorInfo
from cadre.store import StoredEvent, WorkflowState, fold
from cadre.store import state as state_module
from cadre.store.filelog import FileLog
from cadre.store.state import apply, forked
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


GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_LOGS: dict[str, dict[str, str]] = json.loads((GOLDEN / "manifest.json").read_text())["logs"]


@pytest.mark.parametrize("name", sorted(GOLDEN_LOGS))
def test_folding_into_a_fork_leaves_the_state_it_came_from_as_it_was(name: str) -> None:
    """What the state cache relies on to fold while a handler holds a state: after every event
    of a recorded run (every event type), each earlier state is still the fold of its prefix."""
    entry = GOLDEN_LOGS[name]
    wf = entry["workflow_id"]
    records = asyncio.run(FileLog.load(GOLDEN / entry["file"]).read_records(wf))
    events = [r for r in records if isinstance(r, StoredEvent)]
    held, state = [], WorkflowState(workflow_id=wf)
    for r in events:
        held.append(state)
        state = forked(state)
        apply(state, r)
    assert state == fold(wf, events)
    for i, h in enumerate(held):
        assert h == fold(wf, events[:i]), f"the state after {i} events changed"


def test_every_event_type_has_a_fold() -> None:
    """``apply`` looks the fold up by the payload's type: a type without one would fail at runtime."""
    assert set(state_module._FOLDS) == set(EVENT_TYPES.values())
