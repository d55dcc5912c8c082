"""The two sources of a context's outside answers, side by side (the :class:`~actors.context.Answers` port).

:class:`LiveAnswers` asks the process's real ports (tools, budget, library, model) and
measures how long each took. :class:`RecordedAnswers` asks nobody: it serves each answer from
a recorded invocation's effects, in order, and only when the question's kind and key are
those of the next recorded effect, so a handler that asks something else, or more, is a
divergence ("the handler asked X, the record has Y"). Its model (:class:`RecordOnlyProvider`)
refuses every call; which model a call used is read from the recorded consultation, so a
replay needs no API key. What a live context records, a recorded one serves back identically
(``tests/test_answers.py`` holds both to that).

    CadreError
     ├─ LiveCallRefused             a replay reached a live port (code "live_call_refused")
     └─ StoreError
         └─ ReplayDivergence        the handler asked what the record does not hold
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, TypeVar, cast

import msgspec

from cadre.actors.budget.rules import gate
from cadre.actors.context import Outside, ToolFailure, asked
from cadre.actors.inference import LLM, Policy
from cadre.bus.effects import (
    NO_PROVIDER,
    BudgetDecided,
    CallSettled,
    Effect,
    Estimated,
    Grounded,
    LibrarySearched,
    ModelCalled,
    ProviderFailure,
    Quote,
    ToolCalled,
)
from cadre.bus.errors import CadreError, StoreError
from cadre.bus.ledger import Consultation, Decision, Settlement
from cadre.bus.plan import ErrorInfo
from cadre.planner.providers.base import LLMRequest, LLMResponse, ProviderError
from cadre.planner.providers.pricing import Prices, bound_usd, worst_case

__all__ = ["LiveAnswers", "LiveCallRefused", "RecordOnlyProvider", "RecordedAnswers", "ReplayDivergence", "asking"]


class LiveCallRefused(CadreError):
    """A replay reached a live port (a model call): replays call nothing."""

    code = "live_call_refused"


class ReplayDivergence(StoreError):
    """A handler under replay asked for something the record does not hold, or waited for
    something outside its context. Raised by recorded answers; the replay engine reports it."""

    code = "replay_divergence"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


EXECUTION_CALLS: Final = frozenset({"recover", "interpret", "decide", "adapt"})
"""The consultations a workflow's execution makes (planning and decomposition come before it)."""


class PastRuns:
    """What this process saw of its live runs, for dry runs' estimates: each tool's successful
    durations (the last :data:`PAST_SAMPLES`), tool calls made, and spend settled on
    execution-time consultations. In memory, since the process started."""

    def __init__(self) -> None:
        self.durations: dict[str, deque[float]] = {}
        self.steps = 0
        self.usd = 0.0

    def ran(self, tool: str, ms: float | None) -> None:
        """A live tool call (``ms`` None: it failed, its duration says nothing of a real run's)."""
        self.steps += 1
        if ms is not None:
            self.durations.setdefault(tool, deque(maxlen=PAST_SAMPLES)).append(ms)

    def paid(self, usd: float) -> None:
        self.usd += usd

    def timing(self, tool: str) -> tuple[int, float | None]:
        """(runs remembered, their mean duration in ms, or None without any)."""
        runs = self.durations.get(tool)
        if not runs:
            return 0, None
        return len(runs), round(sum(runs) / len(runs), 3)


PAST_SAMPLES: Final = 100


def quote(
    call: str,
    times: int,
    tokens: int,
    policy: Policy,
    llm: LLM | None,
    prices: Prices,
    input_safety_factor: float,
    bound: int | None = None,
) -> Quote:
    """The worst case of ``times`` ``call`` consultations of ``tokens`` estimated input each, by
    the budget's gate (:func:`~actors.budget.rules.gate`) and reservation rule, with ``llm``:
    the input ``bound`` when given (:func:`~cadre.planner.providers.pricing.bound_usd`), else
    the older estimate rule."""
    why = gate(call, policy.intelligence, policy.mode)
    if why is None and llm is None:
        why = "no model is configured in this process"
    if why is not None or llm is None:
        return Quote(call=call, times=times, est_input_tokens=tokens, allowed=False, why=why or "")
    model, limit = llm.model_for(call), llm.limit_for(call)
    if bound is not None:
        worst = bound_usd(prices, model, bound, limit)
    else:
        _, worst = worst_case(prices, model, tokens, limit, input_safety_factor)
    return Quote(
        call=call,
        times=times,
        est_input_tokens=tokens,
        allowed=True,
        provider=llm.provider.name,
        model=model,
        max_output_tokens=limit,
        worst_usd=round(worst * times, 8),
        max_input_tokens=bound,
    )


class LiveAnswers:
    """Answers from this process's real ports (:class:`~actors.context.Outside`); one serves
    every invocation of a process (it holds no per-invocation state)."""

    def __init__(self, outside: Outside) -> None:
        self.outside = outside
        self.past = PastRuns()

    @property
    def policy(self) -> Policy:
        return self.outside.policy

    def model(self, call: str) -> LLM | None:
        return self.outside.llm

    async def run_tool(
        self, tool: str, inputs: dict[str, Any], idempotency_key: str, compensable: bool = False
    ) -> ToolCalled:
        started = time.perf_counter()
        inputs_digest = ToolCalled.digest_of(inputs)
        if self.outside.tools is None:
            error = ErrorInfo(code="no_tools", message="this process runs no tools")
            return ToolCalled(tool=tool, inputs=inputs_digest, error=error, ms=_ms(started))
        try:
            if compensable:  # passed only when set: a toolbox without undo records need not take it
                out = await self.outside.tools.run(tool, inputs, idempotency_key, compensable=True)  # type: ignore[call-arg]
            else:
                out = await self.outside.tools.run(tool, inputs, idempotency_key)
        except ToolFailure as exc:
            self.past.ran(tool, None)
            return ToolCalled(
                tool=tool,
                inputs=inputs_digest,
                retryable=exc.retryable,
                refused=exc.output,
                error=exc.error,
                ms=_ms(started),
            )
        effect = ToolCalled(tool=tool, inputs=inputs_digest, output=out, ms=_ms(started))
        self.past.ran(tool, effect.ms)
        return effect

    async def search_library(self, request: str) -> LibrarySearched:
        started = time.perf_counter()
        library = self.outside.library
        hit = await library.search(request) if library is not None else None
        return LibrarySearched(request=LibrarySearched.key_of(request), hit=hit, ms=_ms(started))

    async def ground(self, call: str, query: str, tool: str | None) -> Grounded | None:
        grounding = self.outside.grounding
        if grounding is None:
            return None
        started = time.perf_counter()
        effect = await grounding.ground(call, query, tool)
        if effect.empty:
            return None  # nothing to ground in: the prompt is the ungrounded one, and a replay builds that
        return msgspec.structs.replace(effect, ms=_ms(started))

    async def consult(self, request: Consultation) -> BudgetDecided:
        """The budget's decision; no budget in this process = denied."""
        started = time.perf_counter()
        if self.outside.budget is None:
            decision = Decision(outcome="denied", reason="budget_unavailable", message="this process has no budget")
        else:
            decision = await self.outside.budget.consult(request)
        return BudgetDecided(
            call=request.kind,
            cache_key=request.cache_key or "",
            decision=decision,
            asked=asked(request),
            ms=_ms(started),
        )

    async def call_model(self, llm: LLM, request: LLMRequest) -> ModelCalled:
        """One provider call: the response, or the error it ended with."""
        started = time.perf_counter()
        ask = ModelCalled.ask_of(request.system, request.prompt, request.model)
        try:
            response = await llm.provider.complete(request)
        except ProviderError as exc:
            return ModelCalled(
                call=request.kind,
                ask=ask,
                outcome="failed",
                failure=ProviderFailure(code=exc.code, what=exc.what, status=exc.status, retryable=exc.retryable),
                usage=exc.usage,
                error=ErrorInfo(code=exc.code, message=str(exc)),
                ms=_ms(started),
            )
        return ModelCalled(call=request.kind, ask=ask, outcome="answered", response=response, ms=_ms(started))

    async def settle(self, call: str, decision: Decision, settlement: Settlement) -> CallSettled | None:
        """Tell the budget; an unacknowledged settlement costs what was reserved."""
        if self.outside.budget is None:
            return None
        settled = await self.outside.budget.settle(settlement)
        effect = CallSettled(
            call=call,
            reservation_id=settlement.reservation_id,
            cost_usd=settled.cost_usd if settled is not None else decision.reserved_usd,
            acknowledged=settled is not None,
        )
        if call in EXECUTION_CALLS:
            self.past.paid(effect.cost_usd)
        return effect

    async def estimate(
        self, tool: str, asks: Sequence[tuple[str, int, int]], policy: Policy, bounds: Sequence[int] | None = None
    ) -> Estimated:
        """A dry run's quote: each consultation priced at the budget's reservation with this
        process's model and prices (:func:`quote`), and this process's past runs of ``tool``."""
        limits: Sequence[int | None] = bounds if bounds is not None else [None] * len(asks)
        quotes = tuple(
            self._quote(call, times, tokens, policy, bound)
            for (call, times, tokens), bound in zip(asks, limits, strict=True)
        )
        runs, mean = self.past.timing(tool)
        return Estimated(
            tool=tool,
            asks=Estimated.asks_of(list(asks)),
            quotes=quotes,
            past_tool_runs=runs,
            past_tool_ms=mean,
            past_steps=self.past.steps,
            past_usd=round(self.past.usd, 8),
            cap_usd=policy.budget_usd if policy.budget_usd is not None else self.outside.workflow_cap_usd,
        )

    def _quote(self, call: str, times: int, tokens: int, policy: Policy, bound: int | None) -> Quote:
        llm = self.outside.llm
        return quote(call, times, tokens, policy, llm, self.outside.prices, self.outside.input_safety_factor, bound)

    def known(self, effect: ModelCalled) -> ModelCalled:
        return effect

    def fallback(self, call: str, attempt: int) -> LLM | None:
        """The next model of this process's fallback list for ``call``."""
        llm = self.outside.llm
        return llm.fallback_for(call, attempt) if llm is not None else None


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


_DEFAULTS = Policy()
E = TypeVar("E", ToolCalled, LibrarySearched, BudgetDecided, ModelCalled, CallSettled, Estimated, Grounded)


class RecordedAnswers:
    """Answers served from one invocation's recorded ``effects``, in order; nothing is called.

    ``fallback_llm`` configures the model for records whose consultations do not say which
    one they used. ``lenient`` (a what-if): a recorded answer the handler no longer asks for
    is skipped, and a question the record does not hold raises ``unrecorded`` (the
    what-if's :class:`~actors.replay.whatif.Unrecorded`) instead of a divergence.
    """

    def __init__(
        self,
        effects: Sequence[Effect],
        *,
        fallback_llm: LLM | None = None,
        unrecorded: type[ReplayDivergence] | None = None,
    ) -> None:
        self.recorded = effects
        self.next = 0
        self._fallback_llm = fallback_llm
        self._unrecorded = unrecorded

    @property
    def policy(self) -> Policy:
        return _DEFAULTS

    # -- the record ------------------------------------------------------------------------------

    def take(self, cls: type[E], key: str) -> E:
        """The next recorded effect, which must be a ``cls`` of ``key`` (lenient: the next such one)."""
        recorded, i = self.recorded, self.next
        if i < len(recorded) and type(recorded[i]) is cls and recorded[i].key == key:
            self.next = i + 1
            return cast(E, recorded[i])
        if self._unrecorded is not None:
            for j in range(i, len(recorded)):
                if type(recorded[j]) is cls and recorded[j].key == key:
                    self.next = j + 1
                    return cast(E, recorded[j])
            raise self._unrecorded(
                f"would now {asking(cls.KIND, key)}, which the record does not hold (what follows is unknown)"
            )
        if i < len(recorded):
            has = f"{recorded[i].KIND} {recorded[i].key} (recorded answer {i + 1} of {len(recorded)})"
        else:
            has = f"nothing more (all {len(recorded)} recorded answers were used)"
        raise ReplayDivergence(f"the handler asked {cls.KIND} {key}, the record has {has}")

    def skip(self, cls: type[Effect], key: str) -> None:
        """Pass over the next recorded ``cls`` of ``key``, if any (a call that no longer happens)."""
        for j in range(self.next, len(self.recorded)):
            if type(self.recorded[j]) is cls and self.recorded[j].key == key:
                self.next = j + 1
                return

    # -- the port --------------------------------------------------------------------------------

    def model(self, call: str) -> LLM | None:
        """The model the recorded consultation of ``call`` used (None: none was configured)."""
        for e in self.recorded[self.next :]:
            match e:
                case BudgetDecided() if e.call == call:
                    if e.asked is None:
                        return self._fallback_llm
                    return LLM(
                        provider=RecordOnlyProvider(e.asked.provider),
                        models={"default": e.asked.model},
                        max_output_tokens={"default": e.asked.max_output_tokens},
                    )
                case ModelCalled() if e.call == call and e.ask == NO_PROVIDER:
                    return None  # recorded without a model: no provider was configured
        return self._fallback_llm

    def fallback(self, call: str, attempt: int) -> LLM | None:
        """The fallback model the record asked next: its next answer is the budget's decision on
        fallback ``attempt`` of ``call`` (else the recorded run did not fall back here)."""
        if self.next < len(self.recorded):
            e = self.recorded[self.next]
            if isinstance(e, BudgetDecided) and e.call == call and e.asked is not None and e.asked.attempt == attempt:
                return LLM(
                    provider=RecordOnlyProvider(e.asked.provider),
                    models={"default": e.asked.model},
                    max_output_tokens={"default": e.asked.max_output_tokens},
                )
        return None

    async def run_tool(
        self, tool: str, inputs: dict[str, Any], idempotency_key: str, compensable: bool = False
    ) -> ToolCalled:
        return self.take(ToolCalled, ToolCalled.key_of(tool, inputs))

    async def search_library(self, request: str) -> LibrarySearched:
        return self.take(LibrarySearched, LibrarySearched.key_of(request))

    async def ground(self, call: str, query: str, tool: str | None) -> Grounded | None:
        """The recorded grounding; None when the record holds none here (a process without
        anything to ground in, or a record made before grounding: its prompt had none)."""
        key = Grounded.key_of(call, Grounded.query_of(query))
        i = self.next
        if i < len(self.recorded) and isinstance(self.recorded[i], Grounded):
            return self.take(Grounded, key)
        if self._unrecorded is not None and any(type(e) is Grounded and e.key == key for e in self.recorded[i:]):
            return self.take(Grounded, key)
        return None

    async def consult(self, request: Consultation) -> BudgetDecided:
        return self.take(BudgetDecided, BudgetDecided.key_of(request.kind, request.cache_key))

    async def call_model(self, llm: LLM, request: LLMRequest) -> ModelCalled:
        ask = ModelCalled.ask_of(request.system, request.prompt, request.model)
        return self.take(ModelCalled, ModelCalled.key_of(request.kind, ask))

    async def settle(self, call: str, decision: Decision, settlement: Settlement) -> CallSettled | None:
        return self.take(CallSettled, CallSettled.key_of(call, settlement.reservation_id))

    async def estimate(
        self, tool: str, asks: Sequence[tuple[str, int, int]], policy: Policy, bounds: Sequence[int] | None = None
    ) -> Estimated:
        return self.take(Estimated, f"{tool}:{Estimated.asks_of(list(asks))}")

    def known(self, effect: ModelCalled) -> ModelCalled:
        """What the live context records without asking anyone must be what the record holds
        next; the recorded measurement is kept."""
        recorded = self.take(ModelCalled, effect.key)
        return msgspec.structs.replace(effect, ms=recorded.ms)


def asking(kind: str, key: str) -> str:
    """What a request for an outside answer is, in words."""
    head = key.rsplit(":", 1)[0] if kind == ToolCalled.KIND else key.split(":", 1)[0]
    match kind:
        case ToolCalled.KIND:
            return f"run tool {head}"
        case LibrarySearched.KIND:
            return "search the plan library"
        case BudgetDecided.KIND:
            return f"consult the budget for a {head} call"
        case ModelCalled.KIND:
            return f"call the model for {head}"
        case CallSettled.KIND:
            return f"settle a {head} call"
        case Estimated.KIND:
            return f"quote a dry run's step of {head}"
        case Grounded.KIND:
            return f"retrieve what a {head} prompt is grounded in"
    return f"ask for {kind} {key}"
