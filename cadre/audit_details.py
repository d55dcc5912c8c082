"""What the audit page shows beyond :func:`cadre.store.audit.audit`: what each tool call was given
and gave back, who signed each event, the chain's verdict, and each task's state and timing.

Pure: it reads a workflow's records (stored order) and the keyring, and folds the trusted events
as the actors do (:func:`cadre.store.authenticity.verdict`, :func:`cadre.store.state.apply`).

A tool's inputs are not in its effect (only their digest is). They are found as the agent made
them: the step's ``resolved_inputs`` when the validator resolved them, else the step's inputs
with their references resolved against the outputs folded so far (the agent's own rule,
:func:`cadre.actors.agent.upstream_outputs`), or a cleared proposal's inputs; a compensating
tool's, the undone call as ``actors/compensation.py`` describes it. Each candidate is
checked against the recorded digest; ``inputs_match`` says whether one held.

An output stored by reference (``cadre/store/objects.py``) reads resolved when its object was at
hand; when it was not, the record is malformed (``object_missing``) and the call is still listed
from its stored bytes, its output shown as the reference and digest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cadre.actors.agent import upstream_outputs
from cadre.actors.compensation import call_key
from cadre.bus import codec
from cadre.bus.effects import ToolCalled
from cadre.bus.events import EffectsRecorded, ProposalMade, StepReady
from cadre.bus.plan import StepIntent
from cadre.bus.signing import Keyring
from cadre.planner.refs import RefError, resolve
from cadre.store.authenticity import verdict
from cadre.store.integrity import Verdict as ChainVerdict
from cadre.store.objects import reference_of
from cadre.store.records import Malformed, Record, StoredEvent
from cadre.store.state import WorkflowState, apply, skip


@dataclass(frozen=True)
class CallValues:
    """One tool call's values: its ``inputs`` (None: not found in the log) and whether their digest
    is the recorded one, its ``output`` (or the output an ``invalid_output`` refused), and
    ``reference`` (``sha256:…``) when the output is stored by reference and its object was not at
    hand (then ``output`` is the reference itself)."""

    index: int
    tool: str
    step_id: str | None
    inputs: Any
    inputs_match: bool
    output: Any
    reference: str | None = None
    input_digest: str = ""


@dataclass(frozen=True)
class Signer:
    """Who signed one record, and the keyring's verdict (``status``: signed, unsigned, forged, not
    checked without a keyring; ``malformed`` for a record that is no cadre event)."""

    index: int
    seq: int
    status: str
    role: str | None
    key: str | None
    name: str | None
    reason: str = ""


@dataclass
class TaskRun:
    """A task of the last plan: its state, when it first became ready and when it ended."""

    id: str
    tool: str | None
    depends_on: tuple[str, ...]
    confidence: float
    state: str = "pending"
    started: datetime | None = None
    ended: datetime | None = None
    attempts: int = 0


@dataclass
class Details:
    """Everything :func:`details` found (module docstring)."""

    calls: dict[tuple[int, int], CallValues] = field(default_factory=dict)  # (record index, n-th call in it)
    unresolved: list[CallValues] = field(default_factory=list)  # calls of records whose object was not at hand
    signers: list[Signer] = field(default_factory=list)
    tasks: list[TaskRun] = field(default_factory=list)
    chain: ChainVerdict | None = None
    keyring: bool = False


def details(records: Sequence[Record], keyring: Keyring | None, chain: ChainVerdict | None = None) -> Details:
    """The details of one workflow's records (module docstring); ``chain``: the integrity verdict on
    them, shown as given."""
    out = Details(chain=chain, keyring=keyring is not None)
    wf = next((r.event.workflow_id for r in records if isinstance(r, StoredEvent)), "")
    state = WorkflowState(workflow_id=wf)
    ready: dict[str, StepReady] = {}
    for index, r in enumerate(records):
        if isinstance(r, Malformed):
            out.signers.append(Signer(index, r.seq, "malformed", None, None, None, r.reason))
            _unresolved(out, index, r, state, ready)
            skip(state, r)
            continue
        v = verdict(r, keyring)
        key = r.signature.signer if r.signature is not None else None
        name = keyring.name_of(key) if keyring is not None and key is not None else None
        status = v.status if keyring is not None else "not checked"
        out.signers.append(Signer(index, r.seq, status, v.role, key, name if name != key else None, v.reason))
        if not v.trusted:
            skip(state, r)
            continue
        e = r.event
        if isinstance(e.data, StepReady):
            ready[e.data.step.id] = e.data
        effects = e.data.effects if isinstance(e.data, EffectsRecorded) else e.effects
        calls = [f for f in effects if isinstance(f, ToolCalled)]
        step_id = _step_of(e.data)
        for n, call in enumerate(calls):
            inputs, match = _inputs(state, step_id, call, ready)
            output = call.refused if call.error is not None else call.output
            out.calls[(index, n)] = CallValues(
                index, call.tool, step_id, inputs, match, output, input_digest=call.inputs
            )
        apply(state, r)
        _task_times(out, state, e.at)
    return out


def _step_of(data: Any) -> str | None:
    step_id = getattr(data, "step_id", None)
    if isinstance(step_id, str):
        return step_id
    step = getattr(data, "step", None)
    return step.id if isinstance(step, StepIntent) else None


def _inputs(
    state: WorkflowState, step_id: str | None, call: ToolCalled, ready: dict[str, StepReady]
) -> tuple[Any, bool]:
    """The inputs the call was made with, and whether their digest is the recorded one."""
    st = state.steps.get(step_id or "")
    candidates: list[Any] = []
    cleared = ready.get(step_id or "")
    if cleared is not None and cleared.resolved_inputs is not None:
        candidates.append(cleared.resolved_inputs)
    if st is not None:
        with contextlib.suppress(RefError):
            candidates.append(resolve(st.step.inputs, upstream_outputs(state, st.step)))
        if isinstance(st.proposal, ProposalMade):
            candidates.append(st.proposal.inputs)
        if st.output is not None:  # a compensating tool's call names the step's call (actors/compensation.py)
            tool = st.tool or st.step.tool
            key = call_key(state.workflow_id, st)
            bases = [*candidates, dict(st.step.inputs)]
            candidates += [{"tool": tool, "inputs": b, "output": st.output, "key": key} for b in bases]
    for c in candidates:
        if isinstance(c, dict) and ToolCalled.digest_of(c) == call.inputs:
            return c, True
    return (candidates[0] if candidates else None), False


def _unresolved(out: Details, index: int, r: Malformed, state: WorkflowState, ready: dict[str, StepReady]) -> None:
    """A record whose output object was not at hand: its calls, from its stored bytes."""
    if not r.reason.startswith("object_missing"):
        return
    try:
        env = codec.decode(r.data)
    except Exception:
        return
    effects = env.data.effects if isinstance(env.data, EffectsRecorded) else env.effects
    step_id = _step_of(env.data)
    for call in (f for f in effects if isinstance(f, ToolCalled)):
        output = call.refused if call.error is not None else call.output
        inputs, match = _inputs(state, step_id, call, ready)
        out.unresolved.append(
            CallValues(
                index,
                call.tool,
                step_id,
                inputs,
                match,
                output,
                reference=reference_of(output),
                input_digest=call.inputs,
            )
        )


def _task_times(out: Details, state: WorkflowState, at: datetime) -> None:
    """Keep each task's state, first start and end as the fold moves (the last plan's tasks)."""
    if state.plan is None:
        return
    runs = {t.id: t for t in out.tasks}
    nodes = state.plan.nodes
    if [t.id for t in out.tasks] != [n.id for n in nodes]:  # a new plan revision: its tasks, keeping times
        out.tasks = [runs.get(n.id) or TaskRun(n.id, n.tool, tuple(n.depends_on), n.confidence) for n in nodes]
        runs = {t.id: t for t in out.tasks}
    for tid, ts in state.tasks.items():
        run = runs.get(tid)
        if run is None:
            continue
        run.state, run.attempts = ts.status, ts.attempt
        if ts.status != "pending" and run.started is None:
            run.started = at
        if ts.status in ("completed", "failed"):
            run.ended = run.ended or at
        else:
            run.ended = None
