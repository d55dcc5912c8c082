"""The agent actor: runs validated steps with tools, and waits for approvals.

A step runs its planned tool; if that fails, each planned fallback tool in turn. The result
records the tool planned and the tool used (adherence) and every deviation. A step whose
tool requires approval, or whose task's or plan's confidence is below the deployment's
``approve_below`` (``planner.confidence``), first emits ``approval_requested`` and runs only after
``approval_granted``; ``approval_denied`` (by a person, or by the deadline passing) fails it.
The deadline is a durable timer: the agent defers its own ``approval_requested`` until then.

In a dry run (``workflow_requested.dry_run``) the agent runs nothing and asks no model: each
ready step is completed at once by :func:`simulate_step`, ``simulated``, with a placeholder of
its tool's output schema, whether it would need approval (it is not waited on) and a recorded
quote of the consultations a real run could make.

Given the tool catalog, the agent may also consult the model (each call gated by the budget,
which decides by the workflow's intelligence level and mode, and recorded as effects):

* ``decide``: the planned tool failed and two or more fallbacks remain; the model picks the
  fallback tried first, the others keep their planned order;
* ``interpret``: a tool's output was refused by its schema (``invalid_output``) or lacks a
  field of the step's ``expected_outputs``; the model's corrected output is a proposal
  (``proposal_made``, action ``output``) the validator checks (the tool's output model, the
  expected fields, the size limit); cleared, it completes the step (if it meets the
  postconditions); refused, or without one, the call counts as the tool's failure and the run
  goes on with the remaining fallbacks, then a recovery;
* ``recover``: every planned tool failed, for a reason other than a policy refusal
  (:data:`POLICY_REFUSALS`); the model chooses once: retry a tried tool, run an alternative
  tool, skip a step nothing uses (:func:`skippable`), or fail. The choice is a proposal
  (``proposal_made``), not an action: the validator checks it as a step (``planner.proposals``)
  and only a ``proposal_validated`` one runs, once, after a person's approval when the verdict
  asks for one (a side-effect tool the model chose); a ``proposal_rejected`` one fails the step
  as planned, with the verdict in its message.

A consultation the budget denies for the provider's rate limit, within the deployment's bound,
waits (``consultation_waiting``, a durable timer) and is asked again once: ``recover`` as before;
``decide`` and ``interpret`` end the invocation where they stand and the step resumes there when the
wait comes (:func:`resume_after_wait`), ``interpret`` reading the tool's output back from the wait's
recorded effect, so no tool runs twice.

Without an answer the step runs as planned. A consultation the workflow does not allow (its
level or mode) or that has no model leaves no trace in the outcome; any other miss (a
denial over budget, an invalid answer after the repair round) is noted in the deviations or
the failure's message, as is every answer used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeVar

import msgspec

from cadre.actors import compensation, rate_wait
from cadre.actors.context import Context, Inferred, ToolFailure
from cadre.actors.outcome import Defer, Outcome
from cadre.actors.runtime import ActorSpec
from cadre.bus.effects import ToolCalled
from cadre.bus.events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    CompensationStarted,
    ConsultationWaiting,
    Event,
    ProposalMade,
    ProposalRejected,
    ProposalValidated,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepReady,
)
from cadre.bus.plan import Check, ErrorInfo, StepIntent
from cadre.planner import pools as agent_pools
from cadre.planner.catalog import Catalog, json_schema
from cadre.planner.conditions import PRE_NAMES
from cadre.planner.conditions import check as check_condition
from cadre.planner.confidence import approval_reason
from cadre.planner.placeholder import placeholder
from cadre.planner.proposals import proposed_step
from cadre.planner.providers.agent_prompts import (
    FailedCall,
    decide_request,
    decide_validator,
    interpret_request,
    interpret_validator,
    missing_outputs,
    recover_request,
    recover_validator,
)
from cadre.planner.providers.base import LLMRequest
from cadre.planner.refs import RefError, find_refs, resolve, with_step_outputs
from cadre.planner.safety import SafetyContext
from cadre.planner.scheduler import topo_order
from cadre.planner.validation import NO_DEPLOYMENT
from cadre.planner.validation import failed as failed_checks
from cadre.store.records import StoredEvent
from cadre.store.state import WorkflowState

HANDLES = frozenset(
    {
        StepReady.TYPE,
        CompensationStarted.TYPE,
        StepCompensated.TYPE,
        ApprovalRequested.TYPE,
        ApprovalGranted.TYPE,
        ApprovalDenied.TYPE,
        ProposalValidated.TYPE,
        ProposalRejected.TYPE,
        ConsultationWaiting.TYPE,
    }
)

POLICY_REFUSALS: Final = frozenset(
    {"approval_denied", "prohibited", "outside_workspace", agent_pools.POOL_REFUSED, "precondition_failed"}
)
"""Failures a model must not work around: the step then fails as planned, without ``recover``."""

T = TypeVar("T")


# -- pure rules ------------------------------------------------------------------------------


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


def _reads(step: StepIntent, target: str) -> bool:
    """Whether ``step``'s inputs reference the output of step ``target`` (``${<target>.field}``)."""
    segments = tuple(target.split("."))
    return any((r.task_id, *r.path)[: len(segments)] == segments for r in find_refs(step.inputs))


def skippable(state: WorkflowState, step: StepIntent) -> bool:
    """Whether completing ``step`` with an empty output loses nothing the workflow uses.

    A task's output is its last step's. So an earlier step may be skipped when no later step
    of its task reads its output; the last step when no task depends on its task and its
    task's output is not the workflow's result (the plan's ``output``, else its last task).
    """
    task = state.tasks.get(step.task_id)
    if task is None or state.plan is None or step.id not in task.step_ids:
        return False
    later = task.step_ids[task.step_ids.index(step.id) + 1 :]
    if later:
        return not any(_reads(st.step, step.id) for sid in later if (st := state.steps.get(sid)) is not None)
    result = state.plan.output or topo_order(state.plan)[-1]
    return step.task_id != result and not any(step.task_id in t.depends_on for t in state.plan.nodes)


def fallback_order(fallbacks: tuple[str, ...], first: str) -> tuple[str, ...]:
    """``fallbacks`` with ``first`` moved to the front, the others in their planned order."""
    return (first, *(t for t in fallbacks if t != first))


# -- running a step --------------------------------------------------------------------------


class Proposed(Exception):
    """A model's decision stops the run here: the step goes on once the validator has ruled."""

    def __init__(self, proposal: ProposalMade) -> None:
        super().__init__(proposal.step_id)
        self.proposal = proposal
        self.event: Event = proposal


class Waits(Exception):
    """A consultation denied for the rate limit stops the run here (``consultation_waiting``): the
    step goes on from the same point when the wait comes (:func:`resume_after_wait`)."""

    def __init__(self, wait: ConsultationWaiting) -> None:
        super().__init__(wait.step_id)
        self.event: Event = wait


@dataclass
class _StepRun:
    """One run of a step: the calls made so far and how the run departed from the plan."""

    ctx: Context
    state: WorkflowState
    step: StepIntent
    inputs: dict[str, Any]
    catalog: Catalog | None
    deviations: list[str] = field(default_factory=list)
    failures: list[FailedCall] = field(default_factory=list)
    calls: int = 0
    can_skip: bool = False
    conditions: list[Check] = field(default_factory=list)  # the checked conditions evaluated, in order
    wait_max_s: float = 0.0  # a rate-limited consultation waits up to this long, once, then asks again
    remaining: tuple[str, ...] | None = None  # the fallbacks after the current call (None: not ordered yet)
    phase: str = "run"  # "recovery" while the recovery's call runs
    waited: str = ""  # the consultation this run waited for already (it does not wait twice)
    compensable: bool = False  # the workflow compensates when it fails (``ToolCall.compensable``)

    def preconditions(self) -> ErrorInfo | None:
        """Check the step's preconditions on its resolved inputs (recorded); the first that does
        not hold, as the step's error: its tool is then never called."""
        for k, text in enumerate(self.step.pre):
            outcome = check_condition(text, {"inputs": self.inputs}, PRE_NAMES)
            said = f"precondition {text!r} " + ("holds" if outcome.passed else f"fails: {outcome.reason}")
            self.conditions.append(Check(name="precondition", passed=outcome.passed, message=said, path=f"pre[{k}]"))
            if not outcome.passed:
                message = f"precondition {text!r} does not hold ({outcome.reason}); {self.step.tool} was not called"
                return ErrorInfo(code="precondition_failed", message=message)
        return None

    async def infer(self, kind: str, request: LLMRequest, validate: Callable[[dict[str, Any]], T]) -> Inferred[T]:
        return await self.ctx.infer(kind, request, validate, self.ctx.policy(self.state.request))

    async def call(self, tool: str, inputs: dict[str, Any], suffix: str = "") -> dict[str, Any] | None:
        """Run ``tool``: its output (or the model's interpretation of it), or None once its
        failure is recorded."""
        self.calls += 1
        # One idempotency key per (workflow, step, tool[, recovery]): a redelivered step does not
        # apply a side effect twice, while another workflow running the same plan applies its own.
        key = f"{self.ctx.workflow_id}/{self.step.id}:{tool}{suffix}"
        try:
            out = await self.ctx.call_tool(tool, inputs, idempotency_key=key, compensable=self.compensable)
        except ToolFailure as exc:
            note = ""
            if exc.error.code == "invalid_output" and exc.output is not None:
                fixed, note = await self.interpret(tool, inputs, exc.output, exc.error, exc.retryable)
                if fixed is not None:
                    raise Proposed(self.interpreted(tool, fixed, exc.error, exc.retryable)) from None
            self.failed_call(FailedCall(tool, exc.error, exc.retryable), note)
            return None
        missing = missing_outputs(out, self.step.expected_outputs) if self.catalog is not None else []
        if not missing:
            unmet = self.postconditions(tool, inputs, out)
            if unmet is None:
                return out
            self.failed_call(FailedCall(tool, unmet))
            return None
        problem = ErrorInfo(
            code="missing_output", message=f"{tool} returned no {', '.join(missing)}, which the step expects"
        )
        fixed, note = await self.interpret(tool, inputs, out, problem)
        if fixed is not None:
            raise Proposed(self.interpreted(tool, fixed, problem))
        self.failed_call(FailedCall(tool, problem), note)
        return None

    def postconditions(self, tool: str, inputs: dict[str, Any], output: dict[str, Any]) -> ErrorInfo | None:
        """Check ``tool``'s output against the step's postconditions and the tool's own (recorded);
        the first that does not hold, as the call's error (None: all hold)."""
        spec = self.catalog.get(tool) if self.catalog is not None else None
        texts = (*self.step.post, *(spec.postconditions if spec is not None else ()))
        unmet: ErrorInfo | None = None
        values = {"inputs": inputs, "output": output}
        for k, text in enumerate(texts):
            outcome = check_condition(text, values)
            where = f"post[{k}]" if k < len(self.step.post) else f"{tool}.postconditions[{k - len(self.step.post)}]"
            said = f"{tool}: postcondition {text!r} " + ("holds" if outcome.passed else f"fails: {outcome.reason}")
            self.conditions.append(Check(name="postcondition", passed=outcome.passed, message=said, path=where))
            if not outcome.passed and unmet is None:
                message = f"the output of {tool} fails the postcondition {text!r}: {outcome.reason}"
                unmet = ErrorInfo(code="postcondition_failed", message=message)
        return unmet

    def failed_call(self, failure: FailedCall, note: str = "") -> None:
        """Record a failed call (``note``: why the model did not save it, if it was asked)."""
        self.failures.append(failure)
        self.deviations.append(f"{failure.tool} failed: {failure.error.code}: {failure.error.message}{note}")

    async def interpret(
        self, tool: str, inputs: dict[str, Any], output: Any, error: ErrorInfo, retryable: bool = False
    ) -> tuple[dict[str, Any] | None, str]:
        """The model's corrected ``output`` (``error`` says what is wrong with it), or None and a note
        on why there is none. Denied for the rate limit, within the bound: the run stops here
        (:class:`Waits`); the tool's output is recorded already, so asking again never re-runs it."""
        if self.catalog is None or tool not in self.catalog:
            return None, ""
        spec = self.catalog[tool]
        problem = error.message
        request = interpret_request(self.step, inputs, spec, output, problem)
        inferred = await self.infer("interpret", request, interpret_validator(spec, self.step.expected_outputs))
        after = self.wait_after("interpret", inferred)
        if after is not None:
            raise Waits(self.waiting("interpret", after, error, retryable, tool=tool))
        if inferred.value is None:
            return None, "" if inferred.declined else f" (not interpreted: {inferred.describe()})"
        self.deviations.append(f"output interpreted by the model: {problem}; {inferred.describe()}")
        return inferred.value, ""

    async def fallbacks(self) -> tuple[str, ...]:
        """The planned fallback tools, in the order to try them (``decide`` picks the first)."""
        options = self.step.fallback_tools
        if len(options) < 2 or self.catalog is None:
            return options
        request = decide_request(self.step, self.inputs, self.failures[-1], options, self.catalog)
        inferred = await self.infer("decide", request, decide_validator(options))
        after = self.wait_after("decide", inferred)
        if after is not None:
            raise Waits(self.waiting("decide", after))
        if inferred.value is None:
            if not inferred.declined:
                self.deviations.append(f"fallback tools tried in planned order: {inferred.describe()}")
            return options
        choice = inferred.value
        self.deviations.append(
            f"fallback tool {choice.choice} tried first, as the model decided: {choice.reason}; {inferred.describe()}"
        )
        return fallback_order(options, choice.choice)

    async def recover(self) -> StepFailed | ProposalMade | ConsultationWaiting:
        """Once every planned tool failed: the model's recovery as a proposal for the validator
        (nothing of it runs here), or the step's failure."""
        if self.catalog is None or any(f.error.code in POLICY_REFUSALS for f in self.failures):
            return self.failed()
        tried = tuple(dict.fromkeys(f.tool for f in self.failures))
        can_skip = self.can_skip
        request = recover_request(self.step, self.inputs, self.failures, self.catalog, skippable=can_skip)
        inferred = await self.infer(
            "recover", request, recover_validator(self.catalog, self.step, tried, skippable=can_skip)
        )
        plan = inferred.value
        after = self.wait_after("recover", inferred)
        if after is not None:
            return self.waiting("recover", after)
        if plan is None:
            return self.failed("" if inferred.declined else f" (recovery was tried: {inferred.describe()})")
        how = inferred.describe()
        if plan.action == "fail":
            return self.failed(f" (recovery: the model advised failing the step: {plan.reason}; {how})")
        if plan.action == "skip":
            self.deviations.append(f"step skipped on the model's advice, with an empty output: {plan.reason}; {how}")
            return self.proposal("skip", self.step.tool, {}, plan.reason)
        tool = plan.tool or self.step.tool
        inputs = self.inputs if plan.inputs is None else plan.inputs
        what = f"retried {tool}" if plan.action == "retry" else f"ran alternative tool {tool}"
        given = "the same inputs" if plan.inputs is None else "new inputs"
        self.deviations.append(f"recovery: {what} with {given}, as the model advised: {plan.reason}; {how}")
        return self.proposal(plan.action, tool, inputs, plan.reason)

    def interpreted(self, tool: str, output: dict[str, Any], error: ErrorInfo, retryable: bool = False) -> ProposalMade:
        """The model's replacement of ``tool``'s output (which failed with ``error``), for the validator."""
        return ProposalMade(
            task_id=self.step.task_id,
            step_id=self.step.id,
            source="interpret",
            action="output",
            tool=tool,
            reason=error.message,
            attempts=self.calls,
            deviations=tuple(self.deviations),
            tried=tuple(f.tool for f in self.failures),
            error=error,
            retryable=retryable,
            output=output,
            remaining=self.remaining,
            phase=self.phase,
        )

    def wait_after(self, call: str, inferred: Inferred[Any]) -> float | None:
        """How long ``call``, denied for the rate limit, waits before asking again (None: it does not)."""
        deadline = rate_wait.deadline_of(self.state)
        waited = self.waited == call
        return rate_wait.wait_s(inferred, self.wait_max_s, waited=waited, now=self.ctx.now(), deadline=deadline)

    def waiting(
        self, call: str, after: float, error: ErrorInfo | None = None, retryable: bool | None = None, tool: str = ""
    ) -> ConsultationWaiting:
        """Wait ``after`` seconds for the provider's rate limit, then ask ``call`` again (a durable
        timer). ``error`` (default: the last failed call's) is what the run stands on; an
        ``interpret`` names the ``tool`` whose output it asks about, and where the run stands."""
        if error is None or retryable is None:
            last = self.failures[-1]  # decide and recover come after a failed call
            error, retryable = last.error, last.retryable
        wait = rate_wait.waiting(
            self.ctx,
            call,
            after,
            error,
            task_id=self.step.task_id,
            step_id=self.step.id,
            attempts=self.calls,
            deviations=tuple(self.deviations),
            tried=tuple(f.tool for f in self.failures),
            retryable=retryable,
        )
        if call != "interpret":
            return wait
        return msgspec.structs.replace(wait, tool=tool, remaining=self.remaining, phase=self.phase)

    def proposal(self, action: str, tool: str, inputs: dict[str, Any], reason: str) -> ProposalMade:
        """The model's ``recover`` decision, for the validator, with the run so far."""
        last = self.failures[-1]
        return ProposalMade(
            task_id=self.step.task_id,
            step_id=self.step.id,
            source="recover",
            action=action,
            tool=tool,
            inputs=inputs,
            reason=reason,
            attempts=self.calls,
            deviations=tuple(self.deviations),
            tried=tuple(f.tool for f in self.failures),
            error=last.error,
            retryable=last.retryable,
        )

    def completed(self, tool: str, output: dict[str, Any]) -> StepCompleted:
        """The step's completion with ``tool`` (the planned tool for a skipped step)."""
        return StepCompleted(
            task_id=self.step.task_id,
            step_id=self.step.id,
            tool=tool,
            planned_tool=self.step.tool,
            output=output,
            attempts=self.calls,
            deviations=tuple(self.deviations),
            conditions=tuple(self.conditions),
        )

    def failed(self, note: str = "") -> StepFailed:
        """The step's failure: the last call's error (``note`` appended), and the tools tried."""
        last = self.failures[-1]
        return StepFailed(
            task_id=self.step.task_id,
            step_id=self.step.id,
            tool=self.step.tool,
            error=ErrorInfo(code=last.error.code, message=last.error.message + note),
            retryable=last.retryable,
            tried=tuple(f.tool for f in self.failures),
        )


async def run_step(
    ctx: Context,
    state: WorkflowState,
    step: StepIntent,
    catalog: Catalog | None = None,
    wait_max_s: float = 0.0,
    *,
    compensable: bool = False,
) -> list[Event]:
    """Run ``step``: its tool, then its fallbacks, then (with ``catalog``) a recovery (which waits
    out a rate limit of up to ``wait_max_s``, once). ``compensable``: the workflow compensates."""
    try:
        inputs = resolve(step.inputs, upstream_outputs(state, step))
    except RefError as exc:
        error = ErrorInfo(code=exc.code, message=exc.message)
        return [StepFailed(task_id=step.task_id, step_id=step.id, tool=step.tool, error=error)]
    unchecked = unchecked_inputs(state, step, inputs)
    if unchecked is not None:
        return [StepFailed(task_id=step.task_id, step_id=step.id, tool=step.tool, error=unchecked)]
    run = _StepRun(ctx, state, step, inputs, catalog, can_skip=skippable(state, step), wait_max_s=wait_max_s)
    run.compensable = compensable
    blocked = run.preconditions()
    if blocked is not None:
        return [StepFailed(task_id=step.task_id, step_id=step.id, tool=step.tool, error=blocked)]
    try:
        out = await run.call(step.tool, inputs)
        if out is not None:
            return [run.completed(step.tool, out)]
        return [await from_fallbacks(run, await run.fallbacks())]
    except (Proposed, Waits) as stop:
        return [stop.event]


def unchecked_inputs(state: WorkflowState, step: StepIntent, inputs: dict[str, Any]) -> ErrorInfo | None:
    """Why ``step`` may not run with ``inputs`` (resolved here), or None: in a ``resolved_steps``
    workflow a step runs only the inputs the validator checked resolved (``step_ready.resolved_inputs``),
    so a step cleared without them, or whose inputs now resolve otherwise, is refused, never run unchecked."""
    if not state.resolved_steps:
        return None  # the earlier flow: the validator saw the step as planned
    st = state.steps.get(step.id)
    checked = st.resolved_inputs if st is not None else None
    if checked is None:
        message = f"step {step.id!r} was cleared without resolved inputs: the validator did not check what it would run"
        return ErrorInfo(code="inputs_unchecked", message=message)
    if checked != inputs:
        differ = sorted(k for k in {*checked, *inputs} if checked.get(k) != inputs.get(k))
        message = (
            f"step {step.id!r}: its inputs resolve now otherwise than the validator checked them "
            f"(differing: {', '.join(differ) or 'their shape'}); refused rather than run unchecked"
        )
        return ErrorInfo(code="inputs_unchecked", message=message)
    return None


async def from_fallbacks(run: _StepRun, order: tuple[str, ...]) -> Event:
    """Try the fallback tools in ``order``, then a recovery (a model's interpretation of an output
    stops the run with a proposal: :class:`Proposed`)."""
    for i, tool in enumerate(order):
        run.remaining = order[i + 1 :]
        out = await run.call(tool, run.inputs)
        if out is not None:
            run.deviations.append(f"used fallback tool {tool} instead of {run.step.tool}")
            return run.completed(tool, out)
    return await run.recover()


async def after_interpretation(run: _StepRun, proposal: ProposalMade, refused: str | None) -> list[Event]:
    """Go on after the validator ruled on the model's replacement output: cleared (``refused`` None)
    and meeting the postconditions, it completes the step; otherwise the call counts as failed and
    the run goes on where it stopped (the remaining fallbacks, then a recovery)."""
    tool, output = proposal.tool, proposal.output or {}
    try:
        if refused is None:
            unmet = run.postconditions(tool, dict(run.inputs), output)
            if unmet is None:
                if tool != run.step.tool and proposal.phase == "run":
                    run.deviations.append(f"used fallback tool {tool} instead of {run.step.tool}")
                return [run.completed(tool, output)]
            run.failed_call(FailedCall(tool, unmet))
        else:
            note = f" (the model's interpretation was refused by the validator: {refused})"
            run.failed_call(FailedCall(tool, proposal.error, proposal.retryable), note)
        if proposal.phase == "recovery":
            return [run.failed(" (after the model's recovery)")]
        order = proposal.remaining if proposal.remaining is not None else await run.fallbacks()
        return [await from_fallbacks(run, order)]
    except (Proposed, Waits) as stop:
        return [stop.event]


def resumed(
    ctx: Context,
    state: WorkflowState,
    proposal: ProposalMade | ConsultationWaiting,
    catalog: Catalog | None,
    compensable: bool = False,
) -> _StepRun:
    """The run a proposal (or a wait) was made in, as it stood then (its calls, deviations and failures)."""
    st = state.steps[proposal.step_id]
    failures = [FailedCall(t, proposal.error, proposal.retryable) for t in proposal.tried]
    inputs = resolve(st.step.inputs, upstream_outputs(state, st.step))
    return _StepRun(
        ctx,
        state,
        st.step,
        inputs,
        catalog,
        deviations=list(proposal.deviations),
        failures=failures,
        calls=proposal.attempts,
        compensable=compensable,
    )


async def resume_after_wait(
    ctx: Context,
    state: WorkflowState,
    rec: StoredEvent,
    wait: ConsultationWaiting,
    catalog: Catalog | None,
    wait_max_s: float,
    compensable: bool = False,
) -> list[Event]:
    """The wait ``rec`` came: the step goes on from where it stopped, asking ``wait.call`` again,
    once (a second denial falls back). ``recover`` and ``decide`` pick the run up after its failed
    calls; ``interpret`` after its tool's call, whose output it reads back from the wait's own
    recorded effect (``ToolCalled``): the tool never runs twice, and a replay serves the same output."""
    st = state.steps[wait.step_id]
    run = resumed(ctx, state, wait, catalog, compensable)
    run.waited, run.can_skip = wait.call, skippable(state, st.step)
    run.deviations.append(rate_wait.waited_note(wait))
    if wait.call == "recover":  # the first wait of all: nothing after it waits again
        return [await run.recover()]
    run.wait_max_s = wait_max_s
    try:
        if wait.call == "decide":
            return [await from_fallbacks(run, await run.fallbacks())]
        return await reinterpret(run, st.proposal, wait, rec.event.effects)
    except (Proposed, Waits) as stop:
        return [stop.event]


def recorded_output(effects: tuple[Any, ...], tool: str) -> Any:
    """The output ``tool`` last gave in ``effects`` (its refused output, for ``invalid_output``);
    None when the record holds none."""
    for f in reversed(effects):
        if isinstance(f, ToolCalled) and f.tool == tool:
            return f.output if f.error is None else f.refused
    return None


async def reinterpret(
    run: _StepRun, proposal: ProposalMade | None, wait: ConsultationWaiting, effects: tuple[Any, ...]
) -> list[Event]:
    """Ask ``interpret`` again about the output ``wait.tool`` gave before the wait, then go on as
    :meth:`_StepRun.call` would have: the model's replacement is a proposal; without one the call
    counts as failed and the run goes on (the remaining fallbacks, a recovery; nothing after a
    recovery's call)."""
    run.remaining, run.phase = wait.remaining, wait.phase
    recovery = wait.phase == "recovery" and proposal is not None
    inputs = dict(proposal.inputs) if recovery and proposal is not None else dict(run.inputs)
    output = recorded_output(effects, wait.tool)
    fixed, note = await run.interpret(wait.tool, inputs, output, wait.error, wait.retryable)
    if fixed is not None:
        return [run.interpreted(wait.tool, fixed, wait.error, wait.retryable)]
    run.failed_call(FailedCall(wait.tool, wait.error, wait.retryable), note)
    if wait.phase == "recovery":
        how = f", {proposal.action} with {proposal.tool}: {proposal.reason}" if proposal is not None else ""
        return [run.failed(f" (after the model's recovery{how})")]
    order = wait.remaining if wait.remaining is not None else await run.fallbacks()
    return [await from_fallbacks(run, order)]


async def run_proposal(
    ctx: Context, state: WorkflowState, proposal: ProposalMade, catalog: Catalog | None, compensable: bool = False
) -> list[Event]:
    """A proposal the validator cleared (and a person approved, if it had to): run it, once."""
    run = resumed(ctx, state, proposal, catalog, compensable)
    if proposal.action == "output":
        return await after_interpretation(run, proposal, None)
    if proposal.action == "skip":
        return [run.completed(run.step.tool, {})]
    suffix = "#retry" if proposal.action == "retry" else "#alt"
    run.phase = "recovery"
    try:
        out = await run.call(proposal.tool, dict(proposal.inputs), suffix)
    except (Proposed, Waits) as stop:
        return [stop.event]
    if out is not None:
        return [run.completed(proposal.tool, out)]
    return [run.failed(f" (after the model's recovery, {proposal.action} with {proposal.tool}: {proposal.reason})")]


def refused_proposal(state: WorkflowState, proposal: ProposalMade, checks: tuple[Check, ...]) -> list[Event]:
    """A proposal the validator refused: the step fails as it would have without it, saying why."""
    why = "; ".join(c.message for c in failed_checks(checks)) or "no reason given"
    note = f" (the model's recovery, {proposal.action} with {proposal.tool}, was refused by the validator: {why})"
    return [
        StepFailed(
            task_id=proposal.task_id,
            step_id=proposal.step_id,
            tool=state.steps[proposal.step_id].step.tool,
            error=ErrorInfo(code=proposal.error.code, message=proposal.error.message + note),
            retryable=proposal.retryable,
            tried=proposal.tried,
        )
    ]


# -- a dry run ---------------------------------------------------------------------------------

SIMULATED: Final = "dry run: the tool did not run; the output is a placeholder built from its output schema"


def would_consult(
    state: WorkflowState, step: StepIntent, inputs: dict[str, Any], catalog: Catalog | None
) -> list[tuple[str, LLMRequest, int]]:
    """The consultations a real run of ``step`` could make at worst, each (call, its request, how
    many times): every planned tool fails, so each call may be ``interpret``ed (the planned tool,
    each fallback and the recovery's call), ``decide`` picks among two or more fallbacks, and
    ``recover`` is asked once; every consultation may take its repair round (two calls)."""
    if catalog is None:
        return []
    failure = FailedCall(
        step.tool, ErrorInfo(code="unavailable", message="the worst case: every planned tool fails"), retryable=True
    )
    asks: list[tuple[str, LLMRequest, int]] = []
    spec = catalog.get(step.tool)
    if spec is not None:
        calls = 2 + len(step.fallback_tools)
        output = placeholder(json_schema(spec.output_model))
        asks.append(("interpret", interpret_request(step, inputs, spec, output, failure.error.message), 2 * calls))
    if len(step.fallback_tools) >= 2:
        asks.append(("decide", decide_request(step, inputs, failure, step.fallback_tools, catalog), 2))
    can_skip = skippable(state, step)
    asks.append(("recover", recover_request(step, inputs, [failure], catalog, skippable=can_skip), 2))
    return asks


async def simulate_step(
    ctx: Context,
    state: WorkflowState,
    step: StepIntent,
    catalog: Catalog | None = None,
    approve_below: float | None = None,
) -> list[Event]:
    """A dry run's step: its inputs resolved for real (against upstream placeholders), no tool
    run and no model consulted; completed with a placeholder of the tool's output schema,
    marked ``simulated``, with whether it would need approval and the quote of what a real
    run's consultations could cost (recorded)."""
    try:
        inputs = resolve(step.inputs, upstream_outputs(state, step))
    except RefError as exc:
        error = ErrorInfo(code=exc.code, message=exc.message)
        return [StepFailed(task_id=step.task_id, step_id=step.id, tool=step.tool, error=error)]
    spec = catalog.get(step.tool) if catalog is not None else None
    output = placeholder(json_schema(spec.output_model)) if spec is not None else {}
    estimate = await ctx.estimate(step.tool, would_consult(state, step, inputs, catalog), ctx.policy(state.request))
    return [
        StepCompleted(
            task_id=step.task_id,
            step_id=step.id,
            tool=step.tool,
            planned_tool=step.tool,
            output=output if isinstance(output, dict) else {},
            attempts=0,
            deviations=(SIMULATED,),
            simulated=True,
            would_need_approval=needs_approval(step, catalog, state, approve_below),
            estimate=estimate,
        )
    ]


def approval_reasons(
    step: StepIntent, catalog: Catalog | None, state: WorkflowState | None = None, approve_below: float | None = None
) -> list[str]:
    """Why a step waits for a person (empty: it does not).

    Its tool's spec in this agent's own catalog (with the deployment's policy) decides; the
    step's own flag can add approval, never take it away. With ``approve_below`` (the
    deployment's threshold), a task or plan confidence below it adds approval: read from the
    workflow's folded ``state`` (the plan of the validated ``plan_proposed``), never from the
    ``step_ready`` event, so a step cannot vouch for itself (``planner.confidence``).
    """
    spec = catalog.get(step.tool) if catalog is not None else None
    reasons = []
    if step.requires_approval or (spec is not None and spec.requires_approval):
        reasons.append(f"tool {step.tool} requires approval")
    if state is not None:
        task = state.tasks.get(step.task_id)
        if task is not None and task.task.approval:  # a flow's node a person confirms (planner.flows)
            reasons.append(f"flow node {step.task_id!r} is confirmed by a person")
        doubt = approval_reason(state.plan, task.task if task is not None else None, approve_below)
        if doubt is not None:
            reasons.append(doubt)
    return reasons


def needs_approval(
    step: StepIntent, catalog: Catalog | None, state: WorkflowState | None = None, approve_below: float | None = None
) -> bool:
    """Whether a step waits for a person (:func:`approval_reasons`)."""
    return bool(approval_reasons(step, catalog, state, approve_below))


def step_pool(state: WorkflowState, step: StepIntent) -> str | None:
    """The agent pool of the task ``step`` belongs to (None: no pool)."""
    task = state.tasks.get(step.task_id)
    return task.task.pool if task is not None else None


def pool_catalog(catalog: Catalog | None, pool: str | None, pools: agent_pools.Pools | None) -> Catalog | None:
    """The tools a step of ``pool`` may use: the pool's (a recovery's alternative too), else the catalog."""
    return agent_pools.narrowed(catalog, pool, pools) if catalog is not None else None


def make_spec(
    approval_timeout: timedelta,
    *,
    catalog: Catalog | None = None,
    approve_below: float | None = None,
    pools: agent_pools.Pools | None = None,
    pool: str | None = agent_pools.EVERY_POOL,
    rate_limit_wait_s: float = 0.0,
    safety: SafetyContext = NO_DEPLOYMENT,
    on_failure: str = "fail",
) -> ActorSpec:
    """The agent; given the tool ``catalog`` it consults the model too (module docstring).
    ``safety``: the deployment's context of the tools' safety rules, which a compensating call
    is checked against before it runs (:func:`actors.compensation.refusal`); ``on_failure`` the
    deployment's default for requests that set none: a workflow that compensates calls its tools
    ``compensable`` (fs.write refuses a write it could not undo).

    A ``recover`` the budget denies for the provider's rate limit, with ``retry_after_s`` at most
    ``rate_limit_wait_s``, waits that long once (``consultation_waiting``, a durable timer: the agent
    defers it to its ``until``) and asks again; otherwise the step fails as without the model.

    A step whose task's (or plan's) confidence is below ``approve_below`` waits for approval.
    ``pools`` are the deployment's agent pools and ``pool`` the one this agent serves (None: the
    steps without a pool; :data:`~planner.pools.EVERY_POOL`, the default: every step, as a replay
    does). It leaves the steps of other pools to their agents, and refuses (``step_failed``,
    ``pool_refused``) a step its pool may not run.
    """

    def mine(state: WorkflowState, step: StepIntent) -> bool:
        return agent_pools.serves(pool, step_pool(state, step), pools)

    def undoes(state: WorkflowState) -> bool:
        """Whether the workflow compensates when it fails (its request's ``on_failure``, else the deployment's)."""
        return compensation.wants(state.request, on_failure)

    async def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        data = rec.event.data
        if state.done:
            return []
        if compensation.frozen(state):  # the workflow undoes its steps: nothing else moves
            if not isinstance(data, CompensationStarted | StepCompensated):
                return []
            st = compensation.next_to_undo(state)
            if st is None or not mine(state, st.step):
                return []
            return [await compensation.undo(ctx, state, st, catalog, safety)]
        match data:
            case StepReady():
                st = state.steps.get(data.step.id)
                if st is None or st.status != "ready" or not mine(state, st.step):
                    return []  # ran, or waiting for approval, already; or another pool's step
                sp = step_pool(state, st.step)
                refused = agent_pools.refusal(sp, st.step, pools)
                if refused is not None:
                    return [StepFailed(task_id=st.step.task_id, step_id=st.step.id, tool=st.step.tool, error=refused)]
                tools = pool_catalog(catalog, sp, pools)
                if state.request is not None and state.request.dry_run:
                    return await simulate_step(ctx, state, st.step, tools, approve_below)  # listed, not waited on
                reasons = approval_reasons(st.step, tools, state, approve_below)
                if reasons:
                    reason = "; ".join(reasons)
                    return [ApprovalRequested(step=st.step, reason=reason, deadline=ctx.now() + approval_timeout)]
                return await run_step(ctx, state, st.step, tools, rate_limit_wait_s, compensable=undoes(state))
            case ApprovalRequested():
                st = state.steps.get(data.step.id)
                if st is not None and not mine(state, st.step):
                    return []
                if st is None or st.status != "awaiting_approval":
                    return []  # decided already
                if ctx.now() < data.deadline:
                    return Defer(until=data.deadline)
                return [ApprovalDenied(step_id=data.step.id, by="timeout", reason=f"no decision by {data.deadline}")]
            case ApprovalGranted():
                st = state.steps.get(data.step_id)
                if st is None or st.status != "approved" or not mine(state, st.step):
                    return []
                tools = pool_catalog(catalog, step_pool(state, st.step), pools)
                if st.proposal is not None:  # the model's proposal, cleared by the validator, approved
                    return await run_proposal(ctx, state, st.proposal, tools, undoes(state))
                return await run_step(ctx, state, st.step, tools, rate_limit_wait_s, compensable=undoes(state))
            case ProposalValidated():
                st = state.steps.get(data.step_id)
                if st is None or st.status != "cleared" or st.proposal is None or not mine(state, st.step):
                    return []
                if data.approval:
                    reason = "; ".join(data.approval)
                    step = proposed_step(st.proposal)
                    return [ApprovalRequested(step=step, reason=reason, deadline=ctx.now() + approval_timeout)]
                tools = pool_catalog(catalog, step_pool(state, st.step), pools)
                return await run_proposal(ctx, state, st.proposal, tools, undoes(state))
            case ConsultationWaiting():
                st = state.steps.get(data.step_id) if data.step_id else None  # none: the planner's or decomposer's
                if st is None or st.status != "waiting" or st.wait_id != rec.event.id or not mine(state, st.step):
                    return []  # asked again already
                deferred = rate_wait.not_yet(ctx, data)
                if deferred is not None:
                    return deferred
                tools = pool_catalog(catalog, step_pool(state, st.step), pools)
                return await resume_after_wait(ctx, state, rec, data, tools, rate_limit_wait_s, undoes(state))
            case ProposalRejected():
                st = state.steps.get(data.step_id)
                if st is None or st.status != "refused" or st.proposal is None or not mine(state, st.step):
                    return []
                if st.proposal.action == "output":  # the call failed after all: the run goes on
                    tools = pool_catalog(catalog, step_pool(state, st.step), pools)
                    run = resumed(ctx, state, st.proposal, tools, undoes(state))
                    run.can_skip, run.wait_max_s = skippable(state, st.step), rate_limit_wait_s
                    why = "; ".join(c.message for c in failed_checks(data.checks)) or "no reason given"
                    return await after_interpretation(run, st.proposal, why)
                return refused_proposal(state, st.proposal, data.checks)
            case ApprovalDenied():
                st = state.steps.get(data.step_id)
                if st is None or st.status != "denied" or not mine(state, st.step):
                    return []
                error = ErrorInfo(code="approval_denied", message=f"denied by {data.by}: {data.reason or 'no reason'}")
                return [StepFailed(task_id=st.step.task_id, step_id=st.step.id, tool=st.step.tool, error=error)]
        return []

    # The deadline's denial must not race a person's decision: both append expecting the
    # state in which the step was awaiting approval, so exactly one of them lands.
    return ActorSpec(
        kind="agent",
        handles=HANDLES,
        handler=handle,
        consistent=frozenset({ApprovalRequested.TYPE}),
        pool=None if pool == agent_pools.EVERY_POOL else pool,
    )
