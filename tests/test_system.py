"""The whole actor system in one process, driven through cadre.requests like any NATS client would."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cadre import commands
from cadre.bus.errors import CadreError
from cadre.bus.events import (
    ApprovalRequested,
    HandlerFailed,
    StepCompleted,
    StepReady,
    TaskReady,
    WorkflowFailed,
)
from cadre.store.state import WorkflowState
from tests.system_harness import Harness, cadre_running, settings_for

TOP_CUSTOMERS = "find the three customers who spent most in 2024 and write a report"


def plan(*nodes: dict[str, object], output: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"nodes": list(nodes)}
    if output:
        body["output"] = output
    return {"plan": body}


@pytest.fixture
async def cadre(nats_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        yield h


async def test_request_from_any_client_runs_a_library_plan(cadre: Harness) -> None:
    state = await cadre.run({"request": "find the 3 customers who spent the most in 2024 and write a report"})
    assert state.status == "completed", state.failure
    assert state.plan_source == "library"
    assert set(state.tasks) == {"top", "report", "save"}
    assert all(t.status == "completed" for t in state.tasks.values())
    report = (cadre.settings.workspace_dir / "reports" / "top_customers_2024.md").read_text()
    assert report.startswith("# ")
    assert "|" in report  # the markdown table of the three customers


GREET = plan({"id": "hello", "tool": "test.echo", "inputs": {"value": "hello, night shift of 2024"}})


async def test_explicit_plans_do_not_join_the_plan_library_by_default(cadre: Harness) -> None:
    first = await cadre.run({"request": "greet the night shift of 2024", **GREET})
    assert first.plan_source == "explicit"
    again = await cadre.run({"request": "greet the night shift of 2024"})
    assert again.status == "failed"
    assert again.failure is not None
    assert again.failure.code == "no_plan"


async def test_the_plan_library_learns_allowed_workflows_with_their_literals_as_parameters(
    nats_url: str, tmp_path: Path
) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path, library_learn_explicit=True)) as h:
        first = await h.run({"request": "greet the night shift of 2024", **GREET})
        assert first.plan_source == "explicit"
        again = await h.run({"request": "greet the night shift of 2025"})
        assert again.status == "completed", again.failure
        assert again.plan_source == "library"
        assert again.result == {"value": "hello, night shift of 2025"}
        other = await h.run({"request": "greet the day shift of 2025"})  # "day": not the question it answers
        assert other.failure is not None
        assert other.failure.code == "no_plan"
        assert f"'{first.workflow_id}'" in other.failure.message
        assert "the word(s) 'day'" in other.failure.message


async def test_no_plan_fails_with_the_reason_and_the_fix(cadre: Harness) -> None:
    state = await cadre.run({"request": "what is the weather in Paris tomorrow"})
    assert state.status == "failed"
    assert state.failure is not None
    assert state.failure.code == "no_plan"
    assert "ANTHROPIC_API_KEY or GEMINI_API_KEY" in state.failure.message
    assert "model not used (no_provider" in state.failure.message


async def test_parallel_branches_really_overlap(cadre: Harness) -> None:
    body = plan(
        {"id": "a", "tool": "test.sleep", "inputs": {"seconds": 0.6}},
        {"id": "b", "tool": "test.sleep", "inputs": {"seconds": 0.6}},
        {"id": "c", "tool": "test.echo", "depends_on": ["a", "b"], "inputs": {"value": "joined"}},
    )
    state = await cadre.run(body)
    assert state.status == "completed"
    events = await cadre.events(state.workflow_id)
    ready = [e for e in events if isinstance(e.event.data, StepReady)]
    done = [e for e in events if isinstance(e.event.data, StepCompleted)]
    # both branches were running before either finished, and the whole run took about one sleep
    assert ready[0].seq < ready[1].seq < done[0].seq
    assert {r.event.data.step.task_id for r in ready[:2]} == {"a", "b"}  # type: ignore[union-attr]
    assert state.ended_at is not None
    assert state.started_at is not None
    assert (state.ended_at - state.started_at).total_seconds() < 1.1


async def test_failing_primary_tool_falls_back(cadre: Harness) -> None:
    state = await cadre.run(
        plan({"id": "x", "tool": "test.flaky", "fallback_tools": ["test.echo"], "inputs": {"value": "v"}})
    )
    assert state.status == "completed"
    done = [e.event.data for e in await cadre.events(state.workflow_id) if isinstance(e.event.data, StepCompleted)]
    assert done[0].tool == "test.echo"
    assert done[0].planned_tool == "test.flaky"
    assert done[0].deviations == (
        "test.flaky failed: unavailable: the flaky service is down",
        "used fallback tool test.echo instead of test.flaky",
    )


async def test_failed_task_is_retried_then_fails_the_workflow(cadre: Harness) -> None:
    state = await cadre.run(plan({"id": "x", "tool": "test.flaky", "retries": 2, "inputs": {"value": "v"}}))
    assert state.status == "failed"
    assert state.failure is not None
    assert state.failure.code == "task_failed"
    assert state.failure.message == "task 'x' failed after 3 attempt(s): unavailable: the flaky service is down"
    attempts = [
        e.event.data.attempt for e in await cadre.events(state.workflow_id) if isinstance(e.event.data, TaskReady)
    ]
    assert attempts == [1, 2, 3]


async def test_rejected_plan_says_what_to_fix(cadre: Harness) -> None:
    state = await cadre.run(plan({"id": "q", "tool": "sql.qery", "inputs": {"sql": "select 1"}}))
    assert state.status == "failed"
    assert state.failure is not None
    assert state.failure.code == "plan_rejected"
    assert "sql.qery" in state.failure.message
    assert "sql.query" in state.failure.message  # the suggested fix


@pytest.mark.parametrize(
    ("payload", "code", "path"),
    [
        (b"not json", "invalid_json", "$"),
        (b"", "empty_request", "$"),
        (b"{}", "empty_request", "$"),
        (b'{"request": "x", "budjet_usd": 1}', "unknown_field", "$.budjet_usd"),
        (b'{"request": 5}', "invalid_request", "$.request"),
        (b'{"plan": {"nodes": [{"id": "a", "tool": "x", "depends": []}]}}', "unknown_field", "$.plan.nodes[0].depends"),
        (json.dumps({"request": "x" * 300_000}).encode(), "request_too_large", "$"),
    ],
)
async def test_bad_request_gets_a_structured_error_and_appends_nothing(
    cadre: Harness, payload: bytes, code: str, path: str
) -> None:
    reply = await cadre.submit(payload)
    assert reply["error"]["code"] == code
    assert reply["error"]["path"] == path
    assert reply["error"]["message"]
    assert await cadre.bus.log.subject_counts() == {}


async def test_idempotency_key_returns_the_same_workflow(cadre: Harness) -> None:
    body = {"idempotency_key": "order-42", **plan({"id": "x", "tool": "test.echo", "inputs": {"value": "v"}})}
    first = await cadre.submit(body)
    second = await cadre.submit(body)
    changed = await cadre.submit({**body, "request": "a different text, same key"})
    assert first["workflow_id"] == second["workflow_id"] == changed["workflow_id"]
    assert second.get("existing") is True
    assert changed.get("existing") is True
    await cadre.wait(first["workflow_id"])
    assert len(await cadre.bus.log.workflows()) == 1


def approval_plan() -> dict[str, object]:
    return plan({"id": "save", "tool": "fs.write", "inputs": {"path": "out/approved.txt", "content": "ok"}})


async def test_approval_gate_pauses_and_resumes(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        wf = (await h.submit(approval_plan()))["workflow_id"]
        paused = await h.wait(wf, until=ApprovalRequested.TYPE)
        assert paused.steps["save.s1"].status == "awaiting_approval"
        assert not (settings.workspace_dir / "out" / "approved.txt").exists()
        assert await commands.approve(settings, wf, "save.s1", deny=False, reason="looks fine") == 0
        state = await h.wait(wf)
    assert state.status == "completed"
    assert state.steps["save.s1"].approved_by == "approver"
    assert (settings.workspace_dir / "out" / "approved.txt").read_text() == "ok"


async def test_approval_denied_fails_the_step(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        wf = (await h.submit(approval_plan()))["workflow_id"]
        await h.wait(wf, until=ApprovalRequested.TYPE)
        await commands.approve(settings, wf, "save.s1", deny=True, reason="not today")
        state = await h.wait(wf)
        with pytest.raises(CadreError, match=r"refused: step save\.s1 of .* is failed$") as refused:
            await commands.approve(settings, wf, "save.s1", deny=False, reason="")
    assert refused.value.code == "not_awaiting_approval"
    assert state.status == "failed"
    assert state.failure is not None
    assert state.failure.message.endswith("approval_denied: denied by approver: not today")
    assert not (settings.workspace_dir / "out" / "approved.txt").exists()


async def test_unanswered_approval_is_denied_at_its_deadline(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"], approval_timeout_s=0.5)
    async with cadre_running(settings) as h:
        state = await h.run(approval_plan())
    assert state.status == "failed"
    assert state.steps["save.s1"].status == "failed"
    assert state.failure is not None
    assert "denied by timeout" in state.failure.message


async def test_undecodable_input_is_dead_lettered_and_fails_the_workflow(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        wf = (await h.submit(approval_plan()))["workflow_id"]
        await h.wait(wf, until=ApprovalRequested.TYPE)
        await h.bus.nc.jetstream().publish(settings.subjects.event(wf, "step_ready"), b"{garbage")
        state: WorkflowState = await h.wait(wf)
        dead = [e.event.data for e in await h.events(wf) if isinstance(e.event.data, HandlerFailed)]
        failed = [e.event.data for e in await h.events(wf) if isinstance(e.event.data, WorkflowFailed)]
    assert state.status == "failed"
    assert dead[0].error.code == "malformed_event"
    assert failed[0].reason == "handler_failed"


async def test_two_workflows_running_one_plan_each_apply_their_side_effects(cadre: Harness) -> None:
    first = await cadre.run({"request": TOP_CUSTOMERS})
    report = cadre.settings.workspace_dir / "reports" / "top_customers_2024.md"
    report.unlink()
    second = await cadre.run({"request": TOP_CUSTOMERS})
    assert (first.status, second.status) == ("completed", "completed")
    assert second.result is not None
    assert second.result["already_done"] is False
    assert report.exists()


async def test_metrics_count_what_happened(cadre: Harness) -> None:
    import urllib.request

    await cadre.run(plan({"id": "x", "tool": "test.echo", "inputs": {"value": "v"}}))
    assert cadre.system is not None
    metrics = cadre.system.metrics
    sample = metrics.registry.get_sample_value
    assert sample("cadre_workflows_total", {"outcome": "completed"}) == 1
    assert sample("cadre_events_handled_total", {"kind": "agent", "type": "step_ready", "outcome": "ok"}) == 1
    assert sample("cadre_tool_calls_total", {"tool": "test.echo", "outcome": "ok"}) == 1
    port = metrics.serve(0, addr="127.0.0.1")
    url = f"http://127.0.0.1:{port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert "cadre_handler_seconds_bucket" in text
