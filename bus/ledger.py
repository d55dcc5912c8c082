"""The budget's wire types: asking for a consultation, the answer, settling it, and the ledger.

Every LLM call is gated by the budget actor (core NATS request/reply)::

    <prefix>.budget.consult   Consultation -> Decision   before the call
    <prefix>.budget.settle    Settlement   -> Settled    after it (real usage; the rest is released)

A caller that gets no answer treats the consultation as denied (``budget_unavailable``):
no grant, no call. Error answers have the shape ``{"error": {"code": ..., "message": ...}}``
with code ``invalid_consultation`` or ``invalid_settlement`` and msgspec's message, which
names the JSON path (``Expected `int` >= 0 - at `$.est_input_tokens```). Requests reject
unknown fields (a typo is an error, not a silent default); answers tolerate them.

Reason codes of a denial (``Decision.reason``):

    not_allowed        the workflow's intelligence level or execution mode does not allow this kind
    over_workflow_cap  the worst case of this call would take the workflow over its ``budget_usd``
    over_global_cap    ... over the deployment's daily cap
    rate_limited       the provider's requests- or tokens-per-minute limit is reached (``retry_after_s``)
    no_provider        no LLM provider is configured where the call would be made
    budget_unavailable no budget actor answered (decided by the caller)

The ledger (``<prefix>.ledger``, a JetStream stream of its own) records every decision that
changes the budget's state. Each message holds a JSON array of :data:`LedgerEntry` — the
entries one group commit of the budget decided — tagged by ``type``::

    reserved   a grant: the worst case is held until the call settles or the reservation expires
    settled    what a granted call really cost; the rest of its reservation went back
    expired    a reservation nobody settled in time, charged at its full worst case
    denied     a refusal, with its reason code
    cache_hit  a consultation answered from the inference cache (costs nothing)
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

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

# Ids travel as Nats-Msg-Id header values: printable ASCII, no spaces.
RequestId = Annotated[str, msgspec.Meta(pattern=r"^[!-~]{1,256}$")]
WorkflowId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
ModelName = Annotated[str, msgspec.Meta(max_length=200)]  # as the API reported it (may be empty)
# Inference-cache keys are used as JetStream KV keys as given; callers send lowercase hex digests.
CacheKey = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8,128}$")]
Tokens = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]
Usd = Annotated[float, msgspec.Meta(ge=0)]


class Consultation(msgspec.Struct, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=True):
    """May this LLM call happen? Sent before every call (a repair round asks again).

    ``id`` is deterministic (the handler's input event id and a counter), so asking again
    after a lost reply gets the same decision instead of a second reservation.
    ``est_input_tokens`` is an estimate (it feeds the rate limits); ``max_input_tokens`` an
    upper bound of the billed input (the request's UTF-8 bytes plus framing,
    :func:`cadre.planner.providers.pricing.input_token_bound`) and ``max_output_tokens`` the
    call's hard limit, so the most the call can cost is known before it. ``max_input_tokens``
    None (a caller from before the bound) reserves by the older rule, the estimate times the
    budget's safety factor, which a call can exceed. ``budget_usd`` is the workflow's cap (None:
    the budget's default). ``cache_key`` names the (provider, model, prompt) for the
    inference cache (lowercase hex); None = do not serve from the cache. ``attempt`` is 0, or
    the number of the fallback provider asked after the ones before it failed.
    """

    id: RequestId
    workflow_id: WorkflowId
    kind: str
    provider: Name
    model: Name
    est_input_tokens: Tokens
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)]
    max_input_tokens: Tokens | None = None
    intelligence: str = "adaptive"
    mode: str = "adaptive"
    budget_usd: Usd | None = None
    cache_key: CacheKey | None = None
    attempt: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0


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


class Settlement(msgspec.Struct, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=True):
    """What a granted call really used. ``model`` is the model that answered (it prices the
    tokens). ``ok`` false: the call failed (the tokens of a billed failure still count).
    ``cache_value``, when set, is a validated output to cache under ``cache_key``."""

    reservation_id: RequestId
    workflow_id: WorkflowId
    model: ModelName
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    ok: bool = True
    error: str | None = None
    cache_key: CacheKey | None = None
    cache_value: dict[str, Any] | None = None


class Settled(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The settlement's answer: what the call cost and how much of the reservation went back.

    ``already_settled``: the reservation is unknown, or was settled (or expired) before;
    nothing was counted this time (``cost_usd`` 0), so a retried settlement never counts twice.
    """

    reservation_id: str
    cost_usd: float
    released_usd: float
    already_settled: bool = False


# -- the ledger ------------------------------------------------------------------------------


class _Entry(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type"):
    """Fields every ledger entry has: whose call, what for, on which model, when (UTC)."""

    workflow_id: str
    kind: str
    provider: str
    model: str
    at: datetime
    reason: str = ""


class ReservedEntry(_Entry, tag="reserved", frozen=True, kw_only=True, gc=False):
    """A grant. ``reserved_usd`` is the most the call can cost (``planner/providers/pricing.py``):
    ``reserved_input_tokens`` (the consultation's ``max_input_tokens`` bound; for a consultation
    without one, the estimate times the safety factor, rounded up) at the highest input-side
    price (input or cache write) plus every allowed output token at the output price.
    ``workflow_cap_usd`` is the workflow's cap as the budget knows it."""

    reservation_id: str
    est_input_tokens: int
    max_output_tokens: int
    reserved_input_tokens: int
    reserved_usd: float
    workflow_cap_usd: float
    expires_at: datetime


class SettledEntry(_Entry, tag="settled", frozen=True, kw_only=True, gc=False):
    """A granted call's real usage and cost (``model`` is the model that answered).
    ``released_usd`` went back to the caps; ``overrun_usd`` > 0 (and ``reason`` ``overrun``)
    when the real cost exceeded the reservation: the provider billed more than the bound (or,
    for a reservation of the older rule, the estimate was low). The budget grants that
    workflow nothing more once such an entry is folded."""

    reservation_id: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float
    reserved_usd: float
    released_usd: float
    overrun_usd: float = 0.0
    ok: bool = True
    error: str | None = None


class ExpiredEntry(_Entry, tag="expired", frozen=True, kw_only=True, gc=False):
    """A reservation not settled within the timeout: charged at its worst case (``cost_usd``
    = ``reserved_usd``), since nobody knows what the call used."""

    reservation_id: str
    cost_usd: float
    reserved_usd: float


class DeniedEntry(_Entry, tag="denied", frozen=True, kw_only=True, gc=False):
    """A refusal: ``reason`` is the denial's code, ``message`` its words; ``worst_case_usd``
    what the call would have reserved (0 when it was refused before pricing)."""

    consultation_id: str
    message: str
    worst_case_usd: float = 0.0
    workflow_cap_usd: float
    retry_after_s: float | None = None


class CacheHitEntry(_Entry, tag="cache_hit", frozen=True, kw_only=True, gc=False):
    """A consultation answered from the inference cache (no call, no cost)."""

    consultation_id: str
    cache_key: str
    workflow_cap_usd: float


LedgerEntry = ReservedEntry | SettledEntry | ExpiredEntry | DeniedEntry | CacheHitEntry
"""One entry of the ledger; a ledger message holds a JSON array of them."""
