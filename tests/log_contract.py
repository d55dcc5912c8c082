"""One contract for the read side of every event log, subclassed per adapter.

An adapter's test class provides ``make_source(workflows, garbage)``: a source holding the
given events (appended in order, workflow by workflow) followed by the given garbage
messages ``(subject_suffix, bytes)`` stored on ``<prefix>.evt.<suffix>``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from cadre.bus.errors import MalformedEvent
from cadre.bus.events import Envelope, PlanProposed, StepCompleted, WorkflowCompleted
from cadre.bus.plan import Plan, Task
from cadre.store import EventSource, Malformed, StoredEvent, fold
from tests.conftest import ev, requested, unchained

MakeSource = Callable[[dict[str, list[Envelope]], list[tuple[str, bytes]]], Awaitable[EventSource]]


def happy_run(wf: str) -> list[Envelope]:
    root = requested(wf, "report the top customers")
    plan = Plan(nodes=(Task(id="q", tool="sql.query", inputs={"sql": "select 1"}),), output="q")
    proposed = ev(PlanProposed(plan=plan, source="explicit"), wf, cause=root.id, actor="planner")
    done = ev(
        StepCompleted(task_id="q", step_id="q.1", tool="sql.query", planned_tool="sql.query", output={"rows": [1]}),
        wf,
        cause=proposed.id,
        actor="agent",
    )
    end = ev(WorkflowCompleted(result={"rows": [1]}), wf, cause=done.id, actor="planner")
    return [root, proposed, done, end]


class LogContract:
    @pytest.fixture
    def make_source(self) -> MakeSource:
        raise NotImplementedError

    async def test_read_returns_the_events_in_order(self, make_source: MakeSource) -> None:
        events = happy_run("wf-a")
        source = await make_source({"wf-a": events}, [])
        stored = await source.read("wf-a")
        assert unchained([s.event for s in stored]) == events
        seqs = [s.seq for s in stored]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        assert all(s.subject.endswith(f".evt.wf-a.{s.event.type}") for s in stored)

    async def test_workflows_are_kept_apart(self, make_source: MakeSource) -> None:
        a, b = happy_run("wf-a"), happy_run("wf-b")[:2]
        source = await make_source({"wf-a": a, "wf-b": b}, [])
        assert unchained([s.event for s in await source.read("wf-b")]) == b
        assert unchained([s.event for s in await source.read("wf-a")]) == a
        assert await source.workflows() == ["wf-a", "wf-b"]

    async def test_unknown_workflow_reads_empty(self, make_source: MakeSource) -> None:
        source = await make_source({"wf-a": happy_run("wf-a")}, [])
        assert await source.read("nope") == []
        assert await source.last_seq("nope") == 0

    async def test_after_seq_and_last_seq(self, make_source: MakeSource) -> None:
        events = happy_run("wf-a")
        source = await make_source({"wf-a": events}, [])
        stored = await source.read("wf-a")
        assert await source.last_seq("wf-a") == stored[-1].seq
        rest = await source.read("wf-a", after_seq=stored[1].seq)
        assert unchained([s.event for s in rest]) == events[2:]
        assert await source.read("wf-a", after_seq=stored[-1].seq) == []

    async def test_fold_of_a_completed_run(self, make_source: MakeSource) -> None:
        source = await make_source({"wf-a": happy_run("wf-a")}, [])
        state = fold("wf-a", await source.read("wf-a"))
        assert state.status == "completed"
        assert state.result == {"rows": [1]}
        assert state.plan is not None
        assert list(state.tasks) == ["q"]
        assert state.events == 4

    async def test_malformed_message_is_reported_with_its_sequence(self, make_source: MakeSource) -> None:
        source = await make_source({"wf-a": happy_run("wf-a")}, [("wf-a.x", b"garbage")])
        records = await source.read_records("wf-a")
        assert [type(r) for r in records] == [StoredEvent] * 4 + [Malformed]
        bad = records[-1]
        assert isinstance(bad, Malformed)
        assert bad.seq > records[-2].seq
        assert bad.data == b"garbage"
        assert bad.reason.startswith("JSON is malformed")
        with pytest.raises(MalformedEvent, match=rf"^stream sequence {bad.seq} on '.*\.evt\.wf-a\.x' is not a valid"):
            await source.read("wf-a")

    async def test_event_under_the_wrong_subject_is_malformed(self, make_source: MakeSource) -> None:
        from cadre.bus import encode

        stray = encode(happy_run("wf-b")[0])  # a valid event of wf-b, stored under wf-a
        source = await make_source({"wf-a": happy_run("wf-a")[:1]}, [("wf-a.workflow_requested", stray)])
        records = await source.read_records("wf-a")
        bad = records[-1]
        assert isinstance(bad, Malformed)
        assert "envelope says workflow 'wf-b'" in bad.reason
