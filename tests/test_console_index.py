"""The console's index and views, pure: rows newest first with their state, filter and cost; an event
the keyring refuses counts for nothing but a problem; values cut for the page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cadre.bus import codec
from cadre.bus.effects import CallSettled
from cadre.bus.events import (
    ApprovalRequested,
    Envelope,
    HandlerFailed,
    WorkflowCompleted,
    WorkflowRequested,
    make_event,
)
from cadre.bus.plan import ErrorInfo, StepIntent
from cadre.bus.signing import Keyring, Signer, new_seed
from cadre.bus.subjects import Subjects
from cadre.console.index import WorkflowIndex
from cadre.console.views import bounded
from cadre.store.records import Record, to_record

SUBJECTS = Subjects("t")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stored(e: Envelope, seq: int, signer: Signer | None = None) -> Record:
    subject = SUBJECTS.event(e.workflow_id, e.type)
    data = codec.encode(e)
    headers = signer.sign(subject, e.id, data).headers() if signer is not None else None
    return to_record(SUBJECTS, seq, subject, data, headers)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_rows_are_newest_first_with_state_cost_and_filter() -> None:
    index = WorkflowIndex(None)
    index.add(
        "wf-a",
        stored(make_event(WorkflowRequested(request="count orders"), workflow_id="wf-a", actor="intake", at=at(0)), 1),
    )
    index.add(
        "wf-b",
        stored(
            make_event(WorkflowRequested(request="list customers"), workflow_id="wf-b", actor="intake", at=at(5)), 2
        ),
    )
    paid = (CallSettled(call="plan", reservation_id="r1", cost_usd=0.25),)
    done = make_event(
        WorkflowCompleted(result={}), workflow_id="wf-a", actor="planner", at=at(2), index=1, effects=paid
    )
    index.add("wf-a", stored(done, 3))
    step = StepIntent(id="s.s1", task_id="s", tool="fs.write", requires_approval=True)
    asked = ApprovalRequested(step=step, reason="needs approval", deadline=at(100))
    index.add("wf-b", stored(make_event(asked, workflow_id="wf-b", actor="agent", at=at(6), index=1), 4))
    total, rows = index.rows(at(10))
    assert total == 2
    assert [(r["workflow_id"], r["state"], r["duration_s"], r["cost_usd"]) for r in rows] == [
        ("wf-b", "awaiting_approval", 5.0, 0.0),
        ("wf-a", "completed", 2.0, 0.25),
    ]
    assert [r["workflow_id"] for r in index.rows(at(10), text="ORDERS")[1]] == ["wf-a"]
    assert [r["workflow_id"] for r in index.rows(at(10), state="awaiting_approval")[1]] == ["wf-b"]
    assert index.rows(at(10), limit=1, offset=1)[1][0]["workflow_id"] == "wf-a"
    assert index.counts() == {"completed": 1, "awaiting_approval": 1}
    assert [s["workflow_id"] for s in index.problems(at(10_000), stuck_after_s=600)["stuck"]] == ["wf-b"]


def test_an_event_the_keyring_refuses_counts_only_as_a_problem() -> None:
    intake, stranger = Signer(new_seed(), "intake"), Signer(new_seed(), "planner")
    planner = Signer(new_seed(), "planner")
    index = WorkflowIndex(Keyring.of([(intake.public_key, "intake"), (planner.public_key, "planner")]))
    request = make_event(WorkflowRequested(request="x"), workflow_id="wf", actor="intake", at=at(0))
    index.add("wf", stored(request, 1, intake))
    forged = make_event(WorkflowCompleted(result={}), workflow_id="wf", actor="planner", at=at(1), index=1)
    index.add("wf", stored(forged, 2, stranger))
    failed = HandlerFailed(
        input_id="x", input_type="step_ready", input_seq=3, attempts=5, error=ErrorInfo(code="boom", message="no")
    )
    index.add("wf", stored(make_event(failed, workflow_id="wf", actor="agent", at=at(2), index=2), 3, planner))
    row = index.rows(at(3))[1][0]
    assert row["state"] == "requested"
    assert row["problems"] == 2
    problems = index.problems(at(3), stuck_after_s=600)
    assert [(p["type"], p["status"]) for p in problems["untrusted"]] == [("workflow_completed", "forged")]
    assert [(p["input_type"], p["code"]) for p in problems["dead_letters"]] == [("step_ready", "boom")]


def test_values_are_cut_for_the_page_and_say_how_much_was_left() -> None:
    assert bounded({"a": 1}) == {"text": '{\n "a": 1\n}', "cut": 0}
    long = bounded("x" * 700)
    assert (len(long["text"]), long["cut"]) == (600, 100)
    assert bounded("<b>" * 3, limit=4) == {"text": "<b><", "cut": 5}
