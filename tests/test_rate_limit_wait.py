"""A consultation denied for the provider's rate limit waits, within a bound, then asks again (issue 13, item 5).

The agent's handlers on the folded workflow, as in tests/test_proposals.py, with the real budget
actor behind a budget that first answers one ``recover`` with the rate limit's denial (as the budget
does when the provider's window is full; the real one's window is 60 s, which a unit test does not
wait out: the golden log ``rate_limit_wait`` holds a real one, recorded). The wait is an event
(``consultation_waiting``) the agent defers to its ``until``: a durable timer, like an approval's
deadline, which survives a restart because the runtime's redelivery carries it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from cadre.actors import agent
from cadre.actors.answers import LiveAnswers
from cadre.actors.budget import BudgetClient
from cadre.actors.context import Context
from cadre.actors.outcome import Defer
from cadre.bus.events import ConsultationWaiting, ProposalMade, StepFailed
from cadre.bus.ledger import Consultation, Decision, Settled, Settlement
from cadre.store.state import fold
from tests.test_dynamic_inference import CATALOG, HOUR, WF, Run, answer, history_after, one_task, to_step
from tests.test_dynamic_inference import budget as budget

RECOVER_WITH_ECHO = {"action": "alternative", "tool": "test.echo", "inputs": {"value": "v"}, "reason": "echo works"}


class RateLimitedOnce:
    """The real budget, except that its first ``recover`` is denied for the rate limit."""

    def __init__(self, real: BudgetClient, retry_after_s: float) -> None:
        self.real, self.retry_after_s, self.denied = real, retry_after_s, 0

    async def consult(self, request: Consultation) -> Decision:
        if request.kind == "recover" and not self.denied:
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
    assert await spec.handler(early, last, fold(WF, events)) == Defer(until=wait.until)

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
