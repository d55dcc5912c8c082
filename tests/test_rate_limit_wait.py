"""A consultation denied for the provider's rate limit waits, within a bound, then asks again (issue 13, item 5).

The agent's, planner's and decomposer's handlers on the folded workflow, as in
tests/test_proposals.py, with the real budget actor behind a budget that first answers one
``recover`` (``plan``, ``decompose``) with the rate limit's denial (as the budget does when the
provider's window is full; the real one's window is 60 s, which a unit test does not wait out: the
golden logs ``rate_limit_wait`` and ``rate_limit_plan_wait`` hold real ones, recorded). The wait is
an event (``consultation_waiting``) the actor that asked defers to its ``until``: a durable timer,
like an approval's deadline, which survives a restart because the runtime's redelivery carries it
(the handler is called again on the same event at ``until``, as here).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cadre.actors import agent, decomposer, planner, rate_wait
from cadre.actors.answers import LiveAnswers
from cadre.actors.budget import BudgetClient
from cadre.actors.context import Context
from cadre.actors.outcome import Defer
from cadre.actors.runtime import ActorSpec
from cadre.bus.events import (
    ConsultationWaiting,
    PlanProposed,
    ProposalMade,
    StepFailed,
    StepsProposed,
    StepsRejected,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.bus.ledger import Consultation, Decision, Settled, Settlement
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from cadre.system import KINDS, run_system
from tests.fake_llm import anthropic_api, ok
from tests.scenarios import MODEL_PLAN, NOVEL_REQUEST
from tests.system_harness import cadre_running, settings_for
from tests.test_dynamic_inference import (
    CATALOG,
    ECHO_STEPS,
    HOUR,
    WF,
    Run,
    answer,
    history,
    history_after,
    one_task,
    to_step,
    to_task,
)
from tests.test_dynamic_inference import budget as budget
from tests.test_llm_planning import model_settings

RECOVER_WITH_ECHO = {"action": "alternative", "tool": "test.echo", "inputs": {"value": "v"}, "reason": "echo works"}


class RateLimitedOnce:
    """The real budget, except that its first consultation of ``kind`` is denied for the rate limit."""

    def __init__(self, real: BudgetClient, retry_after_s: float, kind: str = "recover") -> None:
        self.real, self.retry_after_s, self.kind, self.denied = real, retry_after_s, kind, 0

    async def consult(self, request: Consultation) -> Decision:
        if request.kind == self.kind and not self.denied:
            self.denied += 1
            message = "provider 'recorded' had 1 grants in the last 60 s (limit 1 requests per minute)"
            return Decision(outcome="denied", reason="rate_limited", message=message, retry_after_s=self.retry_after_s)
        return await self.real.consult(request)

    async def settle(self, settlement: Settlement) -> Settled | None:
        return await self.real.settle(settlement)


SPEC = agent.make_spec(HOUR, catalog=CATALOG, rate_limit_wait_s=5.0)


def run_with(tmp_path: Path, budget: BudgetClient, retry_after_s: float) -> Run:
    run = Run(tmp_path, None, [answer(RECOVER_WITH_ECHO)])
    run.outside = replace(run.outside, budget=RateLimitedOnce(budget, retry_after_s))
    return run


async def test_a_rate_limited_recovery_waits_then_asks_again(tmp_path: Path, budget: BudgetClient) -> None:
    run = run_with(tmp_path, budget, 2.5)
    events = to_step(one_task("test.flaky", {"value": "v"}), "x", level="adaptive")
    spec = SPEC
    [wait] = await run.handle(spec, events)
    assert isinstance(wait, ConsultationWaiting)
    assert (wait.call, wait.retry_after_s, wait.tried, wait.error.code) == (
        "recover",
        2.5,
        ("test.flaky",),
        "unavailable",
    )
    assert wait.until == events[-1].event.at + timedelta(seconds=2.5)
    assert run.requests == []  # nothing was sent to the model
    events += history_after(events, wait)
    assert fold(WF, events).steps["x.s1"].status == "waiting"

    # Before ``until``: the agent defers its own event (the runtime naks it with that delay).
    last = events[-1]
    early = Context(kind="agent", stored=last, now=wait.until - timedelta(seconds=1), answers=LiveAnswers(run.outside))
    assert await spec.handler(early, last, fold(WF, events)) == Defer(until=wait.until + rate_wait.SETTLE)

    # At ``until`` (a redelivery, in this process or another after a restart): it asks again.
    ctx = Context(kind="agent", stored=last, now=wait.until, answers=LiveAnswers(run.outside))
    [proposal] = await spec.handler(ctx, last, fold(WF, events))
    assert isinstance(proposal, ProposalMade)
    assert (proposal.action, proposal.tool) == ("alternative", "test.echo")
    assert proposal.deviations[1] == ("recover was denied for the provider's rate limit; waited 2.5 s and asked again")
    assert len(run.requests) == 1
    assert run.tools.keys == [f"{WF}/x.s1:test.flaky"]  # the planned tool ran once, before the wait


async def test_a_wait_over_the_bound_falls_back_at_once(tmp_path: Path, budget: BudgetClient) -> None:
    run = run_with(tmp_path, budget, 30.0)
    events = to_step(one_task("test.flaky", {"value": "v"}), "x", level="adaptive")
    [failed] = await run.handle(SPEC, events)
    assert isinstance(failed, StepFailed)
    assert failed.error.message.startswith(
        "the flaky service is down (recovery was tried: model not used (denied: rate_limited: provider"
    )
    assert run.requests == []


async def test_the_second_denial_after_a_wait_falls_back(tmp_path: Path, budget: BudgetClient) -> None:
    run = run_with(tmp_path, budget, 1.0)
    spec = SPEC
    events = to_step(one_task("test.flaky", {"value": "v"}), "x", level="adaptive")
    [wait] = await run.handle(spec, events)
    assert isinstance(wait, ConsultationWaiting)
    limited = run.outside.budget
    assert isinstance(limited, RateLimitedOnce)
    limited.denied = 0  # denied again when it asks again
    events += history_after(events, wait)
    last = events[-1]
    ctx = Context(kind="agent", stored=last, now=wait.until, answers=LiveAnswers(run.outside))
    [failed] = await spec.handler(ctx, last, fold(WF, events))
    assert isinstance(failed, StepFailed)
    assert "denied: rate_limited" in failed.error.message


# == every consultation waits the same way: the planner's plan, the decomposer's decompose ====

PLAN_REQUEST = "echo v back"
ECHO_PLAN = {"nodes": [{"id": "e", "description": "echo it", "tool": "test.echo", "inputs": {"value": "v"}}]}


def requested() -> list[StoredEvent]:
    return history(WorkflowRequested(request=PLAN_REQUEST, intelligence="adaptive"))


def at(spec: ActorSpec, run: Run, events: list[StoredEvent], now: datetime) -> Context:
    return Context(kind=spec.kind, stored=events[-1], now=now, answers=LiveAnswers(run.outside))


async def test_a_rate_limited_plan_waits_then_plans(tmp_path: Path, budget: BudgetClient) -> None:
    spec = planner.make_spec(CATALOG, rate_limit_wait_s=5.0)
    run = Run(tmp_path, None, [answer(ECHO_PLAN)])
    run.outside = replace(run.outside, budget=RateLimitedOnce(budget, 1.5, kind="plan"))
    events = requested()
    [wait] = await run.handle(spec, events)
    assert isinstance(wait, ConsultationWaiting)
    assert (wait.call, wait.task_id, wait.step_id, wait.retry_after_s, wait.error.code) == (
        "plan",
        "",
        "",
        1.5,
        "rate_limited",
    )
    assert wait.until == events[-1].event.at + timedelta(seconds=1.5)
    assert run.requests == []
    events += history_after(events, wait)
    assert fold(WF, events).waits == {"plan": events[-1].event.id}

    # The request redelivered while it waits: the wait asks again, not the request.
    first = events[:1]
    ctx = at(spec, run, first, wait.until)
    assert await spec.handler(ctx, first[0], fold(WF, events)) == []

    early = at(spec, run, events, wait.until - timedelta(seconds=1))
    assert await spec.handler(early, events[-1], fold(WF, events)) == Defer(until=wait.until + rate_wait.SETTLE)

    ctx = at(spec, run, events, wait.until)  # at until: a redelivery, in this process or after a restart
    [proposed] = await spec.handler(ctx, events[-1], fold(WF, events))
    assert isinstance(proposed, PlanProposed)
    assert proposed.source == "model"
    assert [t.tool for t in proposed.plan.nodes] == ["test.echo"]
    assert proposed.reason.startswith("plan was denied for the provider's rate limit; waited 1.5 s and asked again; ")
    assert len(run.requests) == 1

    # Planned: the wait redelivered once more does nothing.
    events += history_after(events, proposed)
    assert await spec.handler(ctx, events[-2], fold(WF, events)) == []


async def test_a_plan_denied_again_after_its_wait_falls_back(tmp_path: Path, budget: BudgetClient) -> None:
    spec = planner.make_spec(CATALOG, rate_limit_wait_s=5.0)
    run = Run(tmp_path, None, [])
    limited = RateLimitedOnce(budget, 1.0, kind="plan")
    run.outside = replace(run.outside, budget=limited)
    events = requested()
    [wait] = await run.handle(spec, events)
    assert isinstance(wait, ConsultationWaiting)
    limited.denied = 0
    events += history_after(events, wait)
    [failed] = await spec.handler(at(spec, run, events, wait.until), events[-1], fold(WF, events))
    assert isinstance(failed, WorkflowFailed)
    assert failed.reason == "no_plan"
    assert "plan was denied for the provider's rate limit; waited 1 s and asked again; " in failed.message
    assert "denied: rate_limited" in failed.message
    assert run.requests == []


async def test_a_plan_over_the_bound_falls_back_at_once(tmp_path: Path, budget: BudgetClient) -> None:
    run = Run(tmp_path, None, [])
    run.outside = replace(run.outside, budget=RateLimitedOnce(budget, 30.0, kind="plan"))
    [failed] = await run.handle(planner.make_spec(CATALOG, rate_limit_wait_s=5.0), requested())
    assert isinstance(failed, WorkflowFailed)
    assert "denied: rate_limited" in failed.message
    assert "waited" not in failed.message


async def test_a_plan_whose_wait_would_pass_the_deadline_falls_back_at_once(
    tmp_path: Path, budget: BudgetClient
) -> None:
    # Within the bound (2 s of 5 s), but the request's deadline is 1 s after it was made.
    run = Run(tmp_path, None, [])
    run.outside = replace(run.outside, budget=RateLimitedOnce(budget, 2.0, kind="plan"))
    events = history(WorkflowRequested(request=PLAN_REQUEST, intelligence="adaptive", deadline_s=1.0))
    [failed] = await run.handle(planner.make_spec(CATALOG, rate_limit_wait_s=5.0), events)
    assert isinstance(failed, WorkflowFailed)
    assert "denied: rate_limited" in failed.message
    assert "waited" not in failed.message


async def test_a_rate_limited_decompose_waits_then_decomposes(tmp_path: Path, budget: BudgetClient) -> None:
    spec = decomposer.make_spec(CATALOG, rate_limit_wait_s=5.0)
    run = Run(tmp_path, None, [answer(ECHO_STEPS)])
    run.outside = replace(run.outside, budget=RateLimitedOnce(budget, 2.0, kind="decompose"))
    events = to_task("adaptive")
    [wait] = await run.handle(spec, events)
    assert isinstance(wait, ConsultationWaiting)
    assert (wait.call, wait.task_id, wait.attempts, wait.retry_after_s) == ("decompose", "d", 1, 2.0)
    assert run.requests == []
    events += history_after(events, wait)
    assert fold(WF, events).waits == {"decompose:d:1": events[-1].event.id}

    # The task redelivered while it waits: nothing; the wait before its until: deferred.
    task_ready = events[-2]
    assert await spec.handler(at(spec, run, events, wait.until), task_ready, fold(WF, events)) == []
    early = at(spec, run, events, wait.until - timedelta(seconds=1))
    assert await spec.handler(early, events[-1], fold(WF, events)) == Defer(until=wait.until + rate_wait.SETTLE)

    [proposed] = await spec.handler(at(spec, run, events, wait.until), events[-1], fold(WF, events))
    assert isinstance(proposed, StepsProposed)
    assert [s.id for s in proposed.steps] == ["d.s1", "d.s2"]
    assert len(run.requests) == 1


async def test_a_decompose_denied_again_after_its_wait_is_rejected(tmp_path: Path, budget: BudgetClient) -> None:
    spec = decomposer.make_spec(CATALOG, rate_limit_wait_s=5.0)
    run = Run(tmp_path, None, [])
    limited = RateLimitedOnce(budget, 1.0, kind="decompose")
    run.outside = replace(run.outside, budget=limited)
    events = to_task("adaptive")
    [wait] = await run.handle(spec, events)
    assert isinstance(wait, ConsultationWaiting)
    limited.denied = 0
    events += history_after(events, wait)
    [rejected] = await spec.handler(at(spec, run, events, wait.until), events[-1], fold(WF, events))
    assert isinstance(rejected, StepsRejected)
    message = rejected.checks[0].message
    assert "decompose was denied for the provider's rate limit; waited 1 s and asked again; " in message
    assert "denied: rate_limited" in message


async def test_without_a_bound_nothing_waits(tmp_path: Path, budget: BudgetClient) -> None:
    """The default of the handlers (a replay of logs made before waits): a denial falls back at once."""
    run = Run(tmp_path, None, [])
    run.outside = replace(run.outside, budget=RateLimitedOnce(budget, 1.0, kind="decompose"))
    [rejected] = await run.handle(decomposer.make_spec(CATALOG), to_task("adaptive"))
    assert isinstance(rejected, StepsRejected)


@pytest.mark.slow
@pytest.mark.timeout(150)  # it waits out most of the provider's 60 s window to get a short retry_after_s
async def test_a_planner_restarted_during_its_wait_plans_after_it(nats_url: str, tmp_path: Path) -> None:
    """The whole cadre on the test server, one model call a minute: a second request about 54 s after
    the first model call is denied for the rate limit and waits the rest of the minute (under 10 s,
    counted from the call itself, so a slow first run on a busy machine does not push it past the
    bound); the planner stops during the wait and a new one starts: the redelivered wait asks again
    after it, once, and the model plans."""
    limits = {"anthropic": {"requests_per_minute": 1, "tokens_per_minute": 200_000}}
    async with anthropic_api(ok(MODEL_PLAN), ok(MODEL_PLAN)) as api:
        s = model_settings("anthropic", api, nats_url, tmp_path, rate_limits=limits, rate_limit_wait_max_s=10.0)
        settings = settings_for(s.pop("nats_url"), s.pop("data_dir"), **s)
        async with cadre_running(settings, kinds=tuple(k for k in KINDS if k != "planner")) as h:
            async with run_system(h.bus, settings, ("planner",)):  # the planner and the intake
                first = await h.run({"request": NOVEL_REQUEST})
                assert first.status == "completed", first.failure
                await asyncio.sleep(max(0.0, api.times[0] + 54.0 - time.monotonic()))
                reply = await h.submit({"request": "how many customers does the shop database hold"})
                wf = str(reply["workflow_id"])
                await h.wait(wf, until="consultation_waiting")
            # stopped during the wait; a new planner picks the wait up when it comes
            async with run_system(h.bus, settings, ("planner",)):
                state = await h.wait(wf, within=30)
            records = [r for r in await h.events(wf) if isinstance(r, StoredEvent)]
    assert state.status == "completed", state.failure.message if state.failure else None
    types = [r.event.type for r in records]
    assert types[:3] == ["workflow_requested", "consultation_waiting", "plan_proposed"]
    wait = records[1].event.data
    assert isinstance(wait, ConsultationWaiting)
    assert (wait.call, wait.error.code) == ("plan", "rate_limited")
    assert 0 < wait.retry_after_s <= 10.0
    proposed = records[2].event.data
    assert isinstance(proposed, PlanProposed)
    assert proposed.source == "model"
    assert proposed.reason.startswith("plan was denied for the provider's rate limit; waited ")
    assert records[2].event.at >= wait.until
    assert len(api.requests) == 2  # the first request's plan and the second's, asked again once
