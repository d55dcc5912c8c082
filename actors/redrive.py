"""Dead letters you can act on: list the inputs an actor gave up on, and re-deliver one after a fix.

An input whose handler raised on every delivery is dead-lettered by the runtime (``handler_failed``,
``actors.runtime``), and the planner fails the workflow (``handler_failed``). After a fix is
deployed, ``cadre redrive WF`` (an approver's signed order, checked by the approvals service)
appends ``redriven``: the dead-lettered input copied as stored, the actor kind that gave up, and
who asked. The fold gives the workflow back the status it had before that failure
(``store.state``), and the named actor kind handles the copied input again, as if delivered anew
(:func:`redrivable`): its outputs are caused by the ``redriven`` event, so a replay re-derives
them like any other.

Which dead letter a redrive re-delivers (:func:`to_redrive`): the workflow's latest
``handler_failed`` not redriven yet, whose input decodes (a malformed input cannot be handled
again) and whose workflow failed for it (not compensated, cancelled or completed meanwhile).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from cadre.actors.context import Context
from cadre.actors.outcome import Outcome
from cadre.actors.runtime import ActorSpec
from cadre.bus.codec import decode
from cadre.bus.events import HandlerFailed, Redriven
from cadre.store.records import Record, StoredEvent
from cadre.store.state import WorkflowState


class NotRedrivable(Exception):
    """Why a workflow has no dead letter to redrive: ``code`` and a message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DeadLetter:
    """One ``handler_failed`` of a workflow, with the input it gave up on."""

    workflow_id: str
    event: StoredEvent  # the handler_failed
    failed: HandlerFailed
    input: StoredEvent | None  # None: the input was malformed (or is not in the log)
    redriven: bool

    def to_json(self) -> dict[str, Any]:
        f = self.failed
        return {
            "workflow_id": self.workflow_id,
            "handler_failed_id": self.event.event.id,
            "actor": self.event.event.actor,
            "at": self.event.event.at.isoformat(),
            "input_type": f.input_type,
            "input_seq": f.input_seq,
            "attempts": f.attempts,
            "reason": {"code": f.error.code, "message": f.error.message, "exception": f.exception},
            "input": self.input.event.data if self.input is not None else None,
            "redriven": self.redriven,
        }


def dead_letters(workflow_id: str, records: Sequence[Record], state: WorkflowState) -> list[DeadLetter]:
    """The workflow's dead letters, in stored order (``records``: its trusted records)."""
    by_seq = {r.seq: r for r in records if isinstance(r, StoredEvent)}
    out = []
    for r in by_seq.values():
        if isinstance(r.event.data, HandlerFailed):
            f = r.event.data
            source = by_seq.get(f.input_seq)
            ok = source is not None and source.event.id == f.input_id
            out.append(DeadLetter(workflow_id, r, f, source if ok else None, r.event.id in state.redriven))
    return out


def to_redrive(workflow_id: str, records: Sequence[Record], state: WorkflowState) -> DeadLetter:
    """The dead letter a redrive of the workflow re-delivers (module docstring); raises :class:`NotRedrivable`."""
    letters = [d for d in dead_letters(workflow_id, records, state) if not d.redriven]
    if not letters:
        raise NotRedrivable("no_dead_letter", f"workflow {workflow_id} has no dead letter to redrive")
    last = letters[-1]
    if state.status != "failed" or state.failure is None or state.failure.code != "handler_failed":
        raise NotRedrivable(
            "not_failed_for_it",
            f"workflow {workflow_id} is {state.status}"
            + (f" ({state.failure.code})" if state.failure is not None else "")
            + "; only a workflow that failed for a dead letter can be redriven",
        )
    if last.input is None:
        raise NotRedrivable(
            "malformed_input", f"the input at stream sequence {last.failed.input_seq} does not decode: nothing to redo"
        )
    return last


def redrivable(spec: ActorSpec) -> ActorSpec:
    """``spec`` also handling ``redriven``: the kind it names handles the copied input again."""
    inner, kind, handles = spec.handler, spec.kind, spec.handles  # not the spec: its closure stays comparable

    def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Awaitable[Outcome]:
        data = rec.event.data
        if not isinstance(data, Redriven):
            return inner(ctx, rec, state)  # the handler's own awaitable: no second coroutine per input
        return again(ctx, rec, state, data)

    async def again(ctx: Context, rec: StoredEvent, state: WorkflowState, data: Redriven) -> Outcome:
        if data.actor != kind or data.input_type not in handles:
            return []
        raw = msgspec.json.encode(data.input)
        copied = StoredEvent(data.input_seq, rec.subject, decode(raw), raw)
        return await inner(ctx, copied, state)

    return replace(spec, handles=spec.handles | {Redriven.TYPE}, handler=handle)
