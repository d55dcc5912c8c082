"""Replaying the live actors: the engine (:mod:`actors.replay.engine`) run with the handlers the
live system runs (:func:`actors.specs.live_specs`) and recorded answers.

A replay serves every outside answer from the record (:class:`~actors.answers.RecordedAnswers`)
and calls nothing; a what-if serves them through :class:`~actors.replay.whatif.WhatIfAnswers`
(budget decisions re-decided, tools the changed catalog prohibits refused) and lists the
decisions that would differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from cadre.actors.answers import RecordedAnswers
from cadre.actors.context import Answers
from cadre.actors.inference import LLM
from cadre.actors.replay.engine import Invocation, ReplayResult, replay
from cadre.actors.replay.whatif import Change, Session, WhatIf, WhatIfAnswers, describe
from cadre.actors.runtime import ActorSpec
from cadre.bus.effects import CallSettled
from cadre.bus.events import EffectsRecorded
from cadre.bus.signing import Keyring
from cadre.planner.catalog import Catalog
from cadre.store.records import Record, StoredEvent

__all__ = ["Replayer", "WhatIfResult"]


class WhatIfResult(msgspec.Struct, frozen=True, kw_only=True):
    """The decisions of one workflow that would differ under a what-if, in stored order."""

    workflow_id: str
    events: int
    changes: tuple[Change, ...]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        out["summary"] = self.lines()[0]
        return out

    def lines(self) -> list[str]:
        if not self.changes:
            return [f"no decision would differ ({self.events} events re-decided)"]
        out = [f"{len(self.changes)} decision(s) would differ ({self.events} events re-decided):"]
        out.extend("  " + c.line() for c in self.changes)
        return out


@dataclass(frozen=True)
class Replayer:
    """Replays workflows with ``specs`` (:func:`~actors.specs.live_specs`); ``fallback_llm`` configures the
    model for records whose consultations do not say which one they used."""

    specs: Sequence[ActorSpec]
    fallback_llm: LLM | None = None
    keyring: Keyring | None = None

    def replay(self, records: Sequence[Record]) -> ReplayResult:
        """Re-run every handler invocation of one workflow's records and compare (:mod:`actors.replay.engine`)."""
        fallback = self.fallback_llm
        # An invocation without recorded answers can take none, so nothing in its answers changes:
        # one serves them all (most invocations ask nothing outside).
        none = RecordedAnswers((), fallback_llm=fallback)

        def answers(invocation: Invocation) -> Answers:
            effects = invocation.effects
            return RecordedAnswers(effects, fallback_llm=fallback) if effects else none

        return replay(records, self.specs, answers=answers, keyring=self.keyring)

    def what_if(self, records: Sequence[Record], whatif: WhatIf, catalog: Catalog | None = None) -> WhatIfResult:
        """The decisions that would differ with this replayer's specs (built with the changed
        catalog and limits) and ``whatif``; ``catalog``: the changed one, whose prohibited
        tools the agent would not run."""
        session = Session(whatif, catalog, _spend(records))
        fallback = self.fallback_llm

        def answers(invocation: Invocation) -> Answers:
            return WhatIfAnswers(invocation, session, fallback_llm=fallback)

        result = replay(records, self.specs, answers=answers)
        types = {r.event.id: r.event.type for r in records if isinstance(r, StoredEvent)}
        changes: dict[tuple[int, str], Change] = {}
        for inv, words in session.notes:
            anchor = inv.outputs[0] if inv.outputs else inv.input
            index = next(i for i, r in enumerate(records) if r.seq == anchor.seq)
            changes.setdefault((index, words), _change(index, anchor, words))
        for d in result.divergences:
            words_or_none = describe(d, types.get(d.causation_id or ""))
            if words_or_none is not None:
                changes.setdefault(
                    (d.index, words_or_none),
                    Change(
                        index=d.index,
                        seq=d.seq,
                        event_id=d.event_id,
                        type=d.type,
                        actor=d.actor,
                        decision=words_or_none,
                    ),
                )
        ordered = tuple(sorted(changes.values(), key=lambda c: c.index))
        return WhatIfResult(workflow_id=result.workflow_id, events=result.events, changes=ordered)


def _change(index: int, anchor: StoredEvent, words: str) -> Change:
    e = anchor.event
    return Change(index=index, seq=anchor.seq, event_id=e.id, type=e.type, actor=e.actor, decision=words)


def _spend(records: Sequence[Record]) -> list[tuple[datetime, float]]:
    """The workflow's recorded LLM spend: (when, USD) of every settlement, in stored order."""
    out: list[tuple[datetime, float]] = []
    for r in records:
        if not isinstance(r, StoredEvent):
            continue
        effects = r.event.data.effects if isinstance(r.event.data, EffectsRecorded) else r.event.effects
        out.extend((r.event.at, e.cost_usd) for e in effects if type(e) is CallSettled)
    return out
