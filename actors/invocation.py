"""The invocation kernel: what one handler invocation stores, live and under replay alike.

The runtime (:mod:`actors.runtime`) and the replay engine (:mod:`actors.replay.engine`) both
turn a handler's outputs and its recorded effects into envelopes here, so a replay derives
exactly what the runtime stored:

* every output's id comes from (input id, kind, :func:`output_key`), its clock is the
  invocation's ``at`` and its ``basis`` the sequence of the state the handler decided on;
* the effects ride on the first output; with no output, an ``effects_recorded`` event of
  their own carries them (in its payload); with neither, nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cadre.bus.effects import Effect
from cadre.bus.events import EffectsRecorded, Envelope, Event, StepReady, TaskReady, make_event

__all__ = ["envelopes", "output_key", "wrap"]


def output_key(payload: Event, index: int) -> int | str:
    """What an output's id is derived from besides its input: its position, or for a fan-out,
    what it dispatches (so a partly stored fan-out, re-decided on the newer state, keeps ids)."""
    match payload:
        case TaskReady():
            return f"task_ready:{payload.task.id}:{payload.attempt}"
        case StepReady():
            return f"step_ready:{payload.step.id}"
        case _:
            return index


def envelopes(
    kind: str, cause: Envelope, outputs: Sequence[Event], effects: tuple[Effect, ...], at: datetime, basis: int
) -> list[Envelope]:
    """What an invocation of ``kind`` on ``cause`` stores: its ``outputs`` (the effects on the
    first), or an ``effects_recorded`` when it has effects but no output, or nothing."""
    if not outputs:
        if not effects:
            return []
        outputs = [EffectsRecorded(input_id=cause.id, effects=effects)]
    return wrap(kind, cause, outputs, at, effects, basis=basis)


def wrap(
    kind: str,
    cause: Envelope,
    payloads: Sequence[Event],
    now: datetime,
    effects: tuple[Effect, ...] = (),
    *,
    basis: int = 0,
) -> list[Envelope]:
    """Envelopes for a handler's outputs; its effects ride on the first one (not on EffectsRecorded,
    which carries them in its payload). ``basis``: the sequence of the state it decided on."""
    out: list[Envelope] = []
    if not payloads:
        return out
    workflow_id, cause_id = cause.workflow_id, cause.id
    ride = () if isinstance(payloads[0], EffectsRecorded) else effects
    for i, p in enumerate(payloads):
        out.append(
            make_event(
                p,
                workflow_id=workflow_id,
                actor=kind,
                at=now,
                causation_id=cause_id,
                index=output_key(p, i),
                effects=ride if i == 0 else (),
                basis=basis,
            )
        )
    return out
