"""The audit report of one workflow, from its records alone. Pure: no I/O, no clock.

:func:`audit` reads a workflow's records (stored order, as any event source returns them)
and says what happened, for a person or a program:

* the **timeline**: every event with its time, emitter, type, cause and a one-line summary;
* the **plans**: each revision, where it came from and why, its tasks, and the verdict on it;
* the **consultations** of a model, from the recorded effects (``budget``: the decision and
  what was asked; ``llm``: the call, its tokens and latency; ``settle``: its cost):
  kind, provider, model, tokens, cost, latency, and granted / denied / cached / no model,
  with ``fallback`` when the consultation did not give the handler an answer;
* the **validation verdicts**, with every failed check, its fix, and warnings;
* the **tool calls** (from the ``tool`` effects), with digests of their input and output;
* the **approvals**: asked, decided by whom and when (or still waiting);
* the **totals**: cost per step (or task, or the workflow's planning) and per workflow,
  tokens, duration, retries, dead letters, and the deviations from the plan.

Digests are blake2b-64 hex of the value as canonical JSON (sorted keys); a tool's input
digest is the one its effect key carries (``<tool>:<digest of the inputs>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, assert_never

import msgspec

from cadre.bus import codec
from cadre.bus.effects import (
    BudgetDecided,
    CallSettled,
    Effect,
    Estimated,
    Grounded,
    LibrarySearched,
    ModelCalled,
    ToolCalled,
)
from cadre.bus.events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    BranchTaken,
    CancelRequested,
    ChildCompleted,
    ChildFailed,
    ChildRequested,
    CompensationStarted,
    ConsultationWaiting,
    DeadlineSet,
    EffectsRecorded,
    Envelope,
    Event,
    ForgedEvent,
    HandlerFailed,
    PlanProposed,
    PlanRejected,
    PlanValidated,
    ProposalMade,
    ProposalRejected,
    ProposalValidated,
    Redriven,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsProposed,
    StepsRejected,
    TaskReady,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.bus.plan import Check
from cadre.bus.signing import Keyring
from cadre.store.authenticity import verdict
from cadre.store.objects import reference_of
from cadre.store.records import Malformed, Record, StoredEvent

__all__ = [
    "Approval",
    "AuditReport",
    "CheckNote",
    "ChildNode",
    "Consultation",
    "Deviation",
    "PlanRevision",
    "TimelineEntry",
    "ToolCall",
    "Totals",
    "Verdict",
    "audit",
    "value_digest",
    "with_children",
]

_canonical = msgspec.json.Encoder(order="sorted")


def value_digest(value: Any) -> str:
    """blake2b-64 hex of ``value`` as canonical JSON (sorted keys)."""
    return hashlib.blake2b(_canonical.encode(value), digest_size=8).hexdigest()


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One record: its index among the workflow's records, stream sequence, time, emitter,
    type, id, cause (id and type) and what it says in one line."""

    index: int
    seq: int
    at: datetime | None
    actor: str
    type: str
    event_id: str
    causation_id: str | None
    cause_type: str | None
    summary: str
    trust: str | None = None  # "forged" or "unsigned" when the keyring does not accept it


class CheckNote(msgspec.Struct, frozen=True, kw_only=True):
    """A check that did not pass: its name, severity, where, what, and the suggested fix."""

    name: str
    severity: str
    path: str | None
    message: str
    fix: str | None


class PlanTask(msgspec.Struct, kw_only=True):
    """A task of a plan revision, with its confidence and what the confidence caused
    (``caused``: approvals it asked for and their decisions, a rejection)."""

    id: str
    tool: str | None
    depends_on: tuple[str, ...]
    description: str
    confidence: float = 1.0
    parallelizable: bool = True
    caused: list[str] = msgspec.field(default_factory=list)


class PlanRevision(msgspec.Struct, kw_only=True):
    """A plan revision: where it came from and why, its tasks, and the validator's verdict
    (``validated``, ``rejected`` or ``pending``) with the checks that did not pass."""

    revision: int
    index: int
    at: datetime
    source: str
    reason: str
    library_match: str | None
    score: float | None
    output: str | None
    tasks: tuple[PlanTask, ...]
    verdict: str = "pending"
    failed_checks: tuple[CheckNote, ...] = ()
    confidence: float = 1.0
    caused: list[str] = msgspec.field(default_factory=list)  # what the plan's confidence caused
    flow: str | None = None  # a flow's plan: the flow, the path of its nodes, who chose it (planner.flows)
    path: tuple[str, ...] = ()
    chosen_by: str | None = None


class BranchNote(msgspec.Struct, frozen=True, kw_only=True):
    """Where a flow went on after a task (``branch_taken``): the way taken (None: the branch ended),
    why, and the tasks that left out."""

    index: int
    task_id: str
    to: str | None
    why: str
    skipped: tuple[str, ...] = ()


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """One validation verdict (a plan revision's, or a task's steps'), with the checks that
    failed (``severity`` error) and the warnings."""

    index: int
    at: datetime
    subject: str
    type: str
    passed: bool
    checks: int
    failed: tuple[CheckNote, ...]
    warnings: tuple[CheckNote, ...]


class Consultation(msgspec.Struct, kw_only=True):
    """One consultation of the model (one round: a repair round is a second one).

    ``outcome``: ``granted``, ``denied``, ``cached`` or ``no_provider``; ``fallback``: the
    round gave the handler no answer (a denial, no model, a failed call); ``repaired``: its
    answer was not valid and a repair round (the next one) followed. Tokens, latency and
    cost come from the call and its settlement; ``est_input_tokens`` / ``max_output_tokens``
    / ``reserved_usd`` from what was asked and reserved. ``scope``: the step it was for
    (``step:<id>``), the task (``task:<id>``), or the workflow (``workflow``).
    """

    index: int
    event_id: str
    at: datetime
    actor: str
    kind: str
    scope: str
    round: int
    outcome: str
    reason: str = ""
    message: str = ""
    provider: str | None = None
    model: str | None = None
    est_input_tokens: int | None = None
    max_output_tokens: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    reserved_usd: float = 0.0
    cost_usd: float = 0.0
    latency_ms: float | None = None
    error: str | None = None
    fallback: bool = False
    repaired: bool = False
    attempt: int = 0  # 0, or the number of the fallback provider this round asked


class GroundingNote(msgspec.Struct, frozen=True, kw_only=True):
    """What a prompt (or a task's steps) was grounded in (:class:`~bus.effects.Grounded`):
    the past plans shown as examples, the documents' passages (refs), the tools retrieved
    from a large catalog (None: all were listed)."""

    index: int
    event_id: str
    scope: str
    call: str
    examples: tuple[str, ...]
    documents: tuple[str, ...]
    tools: tuple[str, ...] | None


class StepDocuments(msgspec.Struct, frozen=True, kw_only=True):
    """The documents a proposed step was grounded in (its ``documentation_references``)."""

    index: int
    task_id: str
    step_id: str
    tool: str
    documents: tuple[str, ...]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call: the tool, digests of its input and output, its outcome and duration."""

    index: int
    event_id: str
    at: datetime
    scope: str
    tool: str
    input_digest: str
    output_digest: str | None
    ok: bool
    error_code: str | None
    error_message: str | None
    ms: float
    stored_as: str | None = None  # the object's digest when the output is stored by reference (store.objects)


class Approval(msgspec.Struct, kw_only=True):
    """An approval asked for a step, and its decision (``pending`` while there is none)."""

    step_id: str
    tool: str
    reason: str
    requested_at: datetime
    deadline: datetime
    task_id: str = ""
    decision: str = "pending"
    by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str = ""
    waited_s: float | None = None


class Deviation(msgspec.Struct, frozen=True, kw_only=True):
    """A departure from the plan (a fallback tool, a recovery, a re-plan, a retry)."""

    index: int
    scope: str
    text: str


class ChildNode(msgspec.Struct, kw_only=True):
    """A child workflow one of its tasks started (``child_requested``), as the parent's events say
    (``status``, ``failure``); ``cost_usd`` (its own consultations) and ``tree_cost_usd`` (with its
    children's) once its records were read (:func:`with_children`; None: they were not)."""

    workflow_id: str
    task_id: str
    attempt: int = 1
    index: int = 0  # the child_requested event's
    status: str = "running"
    failure: str | None = None
    cost_usd: float | None = None
    tree_cost_usd: float | None = None
    children: list[ChildNode] = msgspec.field(default_factory=list)


class Totals(msgspec.Struct, kw_only=True):
    """What the workflow cost and how it went, in numbers."""

    events: int = 0
    malformed: int = 0
    untrusted: int = 0  # events the keyring does not accept: shown, counted for nothing else
    duration_s: float | None = None
    cost_usd: float = 0.0
    cost_by_scope: dict[str, float] = msgspec.field(default_factory=dict)
    consultations: int = 0
    model_calls: int = 0
    denied: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    tool_failures: int = 0
    retries: int = 0
    revisions: int = 0
    deviations: int = 0
    dead_letters: int = 0
    steps_proposed: int = 0
    steps_with_documents: int = 0  # steps proposed with documentation_references
    # The workflow's cost with its child workflows' (theirs read: :func:`with_children`); None until then.
    tree_cost_usd: float | None = None


class AuditReport(msgspec.Struct, kw_only=True):
    """Everything :func:`audit` found (module docstring)."""

    workflow_id: str
    status: str
    request: str
    intelligence: str | None
    mode: str | None
    budget_usd: float | None
    started_at: datetime | None
    ended_at: datetime | None
    result: Any = None
    failure: str | None = None
    timeline: list[TimelineEntry] = msgspec.field(default_factory=list)
    plans: list[PlanRevision] = msgspec.field(default_factory=list)
    verdicts: list[Verdict] = msgspec.field(default_factory=list)
    consultations: list[Consultation] = msgspec.field(default_factory=list)
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    approvals: list[Approval] = msgspec.field(default_factory=list)
    deviations: list[Deviation] = msgspec.field(default_factory=list)
    groundings: list[GroundingNote] = msgspec.field(default_factory=list)
    step_documents: list[StepDocuments] = msgspec.field(default_factory=list)
    totals: Totals = msgspec.field(default_factory=Totals)
    branches: list[BranchNote] = msgspec.field(default_factory=list)  # a flow's ways taken, in order
    children: list[ChildNode] = msgspec.field(default_factory=list)  # its child workflows, as started

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


# -- the report -----------------------------------------------------------------------------------


def audit(records: Sequence[Record], keyring: Keyring | None = None) -> AuditReport:
    """The audit report of one workflow's records (in stored order). With ``keyring``, an event it
    does not accept is shown in the timeline, flagged, and counts for nothing else (the actors
    ignored it)."""
    events = [(i, r) for i, r in enumerate(records) if isinstance(r, StoredEvent)]
    wf = events[0][1].event.workflow_id if events else ""
    report = AuditReport(
        workflow_id=wf,
        status="new",
        request="",
        intelligence=None,
        mode=None,
        budget_usd=None,
        started_at=None,
        ended_at=None,
    )
    types = {r.event.id: r.event.type for _, r in events}
    by_id = {r.event.id: r.event for _, r in events}
    plans: dict[int, PlanRevision] = {}
    approvals: dict[str, Approval] = {}
    t = report.totals
    for index, r in enumerate(records):
        if isinstance(r, Malformed):
            t.malformed += 1
            report.timeline.append(_malformed_entry(index, r))
            continue
        e = r.event
        t.events += 1
        checked = verdict(r, keyring)
        report.timeline.append(
            TimelineEntry(
                index=index,
                seq=r.seq,
                at=e.at,
                actor=e.actor,
                type=e.type,
                event_id=e.id,
                causation_id=e.causation_id,
                cause_type=types.get(e.causation_id or ""),
                summary=summary(e.data) if checked.trusted else f"IGNORED, {checked.status}: {checked.reason}",
                trust=None if checked.trusted else checked.status,
            )
        )
        if not checked.trusted:  # shown, and nothing else: the actors ignored it
            t.untrusted += 1
            continue
        scope = _scope(e, by_id)
        effects = e.data.effects if isinstance(e.data, EffectsRecorded) else e.effects
        _effects(report, index, e, scope, effects, _stored_effects(r))
        _event(report, index, e, scope, plans, approvals)
    report.plans = [plans[k] for k in sorted(plans)]
    report.approvals = list(approvals.values())
    _confidence_effects(report)
    t.revisions = len(plans)
    t.deviations = len(report.deviations)
    t.consultations = len(report.consultations)
    t.model_calls = sum(c.outcome == "granted" for c in report.consultations)
    t.denied = sum(c.outcome == "denied" for c in report.consultations)
    t.cached = sum(c.outcome == "cached" for c in report.consultations)
    t.input_tokens = sum(c.input_tokens for c in report.consultations)
    t.output_tokens = sum(c.output_tokens for c in report.consultations)
    t.cost_usd = round(sum(c.cost_usd for c in report.consultations), 8)
    for c in report.consultations:
        t.cost_by_scope[c.scope] = round(t.cost_by_scope.get(c.scope, 0.0) + c.cost_usd, 8)
    t.tool_calls = len(report.tool_calls)
    t.tool_failures = sum(not c.ok for c in report.tool_calls)
    first_at = next((r.event.at for _, r in events), None)
    last_at = report.ended_at or (events[-1][1].event.at if events else None)
    report.started_at = report.started_at or first_at
    if report.started_at is not None and last_at is not None:
        t.duration_s = round((last_at - report.started_at).total_seconds(), 6)
    return report


def _event(
    report: AuditReport,
    index: int,
    e: Envelope,
    scope: str,
    plans: dict[int, PlanRevision],
    approvals: dict[str, Approval],
) -> None:
    data = e.data
    t = report.totals
    match data:
        case WorkflowRequested():
            report.status = "requested"
            report.request = data.request or "(an explicit plan)"
            report.intelligence, report.mode, report.budget_usd = data.intelligence, data.mode, data.budget_usd
            report.started_at = e.at
        case PlanProposed():
            report.status = "planned"
            plans[data.revision] = PlanRevision(
                revision=data.revision,
                index=index,
                at=e.at,
                source=data.source,
                reason=data.reason,
                library_match=data.library_match,
                score=data.score,
                output=data.plan.output,
                tasks=tuple(
                    PlanTask(
                        id=t.id,
                        tool=t.tool,
                        depends_on=tuple(t.depends_on),
                        description=t.description,
                        confidence=t.confidence,
                        parallelizable=t.parallelizable,
                    )
                    for t in data.plan.nodes
                ),
                confidence=data.plan.confidence,
                flow=data.flow,
                path=data.path,
                chosen_by=data.chosen_by,
            )
            if data.revision > 1:
                report.deviations.append(Deviation(index=index, scope="workflow", text=f"re-planned: {data.reason}"))
        case PlanValidated() | PlanRejected():
            passed = isinstance(data, PlanValidated)
            report.status = "running" if passed else report.status
            report.verdicts.append(_verdict(index, e, f"plan revision {data.revision}", passed, data.checks))
            plan = plans.get(data.revision)
            if plan is not None:
                plan.verdict = "validated" if passed else "rejected"
                plan.failed_checks = tuple(_note(c) for c in data.checks if not c.passed)
        case StepReady():
            if data.resolved_inputs is not None:  # the validator's clearance of one step, resolved
                what = f"step {data.step.id} on its resolved inputs"
                report.verdicts.append(_verdict(index, e, what, True, data.checks))
            elif data.checks:  # the validator's clearance of a task's steps (the planner's later ones carry none)
                report.verdicts.append(_verdict(index, e, f"steps of task {data.step.task_id}", True, data.checks))
        case StepsRejected():
            what = f"steps of task {data.task_id}"
            if data.step_id is not None:
                what = f"step {data.step_id} on its resolved inputs"
            report.verdicts.append(_verdict(index, e, what, False, data.checks))
        case CompensationStarted():
            text = f"the workflow failed and compensates: undoes {', '.join(data.steps)} (last first)"
            if data.not_undone:
                text += f"; cannot undo {', '.join(data.not_undone)} (no compensating tool)"
            report.deviations.append(Deviation(index=index, scope="workflow", text=text))
        case StepCompensated():
            if data.error is None:
                text = f"undone by {data.tool}: {data.output}"
            else:
                text = f"not undone: {data.error.code}: {data.error.message}"
            report.deviations.append(Deviation(index=index, scope=scope, text=text))
        case ConsultationWaiting():
            text = f"{data.call} waited {data.retry_after_s:g} s for the provider's rate limit, then asked again"
            report.deviations.append(Deviation(index=index, scope=scope, text=text))
        case ProposalMade():
            text = f"the model proposed {data.action} with {data.tool} ({data.source}): {data.reason}"
            report.deviations.append(Deviation(index=index, scope=scope, text=text))
        case ProposalValidated() | ProposalRejected():
            passed = isinstance(data, ProposalValidated)
            subject = f"the model's proposal for step {data.step_id}"
            report.verdicts.append(_verdict(index, e, subject, passed, data.checks))
        case TaskReady():
            if data.attempt > 1:
                t.retries += 1
                report.deviations.append(
                    Deviation(index=index, scope=f"task:{data.task.id}", text=f"retried (attempt {data.attempt})")
                )
        case StepCompleted():
            for text in data.deviations:
                report.deviations.append(Deviation(index=index, scope=scope, text=text))
        case StepFailed():
            if len(data.tried) > 1:
                report.deviations.append(
                    Deviation(index=index, scope=scope, text=f"tried {', '.join(data.tried)}; all failed")
                )
        case ApprovalRequested():
            approvals[data.step.id] = Approval(
                step_id=data.step.id,
                tool=data.step.tool,
                reason=data.reason,
                requested_at=e.at,
                deadline=data.deadline,
                task_id=data.step.task_id,
            )
        case ApprovalGranted() | ApprovalDenied():
            a = approvals.get(data.step_id)
            if a is not None:
                a.decision = "granted" if isinstance(data, ApprovalGranted) else "denied"
                a.by, a.decided_at, a.decision_reason = data.by, e.at, data.reason
                a.waited_s = round((e.at - a.requested_at).total_seconds(), 3)
        case WorkflowCompleted():
            report.status, report.result, report.ended_at = "completed", data.result, e.at
        case WorkflowFailed():
            report.status, report.ended_at = "failed", e.at
            report.failure = f"{data.reason}: {data.message}"
        case BranchTaken():
            report.branches.append(
                BranchNote(index=index, task_id=data.task_id, to=data.to, why=data.why, skipped=data.skipped)
            )
        case Redriven():  # the workflow goes on after the failure it had for the dead letter
            if report.status == "failed":
                report.status, report.ended_at, report.failure = "running", None, None
        case ChildRequested():
            report.children.append(
                ChildNode(workflow_id=data.child_id, task_id=data.task_id, attempt=data.attempt, index=index)
            )
        case ChildCompleted() | ChildFailed():
            for child in report.children:
                if child.workflow_id == data.child_id and child.status == "running":
                    child.status = data.status if isinstance(data, ChildFailed) else "completed"
                    child.failure = (
                        f"{data.error.code}: {data.error.message}" if isinstance(data, ChildFailed) else None
                    )
        case WorkflowCancelled():
            report.status, report.ended_at = "cancelled", e.at
            undone = f"; undid {', '.join(data.compensated)}" if data.compensated else ""
            report.failure = f"cancelled by {data.by}" + (f": {data.reason}" if data.reason else "") + undone
        case HandlerFailed():
            t.dead_letters += 1
        case StepsProposed():
            for step in data.steps:
                t.steps_proposed += 1
                if step.documentation_references:
                    t.steps_with_documents += 1
                    report.step_documents.append(
                        StepDocuments(
                            index=index,
                            task_id=data.task_id,
                            step_id=step.id,
                            tool=step.tool,
                            documents=step.documentation_references,
                        )
                    )
        case EffectsRecorded() | ForgedEvent():
            pass


def _confidence_effects(report: AuditReport) -> None:
    """Note on each plan and task what its confidence caused: a rejection by a failed
    ``confidence`` check, an approval asked for because of it (``planner.confidence``)."""
    for p in report.plans:
        for c in p.failed_checks:
            if c.name != "confidence":
                continue
            if c.path == "confidence":
                p.caused.append(f"plan rejected: {c.message}")
            elif c.path and c.path.startswith("nodes[") and c.path.endswith("].confidence"):
                i = int(c.path[len("nodes[") : -len("].confidence")])
                if i < len(p.tasks):
                    p.tasks[i].caused.append(f"plan rejected: {c.message}")
    for a in report.approvals:
        if "approve_below" not in a.reason:
            continue
        decided = f"{a.decision} by {a.by}" if a.by else a.decision
        text = f"approval asked for step {a.step_id} ({decided})"
        plan = next((p for p in reversed(report.plans) if any(t.id == a.task_id for t in p.tasks)), None)
        if plan is None:
            continue
        if "the plan has confidence" in a.reason:
            plan.caused.append(text)
        else:
            next(t for t in plan.tasks if t.id == a.task_id).caused.append(text)


def _verdict(index: int, e: Envelope, subject: str, passed: bool, checks: Iterable[Check]) -> Verdict:
    checks = tuple(checks)
    failed = tuple(_note(c) for c in checks if not c.passed and c.severity == "error")
    warnings = tuple(_note(c) for c in checks if not c.passed and c.severity != "error")
    return Verdict(
        index=index,
        at=e.at,
        subject=subject,
        type=e.type,
        passed=passed,
        checks=len(checks),
        failed=failed,
        warnings=warnings,
    )


def _note(c: Check) -> CheckNote:
    return CheckNote(name=c.name, severity=c.severity, path=c.path, message=c.message, fix=c.fix)


def _stored_effects(r: StoredEvent) -> Sequence[Effect] | None:
    """The effects as stored, when an output among them is stored by reference (else None)."""
    if b'"cadre_object"' not in r.data:
        return None
    stored = codec.decode(r.data)
    return stored.data.effects if isinstance(stored.data, EffectsRecorded) else stored.effects


def _effects(
    report: AuditReport,
    index: int,
    e: Envelope,
    scope: str,
    effects: Sequence[Effect],
    stored: Sequence[Effect] | None = None,
) -> None:
    """The consultations and tool calls of one invocation's effects, in order (``stored``: the same
    effects as stored, where an output may be a reference)."""
    current: dict[str, Consultation] = {}  # the open consultation round of each kind
    rounds: dict[str, int] = {}
    for i, effect in enumerate(effects):
        match effect:
            case ToolCalled():
                as_stored = stored[i] if stored is not None and i < len(stored) else None
                output = effect.refused if effect.error is not None else effect.output
                report.tool_calls.append(
                    ToolCall(
                        index=index,
                        event_id=e.id,
                        at=e.at,
                        scope=scope,
                        tool=effect.tool,
                        input_digest=effect.inputs,
                        output_digest=value_digest(output) if output is not None else None,
                        ok=effect.error is None,
                        error_code=effect.error.code if effect.error is not None else None,
                        error_message=effect.error.message if effect.error is not None else None,
                        ms=effect.ms,
                        stored_as=reference_of(as_stored.output) if isinstance(as_stored, ToolCalled) else None,
                    )
                )
            case BudgetDecided():
                kind, decision, asked = effect.call, effect.decision, effect.asked
                if kind in current and not effect.cache_key:  # a repair round: the previous answer was invalid
                    current[kind].repaired = True
                attempt = asked.attempt if asked is not None else 0
                if attempt and effect.cache_key:  # the first round of the next provider of a fallback list
                    rounds[kind] = 0
                rounds[kind] = rounds.get(kind, 0) + 1
                c = Consultation(
                    index=index,
                    event_id=e.id,
                    at=e.at,
                    actor=e.actor,
                    kind=kind,
                    scope=scope,
                    round=rounds[kind],
                    outcome=decision.outcome,
                    reason=decision.reason,
                    message=decision.message,
                    provider=asked.provider if asked is not None else None,
                    model=asked.model if asked is not None else None,
                    est_input_tokens=asked.est_input_tokens if asked is not None else None,
                    max_output_tokens=asked.max_output_tokens if asked is not None else None,
                    reserved_usd=decision.reserved_usd,
                    latency_ms=effect.ms if decision.outcome != "granted" else None,
                    fallback=decision.outcome == "denied",
                    attempt=attempt,
                )
                report.consultations.append(c)
                current[kind] = c
            case ModelCalled():
                kind = effect.call
                c_or_none = current.get(kind)
                if effect.outcome == "no_provider":  # no model in the process: a consultation that asked nobody
                    rounds[kind] = rounds.get(kind, 0) + 1
                    report.consultations.append(
                        Consultation(
                            index=index,
                            event_id=e.id,
                            at=e.at,
                            actor=e.actor,
                            kind=kind,
                            scope=scope,
                            round=rounds[kind],
                            outcome="no_provider",
                            reason="no_provider",
                            message="no LLM provider is configured in this process",
                            fallback=True,
                        )
                    )
                elif c_or_none is not None:
                    _call(c_or_none, effect)
            case CallSettled():
                c_or_none = current.get(effect.call)
                if c_or_none is not None:
                    c_or_none.cost_usd = round(c_or_none.cost_usd + effect.cost_usd, 8)
            case Grounded():
                report.groundings.append(
                    GroundingNote(
                        index=index,
                        event_id=e.id,
                        scope=scope,
                        call=effect.call,
                        examples=tuple(x.name for x in effect.examples),
                        documents=effect.references,
                        tools=effect.tools,
                    )
                )
            case LibrarySearched() | Estimated():
                pass
            case _:
                assert_never(effect)


def _call(c: Consultation, effect: ModelCalled) -> None:
    """Fold a model call (or a cached answer) into its consultation."""
    if effect.outcome == "cached":
        return
    response = effect.response
    usage = response.usage if response is not None else effect.usage
    if usage is not None:
        c.input_tokens += usage.input_tokens + usage.cache_read_tokens
        c.output_tokens += usage.output_tokens
    c.latency_ms = (response.latency_ms or effect.ms) if response is not None else effect.ms
    if response is not None:
        c.model = response.model or c.model
        c.provider = response.provider or c.provider
    if effect.error is not None:
        c.error = effect.error.code
        c.fallback = True


def _scope(e: Envelope, by_id: dict[str, Envelope]) -> str:
    """What an event's costs count against: a step, a task, or the workflow."""
    data: Event = e.data
    if isinstance(data, EffectsRecorded):
        cause = by_id.get(data.input_id)
        if cause is None:
            return "workflow"
        data = cause.data
    match data:
        case (
            StepCompleted()
            | StepFailed()
            | ApprovalGranted()
            | ApprovalDenied()
            | ProposalMade()
            | ProposalValidated()
            | ProposalRejected()
            | StepCompensated()
        ):
            return f"step:{data.step_id}"
        case ConsultationWaiting():  # the agent's (a step), the decomposer's (a task) or the planner's
            return f"step:{data.step_id}" if data.step_id else f"task:{data.task_id}" if data.task_id else "workflow"
        case StepReady() | ApprovalRequested():
            return f"step:{data.step.id}"
        case StepsProposed() | StepsRejected():
            return f"task:{data.task_id}"
        case TaskReady():
            return f"task:{data.task.id}"
    return "workflow"


def summary(data: Event) -> str:
    """One line saying what an event says."""
    match data:
        case WorkflowRequested():
            extra = [f"{k} {v}" for k, v in (("level", data.intelligence), ("mode", data.mode)) if v is not None]
            if data.budget_usd is not None:
                extra.append(f"budget ${data.budget_usd:g}")
            text = data.request or "(an explicit plan)"
            return text + (f" ({', '.join(extra)})" if extra else "")
        case PlanProposed():
            tasks = ", ".join(t.id for t in data.plan.nodes)
            return f"revision {data.revision} from {data.source}: {tasks}"
        case PlanValidated():
            return f"revision {data.revision} validated ({len(data.checks)} checks)"
        case PlanRejected():
            return f"revision {data.revision} rejected: {_failed(data.checks)}"
        case TaskReady():
            return f"task {data.task.id} (attempt {data.attempt})"
        case StepsProposed():
            return f"task {data.task_id}: " + ", ".join(f"{s.id} ({s.tool})" for s in data.steps)
        case StepsRejected():
            step = f" step {data.step_id} on its resolved inputs" if data.step_id is not None else ""
            return f"task {data.task_id}{step}: {_failed(data.checks)}"
        case StepReady():
            checked = ", resolved inputs checked" if data.resolved_inputs is not None else ""
            return f"{data.step.id} ({data.step.tool}{checked})"
        case StepCompleted() if data.simulated:
            gate = ", would need approval" if data.would_need_approval else ""
            return f"{data.step_id} SIMULATED with {data.tool} (dry run: not run{gate})"
        case StepCompleted():
            used = data.tool if data.tool == data.planned_tool else f"{data.tool} instead of {data.planned_tool}"
            return f"{data.step_id} with {used}" + (
                f" ({len(data.deviations)} deviation(s))" if data.deviations else ""
            )
        case StepFailed():
            return f"{data.step_id}: {data.error.code}: {data.error.message}"
        case ApprovalRequested():
            return f"{data.step.id}: {data.reason}, until {data.deadline:%Y-%m-%d %H:%M:%S}"
        case ApprovalGranted() | ApprovalDenied():
            return f"{data.step_id} by {data.by}" + (f": {data.reason}" if data.reason else "")
        case WorkflowCompleted() if isinstance(data.result, dict) and data.result.get("dry_run") is True:
            return "completed (a dry run: nothing was executed)"
        case WorkflowCompleted():
            return "completed"
        case WorkflowFailed():
            return f"{data.reason}: {data.message}"
        case EffectsRecorded():
            return f"{len(data.effects)} effect(s) of an input answered with nothing"
        case HandlerFailed():
            return f"gave up on {data.input_type} (seq {data.input_seq}) after {data.attempts}: {data.error.code}"
        case ForgedEvent():
            return f"refused {data.input_type} (seq {data.input_seq}) as {data.status}: {data.reason}"
        case CompensationStarted():
            cannot = f"; cannot undo {', '.join(data.not_undone)}" if data.not_undone else ""
            return f"undoing {', '.join(data.steps)} (last first){cannot}: {data.reason}"
        case StepCompensated():
            if data.error is not None:
                return f"{data.step_id} NOT undone: {data.error.code}: {data.error.message}"
            return f"{data.step_id} undone by {data.tool}"
        case ConsultationWaiting():
            until = f"{data.until:%H:%M:%S}"
            who = data.step_id or data.task_id or "workflow"
            return f"{who}: {data.call} rate-limited; waits {data.retry_after_s:g} s, until {until}"
        case ProposalMade():
            return f"{data.step_id}: {data.action} with {data.tool} ({data.source}): {data.reason}"
        case ProposalValidated():
            wait = f", waits for approval: {'; '.join(data.approval)}" if data.approval else ""
            return f"{data.step_id}: proposal cleared ({len(data.checks)} checks){wait}"
        case ProposalRejected():
            return f"{data.step_id}: proposal refused: {_failed(data.checks)}"
        case BranchTaken():
            skipped = f"; skipped {', '.join(data.skipped)}" if data.skipped else ""
            return f"after {data.task_id}: {data.to or 'the branch ends'} ({data.why}){skipped}"
        case Redriven():
            return f"{data.input_type} (seq {data.input_seq}) re-delivered to the {data.actor} by {data.by}" + (
                f": {data.reason}" if data.reason else ""
            )
        case DeadlineSet():
            return f"cancelled at {data.until:%Y-%m-%d %H:%M:%S} unless it ends before"
        case CancelRequested():
            return f"cancel asked by {data.by}" + (f": {data.reason}" if data.reason else "")
        case WorkflowCancelled():
            undone = f"; undid {', '.join(data.compensated)}" if data.compensated else ""
            return f"cancelled by {data.by}" + (f": {data.reason}" if data.reason else "") + undone
        case ChildRequested():
            what = "an explicit plan" if data.request.plan is not None else repr(data.request.request)
            return f"task {data.task_id} starts child {data.child_id} ({what})"
        case ChildCompleted():
            return f"child {data.child_id} completed: task {data.task_id} done"
        case ChildFailed():
            return f"child {data.child_id} {data.status}: {data.error.code}: {data.error.message}"
    return ""


def with_children(report: AuditReport, reports: Mapping[str, AuditReport]) -> AuditReport:
    """``report`` with its children's own reports (``reports``, by workflow id; theirs nest) filled
    in: each child's status as its own log says, its cost and its tree's, and the whole tree's cost in
    ``totals.tree_cost_usd``. A child whose report is missing keeps what the parent's events say."""
    tree = report.totals.cost_usd
    for child in report.children:
        mine = reports.get(child.workflow_id)
        if mine is None:
            continue
        with_children(mine, reports)
        child.status, child.failure = mine.status, mine.failure
        child.cost_usd = mine.totals.cost_usd
        child.tree_cost_usd = mine.totals.tree_cost_usd
        child.children = mine.children
        tree += child.tree_cost_usd or 0.0
    report.totals.tree_cost_usd = round(tree, 8)
    return report


def _failed(checks: Iterable[Check]) -> str:
    bad = [c.message for c in checks if not c.passed and c.severity == "error"]
    return "; ".join(bad) or "no failed check reported"


def _malformed_entry(index: int, r: Malformed) -> TimelineEntry:
    return TimelineEntry(
        index=index,
        seq=r.seq,
        at=None,
        actor="?",
        type="malformed",
        event_id="",
        causation_id=None,
        cause_type=None,
        summary=r.reason,
    )
