"""LLM consultations from inside a handler: asked of the budget, called, settled, recorded.

:meth:`actors.context.Context.infer` runs :func:`planner.providers.structured_flow` (ask,
validate, one repair round) with every call gated by the budget actor:

1. a :class:`~bus.ledger.Consultation` per call (the repair round asks again), carrying the
   workflow's intelligence level, execution mode and cap, the worst case (estimated input,
   the call's output limit) and, on the first round, the inference-cache key;
2. ``denied`` → no call; the caller takes its deterministic fallback. ``cached`` → the
   cached output is validated like a fresh answer, at no cost. ``granted`` → the provider
   is called and the real usage settled; a valid final output goes into the cache;
3. every decision (effect ``budget``) and every call (effect ``llm``: prompt digest, answer
   or error, tokens, cost, latency) is recorded, so a replay serves the same answers.

The process's model is an :class:`LLM`; without one every consultation falls back with
``no_provider`` and no budget round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cadre.actors.digests import digest
from cadre.bus.events import WorkflowRequested
from cadre.planner.providers.base import LLMRequest, Provider

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LLM:
    """The model this process may consult: a provider, a model per consultation kind (or
    ``default``), and an output-token limit per kind (or ``default``).

    ``fallbacks``: per consultation kind, the models asked in turn when this one is
    overloaded, rate-limited or down after its retries (:func:`falls_back`)."""

    provider: Provider
    models: Mapping[str, str]
    max_output_tokens: Mapping[str, int] = field(default_factory=lambda: {"default": 1024})
    fallbacks: Mapping[str, tuple[LLM, ...]] = field(default_factory=dict)

    def model_for(self, kind: str) -> str:
        return self.models.get(kind, self.models["default"])

    def fallback_for(self, kind: str, attempt: int) -> LLM | None:
        """The model asked on fallback ``attempt`` (1, 2, ...) of a ``kind`` consultation, or None."""
        chain = self.fallbacks.get(kind, ())
        return chain[attempt - 1] if 0 < attempt <= len(chain) else None

    def providers(self) -> list[Provider]:
        """Every provider this model and its fallbacks use, each once (to close them)."""
        seen: dict[int, Provider] = {id(self.provider): self.provider}
        for chain in self.fallbacks.values():
            for llm in chain:
                seen.setdefault(id(llm.provider), llm.provider)
        return list(seen.values())

    def limit_for(self, kind: str) -> int:
        return self.max_output_tokens.get(kind, self.max_output_tokens.get("default", 1024))


@dataclass(frozen=True, slots=True)
class Policy:
    """What a workflow lets its actors consult: its intelligence level, execution mode and
    LLM spend cap (None: the budget's default)."""

    intelligence: str = "adaptive"
    mode: str = "adaptive"
    budget_usd: float | None = None
    # The workflow whose budget account its consultations are charged to (None: its own). A child
    # workflow's is its tree's root, so the whole tree spends within the root's cap (planner.children).
    account: str | None = None

    def for_request(self, req: WorkflowRequested | None) -> Policy:
        """The request's own settings, with this policy's for the ones it leaves unset."""
        if req is None:
            return self
        return Policy(
            intelligence=req.intelligence or self.intelligence,
            mode=req.mode or self.mode,
            budget_usd=req.budget_usd if req.budget_usd is not None else self.budget_usd,
            account=req.parent.root if req.parent is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Inferred(Generic[T]):
    """The end of a consultation: ``value`` when the model's (or the cache's) answer passed
    validation; otherwise ``None`` and ``reason`` says why the caller falls back.
    ``fallbacks``: how many times the consultation moved on to the next provider of its list
    (``calls`` and ``cost_usd`` then count every provider's).

    ``source``: ``model``, ``cache`` or ``fallback``. ``calls``: HTTP calls made (0 for a
    cached answer or a denial). ``repaired``: a repair round was needed. ``declined``: the
    consultation was not for this workflow (its level or mode does not allow the kind) or
    this process has no model; a caller then behaves exactly as without dynamic inference.
    """

    value: T | None
    source: str
    reason: str = ""
    provider: str | None = None
    model: str | None = None
    repaired: bool = False
    calls: int = 0
    cost_usd: float = 0.0
    problems: tuple[str, ...] = ()
    declined: bool = False
    fallbacks: int = 0
    retry_after_s: float | None = None  # denied for the provider's rate limit: when asking again may pass

    @property
    def ok(self) -> bool:
        return self.value is not None

    def describe(self) -> str:
        """One line for an event's ``reason``: who answered, or why nobody did."""
        if self.value is None:
            return f"model not used ({self.reason})"
        how = "from the inference cache" if self.source == "cache" else f"in {self.calls} call(s)"
        repaired = ", after one repair round" if self.repaired else ""
        fell = f", after {self.fallbacks} fallback(s) between providers" if self.fallbacks else ""
        return f"answered by {self.provider}/{self.model} {how}{repaired}{fell} (${self.cost_usd:.4f})"


FALLBACK_ERRORS = frozenset({"rate_limited", "overloaded", "server_error", "timeout", "connection"})
"""Provider errors after which the next model of a fallback list is asked: the provider is
overloaded, rate-limited or down (the SDK has already retried)."""


def falls_back(result: Inferred[Any]) -> bool:
    """Whether a consultation's end sends it to the next provider: a provider error of
    :data:`FALLBACK_ERRORS`, or the budget's rate limit of that provider."""
    if result.ok:
        return False
    reason = result.reason
    if reason.startswith("provider_error: "):
        return reason.removeprefix("provider_error: ") in FALLBACK_ERRORS
    return reason.startswith("denied: rate_limited")


def cache_key(provider: str, request: LLMRequest) -> str:
    """The inference cache's key: provider, model, prompts, schema and limits (hex digest)."""
    return digest(
        {
            "provider": provider,
            "model": request.model,
            "system": request.system,
            "prompt": request.prompt,
            "schema": request.schema,
            "schema_name": request.schema_name,
            "max_output_tokens": request.max_output_tokens,
        },
        size=16,
    )
