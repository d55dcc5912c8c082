"""The planner actor: turns a request into a plan, then owns the workflow's progress.

Planning: an explicit plan in the request is taken as it is. Otherwise the planner consults
the model (through the budget; the tool catalog is in the prompt, the answer is validated
and repaired once). When the model may not be used or gives no valid plan, it falls back to
the plan library: the most similar plan of an earlier completed workflow or of
``examples/plans`` that the request binds to (its years, counts, comparatives... taken by
the plan's parameters, every word covered) and that scores above the threshold, with the
request's values bound into it. Otherwise the run fails with ``no_plan``, naming the closest
plans, the parameters they take and what did not fit.
The ``plan_proposed`` event says which of these happened and why.

Adaptation: when a task fails for good, or the validator rejects a plan for its confidence
(``planner.confidence``), a workflow whose level and mode allow it (``autonomous`` and
``creative``) consults the model for a new plan of the remaining work; completed tasks keep
their outputs. Without a valid answer the workflow fails as before. A library reuse carries
its match score as the plan's confidence.
"""

from __future__ import annotations

import msgspec

from cadre.actors import cancel, children, compensation, rate_wait
from cadre.actors import planner_rules as rules
from cadre.actors.context import Context
from cadre.actors.outcome import Outcome
from cadre.actors.runtime import ActorSpec
from cadre.bus.events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    CancelRequested,
    ChildCompleted,
    ChildFailed,
    ChildRequested,
    CompensationStarted,
    ConsultationWaiting,
    DeadlineSet,
    EffectsRecorded,
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
from cadre.planner.catalog import Catalog
from cadre.planner.children import DEFAULT_MAX_DEPTH
from cadre.planner.providers.prompts import (
    ADAPT_AFTER_FAILURE,
    ADAPT_AFTER_REJECTION,
    adapt_request,
    adapt_validator,
    plan_request,
    plan_validator,
)
from cadre.planner.scheduler import is_finished
from cadre.store.records import StoredEvent
from cadre.store.state import WorkflowState, wait_key

MAX_REVISIONS = 3
"""Plan revisions a workflow may have: the first plan and two adaptations."""

HANDLES = frozenset(
    {
        WorkflowRequested.TYPE,
        PlanValidated.TYPE,
        PlanRejected.TYPE,
        StepsRejected.TYPE,
        StepCompleted.TYPE,
        StepFailed.TYPE,
        HandlerFailed.TYPE,
        StepCompensated.TYPE,
        DeadlineSet.TYPE,
        CancelRequested.TYPE,
        ConsultationWaiting.TYPE,
        ChildCompleted.TYPE,
        ChildFailed.TYPE,
    }
)


async def plan(
    ctx: Context,
    state: WorkflowState,
    req: WorkflowRequested,
    catalog: Catalog,
    wait_max_s: float = 0.0,
    waited: ConsultationWaiting | None = None,
) -> list[Event]:
    """The first plan (module docstring). A ``plan`` consultation denied for the provider's rate
    limit waits out ``retry_after_s`` up to ``wait_max_s`` (``consultation_waiting``), once:
    ``waited`` is that wait, come, when the planner asks again (:mod:`actors.rate_wait`)."""
    if state.plan is not None or state.done:
        return []  # planned already (a redelivery)
    if waited is None and wait_key("plan") in state.waits:
        return []  # waiting out a rate limit: the wait asks again
    note = f"{rate_wait.waited_note(waited)}; " if waited is not None else ""
    if req.plan is not None:
        return [PlanProposed(plan=req.plan, source="explicit", reason="plan given with the request")]
    if req.request.strip():
        grounding = await ctx.ground("plan", req.request)
        ask = plan_request(req.request, catalog.describe(), "", 0, grounding)
        inferred = await ctx.infer("plan", ask, plan_validator(catalog), ctx.policy(req))
        if inferred.value is not None:
            reason = f"{note}planned by the model: {inferred.describe()}{rules.grounded_in(grounding)}"
            return [PlanProposed(plan=inferred.value, source="model", reason=reason)]
        now, deadline = ctx.now(), rate_wait.deadline_of(state)
        after = rate_wait.wait_s(inferred, wait_max_s, waited=waited is not None, now=now, deadline=deadline)
        if after is not None:
            return [rate_wait.waiting(ctx, "plan", after, rate_wait.denial(inferred))]
        why = note + inferred.describe()
    else:
        why = "the request has no text"
    hit = await ctx.search_library(req.request)
    if hit is not None and hit.fits and hit.score >= hit.threshold:
        return [
            PlanProposed(
                plan=msgspec.structs.replace(hit.plan, confidence=min(1.0, max(0.0, round(hit.score, 4)))),
                source="library",
                library_match=hit.name,
                score=round(hit.score, 4),
                reason=f"{why}; reused plan {hit.name!r} from {hit.source} (similarity {hit.score:.2f})"
                + rules.bound_values(hit),
            )
        ]
    return [WorkflowFailed(reason="no_plan", message=rules.no_plan_message(why, hit))]


async def adapt(ctx: Context, state: WorkflowState, failed: list[Event], catalog: Catalog) -> list[Event]:
    """A new plan revision for the work that remains, instead of ``failed`` (the workflow's
    failure), when the workflow allows adaptation and the model gives a valid plan."""
    end = failed[0] if failed else None
    if not isinstance(end, WorkflowFailed) or end.task_id is None or state.plan is None:
        return failed
    why = f"re-planned after task {end.task_id!r} failed ({end.message})"
    return await _replan(ctx, state, end, why, ADAPT_AFTER_FAILURE, catalog)


async def replan_rejected(ctx: Context, state: WorkflowState, data: PlanRejected, catalog: Catalog) -> list[Event]:
    """After the validator rejected a plan for its confidence (``planner.confidence``): a new
    revision, where the workflow allows adaptation and the model gives a valid plan; else the
    workflow fails with ``plan_rejected`` as for any other rejection."""
    failed = rules.on_plan_rejected(state, data)
    end = failed[0] if failed else None
    if not isinstance(end, WorkflowFailed) or state.plan is None:
        return failed
    if not any(c.name == "confidence" and not c.passed and c.severity == "error" for c in data.checks):
        return failed
    why = f"re-planned after revision {data.revision} was rejected ({end.message})"
    return await _replan(ctx, state, end, why, ADAPT_AFTER_REJECTION, catalog)


async def _replan(
    ctx: Context, state: WorkflowState, end: WorkflowFailed, why: str, situation: str, catalog: Catalog
) -> list[Event]:
    """The model's plan of the remaining work as the next revision, instead of ``end``."""
    assert state.plan is not None
    if state.revision >= MAX_REVISIONS:
        return [end]
    revision = state.revision
    completed = {tid: t.output for tid, t in state.tasks.items() if t.status == "completed"}
    request_text = state.request.request if state.request is not None else ""
    grounding = await ctx.ground("adapt", request_text)
    ask = adapt_request(
        request_text, state.plan, completed, end.message, catalog.describe(), situation=situation, grounding=grounding
    )
    validate = adapt_validator(catalog, state.plan, completed)
    inferred = await ctx.infer("adapt", ask, validate, ctx.policy(state.request))
    if inferred.value is None:
        if inferred.declined:
            return [end]  # adaptation is not for this workflow: fail exactly as without it
        note = f" (adaptation was tried: {inferred.describe()})"
        return [msgspec.structs.replace(end, message=end.message + note)]
    return [
        PlanProposed(plan=inferred.value, revision=revision + 1, source="model", reason=f"{why}: {inferred.describe()}")
    ]


def on_plan_validated(state: WorkflowState, data: PlanValidated) -> list[Event]:
    """Dispatch the first tasks of a validated revision (tasks a re-plan kept are completed)."""
    if state.done or data.revision != state.revision or state.plan is None:
        return []
    if any(t.status not in ("pending", "completed") for t in state.tasks.values()):
        return []  # dispatched already (a redelivery)
    if is_finished(state.plan, state.task_status()):
        outputs = {tid: t.output for tid, t in state.tasks.items()}
        return [WorkflowCompleted(result=rules.result_of(state, outputs))]
    return rules.dispatch_ready(state)


def make_spec(
    catalog: Catalog,
    on_failure: str = "fail",
    rate_limit_wait_s: float = 0.0,
    max_child_depth: int = DEFAULT_MAX_DEPTH,
) -> ActorSpec:
    """The planner; ``on_failure`` is the deployment's default for requests that set none
    (``compensate``: a failing workflow undoes its completed steps first, :mod:`actors.compensation`).
    A ``plan`` consultation denied for the rate limit waits up to ``rate_limit_wait_s``, once. A task
    that runs a child workflow starts it (``child_requested``, :mod:`actors.children`) up to
    ``max_child_depth``."""

    async def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        data = rec.event.data
        if isinstance(data, CancelRequested):
            return cancel.on_cancel(state, catalog, on_failure)
        if isinstance(data, DeadlineSet):
            return cancel.on_deadline(state, data, ctx.now())
        if compensation.frozen(state):
            return compensation.finished(state) if isinstance(rec.event.data, StepCompensated) else []
        out = await decide(ctx, rec, state)
        if isinstance(out, list):
            out = children.spawn_instead(state, out, max_child_depth)
            return compensation.instead_of_failing(state, out, catalog, on_failure)
        return out

    async def decide(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        data = rec.event.data
        match data:
            case WorkflowRequested():
                return cancel.with_deadline(
                    state, await plan(ctx, state, data, catalog, rate_limit_wait_s), rec.event.at
                )
            case ConsultationWaiting() if data.call == "plan" and not data.step_id:
                if state.waits.get(wait_key("plan")) != rec.event.id or state.request is None:
                    return []
                deferred = rate_wait.not_yet(ctx, data)
                if deferred is not None:
                    return deferred
                return await plan(ctx, state, state.request, catalog, rate_limit_wait_s, waited=data)
            case PlanValidated():
                return on_plan_validated(state, data)
            case PlanRejected():
                return await replan_rejected(ctx, state, data, catalog)
            case StepsRejected():
                return rules.on_steps_rejected(state, data)
            case StepCompleted():
                return rules.on_step_completed(state, data)
            case StepFailed():
                failed = rules.on_step_failed(state, data)
                if state.request is not None and state.request.dry_run:
                    return failed  # a re-plan is an execution-time consultation: a dry run makes none
                return await adapt(ctx, state, failed, catalog)
            case HandlerFailed():
                return rules.on_handler_failed(state, data, rec.event.actor)
            case ChildCompleted():
                return children.on_child_completed(state, data)
            case ChildFailed():
                return children.on_child_failed(state, data)
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
                | ForgedEvent()
                | ProposalMade()
                | ProposalValidated()
                | ProposalRejected()
                | ConsultationWaiting()
                | CompensationStarted()
                | StepCompensated()
                | DeadlineSet()
                | CancelRequested()
                | WorkflowCancelled()
                | Redriven()
                | ChildRequested()
            ):
                return []

    return ActorSpec(kind="planner", handles=HANDLES, handler=handle, consistent=HANDLES)
