"""Confidence and metadata that count: the thresholds ``approve_below`` and ``reject_below``,
``parallelizable: false``, and the audit of what a confidence caused.

The rules are plain functions (tested directly); the behaviour is tested on the whole cadre
(``tests/system_harness.py``), with the test tools of ``tests/plugin_tools.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cadre import commands
from cadre.actors.agent import approval_reasons, needs_approval
from cadre.audit_html import render
from cadre.audit_text import lines
from cadre.bus.effects import ToolCalled
from cadre.bus.events import ApprovalRequested, PlanProposed, PlanRejected, StepCompleted
from cadre.bus.plan import Plan, StepIntent, Task
from cadre.bus.request import RequestError, parse_request, request_schema
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.catalog import Catalog
from cadre.planner.confidence import approval_reason, confidence_checks, task_confidence
from cadre.planner.providers.prompts import plan_system_prompt, validate_plan_output
from cadre.planner.scheduler import dispatchable
from cadre.planner.validation import Limits, failed, validate_plan
from cadre.replay_cli import replayer_for
from cadre.store.audit import audit
from cadre.store.authenticity import trusted_fold
from cadre.store.state import TaskState, WorkflowState
from tests.fake_llm import ok
from tests.system_harness import Harness, cadre_running, settings_for
from tests.test_llm_planning import cadre_with_model

CATALOG = Catalog(list(builtin_catalog().values()))


def plan_of(*tasks: Task, confidence: float = 1.0) -> Plan:
    return Plan(nodes=tasks, confidence=confidence)


def echo(tid: str, confidence: float = 1.0, **more: Any) -> Task:
    return Task(id=tid, tool="sql.query", inputs={"sql": "select 1"}, confidence=confidence, **more)


# -- the rules ---------------------------------------------------------------------------------


def test_a_task_runs_under_the_lower_of_its_confidence_and_its_plans() -> None:
    assert task_confidence(plan_of(echo("a", 0.8), confidence=0.4), echo("a", 0.8)) == 0.4
    assert task_confidence(plan_of(echo("a", 0.3), confidence=0.9), echo("a", 0.3)) == 0.3
    assert task_confidence(None, None) == 1.0


def test_the_approval_reason_names_whose_confidence_and_the_threshold() -> None:
    low_task = plan_of(echo("a", 0.3), confidence=0.9)
    assert approval_reason(low_task, low_task.nodes[0], 0.5) == "task 'a' has confidence 0.30, below approve_below 0.50"
    low_plan = plan_of(echo("a", 0.8), confidence=0.4)
    assert approval_reason(low_plan, low_plan.nodes[0], 0.5) == "the plan has confidence 0.40, below approve_below 0.50"
    assert approval_reason(low_plan, low_plan.nodes[0], None) is None  # unset: today's behaviour
    assert approval_reason(low_plan, low_plan.nodes[0], 0.4) is None  # at the threshold is not below it


def test_reject_below_adds_a_confidence_check_per_plan_and_task_and_none_when_unset() -> None:
    plan = plan_of(echo("a", 0.9), echo("b", 0.1), confidence=0.8)
    assert confidence_checks(plan, None) == []
    assert not [c for c in validate_plan(plan, CATALOG) if c.name == "confidence"]
    checks = validate_plan(plan, CATALOG, Limits(reject_below=0.5))
    confidence = [c for c in checks if c.name == "confidence"]
    assert [(c.path, c.passed) for c in confidence] == [
        ("confidence", True),
        ("nodes[0].confidence", True),
        ("nodes[1].confidence", False),
    ]
    [bad] = failed(checks)
    assert bad.message == "task 'b' has confidence 0.10, below reject_below 0.50"
    low_plan = failed(validate_plan(plan_of(echo("a"), confidence=0.2), CATALOG, Limits(reject_below=0.5)))
    assert [c.path for c in low_plan] == ["confidence"]


def test_the_agent_reads_the_confidence_from_the_trusted_state_not_from_the_step() -> None:
    plan = plan_of(echo("a", 0.2))
    state = WorkflowState(workflow_id="wf-1", plan=plan, tasks={"a": TaskState(task=plan.nodes[0])})
    step = StepIntent(id="a.s1", task_id="a", tool="sql.query", inputs={"sql": "select 1"})
    assert not needs_approval(step, CATALOG)  # no state, no threshold: the tool decides alone
    assert not needs_approval(step, CATALOG, state, None)
    assert approval_reasons(step, CATALOG, state, 0.5) == ["task 'a' has confidence 0.20, below approve_below 0.50"]
    unknown = msgspec.structs.replace(step, task_id="other")  # a step of no task of the plan
    assert not needs_approval(unknown, CATALOG, state, 0.5)


def test_a_task_that_is_not_parallelizable_starts_alone_and_in_plan_order() -> None:
    a, b, c = echo("a"), echo("b", parallelizable=False), echo("c")
    plan = plan_of(a, b, c)
    assert dispatchable(plan, {}) == ["a"]  # b waits for a; c waits behind b
    assert dispatchable(plan, {"a": "running"}) == []
    assert dispatchable(plan, {"a": "completed"}) == ["b"]
    assert dispatchable(plan, {"a": "completed", "b": "running"}) == []  # nothing starts while b runs
    assert dispatchable(plan, {"a": "completed", "b": "completed"}) == ["c"]
    assert dispatchable(plan_of(b, a, c), {}) == ["b"]
    assert dispatchable(plan_of(a, c), {}) == ["a", "c"]  # all parallelizable: as before


def test_the_plan_format_and_the_prompt_carry_the_metadata() -> None:
    prompt = plan_system_prompt(CATALOG.describe())
    for field in ('"confidence"', '"complexity"', '"parallelizable"', '"capabilities"', '"rationale"'):
        assert field in prompt
    answer = {
        "nodes": [
            {
                "id": "q",
                "tool": "sql.query",
                "inputs": {"sql": "select 1"},
                "confidence": 0.4,
                "rationale": "one query",
                "complexity": "medium",
                "parallelizable": False,
                "capabilities": ["database"],
            }
        ],
        "confidence": 0.6,
        "rationale": "it answers",
    }
    plan = validate_plan_output(answer)
    assert (plan.confidence, plan.rationale) == (0.6, "it answers")
    t = plan.nodes[0]
    assert (t.confidence, t.complexity, t.parallelizable, t.capabilities) == (0.4, "medium", False, ("database",))
    assert parse_request(msgspec.json.encode({"plan": answer})).plan == plan
    with pytest.raises(RequestError) as err:
        parse_request(msgspec.json.encode({"plan": {**answer, "confidence": 1.5}}))
    assert err.value.path == "$.plan.confidence"
    schema = request_schema()
    assert "confidence" in schema["$defs"]["PlanIn"]["properties"]


# -- on the whole cadre ------------------------------------------------------------------------

DOUBTFUL = {"nodes": [{"id": "guess", "tool": "test.echo", "inputs": {"value": "v"}, "confidence": 0.3}]}


async def replays(h: Harness, wf: str) -> None:
    """The run replays exactly with the deployment's handlers (thresholds included)."""
    records = await h.bus.log.read_records(wf)
    result = replayer_for(h.settings).replay(records)
    assert result.ok, "\n".join(result.lines())
    assert result.reproduced == result.events == len(records)


async def approve(h: Harness, wf: str, step: str) -> None:
    """Grant ``step`` once it waits for approval (as ``cadre approve`` does)."""
    async with asyncio.timeout(10):
        while True:
            state = trusted_fold(wf, await h.bus.log.read_records(wf), h.keyring)
            if (st := state.steps.get(step)) is not None and st.status == "awaiting_approval":
                break
            await asyncio.sleep(0.05)
    with contextlib.redirect_stdout(io.StringIO()):
        assert await commands.approve(h.settings, wf, step, deny=False, reason="checked") == 0


async def test_a_task_below_approve_below_waits_for_approval_then_runs(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path, approve_below=0.5)) as h:
        sure = await h.run({"plan": {**DOUBTFUL, "nodes": [{**DOUBTFUL["nodes"][0], "confidence": 0.5}]}})
        assert sure.status == "completed"  # at the threshold: no approval
        assert not [e for e in await h.events(sure.workflow_id) if isinstance(e.event.data, ApprovalRequested)]

        wf = str((await h.submit({"plan": DOUBTFUL}))["workflow_id"])
        waiting = await h.wait(wf, until="approval_requested")
        assert waiting.steps["guess.s1"].status == "awaiting_approval"
        [asked] = [e.event.data for e in await h.events(wf) if isinstance(e.event.data, ApprovalRequested)]
        assert asked.reason == "task 'guess' has confidence 0.30, below approve_below 0.50"
        await approve(h, wf, "guess.s1")
        done = await h.wait(wf)
        assert done.status == "completed", done.failure
        assert done.result == {"value": "v"}

        report = audit(await h.bus.log.read_records(wf))
        [task] = report.plans[0].tasks
        assert task.confidence == 0.3
        [caused] = task.caused
        assert caused.startswith("approval asked for step guess.s1 (granted by ")
        text = "\n".join(lines(report))
        assert "guess: test.echo (confidence 0.30)" in text
        assert "caused approval asked for step guess.s1 (granted" in text
        assert "confidence 0.30" in render(report)
        await replays(h, wf)


async def test_a_plan_below_approve_below_makes_every_step_wait(nats_url: str, tmp_path: Path) -> None:
    body = {
        "plan": {
            "nodes": [
                {"id": "a", "tool": "test.echo", "inputs": {"value": "1"}},
                {"id": "b", "depends_on": ["a"], "tool": "test.echo", "inputs": {"value": "${a.value}"}},
            ],
            "confidence": 0.2,
        }
    }
    async with cadre_running(settings_for(nats_url, tmp_path, approve_below=0.5)) as h:
        wf = str((await h.submit(body))["workflow_id"])
        await approve(h, wf, "a.s1")
        await approve(h, wf, "b.s1")  # the second task's step waits too, once the first has run
        done = await h.wait(wf)
        assert done.status == "completed", done.failure
        reasons = [e.event.data.reason for e in await h.events(wf) if isinstance(e.event.data, ApprovalRequested)]
        assert reasons == ["the plan has confidence 0.20, below approve_below 0.50"] * 2
        report = audit(await h.bus.log.read_records(wf))
        assert report.plans[0].confidence == 0.2
        assert len(report.plans[0].caused) == 2
        await replays(h, wf)


async def test_a_task_below_reject_below_is_rejected_and_the_workflow_fails(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path, reject_below=0.5)) as h:
        state = await h.run({"plan": DOUBTFUL})
        assert state.status == "failed"
        assert state.failure is not None
        assert state.failure.code == "plan_rejected"
        assert "task 'guess' has confidence 0.30, below reject_below 0.50" in state.failure.message
        assert not state.steps  # nothing ran
        [rejected] = [e.event.data for e in await h.events(state.workflow_id) if isinstance(e.event.data, PlanRejected)]
        assert [c.path for c in failed(rejected.checks)] == ["nodes[0].confidence"]
        report = audit(await h.bus.log.read_records(state.workflow_id))
        assert report.plans[0].tasks[0].caused == [
            "plan rejected: task 'guess' has confidence 0.30, below reject_below 0.50"
        ]
        assert "caused plan rejected" in "\n".join(lines(report))
        await replays(h, state.workflow_id)


async def test_a_rejected_plan_is_re_planned_when_the_workflow_allows_adaptation(nats_url: str, tmp_path: Path) -> None:
    sure = {"nodes": [{"id": "sure", "tool": "test.echo", "inputs": {"value": "w"}, "confidence": 0.9}]}
    async with cadre_with_model("anthropic", nats_url, tmp_path, reject_below=0.5) as (h, api):
        api.when("emit_remaining_plan", ok(sure))
        body = {"request": "echo v", "plan": DOUBTFUL, "intelligence": "autonomous", "mode": "creative"}
        state = await h.run(body)
        assert state.status == "completed", state.failure
        assert state.revision == 2
        assert state.result == {"value": "w"}
        [second] = [
            e.event.data
            for e in await h.events(state.workflow_id)
            if isinstance(e.event.data, PlanProposed) and e.event.data.revision == 2
        ]
        assert second.reason.startswith("re-planned after revision 1 was rejected")
        [adapt] = [r for r in api.requests if "emit_remaining_plan" in str(r)]
        assert "validator rejected the current plan" in str(adapt)
        await replays(h, state.workflow_id)
        # Without adaptation the same plan fails with plan_rejected, and the model is not asked.
        asked = len(api.requests)
        refused = await h.run({"request": "echo v", "plan": DOUBTFUL})
        assert refused.failure is not None
        assert refused.failure.code == "plan_rejected"
        assert len(api.requests) == asked


def step_spans(events: list[Any]) -> dict[str, tuple[float, float]]:
    """Each step's time running: from the agent taking it up (its completion's event time is
    when the agent's handler started) to the end of its tool calls."""
    spans = {}
    for r in events:
        data = r.event.data
        if isinstance(data, StepCompleted):
            ms = sum(e.ms for e in r.event.effects if isinstance(e, ToolCalled))
            start = r.event.at.timestamp()
            spans[data.task_id] = (start, start + ms / 1000)
    return spans


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("parallelizable", [True, False])
async def test_a_task_that_is_not_parallelizable_never_overlaps_another(
    parallelizable: bool, nats_url: str, tmp_path: Path
) -> None:
    body = {
        "plan": {
            "nodes": [
                {"id": "one", "tool": "test.sleep", "inputs": {"seconds": 0.4}},
                {"id": "two", "tool": "test.sleep", "inputs": {"seconds": 0.4}, "parallelizable": parallelizable},
            ]
        }
    }
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run(body)
        assert state.status == "completed", state.failure
        spans = step_spans(await h.events(state.workflow_id))
        assert set(spans) == {"one", "two"}
        # The two ready tasks run side by side unless one of them may not.
        assert overlap(spans["one"], spans["two"]) is parallelizable, spans
        if not parallelizable:
            assert spans["one"][1] <= spans["two"][0]  # in plan order: one, then two
        await replays(h, state.workflow_id)


async def test_a_library_reuse_carries_its_match_score_as_the_plans_confidence(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run({"request": "top 3 customers of 2024 report"})
        [proposed] = [e.event.data for e in await h.events(state.workflow_id) if isinstance(e.event.data, PlanProposed)]
        assert proposed.source == "library"
        assert proposed.score is not None
        assert proposed.score < 1.0  # not an exact match: the confidence says so
        assert proposed.plan.confidence == proposed.score
        assert audit(await h.bus.log.read_records(state.workflow_id)).plans[0].confidence == proposed.score
