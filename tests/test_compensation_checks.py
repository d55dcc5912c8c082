"""A compensating call is checked before it runs, as the validator checks a step (issue 13, item 4):
its tool and inputs by ``check_step``, the call it undoes by that tool's safety rule. A refused one
runs nothing and its step is listed as not undone, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadre.actors import agent, compensation
from cadre.actors.answers import LiveAnswers
from cadre.actors.context import Context
from cadre.bus.events import (
    CompensationStarted,
    PlanProposed,
    StepCompensated,
    StepCompleted,
    StepsProposed,
    TaskReady,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.bus.plan import Plan, StepIntent, Task
from cadre.planner.builtin_tools import compensation_specs
from cadre.planner.catalog import Catalog
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from tests.test_dynamic_inference import CATALOG, HOUR, WF, Run, history, history_after


def undo_inputs(path: str, **extra: Any) -> dict[str, Any]:
    return {
        "tool": "fs.write",
        "inputs": {"path": path, "content": "new"},
        "output": {},
        "key": f"{WF}/w.s1:fs.write",
        **extra,
    }


def test_a_compensation_inside_the_workspace_passes() -> None:
    assert compensation.refusal("fs.write", "fs.restore", undo_inputs("notes/a.txt"), CATALOG) is None


def test_a_compensation_outside_the_workspace_is_refused_by_the_undone_tools_rule() -> None:
    refused = compensation.refusal("fs.write", "fs.restore", undo_inputs("../outside.txt"), CATALOG)
    assert refused is not None
    assert refused.code == "compensation_refused"
    assert "the fs.write call it undoes" in refused.message
    assert "outside_workspace" in refused.message


def test_a_compensation_with_inputs_its_schema_refuses_is_refused() -> None:
    refused = compensation.refusal("fs.write", "fs.restore", undo_inputs("a.txt", extra_field=1), CATALOG)
    assert refused is not None
    assert "inputs" in refused.message
    assert "extra_field" in refused.message


def test_a_prohibited_or_unknown_compensating_tool_is_refused() -> None:
    policy = Catalog([*CATALOG.values(), *compensation_specs()]).with_policy(prohibited=["fs.restore"])
    refused = compensation.refusal("fs.write", "fs.restore", undo_inputs("a.txt"), policy)
    assert refused is not None
    assert "fs.restore" in refused.message
    assert "prohibited" in refused.message
    unknown = compensation.refusal("fs.write", "test.nope", undo_inputs("a.txt"), CATALOG)
    assert unknown is not None
    assert "test.nope" in unknown.message


def compensating(path: str) -> list[StoredEvent]:
    step = StepIntent(id="w.s1", task_id="w", tool="fs.write", inputs={"path": path, "content": "new"})
    plan = Plan(nodes=(Task(id="w", tool="fs.write", inputs=dict(step.inputs)),))
    return history(
        WorkflowRequested(plan=plan, on_failure="compensate"),
        PlanProposed(plan=plan),
        TaskReady(task=plan.nodes[0]),
        StepsProposed(task_id="w", steps=(step,)),
        StepCompleted(task_id="w", step_id="w.s1", tool="fs.write", planned_tool="fs.write", output={}),
        CompensationStarted(reason="task_failed", message="x failed", steps=("w.s1",)),
    )


async def test_a_refused_compensation_runs_nothing_and_is_listed_as_not_undone(tmp_path: Path) -> None:
    run = Run(tmp_path, None, model=False)
    events = compensating("../outside.txt")
    [undone] = await run.handle(agent.make_spec(HOUR, catalog=CATALOG), events)
    assert isinstance(undone, StepCompensated)
    assert undone.tool == "fs.restore"
    assert undone.error is not None
    assert undone.error.code == "compensation_refused"
    assert run.tools.keys == []  # fs.restore never ran
    state = fold(WF, [*events, *history_after(events, undone)])
    [failed] = compensation.finished(state)
    assert isinstance(failed, WorkflowFailed)
    assert (failed.compensated, failed.not_undone) == ((), ("w.s1",))


async def test_an_allowed_compensation_runs(tmp_path: Path) -> None:
    run = Run(tmp_path, None, model=False)
    events = compensating("notes/a.txt")
    state = fold(WF, events)
    ctx = Context(kind="agent", stored=events[-1], now=events[-1].event.at, answers=LiveAnswers(run.outside))
    undone = await compensation.undo(ctx, state, state.steps["w.s1"], CATALOG)
    assert run.tools.keys == [f"{WF}/w.s1:compensate"]  # it was let through to the toolbox
    # (this test's toolbox has no fs.restore: the system's adds the compensating tools)
    assert undone.error is not None
    assert undone.error.code == "unknown_tool"
