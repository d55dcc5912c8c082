"""Replaying the actors: a context that answers only from the record, and the glue that runs
the generic engine (:mod:`store.replay`) with the live actors' handlers.

:class:`ReplayContext` is a :class:`~actors.context.Context` whose clock is the invocation's
recorded ``at`` and whose every outside answer (tool outputs, library hits, budget
decisions, model answers, settlements) is the next recorded effect. It computes each
request's ``kind`` and ``key`` exactly as the live context does and serves the recorded
effect only when both match, so a handler that asks something else, or more, is a
divergence ("the handler asked X, the record has Y"). Nothing is ever called: its ports are
empty, and the model it is given (:class:`RecordOnlyProvider`) refuses every call. The
model's configuration (provider, model, output limit) is taken from the recorded
consultation (the ``consultation`` of a ``budget`` effect), so a replay needs no API key;
``fallback_llm`` serves records that do not hold it.

In a what-if (:class:`~actors.whatif.WhatIf`) the same context re-decides each budget
decision (:func:`~actors.whatif.redecide`), refuses tools the changed catalog prohibits, and
skips recorded answers the handler no longer asks for; asking for one the record does not
hold is reported as a difference (:class:`Unrecorded`) rather than answered.

    CadreError
     ├─ LiveCallRefused             a replay reached a live port (code "live_call_refused")
     └─ StoreError
         └─ ReplayDivergence        store.replay: the handler asked what the record does not hold
             └─ Unrecorded          what-if: it would now ask for an answer nobody recorded
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import msgspec

from actors import agent, decomposer, planner, validator
from actors.context import Context, LibraryHit, Outside, ToolFailure, asked
from actors.digests import digest
from actors.inference import LLM, Inferred, Policy
from actors.runtime import ActorSpec, ActorSystem
from actors.whatif import Change, WhatIf, decision_words, describe, redecide
from bus.errors import CadreError
from bus.events import Effect, EffectsRecorded
from bus.ledger import Consultation, Decision
from bus.plan import ErrorInfo
from planner.catalog import Catalog, Safety
from planner.providers.base import ERROR_CODES, ErrorCode, LLMRequest, LLMResponse, ProviderError, Usage
from planner.providers.structured import Outcome
from planner.validation import Limits
from store.records import Record, StoredEvent
from store.replay import Invocation, ReplayDivergence, ReplayResult, replay

__all__ = [
    "LiveCallRefused",
    "RecordOnlyProvider",
    "ReplayContext",
    "Replayer",
    "Unrecorded",
    "WhatIfResult",
    "live_specs",
]

T = TypeVar("T")


class LiveCallRefused(CadreError):
    """A replay reached a live port (a model call): replays call nothing."""

    code = "live_call_refused"


class Unrecorded(ReplayDivergence):
    """What-if: the handler would now ask for an answer the record does not hold."""

    code = "unrecorded"


class RecordOnlyProvider:
    """The provider of a replay's model: the recorded provider's name, and no calls."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def complete(self, request: LLMRequest) -> LLMResponse:
        raise LiveCallRefused(
            f"a replay asked {self.name} for a {request.kind} answer; replays serve recorded answers only"
        )

    async def aclose(self) -> None:
        return None


@dataclass
class _Session:
    """One workflow's what-if: the changes, the catalog tools are checked against, the
    workflow's recorded spend in time order, and the budget decisions found to differ."""

    whatif: WhatIf
    catalog: Catalog | None
    spend: list[tuple[datetime, float]]
    notes: list[tuple[Invocation, str]] = field(default_factory=list)

    def spent_before(self, at: datetime) -> float:
        return sum(cost for when, cost in self.spend if when < at)

    def refusal(self, tool: str) -> ErrorInfo | None:
        """Why the changed catalog would not run ``tool`` (as the toolbox says it), or None."""
        if self.catalog is None:
            return None
        spec = self.catalog.get(tool)
        if spec is None:
            return ErrorInfo(code="unknown_tool", message=f"no tool named {tool!r} in the changed catalog")
        if spec.safety is Safety.PROHIBITED:
            return ErrorInfo(code="prohibited", message=f"tool {tool!r} is prohibited by this deployment's policy")
        return None


_NOWHERE = Outside()
"""No ports at all (made once: a frozen dataclass with a default factory costs a microsecond)."""


class ReplayContext(Context):
    """A context for one replayed invocation: the recorded clock, the recorded answers, no calls."""

    def __init__(self, invocation: Invocation, *, fallback_llm: LLM | None = None, session: _Session | None = None):
        super().__init__(kind=invocation.kind, stored=invocation.input, now=invocation.at, outside=_NOWHERE)
        self.invocation = invocation
        self._recorded = invocation.effects
        self._next = 0
        self._fallback_llm = fallback_llm
        self._session = session
        self._spent = 0.0  # settled by this invocation so far (what-if caps)

    # -- the record ------------------------------------------------------------------------------

    def _take(self, kind: str, key: str) -> Effect:
        """The next recorded effect, which must be ``kind`` ``key`` (what-if: the next such one)."""
        recorded, i = self._recorded, self._next
        if i < len(recorded) and recorded[i].kind == kind and recorded[i].key == key:
            self._next = i + 1
            return recorded[i]
        if self._session is not None:
            for j in range(i, len(recorded)):
                if recorded[j].kind == kind and recorded[j].key == key:
                    self._next = j + 1
                    return recorded[j]
            raise Unrecorded(
                f"would now {_asking(kind, key)}, which the record does not hold (what follows is unknown)"
            )
        if i < len(recorded):
            has = f"{recorded[i].kind} {recorded[i].key} (recorded answer {i + 1} of {len(recorded)})"
        else:
            has = f"nothing more (all {len(recorded)} recorded answers were used)"
        raise ReplayDivergence(f"the handler asked {kind} {key}, the record has {has}")

    def _peek_model(self, kind: str) -> tuple[bool, LLM | None]:
        """The model the recorded consultation of ``kind`` used: (found, model or None for none)."""
        for e in self._recorded[self._next :]:
            if e.kind == "budget" and e.key.startswith(kind + ":") and isinstance(e.value, dict):
                ask = e.value.get("consultation")
                if isinstance(ask, dict):
                    llm = LLM(
                        provider=RecordOnlyProvider(str(ask["provider"])),
                        models={"default": str(ask["model"])},
                        max_output_tokens={"default": int(ask["max_output_tokens"])},
                    )
                    return True, llm
                return False, None
            if e.kind == "llm" and e.key == f"{kind}:-":
                return True, None  # recorded without a model: no provider was configured
        return False, None

    def _record(self, kind: str, key: str, value: Any, error: ErrorInfo | None, started: float) -> None:
        """What the live context records without asking anyone (no model; a cached answer):
        it must be what the record holds next; the recorded measurement is kept."""
        recorded = self._take(kind, key)
        self.effects.append(Effect(kind=kind, key=key, value=value, error=error, ms=recorded.ms))

    # -- the ports ---------------------------------------------------------------------------------

    async def call_tool(self, tool: str, inputs: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        key = f"{tool}:{digest(inputs)}"
        refusal = self._session.refusal(tool) if self._session is not None else None
        if refusal is not None:  # the changed catalog would not run it: the recorded call does not happen
            self._skip("tool", key)
            self.effects.append(Effect(kind="tool", key=key, value={"retryable": False, "output": None}, error=refusal))
            raise ToolFailure(tool, refusal, False)
        effect = self._take("tool", key)
        self.effects.append(effect)
        value = effect.value
        if effect.error is not None:
            extra = value if isinstance(value, dict) else {}
            raise ToolFailure(tool, effect.error, bool(extra.get("retryable", False)), extra.get("output"))
        if not isinstance(value, dict):
            raise ReplayDivergence(f"the recorded output of {tool} is not a JSON object: {value!r:.200}")
        return value

    def _skip(self, kind: str, key: str) -> None:
        for j in range(self._next, len(self._recorded)):
            if self._recorded[j].kind == kind and self._recorded[j].key == key:
                self._next = j + 1
                return

    async def search_library(self, request: str) -> LibraryHit | None:
        effect = self._take("library", digest(request))
        self.effects.append(effect)
        return None if effect.value is None else msgspec.convert(effect.value, LibraryHit)

    async def consult(self, request: Consultation) -> Decision:
        effect = self._take("budget", f"{request.kind}:{request.cache_key or ''}")
        value = effect.value if isinstance(effect.value, dict) else {}
        recorded = msgspec.convert(value, Decision)
        if self._session is None:
            self.effects.append(effect)
            return recorded
        ask = value.get("consultation")
        ask = ask if isinstance(ask, dict) else {}
        spent = self._session.spent_before(self.now()) + self._spent
        decision = redecide(recorded, ask, request, self._session.whatif, spent)
        if decision == recorded:
            self.effects.append(effect)
            return recorded
        now = msgspec.to_builtins(decision)
        now["consultation"] = {**asked(request), **{k: ask[k] for k in ("intelligence", "mode") if k in ask}}
        self.effects.append(Effect(kind="budget", key=effect.key, value=now, ms=effect.ms))
        why = f": {decision.message}" if decision.outcome == "denied" and decision.message else ""
        self._session.notes.append(
            (
                self.invocation,
                f"consultation {request.kind} would now be {decision_words(decision)} "
                f"(recorded: {decision_words(recorded)}){why}",
            )
        )
        return decision

    async def infer(
        self, kind: str, request: LLMRequest, validate: Callable[[dict[str, Any]], T], policy: Policy
    ) -> Inferred[T]:
        found, llm = self._peek_model(kind)
        self._outside = dataclasses.replace(self._outside, llm=llm if found else self._fallback_llm)
        return await super().infer(kind, request, validate, policy)

    async def _call(self, llm: LLM, request: LLMRequest) -> LLMResponse | ProviderError:
        effect = self._take("llm", f"{request.kind}:{digest([request.system, request.prompt, request.model], size=8)}")
        self.effects.append(effect)
        value = effect.value if isinstance(effect.value, dict) else {}
        if effect.error is None:
            return msgspec.convert(value["response"], LLMResponse)
        err: dict[str, Any] = value["error"] if isinstance(value.get("error"), dict) else {}
        usage = value.get("usage")
        code = err.get("code") if err.get("code") in ERROR_CODES else effect.error.code
        return ProviderError(
            cast(ErrorCode, code),
            str(err.get("what") or effect.error.message),
            provider=llm.provider.name,
            status=err.get("status"),
            retryable=err.get("retryable"),
            usage=msgspec.convert(usage, Usage) if isinstance(usage, dict) else None,
        )

    async def _settle(
        self,
        kind: str,
        model: str,
        decision: Decision,
        reply: LLMResponse | ProviderError,
        key: str | None,
        outcome: Outcome[Any] | None,
    ) -> float:
        if decision.reservation_id is None:
            return 0.0
        effect = self._take("settle", f"{kind}:{decision.reservation_id}")
        self.effects.append(effect)
        value = effect.value if isinstance(effect.value, dict) else {}
        cost = float(value.get("cost_usd") or 0.0)
        self._spent += cost
        return cost


# -- the glue ------------------------------------------------------------------------------------


def live_specs(catalog: Catalog, *, approval_timeout: timedelta, limits: Limits | None = None) -> tuple[ActorSpec, ...]:
    """The event handlers the live system runs (``cadre/system.py``), built the same way."""
    return (
        planner.make_spec(catalog),
        validator.make_spec(catalog, limits),
        decomposer.make_spec(catalog),
        agent.make_spec(approval_timeout, catalog=catalog),
    )


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
    """Replays workflows with ``specs`` (:func:`live_specs`); ``fallback_llm`` configures the
    model for records whose consultations do not say which one they used."""

    specs: Sequence[ActorSpec]
    fallback_llm: LLM | None = None

    def replay(self, records: Sequence[Record]) -> ReplayResult:
        """Re-run every handler invocation of one workflow's records and compare (``store.replay``)."""
        return replay(records, self.specs, context=self._context(None), wrap=ActorSystem.wrap)

    def what_if(self, records: Sequence[Record], whatif: WhatIf, catalog: Catalog | None = None) -> WhatIfResult:
        """The decisions that would differ with this replayer's specs (built with the changed
        catalog and limits) and ``whatif``; ``catalog``: the changed one, whose prohibited
        tools the agent would not run."""
        session = _Session(whatif, catalog, _spend(records))
        result = replay(records, self.specs, context=self._context(session), wrap=ActorSystem.wrap)
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

    def _context(self, session: _Session | None) -> Callable[[Invocation], ReplayContext]:
        fallback = self.fallback_llm

        def make(invocation: Invocation) -> ReplayContext:
            return ReplayContext(invocation, fallback_llm=fallback, session=session)

        return make


def _asking(kind: str, key: str) -> str:
    """What a request for an outside answer is, in words."""
    head = key.rsplit(":", 1)[0] if kind == "tool" else key.split(":", 1)[0]
    match kind:
        case "tool":
            return f"run tool {head}"
        case "library":
            return "search the plan library"
        case "budget":
            return f"consult the budget for a {head} call"
        case "llm":
            return f"call the model for {head}"
        case "settle":
            return f"settle a {head} call"
    return f"ask for {kind} {key}"


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
        for e in effects:
            if e.kind == "settle" and isinstance(e.value, dict):
                out.append((r.event.at, float(e.value.get("cost_usd") or 0.0)))
    return out
