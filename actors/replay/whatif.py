"""What-if replays: the changes to try, the budget re-decided under them, the answers a
what-if serves, and the differences described as decisions.

A what-if replays a workflow on its recorded inputs with a changed deployment: the catalog's
tool policies (prohibited and approval-gated tools) and the validator's limits reach the
handlers through their specs (:class:`actors.replay.Replayer`); everything else is here:

* :class:`WhatIf`: the level and mode (they override the workflow's own), the workflow's cap
  (overrides its own), and the budget configuration (daily cap, prices) to decide with;
* :func:`redecide`: a recorded budget decision, decided again with the pure rules of
  :mod:`actors.budget.rules` (the level x mode gate, then the caps from the recorded worst
  case and the workflow's recorded spend before the call). What the what-if does not change
  keeps its recorded outcome: the inference cache and the rate limits, and a cap that is not
  changed (the daily cap, in particular, also counted other workflows' spend);
* :class:`WhatIfAnswers`: the recorded answers (:class:`~actors.answers.RecordedAnswers`,
  skipping those no longer asked for), with each budget decision re-decided, the tools the
  changed catalog prohibits refused, and the workflow's spend kept;
* :func:`describe`: a replay divergence as the decision that would now differ ("step
  report.s1 would now be rejected: …").

Recorded LLM answers and tool outputs are still served from the log; a what-if never calls
anything, and when a handler would now ask for something the record does not hold (a model
call after a grant that was a denial), the difference says so and what follows is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from cadre.actors.answers import RecordedAnswers, ReplayDivergence
from cadre.actors.budget.rules import BudgetConfig, gate, worst_case_usd
from cadre.actors.context import asked
from cadre.actors.inference import LLM, Policy
from cadre.actors.planner_rules import explain
from cadre.actors.replay.diff import FieldDiff
from cadre.actors.replay.engine import Divergence, Invocation
from cadre.bus.effects import (
    Asked,
    BudgetDecided,
    CallSettled,
    Estimated,
    Grounded,
    LibrarySearched,
    ModelCalled,
    ToolCalled,
)
from cadre.bus.events import (
    Envelope,
    PlanProposed,
    PlanRejected,
    PlanValidated,
    ProposalRejected,
    ProposalValidated,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsProposed,
    StepsRejected,
    WorkflowCompleted,
    WorkflowFailed,
)
from cadre.bus.ledger import Consultation, Decision, Settlement
from cadre.bus.plan import Check, ErrorInfo
from cadre.planner.catalog import Catalog, Safety
from cadre.planner.providers.base import LLMRequest

__all__ = ["Change", "Session", "Unrecorded", "WhatIf", "WhatIfAnswers", "describe", "redecide"]


@dataclass(frozen=True, slots=True)
class WhatIf:
    """The changes a what-if tries besides the specs' catalog and limits.

    ``intelligence`` / ``mode`` (None: as recorded) override the workflow's own level and mode;
    ``workflow_usd`` (None: as recorded) overrides its cap; ``daily_usd`` (None: as recorded)
    is a new daily cap. ``budget`` prices worst cases (and holds the default caps).
    """

    budget: BudgetConfig
    intelligence: str | None = None
    mode: str | None = None
    workflow_usd: float | None = None
    daily_usd: float | None = None


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """A decision that would differ, with the recorded event it concerns (index among the
    workflow's records, stream sequence, id, type, emitter)."""

    index: int
    seq: int
    event_id: str
    type: str
    actor: str
    decision: str

    def line(self) -> str:
        return f"index {self.index} (seq {self.seq}, {self.type} by {self.actor}): {self.decision}"


def redecide(
    recorded: Decision, asked: Asked | None, request: Consultation, whatif: WhatIf, spent_usd: float
) -> Decision:
    """The budget's answer to ``request`` under ``whatif`` (the recorded one when it would not change).

    ``asked`` is what the recorded consultation asked (its effect's ``consultation``: level,
    mode, cap); ``spent_usd`` the workflow's recorded spend before this call. A cap that the
    what-if does not change keeps its recorded verdict, unless the gate now lets through a
    call the record had refused before the caps were looked at. A grant keeps its recorded
    reservation; a refusal is priced by the rule it was asked under (``asked.max_input_tokens``:
    the input bound; none recorded, as in logs from before the bound: the estimate times the
    safety factor), so old logs re-decide as they were decided.
    """
    level = whatif.intelligence or (asked.intelligence if asked is not None else request.intelligence)
    mode = whatif.mode or (asked.mode if asked is not None else request.mode)
    opened = False
    if whatif.intelligence is not None or whatif.mode is not None:
        why = gate(request.kind, level, mode)
        if why is not None:
            if recorded.reason == "not_allowed":
                return recorded
            return Decision(outcome="denied", reason="not_allowed", message=why)
        opened = recorded.reason == "not_allowed"
    elif recorded.reason == "not_allowed":
        return recorded
    if recorded.outcome == "cached" or recorded.reason in ("rate_limited", "no_provider", "budget_unavailable"):
        return recorded  # the cache, the rate limits and the ports are not what a what-if changes
    check_workflow = opened or whatif.workflow_usd is not None
    check_day = opened or whatif.daily_usd is not None
    if not (check_workflow or check_day):
        return recorded
    c = msgspec.structs.replace(request, intelligence=level, mode=mode)
    if asked is not None:  # price it by the rule it was asked under: no bound recorded = the older estimate rule
        c = msgspec.structs.replace(c, est_input_tokens=asked.est_input_tokens, max_input_tokens=asked.max_input_tokens)
    worst = recorded.reserved_usd if recorded.outcome == "granted" else worst_case_usd(c, whatif.budget)[1]
    own_cap = asked.budget_usd if asked is not None else None
    cap = whatif.workflow_usd if whatif.workflow_usd is not None else own_cap
    if cap is None:
        cap = whatif.budget.workflow_usd
    daily = whatif.daily_usd if whatif.daily_usd is not None else whatif.budget.daily_usd
    if check_workflow:
        if cap <= 0 or spent_usd + worst > cap:
            return _over("over_workflow_cap", f"workflow {request.workflow_id!r}", spent_usd, worst, float(cap))
    elif recorded.reason == "over_workflow_cap":
        return recorded
    if check_day:
        if daily <= 0 or spent_usd + worst > daily:
            return _over("over_global_cap", "the daily cap", spent_usd, worst, daily)
    elif recorded.reason == "over_global_cap":
        return recorded
    if recorded.outcome == "granted":
        return recorded
    return Decision(outcome="granted", reservation_id=request.id, reserved_usd=worst)


def _over(reason: str, whose: str, spent: float, worst: float, cap: float) -> Decision:
    total = spent + worst
    message = (
        f"{whose}: recorded spend ${spent:.4f} + this call's worst case ${worst:.4f} = ${total:.4f}, "
        f"over the cap of ${cap:.4f}"
    )
    return Decision(outcome="denied", reason=reason, message=message)


def decision_words(d: Decision) -> str:
    """``granted``, ``cached`` or ``denied: <reason>``."""
    return f"denied: {d.reason}" if d.outcome == "denied" else d.outcome


# -- the answers of a what-if -------------------------------------------------------------------


class Unrecorded(ReplayDivergence):
    """What-if: the handler would now ask for an answer the record does not hold."""

    code = "unrecorded"


@dataclass
class Session:
    """One workflow's what-if: the changes, the catalog tools are checked against, the
    workflow's recorded spend in time order, and the budget decisions found to differ."""

    whatif: WhatIf
    catalog: Catalog | None
    spend: list[tuple[datetime, float]]
    notes: list[tuple[Invocation, str]] = field(default_factory=list)

    def spent_before(self, at: datetime) -> float:
        return sum(cost for when, cost in self.spend if when < at)

    def refusal(self, tool: str) -> ErrorInfo | None:
        """Why the changed catalog would not run ``tool`` (as the toolbox says it), or None."""
        if self.catalog is None:
            return None
        spec = self.catalog.get(tool)
        if spec is None:
            return ErrorInfo(code="unknown_tool", message=f"no tool named {tool!r} in the changed catalog")
        if spec.safety is Safety.PROHIBITED:
            return ErrorInfo(code="prohibited", message=f"tool {tool!r} is prohibited by this deployment's policy")
        return None


class WhatIfAnswers:
    """One invocation's answers under a what-if: the recorded ones (those no longer asked for
    skipped; one never recorded is :class:`Unrecorded`), each budget decision re-decided,
    tools the changed catalog would not run refused."""

    def __init__(self, invocation: Invocation, session: Session, *, fallback_llm: LLM | None = None) -> None:
        self.recorded = RecordedAnswers(invocation.effects, fallback_llm=fallback_llm, unrecorded=Unrecorded)
        self.invocation = invocation
        self.session = session
        self._spent = 0.0  # settled by this invocation so far (what-if caps)

    @property
    def policy(self) -> Policy:
        return self.recorded.policy

    def model(self, call: str) -> LLM | None:
        return self.recorded.model(call)

    async def run_tool(
        self, tool: str, inputs: dict[str, Any], idempotency_key: str, compensable: bool = False
    ) -> ToolCalled:
        refusal = self.session.refusal(tool)
        if refusal is None:
            return await self.recorded.run_tool(tool, inputs, idempotency_key, compensable)
        # the changed catalog would not run it: the recorded call does not happen
        self.recorded.skip(ToolCalled, ToolCalled.key_of(tool, inputs))
        return ToolCalled(tool=tool, inputs=ToolCalled.digest_of(inputs), error=refusal)

    async def search_library(self, request: str) -> LibrarySearched:
        return await self.recorded.search_library(request)

    async def ground(self, call: str, query: str, tool: str | None) -> Grounded | None:
        return await self.recorded.ground(call, query, tool)

    async def consult(self, request: Consultation) -> BudgetDecided:
        effect = await self.recorded.consult(request)
        recorded, ask = effect.decision, effect.asked
        spent = self.session.spent_before(self.invocation.at) + self._spent
        decision = redecide(recorded, ask, request, self.session.whatif, spent)
        if decision == recorded:
            return effect
        now = asked(request)
        if ask is not None:
            now = msgspec.structs.replace(now, intelligence=ask.intelligence, mode=ask.mode)
        why = f": {decision.message}" if decision.outcome == "denied" and decision.message else ""
        self.session.notes.append(
            (
                self.invocation,
                f"consultation {request.kind} would now be {decision_words(decision)} "
                f"(recorded: {decision_words(recorded)}){why}",
            )
        )
        return msgspec.structs.replace(effect, decision=decision, asked=now)

    async def call_model(self, llm: LLM, request: LLMRequest) -> ModelCalled:
        return await self.recorded.call_model(llm, request)

    async def settle(self, call: str, decision: Decision, settlement: Settlement) -> CallSettled | None:
        effect = await self.recorded.settle(call, decision, settlement)
        if effect is not None:
            self._spent += effect.cost_usd
        return effect

    def known(self, effect: ModelCalled) -> ModelCalled:
        return self.recorded.known(effect)

    def fallback(self, call: str, attempt: int) -> LLM | None:
        return self.recorded.fallback(call, attempt)

    async def estimate(
        self, tool: str, asks: Sequence[tuple[str, int, int]], policy: Policy, bounds: Sequence[int] | None = None
    ) -> Estimated:
        return await self.recorded.estimate(tool, asks, policy, bounds)


# -- describing differences ----------------------------------------------------------------------


def describe(d: Divergence, cause_type: str | None = None) -> str | None:
    """The decision that would differ, in words; None when only recorded effects differ (a
    budget decision that changed is described where it is re-decided)."""
    rec = d.recorded
    match d.kind:
        case "asked":
            return f"{d.actor} {d.message}" if d.message.startswith("would") else f"{d.actor}: {d.message}"
        case "raised":
            return f"{d.actor} would now fail to handle its input: {d.message}"
        case "emitted":
            return f"{d.actor} would now answer this {d.type}: {_emits(d.replayed)}"
        case "orphan":
            return None
        case "missing":
            return f"{d.actor} would no longer emit this {d.type}; it would emit {_emits(d.replayed)}"
        case "extra":
            added = [e for e in d.replayed if rec is None or e.id != rec.id]
            return f"{d.actor} would now also emit {_emits(added)}"
        case "changed":
            if rec is None:
                return None
            new = next((e for e in d.replayed if e.id == rec.id), d.replayed[0] if d.replayed else None)
            if new is None:
                return None
            return _changed(rec, new, cause_type, d.diffs)
    return None


def _emits(envs: tuple[Envelope, ...] | list[Envelope]) -> str:
    return ", ".join(e.type for e in envs) or "nothing"


def _changed(rec: Envelope, new: Envelope, cause_type: str | None, diffs: tuple[FieldDiff, ...]) -> str | None:
    a, b = rec.data, new.data
    if a == b:
        return None  # only the effects differ
    match a, b:
        case PlanValidated(), PlanRejected():
            return f"plan revision {a.revision} would now be rejected: {explain(b.checks)}"
        case PlanRejected(), PlanValidated():
            return f"plan revision {a.revision} would now pass validation"
        case ProposalValidated(), ProposalRejected():
            return f"the model's proposal for step {a.step_id} would now be refused: {explain(b.checks)}"
        case ProposalRejected(), ProposalValidated():
            wait = f", and wait for approval ({'; '.join(b.approval)})" if b.approval else ""
            return f"the model's proposal for step {a.step_id} would now be cleared{wait}"
        case ProposalValidated(), ProposalValidated() if a.approval != b.approval:
            if not b.approval:
                return f"the model's proposal for step {a.step_id} would now run without a person's approval"
            return f"the model's proposal for step {a.step_id} would now wait for approval ({'; '.join(b.approval)})"
        case StepReady(), StepsRejected():
            return f"step {a.step.id} would now be rejected: {explain(b.checks)}"
        case StepsRejected(), StepReady():
            return f"the steps of task {a.task_id} would now be cleared to run"
        case StepsProposed(), StepsProposed():
            return _steps_changed(a, b, diffs)
        case StepReady(), StepReady():
            return _new_checks(f"step {a.step.id} would now be cleared", a.checks, b.checks, diffs)
        case PlanValidated(), PlanValidated():
            return _new_checks(f"plan revision {a.revision} would now be validated", a.checks, b.checks, diffs)
        case StepCompleted(), StepFailed():
            return f"step {a.step_id} would now fail: {b.error.code}: {b.error.message}"
        case StepFailed(), StepCompleted():
            return f"step {a.step_id} would now complete (with {b.tool})"
        case StepCompleted(), StepCompleted():
            if a.tool != b.tool:
                return f"step {a.step_id} would now complete with {b.tool} instead of {a.tool}"
            return f"step {a.step_id} would now complete differently ({'; '.join(b.deviations) or 'its output'})"
        case StepFailed(), StepFailed():
            return f"step {a.step_id} would now fail differently: {b.error.code}: {b.error.message}"
        case PlanProposed(), PlanProposed():
            return f"plan revision {b.revision} would now come from {b.source}: {b.reason}"
        case PlanProposed(), WorkflowFailed():
            return f"the workflow would now fail instead of being planned: {b.reason}: {b.message}"
        case WorkflowFailed(), PlanProposed():
            return f"the workflow would now be planned (revision {b.revision}, {b.source}) instead of failing"
        case WorkflowCompleted(), WorkflowFailed():
            return f"the workflow would now fail: {b.reason}: {b.message}"
        case WorkflowFailed(), WorkflowFailed():
            return f"the workflow would now fail with: {b.reason}: {b.message}"
    answer = f" in answer to {cause_type}" if cause_type else ""
    if rec.type == new.type:
        return f"{rec.actor}'s {rec.type}{answer} would now differ{_fields(diffs)}"
    return f"{rec.actor} would now emit {new.type} instead of {rec.type}{answer}"


def _fields(diffs: tuple[FieldDiff, ...], most: int = 3) -> str:
    """`` (in steps[0].rollback, …)``: where the differences are, their ``$.data.`` cut off."""
    paths = list(dict.fromkeys(d.path.removeprefix("$.data.").removeprefix("$.") for d in diffs))
    if not paths:
        return ""
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return f" (in {', '.join(paths[:most])}{more})"


def _new_checks(head: str, before: tuple[Check, ...], after: tuple[Check, ...], diffs: tuple[FieldDiff, ...]) -> str:
    """A verdict that stands, with the warnings it gained or lost."""

    def unpassed(checks: tuple[Check, ...]) -> dict[tuple[str, str | None, str], Check]:
        return {(c.name, c.path, c.message): c for c in checks if not c.passed}

    old, new = unpassed(before), unpassed(after)
    gained = [c.message for k, c in new.items() if k not in old]
    lost = [c.message for k, c in old.items() if k not in new]
    if gained:
        return f"{head} with warning(s): " + "; ".join(gained)
    if lost:
        return f"{head} without the warning(s): " + "; ".join(lost)
    return f"{head}, with different checks{_fields(diffs)}"


def _steps_changed(a: StepsProposed, b: StepsProposed, diffs: tuple[FieldDiff, ...]) -> str:
    before = {s.id: s for s in a.steps}
    notes = []
    for s in b.steps:
        old = before.get(s.id)
        if old is not None and old.requires_approval != s.requires_approval:
            need = "would now need" if s.requires_approval else "would no longer need"
            notes.append(f"step {s.id} {need} a person's approval (tool {s.tool})")
    return "; ".join(notes) or f"the steps of task {a.task_id} would now differ{_fields(diffs)}"
