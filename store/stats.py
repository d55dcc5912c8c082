"""How well planning works over many workflows: the evaluation figures of ``cadre stats``. Pure:
no I/O, no clock.

Two steps, both plain functions: :func:`workflow_facts` folds one workflow's records (with the
keyring that checks them: an event it does not accept counts for nothing, as in the audit) into
the few facts the figures need; :func:`stats` adds up the facts of many workflows (those started
at or after ``since``). The figures and what they count:

* **workflows** by outcome: ``completed``, ``failed``, ``cancelled`` (by a person or a deadline),
  ``unfinished`` (no terminal event yet);
  ``dry_runs`` of them were dry runs (counted like the others); ``failure_reasons``: the
  ``workflow_failed`` reasons; ``duration_s``: start to end of the ended ones.
* **plans** by source (``explicit``, ``library``, ``model``): every plan revision proposed ends as
  ``rejected`` by the validator, ``replaced`` by a later revision (a re-plan), ``failed`` (the
  workflow failed under it), ``succeeded`` (the workflow completed under it), ``cancelled`` (the
  workflow was cancelled under it) or ``unfinished``;
  ``success_rate`` = succeeded / (proposed - unfinished - cancelled).
* **replans**: revisions after the first; ``rate`` = workflows re-planned / workflows with a plan.
* **validation**: rejection rates of plans (``plan_rejected`` / plan verdicts), of steps
  (``steps_rejected`` / ``steps_proposed``: one verdict per task's steps) and of the model's
  run-time proposals (``proposal_rejected`` / proposal verdicts).
* **adherence**: steps completed with their planned tool / steps completed.
* **deviations**: departures from the plan as the audit lists them (fallback tools, recoveries,
  re-plans, retries, rate-limit waits, compensations).
* **recovery**: steps that ran into trouble (a failed tool call, or a model's proposal made for
  them) and, of those, the ones that completed anyway.
* **approvals**: ``granted``, ``denied`` (by a person), ``timed_out`` (denied by the deadline),
  ``pending``; ``wait_s``: request to decision.
* **cost** (USD, the settled cost of model consultations): per workflow, and per task (a task's
  own consultations and its steps'; every task dispatched counts, at 0 when it cost nothing).
* **latency_s** per actor kind: from an event to each event an actor emitted in answer to it
  (``causation_id``), so it includes the time the input waited in the actor's queue (and a
  person's, for an approval).

A distribution is ``n``, ``median`` (the middle value, or the mean of the two middle ones),
``p95`` (nearest rank: the value at rank ceil(0.95 n) of the sorted values) and ``max``. Rates
are rounded to 4 decimals, seconds and dollars to 6; a rate with nothing to count is None.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from cadre.bus.events import (
    PlanRejected,
    PlanValidated,
    ProposalMade,
    ProposalRejected,
    ProposalValidated,
    StepCompleted,
    StepsProposed,
    StepsRejected,
    TaskReady,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.bus.signing import Keyring
from cadre.store.audit import audit
from cadre.store.authenticity import verdict
from cadre.store.records import Record, StoredEvent

__all__ = ["Distribution", "PlanFact", "Stats", "WorkflowFacts", "distribution", "stats", "workflow_facts"]

PLAN_SOURCES = ("explicit", "library", "model")


class PlanFact(msgspec.Struct, frozen=True, kw_only=True):
    """A plan revision: where it came from and how it ended (module docstring, **plans**)."""

    revision: int
    source: str
    ending: str  # rejected | replaced | failed | succeeded | cancelled | unfinished


class WorkflowFacts(msgspec.Struct, kw_only=True):
    """What the figures need of one workflow (:func:`workflow_facts`)."""

    workflow_id: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = "unfinished"  # completed | failed | cancelled | unfinished
    failure_reason: str | None = None
    dry_run: bool = False
    plans: list[PlanFact] = msgspec.field(default_factory=list)
    plan_verdicts: int = 0
    plans_rejected: int = 0
    step_batches: int = 0
    step_batches_rejected: int = 0
    proposal_verdicts: int = 0
    proposals_rejected: int = 0
    steps_completed: int = 0
    steps_on_plan: int = 0
    steps_in_trouble: int = 0
    steps_recovered: int = 0
    deviations: int = 0
    approvals: list[tuple[str, float | None]] = msgspec.field(default_factory=list)  # (decision, waited s)
    cost_usd: float = 0.0
    task_costs: dict[str, float] = msgspec.field(default_factory=dict)
    latencies: list[tuple[str, float]] = msgspec.field(default_factory=list)  # (actor kind, seconds)


def workflow_facts(records: Sequence[Record], keyring: Keyring | None = None) -> WorkflowFacts:
    """The facts of one workflow's records (in stored order); events ``keyring`` does not accept
    and malformed messages count for nothing."""
    report = audit(records, keyring)
    events = [r.event for r in records if isinstance(r, StoredEvent) and verdict(r, keyring).trusted]
    f = WorkflowFacts(workflow_id=report.workflow_id)
    f.started_at, f.ended_at = report.started_at, report.ended_at
    f.outcome = report.status if report.status in ("completed", "failed", "cancelled") else "unfinished"
    f.deviations = len(report.deviations)
    f.cost_usd = report.totals.cost_usd
    at = {e.id: e.at for e in events}
    step_task: dict[str, str] = {}
    trouble: set[str] = set()
    completed: set[str] = set()
    for e in events:
        if e.causation_id is not None and e.causation_id in at:
            f.latencies.append((e.actor, (e.at - at[e.causation_id]).total_seconds()))
        match e.data:
            case WorkflowRequested():
                f.dry_run = e.data.dry_run
            case WorkflowFailed():
                f.failure_reason = e.data.reason
            case PlanValidated():
                f.plan_verdicts += 1
            case PlanRejected():
                f.plan_verdicts += 1
                f.plans_rejected += 1
            case TaskReady():
                f.task_costs.setdefault(e.data.task.id, 0.0)
            case StepsProposed():
                f.step_batches += 1
                for s in e.data.steps:
                    step_task[s.id] = e.data.task_id
            case StepsRejected():
                f.step_batches_rejected += 1
            case ProposalMade():
                trouble.add(e.data.step_id)
            case ProposalValidated():
                f.proposal_verdicts += 1
            case ProposalRejected():
                f.proposal_verdicts += 1
                f.proposals_rejected += 1
            case StepCompleted():
                f.steps_completed += 1
                f.steps_on_plan += e.data.tool == e.data.planned_tool
                completed.add(e.data.step_id)
    trouble.update(c.scope.removeprefix("step:") for c in report.tool_calls if not c.ok and c.scope.startswith("step:"))
    f.steps_in_trouble = len(trouble)
    f.steps_recovered = len(trouble & completed)
    revisions = report.plans
    for i, p in enumerate(revisions):
        if p.verdict == "rejected":
            ending = "rejected"
        elif i < len(revisions) - 1:
            ending = "replaced"
        elif f.outcome in ("unfinished", "cancelled"):
            ending = f.outcome
        else:
            ending = "succeeded" if f.outcome == "completed" else "failed"
        f.plans.append(PlanFact(revision=p.revision, source=p.source, ending=ending))
    for a in report.approvals:
        decision = "timed_out" if a.decision == "denied" and a.by == "timeout" else a.decision
        f.approvals.append((decision, a.waited_s))
    for scope, cost in report.totals.cost_by_scope.items():
        kind, _, name = scope.partition(":")
        task = name if kind == "task" else step_task.get(name) if kind == "step" else None
        if task is not None:
            f.task_costs[task] = round(f.task_costs.get(task, 0.0) + cost, 8)
    return f


class Distribution(msgspec.Struct, frozen=True, kw_only=True):
    """How many values, their median, 95th percentile (nearest rank) and largest."""

    n: int
    median: float | None
    p95: float | None
    max: float | None


def distribution(values: Iterable[float], digits: int = 6) -> Distribution:
    """The :class:`Distribution` of ``values`` (module docstring), rounded to ``digits``."""
    v = sorted(float(x) for x in values)
    if not v:
        return Distribution(n=0, median=None, p95=None, max=None)
    rank = math.ceil(0.95 * len(v))
    return Distribution(
        n=len(v),
        median=round(statistics.median(v), digits),
        p95=round(v[rank - 1], digits),
        max=round(v[-1], digits),
    )


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class Stats(msgspec.Struct, kw_only=True):
    """The evaluation figures (module docstring), as ``cadre stats --json`` prints them."""

    since: datetime | None
    workflows: dict[str, Any]
    plans: dict[str, dict[str, Any]]
    replans: dict[str, Any]
    validation: dict[str, Any]
    adherence: dict[str, Any]
    deviations: dict[str, Any]
    recovery: dict[str, Any]
    approvals: dict[str, Any]
    cost_usd: dict[str, Distribution]
    latency_s: dict[str, Distribution]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def stats(facts: Iterable[WorkflowFacts], since: datetime | None = None) -> Stats:
    """The figures over the workflows of ``facts`` started at or after ``since`` (all without it;
    a workflow with no recorded start is left out when ``since`` is given)."""
    fs = [f for f in facts if since is None or (f.started_at is not None and f.started_at >= since)]
    outcomes = Counter(f.outcome for f in fs)
    plans: dict[str, Counter[str]] = {s: Counter() for s in PLAN_SOURCES}
    for f in fs:
        for p in f.plans:
            plans.setdefault(p.source, Counter())[p.ending] += 1
    planned = [f for f in fs if f.plans]
    replanned = [f for f in planned if len(f.plans) > 1]
    approvals = Counter(d for f in fs for d, _ in f.approvals)
    latencies: dict[str, list[float]] = {}
    for f in fs:
        for actor, s in f.latencies:
            latencies.setdefault(actor, []).append(s)
    steps_completed = sum(f.steps_completed for f in fs)
    on_plan = sum(f.steps_on_plan for f in fs)
    trouble, recovered = sum(f.steps_in_trouble for f in fs), sum(f.steps_recovered for f in fs)
    deviations = sum(f.deviations for f in fs)
    return Stats(
        since=since,
        workflows={
            "total": len(fs),
            "completed": outcomes["completed"],
            "failed": outcomes["failed"],
            "cancelled": outcomes["cancelled"],
            "unfinished": outcomes["unfinished"],
            "dry_runs": sum(f.dry_run for f in fs),
            "failure_reasons": dict(sorted(Counter(f.failure_reason for f in fs if f.failure_reason).items())),
            "duration_s": distribution(
                (f.ended_at - f.started_at).total_seconds() for f in fs if f.ended_at and f.started_at
            ),
        },
        plans={source: _plan_figures(c) for source, c in plans.items()},
        replans={
            "replans": sum(len(f.plans) - 1 for f in planned),
            "workflows_replanned": len(replanned),
            "workflows_planned": len(planned),
            "rate": _rate(len(replanned), len(planned)),
        },
        validation={
            "plans": _rejections(sum(f.plan_verdicts for f in fs), sum(f.plans_rejected for f in fs)),
            "steps": _rejections(sum(f.step_batches for f in fs), sum(f.step_batches_rejected for f in fs)),
            "proposals": _rejections(sum(f.proposal_verdicts for f in fs), sum(f.proposals_rejected for f in fs)),
        },
        adherence={"steps_completed": steps_completed, "on_plan": on_plan, "rate": _rate(on_plan, steps_completed)},
        deviations={"total": deviations, "per_workflow": round(deviations / len(fs), 4) if fs else None},
        recovery={"steps_in_trouble": trouble, "recovered": recovered, "rate": _rate(recovered, trouble)},
        approvals={
            "requested": sum(approvals.values()),
            "granted": approvals["granted"],
            "denied": approvals["denied"],
            "timed_out": approvals["timed_out"],
            "pending": approvals["pending"],
            "wait_s": distribution(w for f in fs for _, w in f.approvals if w is not None),
        },
        cost_usd={
            "per_workflow": distribution(f.cost_usd for f in fs),
            "per_task": distribution(c for f in fs for c in f.task_costs.values()),
        },
        latency_s={actor: distribution(v) for actor, v in sorted(latencies.items())},
    )


def _plan_figures(c: Counter[str]) -> dict[str, Any]:
    proposed = sum(c.values())
    out: dict[str, Any] = {"proposed": proposed}
    out.update((k, c[k]) for k in ("succeeded", "failed", "replaced", "rejected", "cancelled", "unfinished"))
    # A plan whose workflow was cancelled (or has not ended) neither succeeded nor failed.
    out["success_rate"] = _rate(c["succeeded"], proposed - c["unfinished"] - c["cancelled"])
    return out


def _rejections(verdicts: int, rejected: int) -> dict[str, Any]:
    return {"verdicts": verdicts, "rejected": rejected, "rate": _rate(rejected, verdicts)}
