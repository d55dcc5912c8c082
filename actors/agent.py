"""The agent actor: runs validated steps with tools, and waits for approvals.

A step runs its planned tool; if that fails, each planned fallback tool in turn. The result
records the tool planned and the tool used (adherence) and every deviation. A step whose
tool requires approval first emits ``approval_requested`` and runs only after
``approval_granted``; ``approval_denied`` (by a person, or by the deadline passing) fails it.
The deadline is a durable timer: the agent defers its own ``approval_requested`` until then.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from actors.context import Context, ToolFailure
from actors.outcome import Defer, Outcome
from actors.runtime import ActorSpec
from bus.events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    Event,
    StepCompleted,
    StepFailed,
    StepReady,
)
from bus.plan import ErrorInfo, StepIntent
from planner.refs import RefError, resolve, with_step_outputs
from store.records import StoredEvent
from store.state import WorkflowState

HANDLES = frozenset({StepReady.TYPE, ApprovalRequested.TYPE, ApprovalGranted.TYPE, ApprovalDenied.TYPE})


def upstream_outputs(state: WorkflowState, step: StepIntent) -> dict[str, Any]:
    """Outputs a step's references may point at: finished tasks, and earlier steps of its task."""
    outputs = {tid: t.output for tid, t in state.tasks.items() if t.output is not None}
    task = state.tasks.get(step.task_id)
    earlier = {}
    if task is not None:
        for sid in task.step_ids:
            if sid == step.id:
                break
            if (st := state.steps.get(sid)) is not None and st.output is not None:
                earlier[sid] = st.output
    return with_step_outputs(outputs, earlier)


async def run_step(ctx: Context, state: WorkflowState, step: StepIntent) -> list[Event]:
    try:
        inputs = resolve(step.inputs, upstream_outputs(state, step))
    except RefError as exc:
        error = ErrorInfo(code=exc.code, message=exc.message)
        return [StepFailed(task_id=step.task_id, step_id=step.id, tool=step.tool, error=error)]
    tools = [step.tool, *step.fallback_tools]
    deviations: list[str] = []
    last: ToolFailure | None = None
    for i, tool in enumerate(tools):
        try:
            # One idempotency key per (workflow, step, tool): a redelivered step does not apply a side
            # effect twice, while another workflow running the same plan applies its own.
            out = await ctx.call_tool(tool, inputs, idempotency_key=f"{ctx.workflow_id}/{step.id}:{tool}")
        except ToolFailure as exc:
            deviations.append(f"{tool} failed: {exc.error.code}: {exc.error.message}")
            last = exc
            continue
        if i > 0:
            deviations.append(f"used fallback tool {tool} instead of {step.tool}")
        return [
            StepCompleted(
                task_id=step.task_id,
                step_id=step.id,
                tool=tool,
                planned_tool=step.tool,
                output=out,
                attempts=i + 1,
                deviations=tuple(deviations),
            )
        ]
    assert last is not None
    return [
        StepFailed(
            task_id=step.task_id,
            step_id=step.id,
            tool=step.tool,
            error=last.error,
            retryable=last.retryable,
            tried=tuple(tools),
        )
    ]


def make_spec(approval_timeout: timedelta) -> ActorSpec:
    async def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        data = rec.event.data
        if state.done:
            return []
        match data:
            case StepReady():
                st = state.steps.get(data.step.id)
                if st is None or st.status != "ready":
                    return []  # ran, or waiting for approval, already
                if data.step.requires_approval:
                    reason = f"tool {data.step.tool} requires approval"
                    return [ApprovalRequested(step=data.step, reason=reason, deadline=ctx.now() + approval_timeout)]
                return await run_step(ctx, state, data.step)
            case ApprovalRequested():
                st = state.steps.get(data.step.id)
                if st is None or st.status != "awaiting_approval":
                    return []  # decided already
                if ctx.now() < data.deadline:
                    return Defer(until=data.deadline)
                return [ApprovalDenied(step_id=data.step.id, by="timeout", reason=f"no decision by {data.deadline}")]
            case ApprovalGranted():
                st = state.steps.get(data.step_id)
                if st is None or st.status != "approved":
                    return []
                return await run_step(ctx, state, st.step)
            case ApprovalDenied():
                st = state.steps.get(data.step_id)
                if st is None or st.status != "denied":
                    return []
                error = ErrorInfo(code="approval_denied", message=f"denied by {data.by}: {data.reason or 'no reason'}")
                return [StepFailed(task_id=st.step.task_id, step_id=st.step.id, tool=st.step.tool, error=error)]
        return []

    # The deadline's denial must not race a person's decision: both append expecting the
    # state in which the step was awaiting approval, so exactly one of them lands.
    return ActorSpec(kind="agent", handles=HANDLES, handler=handle, consistent=frozenset({ApprovalRequested.TYPE}))
