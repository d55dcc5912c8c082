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

Flows (``planner.flows``, the deployment's ``CADRE_FLOWS``): before all this, a request may be
served by a flow. With a model, the planner asks it (a ``plan`` consultation, schema
``choose_flow_path``) for the flow, the path of nodes the request needs and the parameters; when
the model may not be used, fails, or names no flow, the flows' match rules choose
deterministically (the rule's path, else the flow's default path, else the whole flow). The
``plan_proposed`` event names the flow, the path, who chose it and why. At run time a flow's
task chooses its way on by its conditions (``branch_taken``, :mod:`actors.planner_rules`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

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
    BranchTaken,
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
from cadre.bus.plan import ErrorInfo
from cadre.planner.catalog import Catalog
from cadre.planner.children import DEFAULT_MAX_DEPTH
from cadre.planner.flows.child import flow_hook
from cadre.planner.flows.choose import by_rules, choice_request, choice_validator, plan_choice
from cadre.planner.flows.model import Flow, FlowError
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

log = logging.getLogger(__name__)

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
    flows: Mapping[str, Flow] | None = None,
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
    flow_note = ""
    if flows and req.request.strip() and waited is None:
        proposed, flow_note = await plan_flow(ctx, req, flows, catalog)
        if proposed is not None:
            return [proposed]
        note = f"{flow_note}; " if flow_note else note
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


async def plan_flow(
    ctx: Context, req: WorkflowRequested, flows: Mapping[str, Flow], catalog: Catalog
) -> tuple[PlanProposed | None, str]:
    """A flow's plan for the request (module docstring), or None and why no flow serves it."""
    text = req.request
    ask = choice_request(text, list(flows.values()), "", 0)
    inferred = await ctx.infer("plan", ask, choice_validator(flows, text, catalog), ctx.policy(req))
    answer = inferred.value
    if answer is not None and answer.choice is not None and answer.plan is not None:
        c = answer.choice
        reason = f"flow {c.flow.name!r} chosen by the model: {c.why or inferred.describe()}; path {' -> '.join(c.path)}"
        return PlanProposed(
            plan=answer.plan, source="flow", flow=c.flow.name, path=c.path, chosen_by="model", reason=reason
        ), ""
    why = (
        f"the model named no flow ({answer.reason})"
        if answer is not None
        else f"no flow by the model: {inferred.describe()}"
    )
    choice = by_rules(list(flows.values()), text)
    if choice is None:
        return None, f"{why}; no flow's match rule matches the request"
    try:
        flow_plan = plan_choice(choice, text, catalog)
    except FlowError as exc:
        return None, f"{why}; {choice.why}, but {choice.path_kind} cannot serve it: {exc}"
    reason = f"{choice.why}; path {' -> '.join(choice.path)} ({choice.path_kind}); {why}"
    chosen = "rule" if choice.path_kind == "the rule's path" else "default"
    return PlanProposed(
        plan=flow_plan, source="flow", flow=choice.flow.name, path=choice.path, chosen_by=chosen, reason=reason
    ), ""


async def adapt(
    ctx: Context,
    state: WorkflowState,
    failed: list[Event],
    catalog: Catalog,
    wait_max_s: float = 0.0,
    waited: ConsultationWaiting | None = None,
) -> list[Event]:
    """A new plan revision for the work that remains, instead of ``failed`` (the workflow's
    failure), when the workflow allows adaptation and the model gives a valid plan.

    An ``adapt`` denied for the provider's rate limit waits out ``retry_after_s`` up to
    ``wait_max_s`` (``consultation_waiting``, ``task_id`` the failed task, ``attempts`` its attempt,
    ``revision`` the plan's), once; the other branches run on meanwhile, and nothing more of the
    failed one (its dependents wait on it). ``waited`` is that wait, come: the planner asks again on
    the workflow as it stands then (:func:`adapt_after_wait`)."""
    end = failed[0] if failed else None
    if not isinstance(end, WorkflowFailed) or end.task_id is None or state.plan is None:
        return failed
    task = state.tasks.get(end.task_id)
    attempt = task.attempt if task is not None else 0
    if waited is None and wait_key("adapt", end.task_id, attempt, state.revision) in state.waits:
        return []  # the failure redelivered while its re-plan waits: the wait asks again
    why = f"re-planned after task {end.task_id!r} failed ({end.message})"
    if waited is not None:
        why = f"{rate_wait.waited_note(waited)}; {why}"
    return await _replan(ctx, state, end, why, ADAPT_AFTER_FAILURE, catalog, wait_max_s, waited, attempt)


def adapt_pending(state: WorkflowState, wait: ConsultationWaiting, wait_id: str) -> list[Event] | str:
    """The failure an ``adapt`` wait still stands for, now that it came (``[workflow_failed]``), or
    why it no longer does: the workflow ended or was cancelled, a later wait replaced it, the plan
    was revised, or the failed task was dealt with meanwhile. Nothing is asked then."""
    if state.done or compensation.frozen(state) or state.plan is None:
        return f"the workflow has ended or is ending ({state.status})"
    if state.waits.get(wait_key("adapt", wait.task_id, wait.attempts, wait.revision)) != wait_id:
        return "a later wait replaced it"
    if state.revision != wait.revision:
        return f"the plan was revised meanwhile (revision {state.revision})"
    task = state.tasks.get(wait.task_id)
    if task is None or task.attempt != wait.attempts or task.status != "running":
        return f"task {wait.task_id!r} was dealt with meanwhile"
    failed = [st for sid in task.step_ids if (st := state.steps.get(sid)) is not None and st.status == "failed"]
    if not failed or failed[-1].error is None:
        return f"task {wait.task_id!r} has no failed step any more"
    return rules.fail_task(wait.task_id, failed[-1].error, task.attempt)


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
    ctx: Context,
    state: WorkflowState,
    end: WorkflowFailed,
    why: str,
    situation: str,
    catalog: Catalog,
    wait_max_s: float = 0.0,
    waited: ConsultationWaiting | None = None,
    attempt: int = 0,
) -> list[Event]:
    """The model's plan of the remaining work as the next revision, instead of ``end`` (a re-plan
    after a failed task, ``end.task_id``, denied for the rate limit: a wait, within ``wait_max_s``)."""
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
    if inferred.value is None and end.task_id is not None:
        now, deadline = ctx.now(), rate_wait.deadline_of(state)
        after = rate_wait.wait_s(inferred, wait_max_s, waited=waited is not None, now=now, deadline=deadline)
        if after is not None:
            error = ErrorInfo(code=end.reason, message=end.message)  # what the re-plan stands for
            wait = rate_wait.waiting(ctx, "adapt", after, error, task_id=end.task_id, attempts=attempt)
            return [msgspec.structs.replace(wait, revision=revision)]
    if inferred.value is None:
        note = f"{rate_wait.waited_note(waited)}; " if waited is not None else ""
        if inferred.declined and not note:
            return [end]  # adaptation is not for this workflow: fail exactly as without it
        tried = f" (adaptation was tried: {note}{inferred.describe()})"
        return [msgspec.structs.replace(end, message=end.message + tried)]
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
    flows: Mapping[str, Flow] | None = None,
    max_child_depth: int = DEFAULT_MAX_DEPTH,
) -> ActorSpec:
    """The planner; ``on_failure`` is the deployment's default for requests that set none
    (``compensate``: a failing workflow undoes its completed steps first, :mod:`actors.compensation`).
    A ``plan`` consultation denied for the rate limit waits up to ``rate_limit_wait_s``, once.
    ``flows``: the deployment's flows (module docstring). A task that runs a child workflow starts
    it (``child_requested``, :mod:`actors.children`) up to ``max_child_depth``."""

    child_flows = flow_hook(flows, catalog) if flows else None  # a child may run a flow

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
            out = children.spawn_instead(state, out, max_child_depth, child_flows)
            return compensation.instead_of_failing(state, out, catalog, on_failure)
        return out

    async def decide(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        data = rec.event.data
        match data:
            case WorkflowRequested():
                return cancel.with_deadline(
                    state, await plan(ctx, state, data, catalog, rate_limit_wait_s, flows=flows), rec.event.at
                )
            case ConsultationWaiting() if data.call == "plan" and not data.step_id:
                if state.waits.get(wait_key("plan")) != rec.event.id or state.request is None:
                    return []
                deferred = rate_wait.not_yet(ctx, data)
                if deferred is not None:
                    return deferred
                return await plan(ctx, state, state.request, catalog, rate_limit_wait_s, waited=data)
            case ConsultationWaiting() if data.call == "adapt" and not data.step_id:
                return await adapt_after_wait(ctx, rec, state, data)
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
                return await adapt(ctx, state, failed, catalog, rate_limit_wait_s)
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
                | BranchTaken()
                | ChildRequested()
            ):
                return []

    async def adapt_after_wait(
        ctx: Context, rec: StoredEvent, state: WorkflowState, data: ConsultationWaiting
    ) -> Outcome:
        """An ``adapt`` wait, come: asked again on the workflow as it stands now, or dropped (with
        the reason logged) when it no longer stands for a failure."""
        key = wait_key("adapt", data.task_id, data.attempts, data.revision)
        if state.waits.get(key) == rec.event.id and not state.done:
            deferred = rate_wait.not_yet(ctx, data)
            if deferred is not None:
                return deferred
        pending = adapt_pending(state, data, rec.event.id)
        if isinstance(pending, str):
            log.info("adapt wait %s of workflow %s dropped: %s", rec.event.id, ctx.workflow_id, pending)
            return []
        return await adapt(ctx, state, pending, catalog, rate_limit_wait_s, waited=data)

    return ActorSpec(kind="planner", handles=HANDLES, handler=handle, consistent=HANDLES)
