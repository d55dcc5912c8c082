"""The planner actor: turns a request into a plan, then owns the workflow's progress.

Planning: an explicit plan in the request is taken as it is. Otherwise the planner asks the
budget for a model consultation (no provider yet: denied) and falls back to the plan
library: the most similar plan of an earlier completed workflow or of ``examples/``, if it
scores above the threshold. Otherwise the run fails with reason ``no_plan``.
"""

from __future__ import annotations

from actors import planner_rules as rules
from actors.context import Consultation, Context
from actors.outcome import Outcome
from actors.runtime import ActorSpec
from bus.events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    EffectsRecorded,
    Event,
    HandlerFailed,
    PlanProposed,
    PlanRejected,
    PlanValidated,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsProposed,
    StepsRejected,
    TaskReady,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRequested,
)
from store.records import StoredEvent
from store.state import WorkflowState

HANDLES = frozenset(
    {
        WorkflowRequested.TYPE,
        PlanValidated.TYPE,
        PlanRejected.TYPE,
        StepsRejected.TYPE,
        StepCompleted.TYPE,
        StepFailed.TYPE,
        HandlerFailed.TYPE,
    }
)


async def plan(ctx: Context, state: WorkflowState, req: WorkflowRequested) -> list[Event]:
    if state.plan is not None or state.done:
        return []  # planned already (a redelivery)
    if req.plan is not None:
        return [PlanProposed(plan=req.plan, source="explicit", reason="plan given with the request")]
    decision = await ctx.consult(
        Consultation(
            workflow_id=ctx.workflow_id,
            kind="plan",
            intelligence=req.intelligence,
            mode=req.mode,
            budget_usd=req.budget_usd,
        )
    )
    hit = await ctx.search_library(req.request)
    why = f"model planning not available ({decision.outcome}: {decision.reason})"
    if hit is not None and hit.score >= hit.threshold:
        return [
            PlanProposed(
                plan=hit.plan,
                source="library",
                library_match=hit.name,
                score=round(hit.score, 4),
                reason=f"{why}; reused plan {hit.name!r} from {hit.source} (similarity {hit.score:.2f})",
            )
        ]
    best = f"the closest plan, {hit.name!r}, scores {hit.score:.2f} < {hit.threshold:.2f}" if hit else "it is empty"
    return [
        WorkflowFailed(
            reason="no_plan",
            message=f"no plan for this request: {why}, and the plan library has no match ({best}). "
            "Set ANTHROPIC_API_KEY or GEMINI_API_KEY to plan with a model, or send an explicit plan "
            '({"plan": {"nodes": [...]}}, or `cadre run --plan FILE`).',
        )
    ]


async def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
    data = rec.event.data
    match data:
        case WorkflowRequested():
            return await plan(ctx, state, data)
        case PlanValidated():
            if (
                state.done
                or data.revision != state.revision
                or any(t.status != "pending" for t in state.tasks.values())
            ):
                return []
            return rules.dispatch_ready(state)
        case PlanRejected():
            return rules.on_plan_rejected(state, data)
        case StepsRejected():
            return rules.on_steps_rejected(state, data)
        case StepCompleted():
            return rules.on_step_completed(state, data)
        case StepFailed():
            return rules.on_step_failed(state, data)
        case HandlerFailed():
            return rules.on_handler_failed(state, data, rec.event.actor)
        case (
            PlanProposed()
            | StepsProposed()
            | StepReady()
            | TaskReady()
            | ApprovalRequested()
            | ApprovalGranted()
            | ApprovalDenied()
            | WorkflowCompleted()
            | WorkflowFailed()
            | EffectsRecorded()
        ):
            return []


SPEC = ActorSpec(kind="planner", handles=HANDLES, handler=handle, consistent=HANDLES)
