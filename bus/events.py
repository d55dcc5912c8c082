"""The envelope and the event types: every message between actors is one of these.

An event is an :class:`Envelope` whose ``data`` is one of the payload Structs below. The
union :data:`Event` is the schema and the routing table: each payload has a stable
``TYPE`` (its wire name, the last token of its subject), and handlers and folds dispatch
with ``match`` over the union, ending in ``assert_never``.

Wire form (JSON, so any NATS client can read it)::

    {"id": "9f2c…", "type": "plan_proposed", "workflow_id": "wf-1", "causation_id": "1a7e…",
     "actor": "planner", "at": "2026-11-21T10:00:00.123456Z", "v": 2,
     "prev": "5b0c…", "basis": 41, "data": {…}, "effects": []}

Compatibility rules: a new field gets a default; a field is never renamed or retyped in
place (add a new one, or bump the type's version in :data:`VERSIONS` and register an
upcaster in :mod:`bus.upcast`); decoders ignore unknown fields.

Versions: ``v`` is the version of the event's wire form, envelope and payload together, per
type (:data:`VERSIONS`). A change to the envelope moves every type; a change to one payload
moves that type only. v2 (every type): the envelope gained ``prev`` and ``basis`` (the
integrity chain); ``handler_failed`` v2 also split ``error.code`` (see :mod:`bus.upcast`).
v3 (every type): ``effects`` (on the envelope, and in ``effects_recorded``) are typed
(:mod:`bus.effects`); older ones are read through :func:`bus.upcast.effect_v2`.
Events of v1 carry no chain.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from cadre.bus.effects import Effect, Estimated
from cadre.bus.plan import Check, ErrorInfo, Plan, StepIntent, Task

SCHEMA_VERSION = 3
"""The envelope's version: v2 added ``prev`` and ``basis``, v3 typed ``effects`` (:mod:`bus.effects`).
Each type's own version is in :data:`VERSIONS`."""

CHAIN_VERSION = 2
"""The first version whose events carry ``prev`` (the integrity chain): older events are unchained."""


class ParentLink(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where a child workflow comes from: the parent workflow and its task that started it, the
    tree's ``root`` (whose budget every workflow of the tree spends) and the child's ``depth``
    (the root's children are at 1; :mod:`cadre.planner.children`)."""

    workflow_id: str
    task_id: str
    root: str
    depth: int = 1


class WorkflowRequested(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A request arrived: the first event of every workflow (a child workflow's carries ``parent``)."""

    TYPE: ClassVar[str] = "workflow_requested"
    request: str = ""
    plan: Plan | None = None
    budget_usd: float | None = None
    intelligence: str | None = None  # None: the deployment's default (settings)
    mode: str | None = None
    idempotency_key: str | None = None
    dry_run: bool = False  # plan, validate and decompose for real; simulate every step (no tool runs)
    on_failure: str | None = None  # "compensate": undo the completed steps if it fails (None: the deployment's)
    # The flow's version marker, set by intake on every new request: the validator clears each step
    # on its fully resolved inputs (``step_ready.resolved_inputs``). Logs recorded without it keep
    # the earlier flow under replay (a later step cleared by the planner, resolved by the agent).
    resolved_steps: bool = False
    # A deadline for the whole workflow: past it, it is cancelled (``deadline_set``). ``deadline_s`` counts
    # from this event's ``at``; ``deadline`` is an absolute time; at most one of them is set.
    deadline_s: float | None = None
    deadline: datetime | None = None
    # A child workflow's link to the task that started it (None: a workflow of its own). Written by the
    # planner's children relay (``actors.children``), never taken from a request sent to the intake.
    parent: ParentLink | None = None


class PlanProposed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The planner proposes a plan (``revision`` counts re-plans from 1)."""

    TYPE: ClassVar[str] = "plan_proposed"
    plan: Plan
    revision: int = 1
    source: str = "explicit"  # explicit | library | model | flow
    library_match: str | None = None
    score: float | None = None
    reason: str = ""
    # A flow's plan (source "flow", ``planner.flows``): the flow, the path of its nodes chosen, and
    # how (``rule``: a match rule of the flow file; ``model``: the planner's model; ``default``).
    flow: str | None = None
    path: tuple[str, ...] = ()
    chosen_by: str | None = None


class PlanValidated(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The validator accepted a plan revision."""

    TYPE: ClassVar[str] = "plan_validated"
    revision: int
    checks: tuple[Check, ...] = ()


class PlanRejected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The validator refused a plan revision; the failed checks say why and how to fix it."""

    TYPE: ClassVar[str] = "plan_rejected"
    revision: int
    checks: tuple[Check, ...] = ()


class StepsProposed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The decomposer turned one task into steps."""

    TYPE: ClassVar[str] = "steps_proposed"
    task_id: str
    steps: tuple[StepIntent, ...]


class StepReady(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The validator cleared a step for an agent to run; ``resolved_inputs`` (a workflow with
    ``resolved_steps``): the step's inputs with every reference resolved, as the validator checked
    them; the agent runs exactly these (None: an earlier flow's step, resolved by the agent)."""

    TYPE: ClassVar[str] = "step_ready"
    step: StepIntent
    checks: tuple[Check, ...] = ()
    resolved_inputs: dict[str, Any] | None = None


class StepCompleted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An agent ran a step; ``tool`` is the tool used, ``planned_tool`` the one planned."""

    TYPE: ClassVar[str] = "step_completed"
    task_id: str
    step_id: str
    tool: str
    planned_tool: str
    output: dict[str, Any] = msgspec.field(default_factory=dict)
    attempts: int = 1
    deviations: tuple[str, ...] = ()  # how the run departed from the plan (a fallback tool, …)
    # A dry run's step: no tool ran, ``output`` is a placeholder built from the tool's output
    # schema. ``would_need_approval``: a real run would wait for a person here. ``estimate``:
    # what the consultations a real run of the step could make would cost, as quoted for it.
    simulated: bool = False
    would_need_approval: bool = False
    estimate: Estimated | None = None
    # The checked conditions the agent evaluated (``planner.conditions``): the step's preconditions,
    # then each call's postconditions (the step's and its tool's defaults), passed or not, in order.
    conditions: tuple[Check, ...] = ()


class StepFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An agent could not run a step with any of its tools."""

    TYPE: ClassVar[str] = "step_failed"
    task_id: str
    step_id: str
    tool: str
    error: ErrorInfo
    retryable: bool = False
    tried: tuple[str, ...] = ()  # tools tried, in order


class WorkflowCompleted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow's last event on success; ``result`` is the output task's output."""

    TYPE: ClassVar[str] = "workflow_completed"
    result: Any = None


class WorkflowFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow's last event on failure; ``reason`` is a stable code."""

    TYPE: ClassVar[str] = "workflow_failed"
    reason: str
    message: str
    task_id: str | None = None
    # After compensation (``on_failure: compensate``): the steps undone, in the order undone, and the
    # completed steps that were not (no compensating tool, or it failed).
    compensated: tuple[str, ...] = ()
    not_undone: tuple[str, ...] = ()


class TaskReady(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The planner dispatched a task whose dependencies are done (``attempt`` counts retries from 1)."""

    TYPE: ClassVar[str] = "task_ready"
    task: Task
    attempt: int = 1


class StepsRejected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The validator refused a task's steps; the failed checks say why and how to fix it."""

    TYPE: ClassVar[str] = "steps_rejected"
    task_id: str
    checks: tuple[Check, ...] = ()
    step_id: str | None = None  # the step refused on its resolved inputs (None: the task's steps as proposed)


class ApprovalRequested(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A step needs a person's approval before it runs; it is denied at ``deadline``."""

    TYPE: ClassVar[str] = "approval_requested"
    step: StepIntent
    reason: str
    deadline: datetime


class ApprovalGranted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An approver approved a step: ``by`` is their name in the keyring and ``key`` the public key
    whose signature the approvals service verified (None in logs from before that service)."""

    TYPE: ClassVar[str] = "approval_granted"
    step_id: str
    by: str = "unknown"
    reason: str = ""
    key: str | None = None


class ApprovalDenied(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A step was refused, by an approver (``by``, ``key`` as for a grant) or by its deadline
    passing (``by`` = "timeout", written by the agent)."""

    TYPE: ClassVar[str] = "approval_denied"
    step_id: str
    by: str = "unknown"
    reason: str = ""
    key: str | None = None


class EffectsRecorded(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a handler learned from outside while handling ``input_id``, when it emitted nothing.

    A handler's effects normally travel in the ``effects`` of its first output event; this
    event records them when there is no output to carry them.
    """

    TYPE: ClassVar[str] = "effects_recorded"
    input_id: str
    effects: tuple[Effect, ...]


class HandlerFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Dead letter: an actor gave up on an event after ``attempts`` deliveries.

    ``error.code`` is a stable code (a cadre error's own code, ``handler_error`` for any other
    exception, ``malformed_event`` for an input that does not decode); ``exception`` names the
    Python exception class, when there was one (v2: v1 put the class name in ``error.code``).
    """

    TYPE: ClassVar[str] = "handler_failed"
    input_id: str
    input_type: str
    input_seq: int
    attempts: int
    error: ErrorInfo
    exception: str | None = None


class ForgedEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An actor refused an input whose signature the keyring does not accept: it was not handled,
    and the workflow went on as if it had never arrived.

    ``status`` is ``forged`` (a signature that does not verify, an unknown key, a role that may
    not emit ``input_type``) or ``unsigned``; ``reason`` says which; ``signer`` is the key it
    claimed, if any.
    """

    TYPE: ClassVar[str] = "forged_event"
    input_id: str
    input_type: str
    input_seq: int
    status: str
    reason: str
    signer: str | None = None


class ProposalMade(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A model's decision about a step, proposed to the validator before anything runs.

    ``source`` is the consultation (``recover``); ``action`` what it proposes (``retry`` a tried
    tool, an ``alternative`` tool, ``skip`` the step); ``tool`` and ``inputs`` the call it would make.
    The run so far travels with it (``attempts``, ``deviations``, the tools ``tried`` and the last
    ``error``), so the agent picks the step up where it left it, whatever the verdict.
    """

    TYPE: ClassVar[str] = "proposal_made"
    task_id: str
    step_id: str
    source: str
    action: str
    tool: str
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    reason: str = ""
    attempts: int = 0
    deviations: tuple[str, ...] = ()
    tried: tuple[str, ...] = ()
    error: ErrorInfo
    retryable: bool = False
    # ``interpret`` (``action`` "output"): the model's replacement of ``tool``'s ``output``, refused by
    # its schema or lacking a field the step expects (``error`` says which). ``remaining``: the
    # fallback tools still to try if it is refused (None: not ordered yet); ``phase`` "recovery" when
    # the call was a recovery's (nothing is left to try after it).
    output: dict[str, Any] | None = None
    remaining: tuple[str, ...] | None = None
    phase: str = "run"


class ProposalValidated(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The validator cleared a proposal (``proposal_id``: the ``proposal_made`` event); with
    ``approval`` set it runs only once a person approves it, for the reasons given."""

    TYPE: ClassVar[str] = "proposal_validated"
    step_id: str
    proposal_id: str
    checks: tuple[Check, ...] = ()
    approval: tuple[str, ...] = ()


class ProposalRejected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The validator refused a proposal: nothing of it runs; the step takes its planned course."""

    TYPE: ClassVar[str] = "proposal_rejected"
    step_id: str
    proposal_id: str
    checks: tuple[Check, ...] = ()


class ConsultationWaiting(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A consultation the budget denied for the provider's rate limit waits ``retry_after_s``, until
    ``until``, then asks again (a durable timer: the agent defers this event to ``until``).

    ``call`` is the consultation: ``recover``, ``decide`` or ``interpret`` (the agent's; the run so
    far travels with it, as on ``proposal_made``, so the agent picks the step up where it left it),
    ``plan`` (the planner's: no task, no step), ``adapt`` (the planner's re-plan after task
    ``task_id`` failed for good at attempt ``attempts`` of plan ``revision``) or ``decompose`` (the
    decomposer's: ``task_id``, and the task's attempt in ``attempts``). The actor that asked defers
    the event to ``until`` (``actors.rate_wait``).

    ``interpret`` waits after its tool ran: ``tool`` is the call whose output awaits the model (the
    output itself is this event's recorded ``ToolCalled`` effect, which the agent reads back when it
    asks again: the tool never runs twice), ``error`` what is wrong with it, ``remaining`` and
    ``phase`` where the run stands (as on ``proposal_made``).
    """

    TYPE: ClassVar[str] = "consultation_waiting"
    task_id: str = ""
    step_id: str = ""
    call: str
    until: datetime
    retry_after_s: float
    attempts: int = 0
    deviations: tuple[str, ...] = ()
    tried: tuple[str, ...] = ()
    error: ErrorInfo
    retryable: bool = False
    tool: str = ""
    remaining: tuple[str, ...] | None = None
    phase: str = "run"
    revision: int = 0


class CompensationStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow failed (``reason``, ``message``, ``task_id`` as its ``workflow_failed`` will say) and
    compensates: ``steps`` are undone one after another, in reverse order of completion, by their
    tools' compensating tools; ``not_undone`` are the completed steps whose tool has none."""

    TYPE: ClassVar[str] = "compensation_started"
    reason: str
    message: str
    task_id: str | None = None
    steps: tuple[str, ...] = ()
    not_undone: tuple[str, ...] = ()


class StepCompensated(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A completed step was undone by ``tool`` (its ``output``), or could not be (``error``)."""

    TYPE: ClassVar[str] = "step_compensated"
    step_id: str
    tool: str
    output: dict[str, Any] | None = None
    error: ErrorInfo | None = None


class DeadlineSet(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The request set a deadline: past ``until`` the workflow is cancelled. A durable timer: the
    planner defers this event to ``until``, then emits ``cancel_requested`` (``by`` = "deadline")."""

    TYPE: ClassVar[str] = "deadline_set"
    until: datetime


class CancelRequested(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow is to stop: nothing new is dispatched, running steps finish or are abandoned,
    completed steps are undone where the workflow asked for compensation, and it ends ``cancelled``.

    Written by the approvals service for a person's signed cancel (``by`` their name in the
    keyring, ``key`` their key) or by the planner when the workflow's deadline passed (``by`` =
    "deadline")."""

    TYPE: ClassVar[str] = "cancel_requested"
    reason: str = ""
    by: str = "unknown"
    key: str | None = None


class WorkflowCancelled(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow's last event when it was cancelled; ``compensated`` / ``not_undone`` as on
    ``workflow_failed`` (empty unless the workflow compensates)."""

    TYPE: ClassVar[str] = "workflow_cancelled"
    reason: str = ""
    by: str = "unknown"
    compensated: tuple[str, ...] = ()
    not_undone: tuple[str, ...] = ()


class Redriven(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A person re-delivered a dead-lettered input (``cadre redrive``) after a fix: ``actor`` (the kind
    that gave up, ``handler_failed`` ``handler_failed_id``) handles ``input`` (the envelope at stream
    sequence ``input_seq``, copied here as its JSON object, of type ``input_type``) again, and a
    workflow that failed for that dead letter goes on. ``by``/``key``: the approver, as on
    ``approval_granted``. Written by the approvals service."""

    TYPE: ClassVar[str] = "redriven"
    handler_failed_id: str
    actor: str
    input_seq: int
    input_type: str
    input: dict[str, Any]
    by: str = "unknown"
    key: str | None = None
    reason: str = ""


class BranchChecked(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One way on that a ``branch_taken`` weighed: its condition (None: none), whether it held, and why not."""

    to: str
    when: str | None = None
    held: bool = False
    reason: str = ""


class BranchTaken(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The planner chose where a flow goes on after task ``task_id`` (``planner.flows``): task ``to``
    (None: nowhere, that branch of the flow ends), ``why``, each way weighed in order (``checked``),
    and the tasks this leaves out (``skipped``: they will not run)."""

    TYPE: ClassVar[str] = "branch_taken"
    task_id: str
    to: str | None = None
    why: str = ""
    checked: tuple[BranchChecked, ...] = ()
    skipped: tuple[str, ...] = ()


class ChildRequested(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The planner starts a child workflow for a task whose tool is ``workflow.run``
    (:mod:`cadre.planner.children`): ``child_id`` derives from the workflow, the task and its
    ``attempt``; ``request`` is the child's first event as it will be stored (its ``parent`` set).
    The children relay appends it to the child's workflow once; the task waits for
    ``child_completed`` or ``child_failed``."""

    TYPE: ClassVar[str] = "child_requested"
    task_id: str
    child_id: str
    attempt: int = 1
    request: WorkflowRequested


class ChildCompleted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A child workflow completed (its ``workflow_completed`` is ``child_event``): ``output`` is the task's
    (``{"workflow_id": …, "result": …}``). Written on the parent by the planner's children relay."""

    TYPE: ClassVar[str] = "child_completed"
    task_id: str
    child_id: str
    output: dict[str, Any] = msgspec.field(default_factory=dict)
    child_event: str = ""


class ChildFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A child workflow failed or was cancelled (``status``; its last event is ``child_event``);
    ``error`` is its failure, which the task takes. Written on the parent by the children relay."""

    TYPE: ClassVar[str] = "child_failed"
    task_id: str
    child_id: str
    status: str = "failed"
    error: ErrorInfo
    child_event: str = ""


Event = (
    WorkflowRequested
    | PlanProposed
    | PlanValidated
    | PlanRejected
    | StepsProposed
    | StepReady
    | StepCompleted
    | StepFailed
    | WorkflowCompleted
    | WorkflowFailed
    | TaskReady
    | StepsRejected
    | ApprovalRequested
    | ApprovalGranted
    | ApprovalDenied
    | EffectsRecorded
    | HandlerFailed
    | ForgedEvent
    | ProposalMade
    | ProposalValidated
    | ProposalRejected
    | ConsultationWaiting
    | CompensationStarted
    | StepCompensated
    | DeadlineSet
    | CancelRequested
    | WorkflowCancelled
    | Redriven
    | BranchTaken
    | ChildRequested
    | ChildCompleted
    | ChildFailed
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        WorkflowRequested,
        PlanProposed,
        PlanValidated,
        PlanRejected,
        StepsProposed,
        StepReady,
        StepCompleted,
        StepFailed,
        WorkflowCompleted,
        WorkflowFailed,
        TaskReady,
        StepsRejected,
        ApprovalRequested,
        ApprovalGranted,
        ApprovalDenied,
        EffectsRecorded,
        HandlerFailed,
        ForgedEvent,
        ProposalMade,
        ProposalValidated,
        ProposalRejected,
        ConsultationWaiting,
        CompensationStarted,
        StepCompensated,
        DeadlineSet,
        CancelRequested,
        WorkflowCancelled,
        Redriven,
        BranchTaken,
        ChildRequested,
        ChildCompleted,
        ChildFailed,
    )
}

TERMINAL_TYPES = frozenset({WorkflowCompleted.TYPE, WorkflowFailed.TYPE, WorkflowCancelled.TYPE})

VERSIONS: dict[str, int] = {name: SCHEMA_VERSION for name in EVENT_TYPES}
"""The current version of each event type (what ``make_event`` writes, what decoding upcasts to).

Every type moved to 2 with the envelope's ``prev`` and ``basis``; ``handler_failed`` 2 also
split its ``error.code`` (:mod:`bus.upcast` holds the upcaster). Every type moved to 3 with the
typed effects. A payload change moves its type alone to the next number: ``VERSIONS[...] = 4``
and an upcaster ``(type, 3)``.
"""


class Envelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One event: who emitted what, for which workflow, in answer to which event.

    ``effects`` holds what the emitting handler learned from outside (tool outputs, library
    hits, budget decisions) in order, on the first event of its output, so a replay can
    serve the same answers.

    ``prev`` chains the workflow's events: the :func:`chain_hash` of the exact stored bytes of
    the workflow's previous event in stream order ("" for its first event). The event log sets
    it when appending (``store.JetStreamLog.append``); ``store.integrity.verify`` checks it.
    ``basis`` is the stream sequence of the workflow state the emitting handler decided on
    (0 when no state was involved, as for ``workflow_requested``): folding the workflow up to
    it gives the handler's view back. ``v`` is the version the event was written with; a
    decoded payload is always of the current version (:mod:`bus.upcast`).
    """

    id: str
    type: str
    workflow_id: str
    causation_id: str | None
    actor: str
    at: datetime
    v: int = SCHEMA_VERSION
    prev: str = ""
    basis: int = 0
    data: Event
    effects: tuple[Effect, ...] = ()


def derive_id(causation_id: str, actor: str, index: int | str) -> str:
    """The id of the event ``actor`` emits in answer to ``causation_id`` at ``index``.

    Deterministic, so that a handler run twice on the same input (a redelivery, a replay)
    produces the same ids, which JetStream then deduplicates as ``Nats-Msg-Id``. ``index``
    is the output's position, or a key naming what the output is about (``task_ready:b:1``)
    when the set of outputs depends on state that a partial earlier write changed.
    """
    digest = hashlib.blake2b(f"{causation_id}\x1f{actor}\x1f{index}".encode(), digest_size=16)
    return digest.hexdigest()


def chain_hash(stored: bytes) -> str:
    """The hash the next event of a workflow carries as ``prev``: blake2b-128 hex of the exact
    stored bytes of this one (about 1.5 µs for 1 KB)."""
    return hashlib.blake2b(stored, digest_size=16).hexdigest()


def make_event(
    data: Event,
    *,
    workflow_id: str,
    actor: str,
    at: datetime,
    causation_id: str | None = None,
    index: int | str = 0,
    event_id: str | None = None,
    effects: tuple[Effect, ...] = (),
    basis: int = 0,
) -> Envelope:
    """Wrap a payload in an envelope, deriving its id from (causation, actor, index).

    A root event (no causation) derives its id from the workflow id unless one is given.
    ``basis``: the stream sequence of the state the emitter decided on. ``prev`` is left
    empty: the log sets it when it appends the event.
    """
    if event_id is None:
        event_id = derive_id(causation_id if causation_id is not None else workflow_id, actor, index)
    return Envelope(
        id=event_id,
        type=data.TYPE,
        workflow_id=workflow_id,
        causation_id=causation_id,
        actor=actor,
        at=at,
        v=VERSIONS.get(data.TYPE, 1),
        basis=basis,
        data=data,
        effects=effects,
    )
