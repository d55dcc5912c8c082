"""The planner's progress rules: pure functions from a workflow's state and an event to the
events that move the workflow on. No I/O, no clock: tests and replays call them directly.

The planner owns progress: it dispatches every task whose dependencies are done (parallel
branches go out together), hands each task's next step to the agents in a workflow recorded
without the ``resolved_steps`` marker (with it, the validator clears each step on its resolved
inputs: :mod:`actors.validator`), completes
the workflow with the output task's output, retries a failed task when its plan allows,
and otherwise fails the workflow with a reason.
"""

from __future__ import annotations

from typing import Any

from cadre.actors.dry_run import dry_run_result
from cadre.bus.effects import Grounded, LibraryHit
from cadre.bus.events import (
    Event,
    HandlerFailed,
    PlanRejected,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsRejected,
    TaskReady,
    WorkflowCompleted,
    WorkflowFailed,
)
from cadre.bus.plan import Check, ErrorInfo
from cadre.planner.flows.branching import decide, effective_status
from cadre.planner.scheduler import COMPLETED, SKIPPED, dispatchable, is_finished, topo_order
from cadre.store.state import WorkflowState

# Failures a retry cannot fix: the same step would be refused again.
NOT_RETRYABLE = frozenset(
    {
        "approval_denied",
        "prohibited",
        "unknown_tool",
        "invalid_input",
        "outside_workspace",
        "output_too_large",
        "inputs_unchecked",
    }
)


def task_status(state: WorkflowState) -> dict[str, str]:
    """The tasks' statuses as the scheduler sees them: a flow's task that completed without its way
    on chosen yet is not done (:func:`planner.flows.branching.effective_status`)."""
    assert state.plan is not None
    decided = {tid: t.branch for tid, t in state.tasks.items() if t.branched}
    return effective_status(state.plan, state.task_status(), decided)


def dispatch_ready(state: WorkflowState, status: dict[str, str] | None = None) -> list[Event]:
    """A ``task_ready`` for every pending task whose dependencies are done, except those
    ``parallelizable: false`` holds back (:func:`planner.scheduler.dispatchable`): they go out
    when a later completion finds nothing else running. ``status``: the statuses to go by (default:
    :func:`task_status`)."""
    assert state.plan is not None
    status = status if status is not None else task_status(state)
    return [TaskReady(task=state.tasks[t].task, attempt=1) for t in dispatchable(state.plan, status)]


def result_of(state: WorkflowState, outputs: dict[str, dict[str, Any] | None]) -> Any:
    """The workflow's result: the plan's ``output`` task's output, else the last task's in DAG order
    (a dry run's: what a real run would do, with that output's placeholder). A flow's branches may
    leave that task out: then the last task's in DAG order that has an output."""
    assert state.plan is not None
    task_id = state.plan.output or topo_order(state.plan)[-1]
    if outputs.get(task_id) is None and any(t.branches for t in state.plan.nodes):
        done = [t for t in topo_order(state.plan) if outputs.get(t) is not None]
        task_id = done[-1] if done else task_id
    if state.request is not None and state.request.dry_run:
        return dry_run_result(state, outputs.get(task_id))
    return outputs.get(task_id)


def on_step_completed(state: WorkflowState, ev: StepCompleted) -> list[Event]:
    """The task's next step, or the tasks this completion made ready, or the workflow's end.

    ``state`` already includes ``ev`` (and maybe later events): the fold marks a task
    completed with its last step, so tasks dispatched since are no longer pending and are
    not dispatched twice.
    """
    task = state.tasks.get(ev.task_id)
    if state.done or state.plan is None or task is None or ev.step_id not in task.step_ids:
        return []  # finished, or a step of an earlier attempt
    if task.status != "completed":
        if state.resolved_steps:
            return []  # the validator clears the next step, on its resolved inputs
        i = task.step_ids.index(ev.step_id)
        if i + 1 < len(task.step_ids):
            nxt = state.steps[task.step_ids[i + 1]]
            return [StepReady(step=nxt.step)] if nxt.status == "proposed" else []
        return []
    return after_task(state, ev.task_id)


def after_task(state: WorkflowState, task_id: str) -> list[Event]:
    """After task ``task_id`` completed (its last step, or its child workflow): its way on, when it
    has ways (a flow's task, ``branch_taken``), then the tasks it made ready, or the workflow's end."""
    task = state.tasks[task_id]
    assert state.plan is not None
    status = task_status(state)
    out: list[Event] = []
    if task.task.branches and not task.branched:  # a flow's task: choose the way on first
        decided = {tid: t.branch for tid, t in state.tasks.items() if t.branched}
        status[task_id] = COMPLETED
        taken = decide(state.plan, task_id, task.output, status, decided)
        out.append(taken)
        status.update(dict.fromkeys(taken.skipped, SKIPPED))
    if is_finished(state.plan, status):
        outputs = {tid: t.output for tid, t in state.tasks.items()}
        return [*out, WorkflowCompleted(result=result_of(state, outputs))]
    return [*out, *dispatch_ready(state, status)]


def on_step_failed(state: WorkflowState, ev: StepFailed) -> list[Event]:
    task = state.tasks.get(ev.task_id)
    if state.done or task is None or task.status in ("completed", "failed") or ev.step_id not in task.step_ids:
        return []
    if ev.error.code not in NOT_RETRYABLE and task.attempt <= task.task.retries:
        return [TaskReady(task=task.task, attempt=task.attempt + 1)]
    return fail_task(ev.task_id, ev.error, task.attempt)


def fail_task(task_id: str, error: ErrorInfo, attempts: int) -> list[Event]:
    return [
        WorkflowFailed(
            reason="task_failed",
            message=f"task {task_id!r} failed after {attempts} attempt(s): {error.code}: {error.message}",
            task_id=task_id,
        ),
    ]


def explain(checks: tuple[Check, ...]) -> str:
    """The failed checks as one message: where, what, and the suggested fix."""
    parts = []
    for c in checks:
        if c.passed or c.severity != "error":
            continue
        where = f"{c.path}: " if c.path else ""
        fix = f" (fix: {c.fix})" if c.fix else ""
        parts.append(f"{where}{c.message}{fix}")
    return "; ".join(parts) or "no failed check was reported"


def on_plan_rejected(state: WorkflowState, ev: PlanRejected) -> list[Event]:
    if state.done or ev.revision != state.revision:
        return []
    return [WorkflowFailed(reason="plan_rejected", message=f"the plan was rejected: {explain(ev.checks)}")]


def on_steps_rejected(state: WorkflowState, ev: StepsRejected) -> list[Event]:
    task = state.tasks.get(ev.task_id)
    if state.done or task is None or task.status in ("completed", "failed"):
        return []
    error = ErrorInfo(code="steps_rejected", message=explain(ev.checks))
    return fail_task(ev.task_id, error, task.attempt)


def on_handler_failed(state: WorkflowState, ev: HandlerFailed, actor: str) -> list[Event]:
    if state.done:
        return []
    return [
        WorkflowFailed(
            reason="handler_failed",
            message=f"{actor} gave up on {ev.input_type} (stream sequence {ev.input_seq}) after {ev.attempts} "
            f"attempt(s): {ev.error.code}{f' ({ev.exception})' if ev.exception else ''}: {ev.error.message}",
        )
    ]


def grounded_in(grounding: Grounded | None) -> str:
    """``; grounded in 2 past plan(s), 3 passage(s), 12 of the catalog's tools`` for a model
    plan's reason (empty without grounding)."""
    if grounding is None or grounding.empty:
        return ""
    parts = []
    if grounding.examples:
        parts.append(f"{len(grounding.examples)} past plan(s) ({', '.join(e.name for e in grounding.examples)})")
    if grounding.passages:
        parts.append(f"{len(grounding.passages)} passage(s) ({', '.join(grounding.references)})")
    if grounding.tools is not None:
        parts.append(f"{len(grounding.tools)} tools retrieved from the catalog")
    return "; grounded in " + ", ".join(parts)


def bound_values(hit: LibraryHit) -> str:
    """`` with n=5, year=2023`` for a reuse's reason (empty when the plan takes no parameters)."""
    if not hit.bindings:
        return ""
    return " with " + ", ".join(f"{k}={'null' if v is None else v}" for k, v in hit.bindings.items())


def no_plan_message(why: str, hit: LibraryHit | None) -> str:
    """Why no plan serves a request: why the model gave none, what did not fit the closest
    library plans and the parameters they take, and where to look next."""
    if hit is None:
        library = "nothing in the plan library is like it"
    elif hit.fits:  # a hit recorded before the library took parameters
        library = f"the closest plan, {hit.name!r}, scores {hit.score:.2f} < {hit.threshold:.2f}"
    else:
        library = hit.why_not or f"the closest plan, {hit.name!r}, does not fit"
    parts = [f"no plan for this request: {why}, and no library plan answers it ({library})."]
    if hit is not None and hit.closest:
        listed = "; ".join(
            f"{n.name!r} ({n.params}; e.g. {n.example!r}"
            + (f"; did not fit: {', '.join(n.misfits)}" if n.misfits and n.name != hit.name else "")
            + ")"
            for n in hit.closest
        )
        parts.append(f"Closest library plans: {listed}.")
    parts.append(
        "See `cadre tools` for the tools a plan may use, `cadre schema request` for the request format, "
        "and examples/plans for the library's entries and how they read parameters."
    )
    parts.append(
        "Set ANTHROPIC_API_KEY or GEMINI_API_KEY to plan with a model, or send an explicit plan "
        '({"plan": {"nodes": [...]}}, or `cadre run --plan FILE`).'
    )
    return " ".join(parts)
