"""Compensation: a failing workflow that asks for it undoes its completed steps, last first.

A workflow compensates when its request says ``on_failure: compensate`` (or, when it says nothing,
the deployment's ``on_failure`` setting does), it is not a dry run, and it has completed steps.
Then the planner, where it would have emitted ``workflow_failed``, emits ``compensation_started``
instead: the failure as it stands, the steps to undo in reverse order of completion (those whose
tool declares a compensating tool, ``ToolSpec.compensation``: ``fs.write`` → ``fs.restore``) and
the completed steps that cannot be undone. The agent undoes them one after another, each on the
event before it (``compensation_started``, then each ``step_compensated``), calling the
compensating tool with :class:`~planner.builtin_tools.CompensationInput` (the call it undoes, and
the idempotency key that call ran with) under the key ``<wf>/<step>:compensate``: a crash between
the tool and its ``step_compensated`` is redelivered and the tool, idempotent by that key, does
nothing twice. Once every step is settled the planner emits ``workflow_failed`` with what was
undone (``compensated``) and what was not (``not_undone``): failed and compensated.

A compensating call is checked before it runs as the validator checks a step (:func:`refusal`): its
tool and its inputs by ``check_step`` (the tool known and allowed, the inputs strictly valid, its
safety rule), and the call it undoes by that call's tool's safety rule (``fs.restore`` puts back
the file the write named: a path outside the workspace is refused before anything is touched). A
refused compensation runs nothing: its ``step_compensated`` carries the refusal
(``compensation_refused``, the failed checks) and the step is listed as not undone.

While a workflow compensates nothing else moves: the planner dispatches nothing, the validator
clears nothing and the agent starts no step (:func:`frozen`).
"""

from __future__ import annotations

from typing import Any, Final

from cadre.actors.context import Context, ToolFailure
from cadre.bus.events import CompensationStarted, Event, StepCompensated, WorkflowFailed, WorkflowRequested
from cadre.bus.plan import ErrorInfo
from cadre.planner.builtin_tools import compensation_specs
from cadre.planner.catalog import Catalog
from cadre.planner.refs import RefError, resolve
from cadre.planner.safety import SafetyContext
from cadre.planner.validation import NO_DEPLOYMENT, check_step, failed
from cadre.store.state import StepState, WorkflowState

COMPENSATE: Final = "compensate"
CALLS: Final = frozenset({"retry", "alternative"})


def frozen(state: WorkflowState) -> bool:
    """Whether the workflow is undoing its steps, or is being cancelled (nothing else may move)."""
    return state.status in ("compensating", "cancelling")


def wants(request: WorkflowRequested | None, default: str) -> bool:
    """Whether a failing workflow of ``request`` compensates (its own ``on_failure``, else ``default``)."""
    if request is None or request.dry_run:
        return False
    return (request.on_failure or default) == COMPENSATE


def _skipped(st: StepState) -> bool:
    return st.proposal is not None and st.proposal.action == "skip"


def undo_plan(state: WorkflowState, catalog: Catalog) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(steps to undo, last completed first; completed steps that cannot be undone)."""
    undo: list[str] = []
    cannot: list[str] = []
    for sid in reversed(state.completed_steps):
        st = state.steps.get(sid)
        if st is None or st.status != "completed" or _skipped(st):
            continue  # superseded by a later attempt, or skipped: nothing ran
        spec = catalog.get(st.tool or st.step.tool)
        (undo if spec is not None and spec.compensation is not None else cannot).append(sid)
    return tuple(undo), tuple(reversed(cannot))


def instead_of_failing(state: WorkflowState, events: list[Event], catalog: Catalog, default: str) -> list[Event]:
    """``events`` with a ``workflow_failed`` turned into ``compensation_started`` when the workflow
    compensates and has steps to undo (with none, it fails at once, listing what is not undone)."""
    if not wants(state.request, default) or not any(isinstance(e, WorkflowFailed) for e in events):
        return events
    undo, cannot = undo_plan(state, catalog)
    out: list[Event] = []
    for e in events:
        if not isinstance(e, WorkflowFailed):
            out.append(e)
        elif undo:
            out.append(
                CompensationStarted(
                    reason=e.reason, message=e.message, task_id=e.task_id, steps=undo, not_undone=cannot
                )
            )
        else:
            out.append(WorkflowFailed(reason=e.reason, message=e.message, task_id=e.task_id, not_undone=cannot))
    return out


def finished(state: WorkflowState) -> list[Event]:
    """The planner's answer to a ``step_compensated``: the workflow's failure once every step is settled."""
    c = state.compensation
    if c is None or not frozen(state):
        return []
    settled = {sid: state.steps[sid].compensated for sid in c.steps if sid in state.steps}
    if any(v is None for v in settled.values()):
        return []
    done = tuple(sid for sid in c.steps if settled.get(sid))
    failed = tuple(sid for sid in c.steps if settled.get(sid) is False)
    # A step that was running when the compensation started and completed meanwhile is not undone either.
    late = tuple(sid for sid in state.completed_steps if sid not in c.steps and sid not in c.not_undone)
    not_undone = (*c.not_undone, *failed, *late)
    if c.reason == "cancelled":  # a cancel started it (``actors.cancel``): the workflow ends cancelled
        from cadre.actors.cancel import cancelled_after_compensation

        return [cancelled_after_compensation(state, done, not_undone)]
    said = f"; compensated: undid {', '.join(done) or 'nothing'}"
    if not_undone:
        said += f"; not undone: {', '.join(not_undone)}"
    return [
        WorkflowFailed(
            reason=c.reason, message=c.message + said, task_id=c.task_id, compensated=done, not_undone=not_undone
        )
    ]


def next_to_undo(state: WorkflowState) -> StepState | None:
    """The next step the compensation undoes (None: none is left)."""
    c = state.compensation
    if c is None or not frozen(state):
        return None
    for sid in c.steps:
        st = state.steps.get(sid)
        if st is not None and st.compensated is None:
            return st
    return None


def call_key(workflow_id: str, st: StepState) -> str:
    """The idempotency key the step's completing call ran with (``actors.agent``'s rule)."""
    tool = st.tool or st.step.tool
    p = st.proposal
    suffix = ""
    if p is not None and p.action in CALLS and p.tool == tool:
        suffix = "#retry" if p.action == "retry" else "#alt"
    return f"{workflow_id}/{st.step.id}:{tool}{suffix}"


def _inputs(state: WorkflowState, st: StepState) -> dict[str, Any]:
    p = st.proposal
    if p is not None and p.action in CALLS:
        return dict(p.inputs)
    from cadre.actors.agent import upstream_outputs  # the agent's rule for what a step reads

    try:
        resolved: dict[str, Any] = resolve(st.step.inputs, upstream_outputs(state, st.step))
    except RefError:
        return dict(st.step.inputs)
    return resolved


def refusal(
    tool: str, compensation: str, inputs: dict[str, Any], catalog: Catalog, safety: SafetyContext = NO_DEPLOYMENT
) -> ErrorInfo | None:
    """Why the compensating call (``compensation`` with ``inputs``, undoing a call of ``tool``) may not
    run, or None: it passes the validator's step check (its tool known and allowed, strict inputs,
    its safety rule) and the undone call's inputs pass ``tool``'s safety rule. The size limit of a
    step's inputs is not applied: the call carries the undone call's output, which may be larger."""
    runnable = Catalog([*catalog.values(), *(s for s in compensation_specs() if s.name not in catalog)])
    who = f"compensation {compensation}"
    checks = [c for c in check_step(compensation, inputs, runnable, safety=safety, who=who) if c.name != "inputs_size"]
    undone = inputs.get("inputs")
    if isinstance(undone, dict) and tool in runnable:
        found = check_step(tool, undone, runnable, safety=safety, who=f"{who} (the {tool} call it undoes)")
        checks += [c for c in found if c.name == "inputs_safe"]
    refused = failed(checks)
    if not refused:
        return None
    said = "; ".join(c.message for c in refused)
    return ErrorInfo(code="compensation_refused", message=f"refused before it ran: {said}")


async def undo(
    ctx: Context,
    state: WorkflowState,
    st: StepState,
    catalog: Catalog | None,
    safety: SafetyContext = NO_DEPLOYMENT,
) -> StepCompensated:
    """Run the compensating tool of ``st``'s tool, once (its own idempotency key), if it passes
    :func:`refusal`; refused, nothing runs and the step is not undone."""
    tool = st.tool or st.step.tool
    spec = catalog.get(tool) if catalog is not None else None
    if spec is None or spec.compensation is None:
        error = ErrorInfo(code="no_compensation", message=f"{tool} declares no compensating tool")
        return StepCompensated(step_id=st.step.id, tool="", error=error)
    inputs = {
        "tool": tool,
        "inputs": _inputs(state, st),
        "output": st.output or {},
        "key": call_key(ctx.workflow_id, st),
    }
    refused = refusal(tool, spec.compensation, inputs, catalog, safety) if catalog is not None else None
    if refused is not None:
        return StepCompensated(step_id=st.step.id, tool=spec.compensation, error=refused)
    try:
        out = await ctx.call_tool(
            spec.compensation, inputs, idempotency_key=f"{ctx.workflow_id}/{st.step.id}:compensate"
        )
    except ToolFailure as exc:
        return StepCompensated(step_id=st.step.id, tool=spec.compensation, error=exc.error)
    return StepCompensated(step_id=st.step.id, tool=spec.compensation, output=out)
