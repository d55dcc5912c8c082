"""Workflow state as a fold over its events: no I/O, no clock, callable from anywhere.

``fold(events)`` is the only way to learn a workflow's state: nothing else holds truth.
``apply`` updates a state in place (one dict write per event, so folding a long workflow
stays linear), but it never changes a task's or a step's entry: it puts a new one in its
place. So a :func:`forked` state, a copy of the struct and of its two dicts, shares every
entry with the state it was forked from, and folding into either leaves the other as it was.
That is how the actors' state cache keeps folding while a handler awaits with the state it
was given (see ``actors/state_cache.py``). Handlers treat the state they are given as
read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal, assert_never

import msgspec

from cadre.bus.effects import Estimated
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
    chain_hash,
)
from cadre.bus.plan import Check, ErrorInfo, Plan, StepIntent, Task
from cadre.store.records import Record, StoredEvent

Status = Literal[
    "new", "requested", "planned", "running", "compensating", "cancelling", "completed", "failed", "cancelled"
]
ENDED: tuple[Status, ...] = ("completed", "failed", "cancelled")
TaskStatus = Literal["pending", "ready", "running", "completed", "failed", "skipped"]
StepStatus = Literal[
    "proposed",
    "ready",
    "awaiting_approval",
    "approved",
    "denied",
    "completed",
    "failed",
    "validating",  # a model's proposal for it waits for the validator's verdict
    "cleared",  # the validator cleared the proposal
    "refused",  # the validator refused the proposal
    "waiting",  # a consultation for it waits out the provider's rate limit (``consultation_waiting``)
    "rejected",  # the validator refused it on its resolved inputs (``steps_rejected`` naming it)
]


class StepState(msgspec.Struct, frozen=True, kw_only=True):
    step: StepIntent
    status: StepStatus = "proposed"
    tool: str | None = None  # the tool that ran it (may be a fallback)
    output: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    approval_deadline: datetime | None = None
    approval_request_id: str | None = None  # the approval_requested event a decision must answer
    approved_by: str | None = None
    # A dry run's step: ``output`` is a placeholder, nothing ran (``StepCompleted.simulated``).
    simulated: bool = False
    would_need_approval: bool = False
    estimate: Estimated | None = None
    # A model's decision about the step (``proposal_made``) and the id of that event, which the
    # validator's verdict names; the step runs the proposal, not its plan, once it is cleared.
    proposal: ProposalMade | None = None
    proposal_id: str | None = None
    wait_id: str | None = None  # the consultation_waiting event the step waits on
    # Compensation (``step_compensated``): True once undone, False when its compensation failed.
    compensated: bool | None = None
    # The inputs the validator checked resolved (``step_ready.resolved_inputs``): what the agent runs.
    resolved_inputs: dict[str, Any] | None = None
    rejected: tuple[Check, ...] = ()  # the validator's refusal of its resolved inputs


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    task: Task
    status: TaskStatus = "pending"
    attempt: int = 0
    step_ids: list[str] = msgspec.field(default_factory=list)  # the current attempt's steps, in order
    output: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    rejected: tuple[Check, ...] = ()
    simulated: bool = False  # completed by a simulated step (a dry run): ``output`` is a placeholder
    # A flow's task with branches (``branch_taken``): whether the planner chose where to go on, and where.
    branched: bool = False
    branch: str | None = None


ChildStatus = Literal["running", "completed", "failed", "cancelled"]


class ChildState(msgspec.Struct, frozen=True, kw_only=True):
    """A child workflow a task started (``child_requested``) and how it ended, once it has."""

    task_id: str
    child_id: str
    attempt: int = 1
    status: ChildStatus = "running"
    error: ErrorInfo | None = None


class WorkflowState(msgspec.Struct, kw_only=True):
    """What a workflow's events add up to (``last_seq``: the stream sequence folded up to).

    ``last_data`` keeps the stored bytes of the message at ``last_seq``, so whoever holds a
    state can chain the next event to it (:attr:`last_hash`) without reading the log; the
    hash is computed when asked for, so folding stays as cheap as it was.
    """

    workflow_id: str
    status: Status = "new"
    request: WorkflowRequested | None = None
    plan: Plan | None = None
    revision: int = 0
    plan_source: str | None = None
    rejected: tuple[Check, ...] = ()
    tasks: dict[str, TaskState] = msgspec.field(default_factory=dict)
    steps: dict[str, StepState] = msgspec.field(default_factory=dict)
    result: Any = None
    failure: ErrorInfo | None = None
    failed_task: str | None = None
    dead_letters: int = 0
    forged: int = 0  # inputs the actors refused as forged (``forged_event``)
    events: int = 0
    last_seq: int = 0
    last_data: bytes = b""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    # The steps completed for real (not simulated), in the order they completed (a tuple: replaced,
    # never changed in place, so forked states do not share changes).
    completed_steps: tuple[str, ...] = ()
    compensation: CompensationStarted | None = None  # the workflow failed and undoes its steps
    deadline: datetime | None = None  # past it the workflow is cancelled (``deadline_set``)
    cancel: CancelRequested | None = None  # the first cancel asked for (``cancel_requested``)
    cancelled_by: str | None = None  # who cancelled it (``workflow_cancelled``)
    # Dead letters re-delivered (``redriven``): the ``handler_failed`` ids, in order; and the status
    # the workflow had before it last failed, which a redrive of its dead letter gives back.
    redriven: tuple[str, ...] = ()
    before_failure: Status | None = None
    # The consultations of the planner and the decomposer that waited out a rate limit: their
    # wait_key and the consultation_waiting event's id (replaced, never changed in place).
    waits: dict[str, str] = msgspec.field(default_factory=dict)
    # The child workflows its tasks started, by child id, in the order started (replaced, never
    # changed in place: ``actors.children``).
    children: dict[str, ChildState] = msgspec.field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in ENDED

    @property
    def resolved_steps(self) -> bool:
        """Whether the validator clears each step on its resolved inputs (the request's version
        marker, ``workflow_requested.resolved_steps``), and not the planner a task's later steps.
        A dry run keeps the planned check: its outputs are placeholders and no tool runs."""
        return self.request is not None and self.request.resolved_steps and not self.request.dry_run

    @property
    def last_hash(self) -> str:
        """What the workflow's next event carries as ``prev`` ("" while it has no events)."""
        return chain_hash(self.last_data) if self.last_seq else ""

    def task_status(self) -> dict[str, str]:
        return {tid: t.status for tid, t in self.tasks.items()}


def apply(state: WorkflowState, stored: StoredEvent) -> None:
    """Fold one more event into ``state`` (in place)."""
    e = stored.event
    data = e.data
    state.events += 1
    state.last_seq = stored.seq
    state.last_data = stored.data
    fold_one = _FOLDS.get(type(data))
    if fold_one is None:  # not an event type (a subclass of one is folded as that type)
        fold_one = next((f for cls, f in _FOLDS.items() if isinstance(data, cls)), None)
        if fold_one is None:
            assert_never(data)  # type: ignore[arg-type]
    fold_one(state, e, data)


def _fold_workflow_requested(state: WorkflowState, e: Envelope, data: WorkflowRequested) -> None:
    state.status = "requested"
    state.request = data
    state.started_at = e.at


def _fold_plan_proposed(state: WorkflowState, _e: Envelope, data: PlanProposed) -> None:
    state.status = "planned"
    state.plan = data.plan
    state.revision = data.revision
    state.plan_source = data.source
    state.tasks = _revised_tasks(state.tasks, data.plan)


def _fold_plan_validated(state: WorkflowState, _e: Envelope, data: PlanValidated) -> None:
    state.status = "running"


def _fold_plan_rejected(state: WorkflowState, _e: Envelope, data: PlanRejected) -> None:
    state.rejected = data.checks


def _fold_task_ready(state: WorkflowState, _e: Envelope, data: TaskReady) -> None:
    _task(state, data.task.id, status="ready", attempt=data.attempt, step_ids=[], error=None)


def _fold_steps_proposed(state: WorkflowState, _e: Envelope, data: StepsProposed) -> None:
    _task(state, data.task_id, status="running", step_ids=[s.id for s in data.steps])
    for s in data.steps:
        state.steps[s.id] = StepState(step=s)


def _fold_steps_rejected(state: WorkflowState, _e: Envelope, data: StepsRejected) -> None:
    _task(state, data.task_id, rejected=data.checks)
    if data.step_id is not None and data.step_id in state.steps:
        _step(state, data.step_id, status="rejected", rejected=data.checks)


def _fold_step_ready(state: WorkflowState, _e: Envelope, data: StepReady) -> None:
    _new_step(state, data.step, status="ready", resolved_inputs=data.resolved_inputs)


def _fold_approval_requested(state: WorkflowState, e: Envelope, data: ApprovalRequested) -> None:
    _new_step(
        state,
        data.step,
        status="awaiting_approval",
        approval_deadline=data.deadline,
        approval_request_id=e.id,
    )


def _fold_approval_granted(state: WorkflowState, _e: Envelope, data: ApprovalGranted) -> None:
    _step(state, data.step_id, status="approved", approved_by=data.by)


def _fold_approval_denied(state: WorkflowState, _e: Envelope, data: ApprovalDenied) -> None:
    _step(state, data.step_id, status="denied")


def _fold_step_completed(state: WorkflowState, _e: Envelope, data: StepCompleted) -> None:
    _step(
        state,
        data.step_id,
        status="completed",
        tool=data.tool,
        output=data.output,
        simulated=data.simulated,
        would_need_approval=data.would_need_approval,
        estimate=data.estimate,
    )
    if not data.simulated:
        state.completed_steps = (*state.completed_steps, data.step_id)
    # A task is complete when the last step of its current attempt is: its output is that step's.
    t = state.tasks.get(data.task_id)
    if t is not None and t.step_ids and t.step_ids[-1] == data.step_id and t.status == "running":
        _task(state, data.task_id, status="completed", output=data.output, simulated=data.simulated)


def _fold_step_failed(state: WorkflowState, _e: Envelope, data: StepFailed) -> None:
    _step(state, data.step_id, status="failed", error=data.error)


def _fold_workflow_completed(state: WorkflowState, e: Envelope, data: WorkflowCompleted) -> None:
    state.status = "completed"
    state.result = data.result
    state.ended_at = e.at


def _fold_workflow_failed(state: WorkflowState, e: Envelope, data: WorkflowFailed) -> None:
    state.before_failure = state.status
    state.status = "failed"
    state.failure = ErrorInfo(code=data.reason, message=data.message)
    state.failed_task = data.task_id
    state.ended_at = e.at
    if data.task_id is not None:
        _task(state, data.task_id, status="failed", error=state.failure)


def _fold_effects_recorded(state: WorkflowState, _e: Envelope, data: EffectsRecorded) -> None:
    pass


def _fold_handler_failed(state: WorkflowState, _e: Envelope, data: HandlerFailed) -> None:
    state.dead_letters += 1


def _fold_forged_event(state: WorkflowState, _e: Envelope, data: ForgedEvent) -> None:
    state.forged += 1


def _fold_consultation_waiting(state: WorkflowState, e: Envelope, data: ConsultationWaiting) -> None:
    if data.step_id:
        _step(state, data.step_id, status="waiting", wait_id=e.id)
    else:  # the planner's or the decomposer's
        key = wait_key(data.call, data.task_id, data.attempts, data.revision)
        state.waits = {**state.waits, key: e.id}


def _fold_deadline_set(state: WorkflowState, _e: Envelope, data: DeadlineSet) -> None:
    state.deadline = data.until


def _fold_cancel_requested(state: WorkflowState, _e: Envelope, data: CancelRequested) -> None:
    if state.cancel is None and not state.done:
        state.cancel = data
        if state.status != "compensating":
            state.status = "cancelling"


def _fold_workflow_cancelled(state: WorkflowState, e: Envelope, data: WorkflowCancelled) -> None:
    state.status = "cancelled"
    state.failure = ErrorInfo(code="cancelled", message=data.reason)
    state.cancelled_by = data.by
    state.ended_at = e.at


def _fold_redriven(state: WorkflowState, _e: Envelope, data: Redriven) -> None:
    state.redriven = (*state.redriven, data.handler_failed_id)
    if state.status == "failed" and state.failure is not None and state.failure.code == "handler_failed":
        state.status = state.before_failure or "running"
        state.failure = None
        state.ended_at = None


def _fold_compensation_started(state: WorkflowState, _e: Envelope, data: CompensationStarted) -> None:
    state.status = "compensating"
    state.compensation = data


def _fold_step_compensated(state: WorkflowState, _e: Envelope, data: StepCompensated) -> None:
    _step(state, data.step_id, compensated=data.error is None)


def _fold_proposal_made(state: WorkflowState, e: Envelope, data: ProposalMade) -> None:
    _step(state, data.step_id, status="validating", proposal=data, proposal_id=e.id)


def _fold_proposal_validated(state: WorkflowState, _e: Envelope, data: ProposalValidated) -> None:
    if _proposed(state, data.step_id, data.proposal_id):
        _step(state, data.step_id, status="cleared")


def _fold_proposal_rejected(state: WorkflowState, _e: Envelope, data: ProposalRejected) -> None:
    if _proposed(state, data.step_id, data.proposal_id):
        _step(state, data.step_id, status="refused")


def _fold_branch_taken(state: WorkflowState, _e: Envelope, data: BranchTaken) -> None:
    _task(state, data.task_id, branched=True, branch=data.to)
    for tid in data.skipped:
        _task(state, tid, status="skipped")


def _fold_child_requested(state: WorkflowState, _e: Envelope, data: ChildRequested) -> None:
    state.children = {
        **state.children,
        data.child_id: ChildState(task_id=data.task_id, child_id=data.child_id, attempt=data.attempt),
    }
    _task(state, data.task_id, status="running", attempt=data.attempt, step_ids=[], error=None)


def _fold_child_completed(state: WorkflowState, _e: Envelope, data: ChildCompleted) -> None:
    child = state.children.get(data.child_id)
    if child is not None and child.status == "running":
        state.children = {**state.children, data.child_id: msgspec.structs.replace(child, status="completed")}
        t = state.tasks.get(data.task_id)
        if t is not None and t.status == "running" and t.attempt == child.attempt:
            _task(state, data.task_id, status="completed", output=data.output)


def _fold_child_failed(state: WorkflowState, _e: Envelope, data: ChildFailed) -> None:
    child = state.children.get(data.child_id)
    if child is not None and child.status == "running":
        status: ChildStatus = "cancelled" if data.status == "cancelled" else "failed"
        changed = msgspec.structs.replace(child, status=status, error=data.error)
        state.children = {**state.children, data.child_id: changed}


_FOLDS: dict[type[Event], Callable[[WorkflowState, Envelope, Any], None]] = {
    WorkflowRequested: _fold_workflow_requested,
    PlanProposed: _fold_plan_proposed,
    PlanValidated: _fold_plan_validated,
    PlanRejected: _fold_plan_rejected,
    TaskReady: _fold_task_ready,
    StepsProposed: _fold_steps_proposed,
    StepsRejected: _fold_steps_rejected,
    StepReady: _fold_step_ready,
    ApprovalRequested: _fold_approval_requested,
    ApprovalGranted: _fold_approval_granted,
    ApprovalDenied: _fold_approval_denied,
    StepCompleted: _fold_step_completed,
    StepFailed: _fold_step_failed,
    WorkflowCompleted: _fold_workflow_completed,
    WorkflowFailed: _fold_workflow_failed,
    EffectsRecorded: _fold_effects_recorded,
    HandlerFailed: _fold_handler_failed,
    ForgedEvent: _fold_forged_event,
    ConsultationWaiting: _fold_consultation_waiting,
    DeadlineSet: _fold_deadline_set,
    CancelRequested: _fold_cancel_requested,
    WorkflowCancelled: _fold_workflow_cancelled,
    Redriven: _fold_redriven,
    CompensationStarted: _fold_compensation_started,
    StepCompensated: _fold_step_compensated,
    ProposalMade: _fold_proposal_made,
    ProposalValidated: _fold_proposal_validated,
    ProposalRejected: _fold_proposal_rejected,
    BranchTaken: _fold_branch_taken,
    ChildRequested: _fold_child_requested,
    ChildCompleted: _fold_child_completed,
    ChildFailed: _fold_child_failed,
}
"""How each event type changes a state (:func:`apply`): one lookup by type instead of a match
over every type (the fold runs once per event, live and under replay)."""


def current_child(state: WorkflowState, task_id: str) -> ChildState | None:
    """The child the task's current attempt started, if it started one."""
    t = state.tasks.get(task_id)
    if t is None:
        return None
    for child in state.children.values():
        if child.task_id == task_id and child.attempt == t.attempt:
            return child
    return None


def skip(state: WorkflowState, record: Record) -> None:
    """Move ``state`` past a message of its workflow that may not move it (malformed, or an event
    that is forged): it changes nothing, but it holds a place in stream order, so the next event
    chains to its bytes."""
    state.last_seq = record.seq
    state.last_data = record.data


def _revised_tasks(previous: dict[str, TaskState], plan: Plan) -> dict[str, TaskState]:
    """The tasks of a (re-)plan: a completed task the new revision keeps unchanged keeps its
    state and output; every other task starts pending."""
    tasks = {}
    for t in plan.nodes:
        prev = previous.get(t.id)
        tasks[t.id] = prev if prev is not None and prev.status == "completed" and prev.task == t else TaskState(task=t)
    return tasks


def wait_key(call: str, task_id: str = "", attempt: int = 0, revision: int = 0) -> str:
    """What names a planner's or decomposer's consultation wait in ``WorkflowState.waits`` (an
    ``adapt``'s names the plan ``revision`` too: a later revision's task starts its attempts over)."""
    key = f"{call}:{task_id}:{attempt}" if task_id else call
    return f"{key}@{revision}" if revision else key


def _task(state: WorkflowState, task_id: str, **changes: Any) -> None:
    """Put a changed copy in place of the task's entry (the entry itself never changes)."""
    t = state.tasks.get(task_id)
    if t is not None:
        state.tasks[task_id] = msgspec.structs.replace(t, **changes)


def _step(state: WorkflowState, step_id: str, **changes: Any) -> None:
    """Put a changed copy in place of the step's entry (the entry itself never changes)."""
    st = state.steps.get(step_id)
    if st is not None:
        state.steps[step_id] = msgspec.structs.replace(st, **changes)


def _proposed(state: WorkflowState, step_id: str, proposal_id: str) -> bool:
    """Whether ``proposal_id`` is the proposal the step waits on a verdict for."""
    st = state.steps.get(step_id)
    return st is not None and st.status == "validating" and st.proposal_id == proposal_id


def _new_step(state: WorkflowState, step: StepIntent, **changes: Any) -> None:
    """As :func:`_step`, starting from a proposed entry if the step has none yet."""
    st = state.steps.get(step.id)
    state.steps[step.id] = msgspec.structs.replace(st if st is not None else StepState(step=step), **changes)


def forked(state: WorkflowState) -> WorkflowState:
    """A copy of ``state`` that :func:`apply` and :func:`skip` can change while ``state`` stays
    as it is: the struct and its two dicts are copied (O(tasks + steps), no entry is: apply
    replaces entries rather than changing them)."""
    return msgspec.structs.replace(state, tasks=dict(state.tasks), steps=dict(state.steps))


def fold(workflow_id: str, events: Iterable[StoredEvent], state: WorkflowState | None = None) -> WorkflowState:
    """The workflow's state after ``events``, continuing from ``state`` (which it updates) when given."""
    state = state if state is not None else WorkflowState(workflow_id=workflow_id)
    for stored in events:
        apply(state, stored)
    return state
