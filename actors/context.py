"""The handler's window on the world: time, tools, LLM consultations and the plan library.

Everything a handler learns from outside goes through its :class:`Context`, which asks its
:class:`Answers` port and records each answer as a typed effect (:mod:`bus.effects`). Where
the answers come from is the port's business: :class:`~actors.answers.LiveAnswers` asks the
real tools, budget, library and model; :class:`~actors.answers.RecordedAnswers` serves them
from the record and refuses anything unrecorded (a replay); a what-if wraps the recorded one
(:mod:`actors.replay.whatif`). The context itself is the same in all three, so what a
handler does with an answer cannot differ between a run and its replay.

The runtime stores the effects on the handler's first output (or, when it has none, in an
``effects_recorded`` event of their own: :mod:`actors.invocation`), so a replay can serve
the same answers without calling anything.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec

from cadre.actors.digests import digest
from cadre.actors.inference import LLM, Inferred, Policy, cache_key, falls_back
from cadre.bus.effects import (
    NO_PROVIDER,
    Asked,
    BudgetDecided,
    CallSettled,
    Effect,
    Estimated,
    Grounded,
    LibraryHit,
    LibrarySearched,
    ModelCalled,
    ToolCalled,
)
from cadre.bus.events import Envelope
from cadre.bus.ledger import Consultation, Decision, Settled, Settlement
from cadre.bus.plan import ErrorInfo
from cadre.planner.providers.base import (
    ERROR_CODES,
    LLMRequest,
    LLMResponse,
    ProviderError,
    Usage,
)
from cadre.planner.providers.pricing import (
    DEFAULT_PRICE,
    DEFAULT_PRICES,
    Prices,
    estimate_input_tokens,
    input_token_bound,
)
from cadre.planner.providers.structured import Outcome, structured_flow
from cadre.store.records import StoredEvent

__all__ = [
    "Answers",
    "Budget",
    "Consultation",
    "Context",
    "Decision",
    "Inferred",
    "Library",
    "LibraryHit",
    "Outside",
    "Policy",
    "ToolFailure",
    "Tools",
    "asked",
    "digest",
]

T = TypeVar("T")


class ToolFailure(Exception):
    """A tool call that failed, as the handler sees it (recorded either way).

    ``output`` is the refused output (JSON data) of an ``invalid_output`` failure, else None.
    """

    def __init__(self, tool: str, error: ErrorInfo, retryable: bool, output: Any = None) -> None:
        super().__init__(f"{tool}: {error.code}: {error.message}")
        self.tool = tool
        self.error = error
        self.retryable = retryable
        self.output = output


class Tools(Protocol):
    """Runs tools by name (the agents' toolbox)."""

    async def run(self, tool: str, inputs: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """The tool's output; raise ToolFailure when it fails. A toolbox that can refuse a call it
        could not undo takes ``compensable=True`` too (``ToolCall.compensable``); it is passed only then."""
        ...


class Budget(Protocol):
    """The budget actor, over NATS: asked before every LLM call, told its usage after."""

    async def consult(self, request: Consultation) -> Decision: ...

    async def settle(self, settlement: Settlement) -> Settled | None: ...


class Library(Protocol):
    """Finds a known plan for a request (the plan library)."""

    async def search(self, request: str) -> LibraryHit | None: ...


class Grounding(Protocol):
    """Retrieves what a prompt is grounded in: similar past plans, passages of documentation,
    the relevant tools of a large catalog (:class:`~actors.grounding.Grounder`)."""

    async def ground(self, call: str, query: str, tool: str | None) -> Grounded: ...


@dataclass(frozen=True, slots=True)
class Outside:
    """The live ports a context may call; None means "not available in this process".

    ``policy`` holds this process's defaults for workflows whose request leaves them unset.
    """

    tools: Tools | None = None
    budget: Budget | None = None
    library: Library | None = None
    llm: LLM | None = None
    grounding: Grounding | None = None
    policy: Policy = field(default_factory=Policy)
    prices: Prices = field(default_factory=lambda: Prices(default=DEFAULT_PRICE, by_model=DEFAULT_PRICES))
    input_safety_factor: float = 1.5
    workflow_cap_usd: float | None = None  # the budget's default cap per workflow (quoted in dry runs)


class Answers(Protocol):
    """Where one invocation's outside answers come from; each comes back as the effect that
    records it. Live: asked of the real ports (:class:`~actors.answers.LiveAnswers`);
    recorded: served from the record (:class:`~actors.answers.RecordedAnswers`)."""

    @property
    def policy(self) -> Policy:
        """This process's defaults for workflows whose request leaves them unset."""
        ...

    def model(self, call: str) -> LLM | None:
        """The model to consult for a ``call`` (``plan``, ``decide``, …); None: no model."""
        ...

    async def run_tool(
        self, tool: str, inputs: dict[str, Any], idempotency_key: str, compensable: bool = False
    ) -> ToolCalled: ...

    async def search_library(self, request: str) -> LibrarySearched: ...

    async def ground(self, call: str, query: str, tool: str | None) -> Grounded | None:
        """What a ``call``'s prompt for ``query`` is grounded in; None: nothing to ground in
        (no documentation, library or large catalog here; or a record made before grounding)."""
        ...

    async def consult(self, request: Consultation) -> BudgetDecided: ...

    async def call_model(self, llm: LLM, request: LLMRequest) -> ModelCalled: ...

    async def settle(self, call: str, decision: Decision, settlement: Settlement) -> CallSettled | None:
        """Tell the budget what a call it granted (``decision``) used; None when this process
        has no budget to tell."""
        ...

    def known(self, effect: ModelCalled) -> ModelCalled:
        """An answer nobody was asked for (no model; a cached answer), as recorded."""
        ...

    def fallback(self, call: str, attempt: int) -> LLM | None:
        """The model to ask on fallback ``attempt`` (1, 2, ...) of a ``call`` whose previous
        provider was overloaded, rate-limited or down; None: there is none (live: the list is
        over; replay: the record holds no such attempt)."""
        ...

    async def estimate(
        self, tool: str, asks: Sequence[tuple[str, int, int]], policy: Policy, bounds: Sequence[int] | None = None
    ) -> Estimated:
        """A dry run's quote for a step of ``tool``: ``asks`` are (call, times, estimated input
        tokens) of the consultations a real run could make; ``bounds`` their input bounds (which
        price them as the budget reserves them; they are not part of the recorded question)."""
        ...


class Context:
    """The context of one handler invocation: its clock and its outside answers (recorded in
    ``effects``, in order)."""

    def __init__(self, *, kind: str, stored: StoredEvent, now: datetime, answers: Answers) -> None:
        self.kind = kind
        self.stored = stored
        self.event: Envelope = stored.event
        self.workflow_id = stored.event.workflow_id
        self.effects: list[Effect] = []
        self.answers = answers
        self._now = now
        self._consultations = 0
        # Consultation ids: the input, this invocation's time and a counter. Asking again after a
        # lost reply gets the same decision; a re-run of the handler (a conflict, a redelivery)
        # has another time, so it reserves anew instead of reusing a settled reservation.
        # Made on the first consultation (most invocations consult nobody).
        self._nonce = ""

    def now(self) -> datetime:
        """The time of this invocation (recorded as the ``at`` of what the handler emits)."""
        return self._now

    async def call_tool(
        self, tool: str, inputs: dict[str, Any], *, idempotency_key: str, compensable: bool = False
    ) -> dict[str, Any]:
        """Run a tool; its output (or failure) is recorded. Raises :class:`ToolFailure`.
        ``compensable``: the workflow asked for compensation (``ToolCall.compensable``)."""
        effect = await self.answers.run_tool(tool, inputs, idempotency_key, compensable)
        self.effects.append(effect)
        if effect.error is not None:
            raise ToolFailure(tool, effect.error, effect.retryable, effect.refused)
        if effect.output is None:
            raise ToolFailure(
                tool, ErrorInfo(code="invalid_output", message=f"{tool} answered without an output"), False
            )
        return effect.output

    def policy(self, request: Any = None) -> Policy:
        """The workflow's policy: its request's level, mode and cap over this process's defaults."""
        return self.answers.policy.for_request(request)

    async def consult(self, request: Consultation) -> Decision:
        """Ask the budget whether an LLM call may happen (recorded, with what was :func:`asked`)."""
        effect = await self.answers.consult(request)
        self.effects.append(effect)
        return effect.decision

    async def infer(
        self, kind: str, request: LLMRequest, validate: Callable[[dict[str, Any]], T], policy: Policy
    ) -> Inferred[T]:
        """Ask the model for one JSON object, validated by ``validate`` (one repair round),
        each call gated by the budget and recorded. ``request.model`` and a zero
        ``max_output_tokens`` are filled in from this process's :class:`~actors.inference.LLM`.

        Never raises for the model's sake: a denial, a provider error or an invalid answer
        comes back as an :class:`Inferred` without a value, saying why.
        """
        llm = self.answers.model(kind)
        if llm is None:
            self.effects.append(self.answers.known(ModelCalled(call=kind, ask=NO_PROVIDER, outcome="no_provider")))
            return Inferred(
                None, "fallback", "no_provider: no LLM provider is configured in this process", declined=True
            )
        result = await self._infer_with(llm, kind, request, validate, policy, 0)
        fallbacks, calls, cost = 0, result.calls, result.cost_usd
        while falls_back(result):
            following = self.answers.fallback(kind, fallbacks + 1)
            if following is None:
                break
            fallbacks += 1
            result = await self._infer_with(following, kind, request, validate, policy, fallbacks)
            calls, cost = calls + result.calls, cost + result.cost_usd
        if fallbacks:
            result = dataclasses.replace(result, calls=calls, cost_usd=round(cost, 8), fallbacks=fallbacks)
        return result

    async def _infer_with(
        self,
        llm: LLM,
        kind: str,
        request: LLMRequest,
        validate: Callable[[dict[str, Any]], T],
        policy: Policy,
        attempt: int,
    ) -> Inferred[T]:
        """One provider's go at a consultation (``attempt`` 0, or the fallback's number)."""
        provider = llm.provider.name
        request = msgspec.structs.replace(
            request,
            kind=kind,
            model=llm.model_for(kind),
            max_output_tokens=request.max_output_tokens or llm.limit_for(kind),
        )
        key = cache_key(provider, request)
        flow = structured_flow(request, validate)
        current = next(flow)
        calls, cost, source, round_ = 0, 0.0, "model", 0
        while True:
            round_ += 1
            consultation = self._consultation(kind, provider, current, policy, key if round_ == 1 else None, attempt)
            decision = await self.consult(consultation)
            reply: LLMResponse | ProviderError
            if decision.outcome == "cached" and decision.cached_answer is not None:
                source = "cache"
                reply = _cached_response(provider, current.model, decision.cached_answer)
                self.effects.append(self.answers.known(ModelCalled(call=kind, ask=key, outcome="cached")))
            elif decision.outcome == "granted":
                source = "model"
                calls += 1
                called = await self.answers.call_model(llm, current)
                self.effects.append(called)
                reply = _reply(called, provider)
            else:
                flow.close()
                reason = f"denied: {decision.reason}" + (f": {decision.message}" if decision.message else "")
                declined = decision.reason in ("not_allowed", "no_provider")
                after = decision.retry_after_s if decision.reason == "rate_limited" else None
                return Inferred(
                    None,
                    "fallback",
                    reason,
                    provider,
                    request.model,
                    round_ > 1,
                    calls,
                    cost,
                    declined=declined,
                    retry_after_s=after,
                )
            try:
                following = flow.send(reply)
            except StopIteration as done:
                outcome: Outcome[T] = done.value
                if decision.outcome == "granted":
                    cache = key if outcome.ok else None
                    cost += await self._settle(kind, current.model, decision, reply, cache, outcome, policy)
                return _inferred(outcome, source, provider, request.model, calls, cost)
            if decision.outcome == "granted":
                cost += await self._settle(kind, current.model, decision, reply, None, None, policy)
            current = following

    def _consultation(
        self, kind: str, provider: str, request: LLMRequest, policy: Policy, key: str | None, attempt: int = 0
    ) -> Consultation:
        self._consultations += 1
        if not self._nonce:
            self._nonce = format(round(self._now.timestamp() * 1_000_000), "x")
        return Consultation(
            id=f"{self.event.id}-{self._nonce}-{self._consultations}",
            workflow_id=policy.account or self.workflow_id,  # a child spends its tree's budget
            kind=kind,
            provider=provider,
            model=request.model,
            est_input_tokens=estimate_input_tokens(request),
            max_output_tokens=request.max_output_tokens,
            max_input_tokens=input_token_bound(request),
            intelligence=policy.intelligence,
            mode=policy.mode,
            budget_usd=policy.budget_usd,
            cache_key=key,
            attempt=attempt,
        )

    async def _settle(
        self,
        kind: str,
        model: str,
        decision: Decision,
        reply: LLMResponse | ProviderError,
        key: str | None,
        outcome: Outcome[Any] | None,
        policy: Policy,
    ) -> float:
        """Tell the budget what a granted call used; a valid final output goes to the cache."""
        if decision.reservation_id is None:
            return 0.0
        usage = reply.usage if isinstance(reply, LLMResponse) else reply.usage or Usage(input_tokens=0, output_tokens=0)
        cached = None
        if key is not None and outcome is not None and outcome.ok and isinstance(reply, LLMResponse):
            cached = reply.output
        settled = await self.answers.settle(
            kind,
            decision,
            Settlement(
                reservation_id=decision.reservation_id,
                workflow_id=policy.account or self.workflow_id,
                model=reply.model if isinstance(reply, LLMResponse) else model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                ok=isinstance(reply, LLMResponse),
                error=reply.code if isinstance(reply, ProviderError) else None,
                cache_key=key if cached is not None else None,
                cache_value=cached,
            ),
        )
        if settled is None:
            return 0.0
        self.effects.append(settled)
        return settled.cost_usd

    async def estimate(self, tool: str, asks: Sequence[tuple[str, LLMRequest, int]], policy: Policy) -> Estimated:
        """A dry run's quote for a step of ``tool`` (recorded): ``asks`` are the consultations a
        real run could make, each (call, the request it would send, how many times at most)."""
        question = [(call, times, estimate_input_tokens(request)) for call, request, times in asks]
        bounds = [input_token_bound(request) for _, request, _ in asks]
        effect = await self.answers.estimate(tool, question, policy, bounds)
        self.effects.append(effect)
        return effect

    async def ground(
        self, call: str, query: str, *, tool: str | None = None, for_model: bool = True
    ) -> Grounded | None:
        """What a ``call`` for ``query`` (about ``tool``, if one) is grounded in: similar past
        plans, passages of documentation, the relevant tools of a large catalog (recorded, so a
        replay builds the same prompt). ``for_model``: only when a model would be consulted for
        ``call`` (else None, nothing asked). None also when there is nothing to ground in."""
        if for_model and self.answers.model(call) is None:
            return None
        effect = await self.answers.ground(call, query, tool)
        if effect is not None:
            self.effects.append(effect)
        return effect

    async def search_library(self, request: str) -> LibraryHit | None:
        """The best known plan for the request, or None; recorded with its score."""
        effect = await self.answers.search_library(request)
        self.effects.append(effect)
        return effect.hit


def asked(request: Consultation) -> Asked:
    """What a consultation asked, as recorded in its :class:`~bus.effects.BudgetDecided` (its id
    and workflow are the input's; its kind and cache key are in the effect's key)."""
    return Asked(
        provider=request.provider,
        model=request.model,
        est_input_tokens=request.est_input_tokens,
        max_output_tokens=request.max_output_tokens,
        intelligence=request.intelligence,
        mode=request.mode,
        budget_usd=request.budget_usd,
        max_input_tokens=request.max_input_tokens,
        attempt=request.attempt,
    )


def _reply(effect: ModelCalled, provider: str) -> LLMResponse | ProviderError:
    """The provider's answer a :class:`~bus.effects.ModelCalled` records: its response, or its error."""
    if effect.response is not None:
        return effect.response
    failure, error = effect.failure, effect.error
    code = failure.code if failure is not None and failure.code in ERROR_CODES else None
    if code is None:
        code = error.code if error is not None and error.code in ERROR_CODES else "server_error"
    what = (failure.what if failure is not None else "") or (error.message if error is not None else "")
    return ProviderError(
        code,
        what,
        provider=provider,
        status=failure.status if failure is not None else None,
        retryable=failure.retryable if failure is not None else None,
        usage=effect.usage,
    )


def _cached_response(provider: str, model: str, output: dict[str, Any]) -> LLMResponse:
    return LLMResponse(
        provider=provider,
        model=model,
        output=output,
        text=json.dumps(output, ensure_ascii=False),
        usage=Usage(input_tokens=0, output_tokens=0),
        stop_reason="cached",
        latency_ms=0.0,
    )


def _inferred(outcome: Outcome[T], source: str, provider: str, model: str, calls: int, cost: float) -> Inferred[T]:
    problems = outcome.attempts[-1].problems if outcome.attempts else ()
    return Inferred(
        outcome.value,
        source if outcome.ok else "fallback",
        outcome.fallback_reason or "",
        provider,
        model,
        outcome.repaired,
        calls,
        round(cost, 8),
        problems,
    )
