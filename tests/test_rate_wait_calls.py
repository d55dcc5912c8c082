"""Every consultation waits out a rate limit the same way (issue 13, item 5): the agent's ``interpret``
and ``decide``, the planner's ``adapt``.

As tests/test_rate_limit_wait.py: the handlers on the folded workflow, the real budget actor on the
test server behind a budget that first denies one consultation of a kind for the rate limit with a
short ``retry_after_s``. The wait is the ``consultation_waiting`` event, deferred to its ``until``
(a durable timer: the handler is called again on the same event then, in this process or in another
after a restart, as here with a fresh toolbox). The golden logs ``interpret_wait``, ``decide_wait``
and ``adapt_wait`` hold real ones, recorded, which replay.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import msgspec

from cadre.actors import agent, planner, rate_wait, validator
from cadre.actors.answers import LiveAnswers
from cadre.actors.budget import BudgetClient
from cadre.actors.context import Context
from cadre.actors.outcome import Defer
from cadre.actors.runtime import ActorSpec
from cadre.bus.effects import ToolCalled
from cadre.bus.events import (
    CancelRequested,
    ConsultationWaiting,
    Event,
    PlanProposed,
    PlanValidated,
    ProposalMade,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsProposed,
    TaskReady,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.bus.plan import ErrorInfo, Plan, Task
from cadre.planner.decompose import decompose
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from tests.test_dynamic_inference import (
    CATALOG,
    HOUR,
    WF,
    Run,
    answer,
    history,
    history_after,
    one_task,
    to_step,
)
from tests.test_dynamic_inference import budget as budget
from tests.test_rate_limit_wait import RateLimitedOnce

AGENT = agent.make_spec(HOUR, catalog=CATALOG, rate_limit_wait_s=5.0)
PLANNER = planner.make_spec(CATALOG, rate_limit_wait_s=5.0)


def limited(tmp_path: Path, budget: BudgetClient, kind: str, answers: list[dict[str, object]]) -> Run:
    run = Run(tmp_path, None, [answer(a) for a in answers])
    run.outside = replace(run.outside, budget=RateLimitedOnce(budget, 0.5, kind=kind))
    return run


def stored_with_effects(events: list[StoredEvent], data: Event, run: Run) -> StoredEvent:
    """``data`` stored after ``events`` with the effects its handler call recorded (as the runtime
    puts them on the first event it emits)."""
    [rec] = history_after(events, data)
    assert run.ctx is not None
    env = msgspec.structs.replace(rec.event, effects=tuple(run.ctx.effects))
    return StoredEvent(rec.seq, rec.subject, env, b"")


async def at(spec: ActorSpec, run: Run, events: list[StoredEvent], now_s: float) -> list[Event] | Defer:
    """The handler on the last event, ``now_s`` seconds after the wait's ``until``."""
    wait = events[-1].event.data
    assert isinstance(wait, ConsultationWaiting)
    now = wait.until + timedelta(seconds=now_s)
    ctx = Context(kind=spec.kind, stored=events[-1], now=now, answers=LiveAnswers(run.outside))
    out = await spec.handler(ctx, events[-1], fold(WF, events))
    run.ctx = ctx
    return out if isinstance(out, Defer) else list(out)


# == interpret: the tool ran; the wait asks again about its recorded output =========================


async def test_a_rate_limited_interpret_waits_and_never_runs_the_tool_again(
    tmp_path: Path, budget: BudgetClient
) -> None:
    run = limited(tmp_path, budget, "interpret", [{"count": 5}])
    events = to_step(one_task("test.sloppy", {"value": "three"}), "x", level="intelligent")
    [wait] = await run.handle(AGENT, events)
    assert isinstance(wait, ConsultationWaiting)
    assert (wait.call, wait.tool, wait.error.code, wait.phase, wait.remaining, wait.tried) == (
        "interpret",
        "test.sloppy",
        "invalid_output",
        "run",
        None,
        (),
    )
    assert wait.until == events[-1].event.at + timedelta(seconds=0.5)
    assert run.requests == []
    assert run.tools.keys == [f"{WF}/x.s1:test.sloppy"]
    [called] = run.effects(ToolCalled)
    assert called.refused == {"value": "three"}  # the output the wait asks about, recorded on it
    events.append(stored_with_effects(events, wait, run))
    assert fold(WF, events).steps["x.s1"].status == "waiting"

    # Before until: deferred. At until, in a fresh process (a new toolbox): the model is asked about
    # the recorded output and no tool runs.
    early = await at(AGENT, run, events, -0.4)
    assert early == Defer(until=wait.until + rate_wait.SETTLE)
    restarted = limited(tmp_path, budget, "none", [{"count": 5}])
    [proposal] = await at(AGENT, restarted, events, 0.0)
    assert isinstance(proposal, ProposalMade)
    assert (proposal.action, proposal.tool, proposal.output) == ("output", "test.sloppy", {"count": 5, "unit": None})
    assert proposal.deviations[0] == "interpret was denied for the provider's rate limit; waited 0.5 s and asked again"
    assert restarted.tools.keys == []
    assert '<output>\n{"value":"three"}\n</output>' in restarted.requests[0].prompt

    # The validator clears it; the step completes with the model's output.
    events += history_after(events, proposal)
    [verdict] = await restarted.handle(validator.make_spec(CATALOG), events)
    events += history_after(events, verdict)
    [done] = await restarted.handle(AGENT, events)
    assert isinstance(done, StepCompleted)
    assert (done.tool, done.output) == ("test.sloppy", {"count": 5, "unit": None})
    assert restarted.tools.keys == []


async def test_an_interpret_denied_again_fails_the_call_and_the_run_goes_on(
    tmp_path: Path, budget: BudgetClient
) -> None:
    run = limited(tmp_path, budget, "interpret", [])
    events = to_step(one_task("test.sloppy", {"value": "three"}), "x", level="intelligent")
    [wait] = await run.handle(AGENT, events)
    assert isinstance(wait, ConsultationWaiting)
    events.append(stored_with_effects(events, wait, run))
    # Denied once more: no second wait; the call counts as failed and the run goes on to its recovery.
    again = limited(tmp_path, budget, "interpret", [{"action": "fail", "reason": "nothing else fits"}])
    [failed] = await at(AGENT, again, events, 0.0)
    assert isinstance(failed, StepFailed)
    assert failed.error.code == "invalid_output"
    assert "(recovery: the model advised failing the step: nothing else fits; " in failed.error.message
    assert [r.kind for r in again.requests] == ["recover"]
    assert again.tools.keys == []  # test.sloppy did not run again


# == decide: the planned tool failed; the wait asks which fallback goes first ======================

DECIDE_PLAN = one_task("test.flaky", {"value": "v"}, fallback_tools=("fs.read", "test.echo"))


async def test_a_rate_limited_decide_waits_then_orders_the_fallbacks(tmp_path: Path, budget: BudgetClient) -> None:
    run = limited(tmp_path, budget, "decide", [{"choice": "test.echo", "reason": "fs.read takes no value"}])
    events = to_step(DECIDE_PLAN, "x", level="intelligent")
    [wait] = await run.handle(AGENT, events)
    assert isinstance(wait, ConsultationWaiting)
    assert (wait.call, wait.tried, wait.error.code, wait.attempts) == ("decide", ("test.flaky",), "unavailable", 1)
    assert run.tools.keys == [f"{WF}/x.s1:test.flaky"]
    events.append(stored_with_effects(events, wait, run))
    restarted = limited(tmp_path, budget, "none", [{"choice": "test.echo", "reason": "fs.read takes no value"}])
    [done] = await at(AGENT, restarted, events, 0.0)
    assert isinstance(done, StepCompleted)
    assert (done.tool, done.attempts) == ("test.echo", 2)
    assert done.deviations[1] == "decide was denied for the provider's rate limit; waited 0.5 s and asked again"
    assert done.deviations[2].startswith("fallback tool test.echo tried first, as the model decided")
    assert restarted.tools.keys == [f"{WF}/x.s1:test.echo"]  # the planned tool did not run again

    # Redelivered once more after it ran on: nothing.
    events += history_after(events, done)
    ctx = Context(kind="agent", stored=events[-2], now=wait.until, answers=LiveAnswers(restarted.outside))
    assert await AGENT.handler(ctx, events[-2], fold(WF, events)) == []


async def test_a_decide_wait_past_the_deadline_falls_back_at_once(tmp_path: Path, budget: BudgetClient) -> None:
    run = Run(tmp_path, None, [])
    run.outside = replace(run.outside, budget=RateLimitedOnce(budget, 2.0, kind="decide"))
    plan = DECIDE_PLAN
    task = plan.nodes[0]
    steps = decompose(task, CATALOG)
    events = history(
        WorkflowRequested(plan=plan, intelligence="intelligent", deadline_s=1.0),
        PlanProposed(plan=plan),
        PlanValidated(revision=1),
        TaskReady(task=task),
        StepsProposed(task_id="x", steps=tuple(steps)),
        StepReady(step=steps[0]),
    )
    [done] = await run.handle(AGENT, events)
    assert isinstance(done, StepCompleted)
    assert done.deviations[1].startswith("fallback tools tried in planned order: model not used (denied: rate_limited")


# == adapt: a task failed for good; the other branches go on while the re-plan waits ================

BRANCHES = Plan(
    nodes=(
        Task(id="second", tool="test.flaky", inputs={"value": "x"}),
        Task(id="side", tool="test.echo", inputs={"value": "s"}),
        Task(id="after", tool="test.echo", inputs={"value": "a"}, depends_on=("second",)),
    ),
    output="after",
)
REMAINING = {
    "nodes": [{"id": "after_b", "tool": "test.echo", "inputs": {"value": "instead"}}],
    "output": "after_b",
    "rationale": "test.flaky is down; echo instead",
}


def failed_branch() -> list[StoredEvent]:
    """``second`` failed for good while ``side`` runs."""
    second, side = BRANCHES.nodes[0], BRANCHES.nodes[1]
    [s2] = decompose(second, CATALOG)
    error = ErrorInfo(code="unavailable", message="the flaky service is down")
    return history(
        WorkflowRequested(plan=BRANCHES, intelligence="autonomous", mode="creative"),
        PlanProposed(plan=BRANCHES),
        PlanValidated(revision=1),
        TaskReady(task=second),
        TaskReady(task=side),
        StepsProposed(task_id="second", steps=(s2,)),
        StepReady(step=s2),
        StepFailed(task_id="second", step_id=s2.id, tool="test.flaky", error=error, retryable=True),
    )


def side_completes(events: list[StoredEvent]) -> list[StoredEvent]:
    side = BRANCHES.nodes[1]
    [s] = decompose(side, CATALOG)
    return history_after(
        events,
        StepsProposed(task_id="side", steps=(s,)),
        StepReady(step=s),
        StepCompleted(task_id="side", step_id=s.id, tool="test.echo", planned_tool="test.echo", output={"value": "s"}),
    )


async def test_a_rate_limited_adapt_waits_while_the_other_branches_run_then_re_plans(
    tmp_path: Path, budget: BudgetClient
) -> None:
    run = limited(tmp_path, budget, "adapt", [REMAINING])
    events = failed_branch()
    [wait] = await run.handle(PLANNER, events)
    assert isinstance(wait, ConsultationWaiting)
    assert (wait.call, wait.task_id, wait.attempts, wait.revision, wait.error.code) == (
        "adapt",
        "second",
        1,
        1,
        "task_failed",
    )
    assert run.requests == []
    events.append(stored_with_effects(events, wait, run))
    assert fold(WF, events).waits == {"adapt:second:1@1": events[-1].event.id}

    # The failure redelivered while it waits: nothing. The other branch completes meanwhile: nothing
    # is dispatched for the failed branch, and the workflow does not end.
    ctx = Context(kind="planner", stored=events[7], now=wait.until, answers=LiveAnswers(run.outside))
    assert await PLANNER.handler(ctx, events[7], fold(WF, events)) == []
    events += side_completes(events)
    assert await run.handle(PLANNER, events) == []
    events_at_wait = [*events, events[8]]  # the wait redelivered, after the side branch
    early = await at(PLANNER, run, [*events[:8], events[8]], -0.2)
    assert early == Defer(until=wait.until + rate_wait.SETTLE)

    # At until: the planner asks again on the workflow as it stands (side completed), once.
    ctx = Context(kind="planner", stored=events[8], now=wait.until, answers=LiveAnswers(run.outside))
    [proposed] = await PLANNER.handler(ctx, events[8], fold(WF, events_at_wait[:-1]))
    assert isinstance(proposed, PlanProposed)
    assert (proposed.revision, proposed.source) == (2, "model")
    assert proposed.reason.startswith(
        "adapt was denied for the provider's rate limit; waited 0.5 s and asked again; "
        "re-planned after task 'second' failed"
    )
    assert '"side"' in run.requests[0].prompt  # the completed side branch is in what it re-plans
    assert len(run.requests) == 1


async def test_an_adapt_wait_is_dropped_when_the_workflow_moved_on(tmp_path: Path, budget: BudgetClient) -> None:
    run = limited(tmp_path, budget, "adapt", [REMAINING])
    events = failed_branch()
    [wait] = await run.handle(PLANNER, events)
    assert isinstance(wait, ConsultationWaiting)
    events.append(stored_with_effects(events, wait, run))
    wait_rec = events[-1]
    # Cancelled during the wait: the wait finds the workflow ended and asks nothing.
    cancelled = [*events, *history_after(events, CancelRequested(by="ops", reason="enough"))]
    state = fold(WF, cancelled)
    ctx = Context(kind="planner", stored=wait_rec, now=wait.until, answers=LiveAnswers(run.outside))
    assert await PLANNER.handler(ctx, wait_rec, state) == []
    assert planner.adapt_pending(state, wait, wait_rec.event.id) == "the workflow has ended or is ending (cancelling)"
    # Failed meanwhile (another branch, say): dropped.
    ended = [*events, *history_after(events, WorkflowFailed(reason="task_failed", message="m", task_id="side"))]
    assert await PLANNER.handler(ctx, wait_rec, fold(WF, ended)) == []
    # Re-planned meanwhile (a revision 2): dropped, nothing dispatched for the failed branch.
    revised = [*events, *history_after(events, PlanProposed(plan=BRANCHES, revision=2))]
    assert planner.adapt_pending(fold(WF, revised), wait, wait_rec.event.id) == (
        "the plan was revised meanwhile (revision 2)"
    )
    assert await PLANNER.handler(ctx, wait_rec, fold(WF, revised)) == []
    assert run.requests == []


async def test_an_adapt_denied_again_fails_the_workflow_saying_it_waited(tmp_path: Path, budget: BudgetClient) -> None:
    run = limited(tmp_path, budget, "adapt", [])
    events = failed_branch()
    [wait] = await run.handle(PLANNER, events)
    assert isinstance(wait, ConsultationWaiting)
    events.append(stored_with_effects(events, wait, run))
    again = limited(tmp_path, budget, "adapt", [])
    [failed] = await at(PLANNER, again, events, 0.0)
    assert isinstance(failed, WorkflowFailed)
    assert (failed.reason, failed.task_id) == ("task_failed", "second")
    assert "(adaptation was tried: adapt was denied for the provider's rate limit; waited 0.5 s" in failed.message
    assert "denied: rate_limited" in failed.message


# == the golden logs: real waits, recorded on a real system =========================================


def recorded(name: str) -> list[StoredEvent]:
    from tests.test_replay import golden

    return [r for r in golden(name)[1] if isinstance(r, StoredEvent)]


def tool_calls(records: list[StoredEvent]) -> list[str]:
    return [f.tool for r in records for f in r.event.effects if isinstance(f, ToolCalled)]


def test_the_interpret_wait_log_ran_each_tool_once() -> None:
    records = recorded("interpret_wait")
    [wait] = [r for r in records if isinstance(r.event.data, ConsultationWaiting)]
    assert isinstance(wait.event.data, ConsultationWaiting)
    assert (wait.event.data.call, wait.event.data.tool) == ("interpret", "test.sloppy")
    assert tool_calls([wait]) == ["test.sloppy"]  # the output it asks about again is on the wait itself
    assert tool_calls(records) == ["test.sloppy", "test.sloppy"]  # one per task: the wait ran nothing again
    asked_again = [r for r in records if r.event.causation_id == wait.event.id]
    assert [r.event.type for r in asked_again] == ["proposal_made"]
    assert asked_again[0].event.at >= wait.event.data.until


def test_the_decide_wait_log_did_not_run_the_failed_tool_again() -> None:
    records = recorded("decide_wait")
    [wait] = [r for r in records if isinstance(r.event.data, ConsultationWaiting)]
    assert isinstance(wait.event.data, ConsultationWaiting)
    assert wait.event.data.call == "decide"
    assert sorted(tool_calls(records)) == ["test.echo", "test.echo", "test.flaky", "test.flaky"]


def test_the_adapt_wait_log_ran_the_side_branch_during_the_wait() -> None:
    records = recorded("adapt_wait")
    types = [r.event.type for r in records]
    wait_at = types.index("consultation_waiting")
    wait = records[wait_at].event.data
    assert isinstance(wait, ConsultationWaiting)
    assert (wait.call, wait.task_id, wait.revision) == ("adapt", "x", 1)
    replanned = types.index("plan_proposed", wait_at)
    assert "step_completed" in types[wait_at:replanned]  # the side branch completed meanwhile
    proposed = records[replanned].event.data
    assert isinstance(proposed, PlanProposed)
    assert proposed.revision == 2
    assert proposed.reason.startswith("adapt was denied for the provider's rate limit; waited ")
    assert types[-1] == "workflow_completed"
