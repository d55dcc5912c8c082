"""What an actor process keeps per workflow is released or bounded (issue 12: RSS grew ~47 KB
for every workflow a process had seen, never released)."""

from __future__ import annotations

import dataclasses

from cadre.actors.context import Context, Outside
from cadre.actors.outcome import Outcome
from cadre.actors.runtime import ActorSpec, run_actors
from cadre.bus.events import WorkflowCompleted, WorkflowRequested
from cadre.store import JetStreamLog, StoredEvent
from cadre.store.state import WorkflowState
from tests.conftest import requested, until
from tests.test_runtime import FAST, wait_for_type


async def _complete(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
    return [WorkflowCompleted(result="done")]


SPEC = ActorSpec(kind="finisher", handles=frozenset({WorkflowRequested.TYPE}), handler=_complete)


async def test_the_state_cache_releases_a_workflow_soon_after_it_ends(log: JetStreamLog) -> None:
    options = dataclasses.replace(FAST, state_release_after=0.3)
    async with run_actors(log, [(SPEC, 1)], outside=Outside(), options=options) as system:
        await log.append("wf", [requested("wf")], expected_seq=0)
        events = await wait_for_type(log, "wf", WorkflowCompleted.TYPE)
        await until(lambda: not len(system.cache), 5)  # the release is a timer
        # A late reader of the released workflow gets its state from the log, as before.
        state = await system.cache.state_at("wf", events[-1].seq)
        assert state.status == "completed"
        assert state.last_seq == events[-1].seq


async def test_the_state_cache_keeps_at_most_its_limit(log: JetStreamLog) -> None:
    options = dataclasses.replace(FAST, state_release_after=60, state_max_workflows=3, state_recent_events=4)
    async with run_actors(log, [(SPEC, 1)], outside=Outside(), options=options) as system:
        for i in range(8):
            await log.append(f"wf{i}", [requested(f"wf{i}")], expected_seq=0)
        for i in range(8):
            await wait_for_type(log, f"wf{i}", WorkflowCompleted.TYPE)
        # Those in use when a newer one came stay until the next event: one more workflow.
        await log.append("wf8", [requested("wf8")], expected_seq=0)
        await wait_for_type(log, "wf8", WorkflowCompleted.TYPE)
        assert len(system.cache) <= 3
        assert len(system.cache._recent) <= 4


async def test_the_plan_library_keeps_the_newest_learned_plans_up_to_its_limit(log: JetStreamLog) -> None:
    from cadre.actors.library_source import LogLibrary
    from cadre.bus.events import PlanProposed
    from cadre.bus.plan import Plan, Task
    from tests.conftest import ev

    for i, name in enumerate(("ada", "bob", "cy", "di")):
        wf = f"wf{i}"
        root = requested(wf, f"count the orders of {name}")
        plan = Plan(nodes=(Task(id="a", tool="sql.query", inputs={"sql": f"select '{name}'"}),))
        await log.append(
            wf,
            [
                root,
                ev(PlanProposed(plan=plan, source="model"), wf, cause=root.id, actor="planner"),
                ev(WorkflowCompleted(result="done"), wf, cause=root.id, i=1, actor="planner"),
            ],
            expected_seq=0,
        )
    library = LogLibrary(log, None, max_learned=2)
    await library.refresh()
    assert [e.source for e in library.entries] == ["workflow:wf2", "workflow:wf3"]
