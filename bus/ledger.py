"""The budget's wire types: asking for a consultation, the answer, and settling it.

Every LLM call is gated by the budget actor (core NATS request/reply)::

    <prefix>.budget.consult   Consultation -> Decision   before the call
    <prefix>.budget.settle    Settlement   -> Settled    after it (real usage; the rest is released)

A caller that gets no answer treats the consultation as denied (``budget_unavailable``):
no grant, no call. Error answers have the shape ``{"error": {"code": ..., "message": ...}}``.

Reason codes of a denial (``Decision.reason``):

    not_allowed        the workflow's intelligence level or execution mode does not allow this kind
    over_workflow_cap  the worst case of this call would take the workflow over its ``budget_usd``
    over_global_cap    ... over the deployment's daily cap
    rate_limited       the provider's requests- or tokens-per-minute limit is reached (``retry_after_s``)
    no_provider        no LLM provider is configured where the call would be made
    budget_unavailable no budget actor answered (decided by the caller)
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

CONSULTATION_KINDS: Final = ("plan", "decompose", "recover", "interpret", "decide", "adapt")
INTELLIGENCE_LEVELS: Final = ("basic", "adaptive", "intelligent", "autonomous")
EXECUTION_MODES: Final = ("strict", "adaptive", "creative")
DENIAL_REASONS: Final = (
    "not_allowed",
    "over_workflow_cap",
    "over_global_cap",
    "rate_limited",
    "no_provider",
    "budget_unavailable",
)


class Consultation(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """May this LLM call happen? Sent before every call (a repair round asks again).

    ``id`` is deterministic (the handler's input event id and a counter), so asking again
    after a lost reply gets the same decision instead of a second reservation.
    ``est_input_tokens`` is an estimate; ``max_output_tokens`` is the call's hard limit, so
    the worst case is known before the call. ``budget_usd`` is the workflow's cap (None:
    the budget's default). ``cache_key`` names the (provider, model, prompt) for the
    inference cache; None = do not serve from the cache.
    """

    id: str
    workflow_id: str
    kind: str
    provider: str
    model: str
    est_input_tokens: int
    max_output_tokens: int
    intelligence: str = "adaptive"
    mode: str = "adaptive"
    budget_usd: float | None = None
    cache_key: str | None = None


Outcome = Literal["granted", "denied", "cached"]


class Decision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The budget's answer.

    ``granted``: call, then settle ``reservation_id``; ``reserved_usd`` is held until then.
    ``denied``: do not call; ``reason`` is one of :data:`DENIAL_REASONS`, ``message`` says
    why in words. ``cached``: do not call; ``cached_answer`` is the output a call with the
    same ``cache_key`` produced (costs nothing).
    """

    outcome: Outcome
    reason: str = ""
    message: str = ""
    reservation_id: str | None = None
    reserved_usd: float = 0.0
    retry_after_s: float | None = None
    cached_answer: dict[str, Any] | None = None


class Settlement(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a granted call really used. ``model`` is the model that answered (it prices the
    tokens). ``ok`` false: the call failed (the tokens of a billed failure still count).
    ``cache_value``, when set, is a validated output to cache under ``cache_key``."""

    reservation_id: str
    workflow_id: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    ok: bool = True
    error: str | None = None
    cache_key: str | None = None
    cache_value: dict[str, Any] | None = None


class Settled(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The settlement's answer: what the call cost and how much of the reservation went back."""

    reservation_id: str
    cost_usd: float
    released_usd: float
    already_settled: bool = False
