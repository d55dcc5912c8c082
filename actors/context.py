"""The handler's window on the world: time, tools, LLM consultations and the plan library.

Everything a handler learns from outside goes through its :class:`Context`, which records
each answer as an :class:`~bus.events.Effect`. The runtime stores the effects in an
``effects_recorded`` event in the same atomic batch as the handler's outputs, so a replay
can serve the same answers without calling anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec

from actors.digests import digest
from actors.inference import LLM, Inferred, Policy, cache_key
from bus.events import Effect, Envelope
from bus.ledger import Consultation, Decision, Settled, Settlement
from bus.plan import ErrorInfo, Plan
from planner.providers.base import LLMRequest, LLMResponse, ProviderError, Usage
from planner.providers.pricing import estimate_input_tokens
from planner.providers.structured import Outcome, structured_flow
from store.records import StoredEvent

__all__ = [
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
        """The tool's output; raise ToolFailure when it fails."""
        ...


class Budget(Protocol):
    """The budget actor, over NATS: asked before every LLM call, told its usage after."""

    async def consult(self, request: Consultation) -> Decision: ...

    async def settle(self, settlement: Settlement) -> Settled | None: ...


class Library(Protocol):
    """Finds a known plan for a request (the plan library)."""

    async def search(self, request: str) -> LibraryHit | None: ...


class LibraryHit(msgspec.Struct, frozen=True, kw_only=True):
    """The library's closest plan; the planner reuses it only when ``score >= threshold``."""

    name: str
    source: str
    score: float
    threshold: float
    plan: Plan


@dataclass(frozen=True, slots=True)
class Outside:
    """The live ports a context may call; None means "not available in this process".

    ``policy`` holds this process's defaults for workflows whose request leaves them unset.
    """

    tools: Tools | None = None
    budget: Budget | None = None
    library: Library | None = None
    llm: LLM | None = None
    policy: Policy = field(default_factory=Policy)


class Context:
    """A live context for one handler invocation."""

    def __init__(self, *, kind: str, stored: StoredEvent, now: datetime, outside: Outside) -> None:
        self.kind = kind
        self.stored = stored
        self.event: Envelope = stored.event
        self.workflow_id = stored.event.workflow_id
        self.effects: list[Effect] = []
        self._now = now
        self._outside = outside
        self._consultations = 0
        # Consultation ids: the input, this invocation's time and a counter. Asking again after a
        # lost reply gets the same decision; a re-run of the handler (a conflict, a redelivery)
        # has another time, so it reserves anew instead of reusing a settled reservation.
        # Made on the first consultation (most invocations consult nobody).
        self._nonce = ""

    def now(self) -> datetime:
        """The time of this invocation (recorded as the ``at`` of what the handler emits)."""
        return self._now

    def _record(self, kind: str, key: str, value: Any, error: ErrorInfo | None, started: float) -> None:
        ms = round((time.perf_counter() - started) * 1000, 3)
        self.effects.append(Effect(kind=kind, key=key, value=value, error=error, ms=ms))

    async def call_tool(self, tool: str, inputs: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """Run a tool; its output (or failure) is recorded. Raises :class:`ToolFailure`."""
        key = f"{tool}:{digest(inputs)}"
        started = time.perf_counter()
        if self._outside.tools is None:
            failure = ToolFailure(tool, ErrorInfo(code="no_tools", message="this process runs no tools"), False)
            self._record("tool", key, {"retryable": False}, failure.error, started)
            raise failure
        try:
            out = await self._outside.tools.run(tool, inputs, idempotency_key)
        except ToolFailure as exc:
            self._record("tool", key, {"retryable": exc.retryable, "output": exc.output}, exc.error, started)
            raise
        self._record("tool", key, out, None, started)
        return out

    def policy(self, request: Any = None) -> Policy:
        """The workflow's policy: its request's level, mode and cap over this process's defaults."""
        return self._outside.policy.for_request(request)

    async def consult(self, request: Consultation) -> Decision:
        """Ask the budget whether an LLM call may happen (recorded); no budget actor = denied.

        The effect's value is the decision plus ``consultation``: what was asked (provider,
        model, token estimate and limit, level, mode, cap), so an audit can show it and a
        replay can configure its model and re-decide the budget (:func:`asked`).
        """
        started = time.perf_counter()
        if self._outside.budget is None:
            decision = Decision(outcome="denied", reason="budget_unavailable", message="this process has no budget")
        else:
            decision = await self._outside.budget.consult(request)
        value = msgspec.to_builtins(decision)
        value["consultation"] = asked(request)
        self._record("budget", f"{request.kind}:{request.cache_key or ''}", value, None, started)
        return decision

    async def infer(
        self, kind: str, request: LLMRequest, validate: Callable[[dict[str, Any]], T], policy: Policy
    ) -> Inferred[T]:
        """Ask the model for one JSON object, validated by ``validate`` (one repair round),
        each call gated by the budget and recorded. ``request.model`` and a zero
        ``max_output_tokens`` are filled in from this process's :class:`~actors.inference.LLM`.

        Never raises for the model's sake: a denial, a provider error or an invalid answer
        comes back as an :class:`Inferred` without a value, saying why.
        """
        llm = self._outside.llm
        if llm is None:
            self._record("llm", f"{kind}:-", {"outcome": "no_provider"}, None, time.perf_counter())
            return Inferred(
                None, "fallback", "no_provider: no LLM provider is configured in this process", declined=True
            )
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
            consultation = self._consultation(kind, provider, current, policy, key if round_ == 1 else None)
            decision = await self.consult(consultation)
            reply: LLMResponse | ProviderError
            if decision.outcome == "cached" and decision.cached_answer is not None:
                source = "cache"
                reply = _cached_response(provider, current.model, decision.cached_answer)
                self._record("llm", f"{kind}:{key}", {"cached": True}, None, time.perf_counter())
            elif decision.outcome == "granted":
                source = "model"
                calls += 1
                reply = await self._call(llm, current)
            else:
                flow.close()
                reason = f"denied: {decision.reason}" + (f": {decision.message}" if decision.message else "")
                declined = decision.reason in ("not_allowed", "no_provider")
                return Inferred(
                    None, "fallback", reason, provider, request.model, round_ > 1, calls, cost, declined=declined
                )
            try:
                following = flow.send(reply)
            except StopIteration as done:
                outcome: Outcome[T] = done.value
                if decision.outcome == "granted":
                    cache = key if outcome.ok else None
                    cost += await self._settle(kind, current.model, decision, reply, cache, outcome)
                return _inferred(outcome, source, provider, request.model, calls, cost)
            if decision.outcome == "granted":
                cost += await self._settle(kind, current.model, decision, reply, None, None)
            current = following

    def _consultation(
        self, kind: str, provider: str, request: LLMRequest, policy: Policy, key: str | None
    ) -> Consultation:
        self._consultations += 1
        if not self._nonce:
            self._nonce = format(round(self._now.timestamp() * 1_000_000), "x")
        return Consultation(
            id=f"{self.event.id}-{self._nonce}-{self._consultations}",
            workflow_id=self.workflow_id,
            kind=kind,
            provider=provider,
            model=request.model,
            est_input_tokens=estimate_input_tokens(request),
            max_output_tokens=request.max_output_tokens,
            intelligence=policy.intelligence,
            mode=policy.mode,
            budget_usd=policy.budget_usd,
            cache_key=key,
        )

    async def _call(self, llm: LLM, request: LLMRequest) -> LLMResponse | ProviderError:
        """One provider call, recorded: the response, or the error it ended with."""
        started = time.perf_counter()
        key = f"{request.kind}:{digest([request.system, request.prompt, request.model], size=8)}"
        try:
            response = await llm.provider.complete(request)
        except ProviderError as exc:
            value = {"error": {"code": exc.code, "what": exc.what, "status": exc.status, "retryable": exc.retryable}}
            if exc.usage is not None:
                value["usage"] = msgspec.to_builtins(exc.usage)
            self._record("llm", key, value, ErrorInfo(code=exc.code, message=str(exc)), started)
            return exc
        self._record("llm", key, {"response": msgspec.to_builtins(response)}, None, started)
        return response

    async def _settle(
        self,
        kind: str,
        model: str,
        decision: Decision,
        reply: LLMResponse | ProviderError,
        key: str | None,
        outcome: Outcome[Any] | None,
    ) -> float:
        """Tell the budget what a granted call used; a valid final output goes to the cache."""
        if decision.reservation_id is None or self._outside.budget is None:
            return 0.0
        usage = reply.usage if isinstance(reply, LLMResponse) else reply.usage or Usage(input_tokens=0, output_tokens=0)
        cached = None
        if key is not None and outcome is not None and outcome.ok and isinstance(reply, LLMResponse):
            cached = reply.output
        settled = await self._outside.budget.settle(
            Settlement(
                reservation_id=decision.reservation_id,
                workflow_id=self.workflow_id,
                model=reply.model if isinstance(reply, LLMResponse) else model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                ok=isinstance(reply, LLMResponse),
                error=reply.code if isinstance(reply, ProviderError) else None,
                cache_key=key if cached is not None else None,
                cache_value=cached,
            )
        )
        cost = settled.cost_usd if settled is not None else decision.reserved_usd
        self.effects.append(
            Effect(
                kind="settle",
                key=f"{kind}:{decision.reservation_id}",
                value={"cost_usd": cost, "acknowledged": settled is not None},
            )
        )
        return cost

    async def search_library(self, request: str) -> LibraryHit | None:
        """The best known plan for the request, or None; recorded with its score."""
        started = time.perf_counter()
        hit = await self._outside.library.search(request) if self._outside.library is not None else None
        self._record("library", digest(request), msgspec.to_builtins(hit), None, started)
        return hit


def asked(request: Consultation) -> dict[str, Any]:
    """What a consultation asked, as recorded in its ``budget`` effect (its id and workflow
    are the input's; its kind and cache key are in the effect's key)."""
    return {
        "provider": request.provider,
        "model": request.model,
        "est_input_tokens": request.est_input_tokens,
        "max_output_tokens": request.max_output_tokens,
        "intelligence": request.intelligence,
        "mode": request.mode,
        "budget_usd": request.budget_usd,
    }


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
