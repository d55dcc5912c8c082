"""One line per event that matters to a person watching a run (``cadre run``, ``submit --wait``).

The lines hold recorded text as it is; the printer shows each through
:func:`cadre.safe_text.visible`, so a line break or an escape sequence inside a field is
shown, not obeyed.
"""

from __future__ import annotations

import json
from typing import Any

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


def _short(value: Any, width: int = 90) -> str:
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def _usd(value: Any) -> str:
    return f"${value:.4f}" if isinstance(value, int | float) else "unknown"


def dry_run_lines(result: dict[str, Any]) -> list[str]:
    """A dry run's result for people: the plan, each step with its tool and inputs, the
    approvals a real run would wait for, and the cost and duration estimates."""
    plan = result.get("plan") or {}
    steps = result.get("steps") or []
    lines = [
        "DRY RUN   nothing was executed: no tool ran, no model was consulted for execution",
        f"plan      {len(plan.get('tasks') or [])} task(s) ({plan.get('source') or 'unknown'}): "
        + " -> ".join(str(t) for t in plan.get("tasks") or []),
        f"steps     {len(steps)}:",
    ]
    for s in steps:
        gate = "  [would need approval]" if s.get("would_need_approval") else ""
        lines.append(f"            - {s.get('step')}: {s.get('tool')} {_short(s.get('inputs'), 80)}{gate}")
    approvals = result.get("would_need_approval") or []
    lines.append(f"approvals {', '.join(approvals) if approvals else 'none'} would need approval")
    cost = result.get("cost") or {}
    expected = cost.get("expected_usd")
    cap = cost.get("cap_usd")
    capped = f" (the workflow's cap, {_usd(cap)}, bounds it)" if isinstance(cap, int | float) else ""
    lines.append(
        f"cost      worst case {_usd(cost.get('worst_case_usd'))} of execution-time consultations{capped}; expected "
        + (f"{_usd(expected)} ({cost.get('expected_from')})" if expected is not None else "unknown (no past runs)")
    )
    for call, why in (cost.get("not_possible") or {}).items():
        lines.append(f"            {call}: not possible ({why})")
    duration = result.get("duration") or {}
    ms = duration.get("expected_ms")
    lines.append(
        f"duration  expected {ms / 1000:.3f}s ({duration.get('expected_from')})"
        if isinstance(ms, int | float)
        else "duration  unknown: no past runs of " + ", ".join(duration.get("tools_without_past_runs") or ["its tools"])
    )
    return lines


def describe(e: Envelope) -> list[str]:
    """Lines for people (one, or a plan's several); none for events that are bookkeeping."""
    line = _line(e)
    if line is None:
        return []
    return line if isinstance(line, list) else [line]


def _line(e: Envelope) -> str | list[str] | None:
    d = e.data
    wf = e.workflow_id
    match d:
        case WorkflowRequested():
            return f"request   {d.request or '(explicit plan)'}"
        case PlanProposed():
            lines = [f"plan      {len(d.plan.nodes)} task(s), {d.source}" + (f": {d.reason}" if d.reason else "")]
            for t in d.plan.nodes:
                after = f"  after {', '.join(t.depends_on)}" if t.depends_on else ""
                lines.append(f"            - {t.id}: {t.tool}{after}  {t.description}".rstrip())
            return lines
        case PlanValidated():
            return f"validated {sum(c.passed for c in d.checks)}/{len(d.checks)} checks passed"
        case PlanRejected():
            bad = [f"{c.path or c.name}: {c.message}" for c in d.checks if not c.passed and c.severity == "error"]
            return "rejected  " + "; ".join(bad)
        case TaskReady():
            return f"task      {d.task.id} ready" + (f" (attempt {d.attempt})" if d.attempt > 1 else "")
        case StepReady():
            return f"step      {d.step.id} -> {d.step.tool}"
        case StepCompleted() if d.simulated:
            gate = "  (would need approval)" if d.would_need_approval else ""
            return f"simulated {d.step_id} with {d.tool}: not run{gate}"
        case StepCompleted():
            dev = f"  [{'; '.join(d.deviations)}]" if d.deviations else ""
            return f"done      {d.step_id} with {d.tool}: {_short(d.output, 70)}{dev}"
        case StepFailed():
            return f"failed    {d.step_id} ({d.tool}): {d.error.code}: {d.error.message}"
        case ApprovalRequested():
            return (
                f"approval  {d.step.id} needs approval ({d.reason}); run: cadre approve {wf} {d.step.id} "
                f"[--deny] (denied at {d.deadline:%H:%M:%S} if no answer)"
            )
        case ApprovalGranted():
            return f"approved  {d.step_id} by {d.by}"
        case ApprovalDenied():
            return f"denied    {d.step_id} by {d.by}" + (f": {d.reason}" if d.reason else "")
        case StepsRejected():
            bad = [c.message for c in d.checks if not c.passed and c.severity == "error"]
            what = f"step {d.step_id} (resolved inputs)" if d.step_id is not None else f"steps of {d.task_id}"
            return f"rejected  {what}: " + "; ".join(bad)
        case WorkflowCompleted() if isinstance(d.result, dict) and d.result.get("dry_run") is True:
            return dry_run_lines(d.result)
        case WorkflowCompleted():
            return f"completed result: {_short(d.result, 200)}"
        case WorkflowFailed():
            return f"FAILED    {d.reason}: {d.message}"
        case HandlerFailed():
            return f"dead      {e.actor} gave up on {d.input_type} after {d.attempts} attempts: {d.error.message}"
        case ForgedEvent():
            return f"FORGED    {e.actor} refused {d.input_type} (seq {d.input_seq}): {d.reason}"
        case CompensationStarted():
            return f"undoing  {', '.join(d.steps)} (last first), as the request asks; the workflow failed: {d.message}"
        case StepCompensated():
            if d.error is not None:
                return f"not undone {d.step_id}: {d.error.code}: {d.error.message}"
            return f"undone    {d.step_id} with {d.tool}: {_short(d.output, 70)}"
        case ConsultationWaiting():
            who = d.step_id or d.task_id or "the plan"
            return f"waiting   {who}: {d.call} rate-limited; asks again in {d.retry_after_s:g} s"
        case ProposalMade():
            return f"proposal  {d.step_id}: the model proposes {d.action} with {d.tool} ({d.source}): {d.reason}"
        case ProposalValidated():
            wait = f"; waits for approval ({'; '.join(d.approval)})" if d.approval else ""
            return f"cleared   the model's proposal for {d.step_id}{wait}"
        case ProposalRejected():
            bad = [c.message for c in d.checks if not c.passed and c.severity == "error"]
            return f"refused   the model's proposal for {d.step_id}: " + "; ".join(bad)
        case DeadlineSet():
            return f"deadline  cancelled at {d.until:%Y-%m-%d %H:%M:%S} UTC unless it ends before"
        case CancelRequested():
            return f"cancel    asked by {d.by}" + (f": {d.reason}" if d.reason else "")
        case WorkflowCancelled():
            undone = f"; undid {', '.join(d.compensated)}" if d.compensated else ""
            return f"CANCELLED by {d.by}" + (f": {d.reason}" if d.reason else "") + undone
        case Redriven():
            return f"redriven {d.input_type} (seq {d.input_seq}) to the {d.actor} again, by {d.by}" + (
                f": {d.reason}" if d.reason else ""
            )
        case BranchTaken():
            skipped = f"; skipped {', '.join(d.skipped)}" if d.skipped else ""
            return f"branch    {d.task_id} -> {d.to or '(ends)'}: {d.why}{skipped}"
        case ChildRequested():
            what = "a plan" if d.request.plan is not None else repr(d.request.request)
            return f"child     {d.task_id} starts workflow {d.child_id}: {what}"
        case ChildCompleted():
            return f"child     {d.child_id} completed; {d.task_id} done: {_short(d.output.get('result'), 70)}"
        case ChildFailed():
            return f"child     {d.child_id} {d.status}: {d.error.code}: {d.error.message}"
        case StepsProposed() | EffectsRecorded():
            return None
