"""Every step the agent runs carries inputs the validator checked resolved (issue 13, item 1).

A task the model decomposes into two steps, the second reading the first's output: the validator
clears the second step only once the first has completed, on its resolved inputs, and
``step_ready`` carries them; a value that resolves to a path outside the workspace is refused by
the validator before the tool is called. The agent refuses inputs that resolve otherwise than
checked, and logs recorded without the request's ``resolved_steps`` marker keep the earlier flow.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from cadre.actors import planner_rules, validator
from cadre.actors.agent import unchecked_inputs
from cadre.bus.effects import ToolCalled
from cadre.bus.events import (
    PlanProposed,
    PlanValidated,
    StepCompleted,
    StepReady,
    StepsProposed,
    StepsRejected,
    TaskReady,
    WorkflowRequested,
    make_event,
)
from cadre.bus.plan import Plan, StepIntent, Task
from cadre.bus.request import parse_request
from cadre.planner.validation import check_step, passed_all
from cadre.store.objects import REF_KEY, outsized, references, resolved
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from tests.conftest import T0
from tests.fake_llm import FakeAPI, anthropic_api, ok
from tests.system_harness import Harness, cadre_running
from tests.test_dynamic_inference import CATALOG, WF, history, with_model

TWICE = {"id": "d", "description": "say it twice", "capabilities": ["echo"]}


def steps_answer(second: dict[str, Any]) -> dict[str, Any]:
    first = {"tool": "test.echo", "inputs": {"value": "../x"}, "operation": "echo a relative path"}
    return {"steps": [first, second]}


ECHO_AGAIN = {"tool": "test.echo", "inputs": {"value": "${d.s1.value}"}, "operation": "echo it again"}
WRITE_THERE = {
    "tool": "fs.write",
    "inputs": {"path": "${d.s1.value}", "content": "written where the echo said"},
    "operation": "write the file the echo named",
}


async def stored(h: Harness, wf: str) -> list[Any]:
    return [(e.event.actor, e.event.data, e.event.effects) for e in await h.events(wf)]


async def test_e2e_the_second_step_is_cleared_by_the_validator_on_its_resolved_inputs(
    nats_url: str, tmp_path: Path
) -> None:
    async with anthropic_api(ok(steps_answer(ECHO_AGAIN))) as api, cadre_running_with(nats_url, tmp_path, api) as h:
        state = await h.run({"plan": {"nodes": [TWICE]}})
        seen = await stored(h, state.workflow_id)
    assert state.status == "completed", state.failure
    assert state.result == {"value": "../x"}
    ready = [(actor, d) for actor, d, _ in seen if isinstance(d, StepReady)]
    assert [(actor, d.step.id, d.resolved_inputs) for actor, d in ready] == [
        ("validator", "d.s1", {"value": "../x"}),
        ("validator", "d.s2", {"value": "../x"}),  # the first step's output, resolved
    ]
    second = ready[1][1]
    assert second.step.inputs == {"value": "${d.s1.value}"}  # the step as planned travels too
    assert {"inputs_valid", "inputs_size", "tool_allowed"} <= {c.name for c in second.checks}
    assert all(c.passed for c in second.checks)
    order = [d.step.id if isinstance(d, StepReady) else type(d).__name__ for _, d, _ in seen]
    assert order.index("d.s2") > order.index("StepCompleted")  # cleared once the first step had run


async def test_e2e_a_value_that_resolves_outside_the_workspace_is_refused_before_the_tool_runs(
    nats_url: str, tmp_path: Path
) -> None:
    async with anthropic_api(ok(steps_answer(WRITE_THERE))) as api, cadre_running_with(nats_url, tmp_path, api) as h:
        state = await h.run({"plan": {"nodes": [TWICE]}})
        seen = await stored(h, state.workflow_id)
    assert state.status == "failed"
    assert state.failure is not None
    assert state.failure.message.startswith(
        "task 'd' failed after 1 attempt(s): steps_rejected: steps.d.s2.inputs.path: "
        "step 'd.s2': fs.write refuses inputs.path"
    ), state.failure
    assert "it leads above the workspace folder" in state.failure.message
    [refused] = [d for _, d, _ in seen if isinstance(d, StepsRejected)]
    assert refused.step_id == "d.s2"
    assert [c.name for c in refused.checks if not c.passed] == ["inputs_safe"]
    assert state.steps["d.s2"].status == "rejected"
    called = [f.tool for _, _, effects in seen for f in effects if isinstance(f, ToolCalled)]
    assert called == ["test.echo"]  # fs.write was never called
    assert not any(isinstance(d, StepReady) and d.step.id == "d.s2" for _, d, _ in seen)
    assert not (tmp_path / "work" / "x").exists()  # the workspace is work/workspace: ../x would be here


def cadre_running_with(nats_url: str, tmp_path: Path, api: FakeAPI) -> AbstractAsyncContextManager[Harness]:
    return cadre_running(with_model(nats_url, tmp_path / "work", api))


# == the rules, without a server =============================================================

D = Task(id="d", description="say it twice", capabilities=("echo",))
S1 = StepIntent(id="d.s1", task_id="d", tool="test.echo", inputs={"value": "../x"})
S2 = StepIntent(id="d.s2", task_id="d", tool="fs.write", inputs={"path": "${d.s1.value}", "content": "c"})


def events(*, marker: bool) -> list[StoredEvent]:
    plan = Plan(nodes=(D,))
    return history(
        WorkflowRequested(plan=plan, resolved_steps=marker),
        PlanProposed(plan=plan),
        PlanValidated(revision=1),
        TaskReady(task=D),
        StepsProposed(task_id="d", steps=(S1, S2)),
        StepReady(step=S1, resolved_inputs={"value": "../x"} if marker else None),
        StepCompleted(
            task_id="d", step_id="d.s1", tool="test.echo", planned_tool="test.echo", output={"value": "../x"}
        ),
    )


def test_requests_carry_the_marker() -> None:
    assert parse_request(b'{"request": "hello"}').resolved_steps is True
    assert WorkflowRequested().resolved_steps is False  # what a log recorded before it decodes to


async def test_without_the_marker_the_planner_clears_the_next_step_as_before() -> None:
    records = events(marker=False)
    state = fold(WF, records)
    last = records[-1].event.data
    assert isinstance(last, StepCompleted)
    assert planner_rules.on_step_completed(state, last) == [StepReady(step=S2)]
    spec = validator.make_spec(CATALOG)
    assert await spec.handler(None, records[-1], state) == []  # type: ignore[arg-type]


async def test_with_the_marker_the_validator_refuses_the_resolved_step_and_the_planner_leaves_it() -> None:
    records = events(marker=True)
    state = fold(WF, records)
    last = records[-1].event.data
    assert isinstance(last, StepCompleted)
    assert planner_rules.on_step_completed(state, last) == []
    [refused] = await validator.make_spec(CATALOG).handler(None, records[-1], state)  # type: ignore[arg-type]
    assert isinstance(refused, StepsRejected)
    assert refused.step_id == "d.s2"
    assert [c.name for c in refused.checks if not c.passed] == ["inputs_safe"]


def test_the_agent_refuses_inputs_other_than_those_checked() -> None:
    state = fold(WF, events(marker=True))
    assert unchecked_inputs(state, S1, {"value": "../x"}) is None
    other = unchecked_inputs(state, S1, {"value": "elsewhere"})
    assert other is not None
    assert other.code == "inputs_unchecked"
    assert "differing: value" in other.message
    unchecked = unchecked_inputs(state, S2, {"path": "../x", "content": "c"})  # never cleared
    assert unchecked is not None
    assert unchecked.code == "inputs_unchecked"
    before = fold(WF, events(marker=False))
    assert unchecked_inputs(before, S1, {"value": "anything"}) is None  # the earlier flow


def test_large_resolved_inputs_travel_by_reference_as_outputs_do() -> None:
    rows = [{"x": i, "pad": f"{i:0100d}"} for i in range(3000)]
    step = StepIntent(id="d.s2", task_id="d", tool="test.echo", inputs={"value": "${d.s1.rows}"})
    env = make_event(StepReady(step=step, resolved_inputs={"value": rows}), workflow_id=WF, actor="validator", at=T0)
    stored, objects = outsized(env, 64 * 1024)
    assert isinstance(stored.data, StepReady)
    [digest] = objects
    assert stored.data.resolved_inputs == {REF_KEY: digest, "bytes": len(objects[digest])}
    assert references(stored) == [digest]
    assert resolved(stored, objects) == env  # read back: the inputs as the validator checked them
    small = make_event(StepReady(step=step, resolved_inputs={"value": "v"}), workflow_id=WF, actor="validator", at=T0)
    assert outsized(small, 64 * 1024) == (small, {})


async def test_an_upstream_value_holding_a_dollar_brace_is_data_not_a_reference() -> None:
    """A resolved value is data: an upstream output reading ``${top.rows`` (or ``${a.b}``) is passed on
    as text, not refused as an unclosed (or unresolved) reference; the plan's own inputs still are."""
    plan = Plan(nodes=(D,))
    s2 = StepIntent(id="d.s2", task_id="d", tool="test.echo", inputs={"value": "${d.s1.value}"})
    for text in ("costs ${top.rows", "${top.rows", "${a.b}"):
        records = history(
            WorkflowRequested(plan=plan, resolved_steps=True),
            PlanProposed(plan=plan),
            PlanValidated(revision=1),
            TaskReady(task=D),
            StepsProposed(task_id="d", steps=(S1, s2)),
            StepReady(step=S1, resolved_inputs={"value": "../x"}),
            StepCompleted(
                task_id="d", step_id="d.s1", tool="test.echo", planned_tool="test.echo", output={"value": text}
            ),
        )
        [ready] = await validator.make_spec(CATALOG).handler(None, records[-1], fold(WF, records))  # type: ignore[arg-type]
        assert isinstance(ready, StepReady), text
        assert ready.resolved_inputs == {"value": text}
    # The check itself: the resolved value passes; the same text written in the plan does not.
    resolved_value = {"value": "${top.rows"}
    assert passed_all(check_step("test.echo", resolved_value, CATALOG, planned={"value": "${d.s1.value}"}))
    assert not passed_all(check_step("test.echo", resolved_value, CATALOG, planned=resolved_value))
    assert [c.name for c in check_step("test.echo", {"value": "${a.b}"}, CATALOG) if not c.passed] == [
        "reference_resolves"
    ]
