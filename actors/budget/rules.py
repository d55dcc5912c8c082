"""The budget's rules, pure: the gate, worst cases, rate limits, caps, settlement, expiry, and
the fold of the ledger into the budget's state (the report ``cadre budget`` prints is in
:mod:`actors.budget.report`).

No I/O and no clock: ``now`` is a parameter. Decisions are commands that return entries:
:func:`decide`, :func:`settle` and :func:`expire` read the state and return the answer and
the :data:`~bus.ledger.LedgerEntry` that records it; the state changes only when
:func:`apply` folds an entry in. :func:`fold` of the whole ledger gives the state a budget
replica serves from, so a restarted replica (or a second one) decides like the first.

The order of the checks of a consultation::

    1. already decided (same id)?   the same answer: a retry after a lost reply gets no second reservation
    2. gate                         intelligence level x execution mode must allow the kind    -> not_allowed
    3. inference cache              a hit (looked up by the caller of decide) costs nothing    -> cached
    4. rate limit                   requests and tokens per provider over a sliding 60 s       -> rate_limited
    5. caps                         settled + reserved + worst case <= cap, per workflow and
                                    per UTC day                           -> over_workflow_cap / over_global_cap
    6. grant                        reserve the worst case until the call settles or expires

Invariant: a cap is never exceeded by settled spend. A grant reserves the most the call can
cost: the consultation's ``max_input_tokens`` (an upper bound of the billed input: the
request's UTF-8 bytes plus framing, :func:`planner.providers.pricing.input_token_bound`) at
the highest input-side price (input or cache write) plus every allowed output token at the
output price; a provider cannot bill more, so the real cost a settlement records fits in its
reservation, under any concurrency. A reservation nobody settles is charged at its full
reservation when it expires. Should a provider bill more anyway (an overrun: ``overrun_usd``
in the settled entry), the workflow gets no further grant (``over_workflow_cap``), and the
day's overrun counts in its settled spend, which denies what the daily cap no longer holds.
A consultation without ``max_input_tokens`` (from a caller before the bound; recorded ones in
old logs) is reserved by the older rule: ``est_input_tokens`` times
:attr:`BudgetConfig.input_safety_factor` (1.5, rounded up) at the input price.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any, Final, TypeVar, assert_never

from cadre.bus.errors import CadreError
from cadre.bus.ledger import (
    CONSULTATION_KINDS,
    EXECUTION_MODES,
    INTELLIGENCE_LEVELS,
    CacheHitEntry,
    Consultation,
    Decision,
    DeniedEntry,
    ExpiredEntry,
    LedgerEntry,
    ReservedEntry,
    Settled,
    SettledEntry,
    Settlement,
)
from cadre.planner.providers.base import Usage
from cadre.planner.providers.pricing import Prices, bound_usd, cost_usd, worst_case

WINDOW_S: Final = 60.0
"""Rate limits count the grants of the last 60 seconds."""

DEFAULT_DECISION_MEMORY: Final = 100_000
"""Decisions remembered by consultation id (for idempotent retries); the oldest are forgotten."""

_ALL: Final = frozenset(CONSULTATION_KINDS)
LEVEL_KINDS: Final[Mapping[str, frozenset[str]]] = types.MappingProxyType(
    {
        "basic": frozenset(),
        "adaptive": frozenset({"plan", "decompose", "recover"}),
        "intelligent": frozenset({"plan", "decompose", "recover", "interpret", "decide"}),
        "autonomous": _ALL,
    }
)
"""What each intelligence level may consult the model for."""

MODE_KINDS: Final[Mapping[str, frozenset[str]]] = types.MappingProxyType(
    {
        "strict": frozenset({"plan", "decompose", "decide"}),  # fails on the unexpected: no recover/interpret/adapt
        "adaptive": _ALL - {"adapt"},
        "creative": _ALL,
    }
)
"""What each execution mode lets the model do."""

Undo = list[Callable[[], object]]
"""A journal of how to take back what :func:`apply` changed (run in reverse order)."""

K = TypeVar("K")


class BudgetError(CadreError):
    """Base of the budget's errors."""

    code = "budget_error"


class InvalidSettlement(BudgetError):
    """A settlement that contradicts its reservation (another workflow's reservation)."""

    code = "invalid_settlement"


@dataclass(frozen=True)
class BudgetConfig:
    """The budget's settings, built once from the process settings (``cadre/budget_config.py``).

    ``rate_limits``: provider -> (requests per minute, tokens per minute); a provider not
    listed gets ``default_rate_limit``. 0 means no calls. ``input_safety_factor`` scales the
    input estimate of a consultation that carries no input bound (see the module docstring).
    """

    workflow_usd: float
    daily_usd: float
    reservation_timeout_s: float
    rate_limits: Mapping[str, tuple[int, int]]
    prices: Prices
    input_safety_factor: float = 1.5
    default_rate_limit: tuple[int, int] = (50, 200_000)
    decision_memory: int = DEFAULT_DECISION_MEMORY

    def __post_init__(self) -> None:
        if self.workflow_usd < 0 or self.daily_usd < 0:
            raise ValueError(f"caps must be >= 0 USD; got workflow {self.workflow_usd}, daily {self.daily_usd}")
        if not self.reservation_timeout_s > 0:
            raise ValueError(f"reservation_timeout_s must be > 0 seconds; got {self.reservation_timeout_s}")
        if self.input_safety_factor < 1:
            raise ValueError(f"input_safety_factor must be >= 1; got {self.input_safety_factor}")
        if self.decision_memory < 1:
            raise ValueError(f"decision_memory must be >= 1; got {self.decision_memory}")
        object.__setattr__(self, "rate_limits", types.MappingProxyType(dict(self.rate_limits)))

    def rate_limit(self, provider: str) -> tuple[int, int]:
        """(requests per minute, tokens per minute) of ``provider``."""
        return self.rate_limits.get(provider, self.default_rate_limit)


# -- the gate ---------------------------------------------------------------------------------


def allowed_kinds(intelligence: str, mode: str) -> frozenset[str]:
    """The consultation kinds a workflow at this level and mode may ask for (unknown: none)."""
    return LEVEL_KINDS.get(intelligence, frozenset()) & MODE_KINDS.get(mode, frozenset())


def gate(kind: str, intelligence: str, mode: str) -> str | None:
    """None when the level and mode allow ``kind``; else why not, in words."""
    if intelligence not in LEVEL_KINDS:
        return f"unknown intelligence level {intelligence!r}; expected one of {', '.join(INTELLIGENCE_LEVELS)}"
    if mode not in MODE_KINDS:
        return f"unknown execution mode {mode!r}; expected one of {', '.join(EXECUTION_MODES)}"
    if kind not in _ALL:
        return f"unknown consultation kind {kind!r}; expected one of {', '.join(CONSULTATION_KINDS)}"
    allowed = allowed_kinds(intelligence, mode)
    if kind in allowed:
        return None
    return (
        f"intelligence level {intelligence!r} with mode {mode!r} does not allow {kind!r} "
        f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
    )


# -- state ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Spend:
    """Money of a workflow or of a UTC day: settled, and held by open reservations."""

    settled_usd: float = 0.0
    reserved_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Reservation:
    """An open grant: ``reserved_usd`` is held against the workflow and against ``day``."""

    id: str
    workflow_id: str
    kind: str
    provider: str
    model: str
    reserved_usd: float
    day: date
    at: datetime
    expires_at: datetime


@dataclass(slots=True)
class Window:
    """A provider's grants of the last minute before its latest one, as (POSIX time, tokens),
    oldest first, and the sum of their tokens."""

    grants: deque[tuple[float, int]] = field(default_factory=deque)
    tokens: int = 0


@dataclass(slots=True)
class BudgetState:
    """The budget's state: a fold of the ledger.

    ``seq`` is the last ledger sequence folded (kept by the reader; :func:`apply` does not
    know sequences). ``caps`` is each workflow's cap, fixed by its first consultation.
    ``open`` is kept in order of expiry. ``windows`` holds each provider's recent grants
    (for the rate limits). ``overruns`` holds, by workflow, what settlements billed beyond
    their reservations (such a workflow gets no further grant). ``decisions`` remembers answers by
    consultation id, the oldest forgotten beyond ``decision_memory``. ``workflows`` and ``caps``
    are never pruned: they enforce each workflow's cap, and a workflow that comes back after any
    idle time cannot be told from a new one (docs/budget.md, "What the state keeps").
    """

    seq: int = 0
    workflows: dict[str, Spend] = field(default_factory=dict)
    caps: dict[str, float] = field(default_factory=dict)
    days: dict[date, Spend] = field(default_factory=dict)
    open: dict[str, Reservation] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    decision_memory: int = DEFAULT_DECISION_MEMORY
    overruns: dict[str, float] = field(default_factory=dict)


def granted(entry: ReservedEntry) -> Decision:
    """The answer a reservation stands for."""
    return Decision(outcome="granted", reservation_id=entry.reservation_id, reserved_usd=entry.reserved_usd)


def denied(entry: DeniedEntry) -> Decision:
    """The answer a denial stands for."""
    return Decision(outcome="denied", reason=entry.reason, message=entry.message, retry_after_s=entry.retry_after_s)


# A cache hit is remembered without its answer (the ledger does not hold answers); a retry
# looks the cache up again.
_CACHED: Final = Decision(outcome="cached", message="served from the inference cache")


# -- fold -------------------------------------------------------------------------------------


def fold(entries: Iterable[LedgerEntry], state: BudgetState | None = None) -> BudgetState:
    """The state after ``entries`` (applied to ``state``, or to an empty one)."""
    state = state if state is not None else BudgetState()
    for entry in entries:
        apply(state, entry)
    return state


def apply(state: BudgetState, entry: LedgerEntry, undo: Undo | None = None) -> None:
    """Fold one entry into ``state``; with ``undo``, journal how to take it back.

    Idempotent per reservation: a reservation already open is not reserved twice, and a
    settlement or expiry of one that is not open changes nothing.
    """
    match entry:
        case ReservedEntry():
            _reserve(state, entry, undo)
        case SettledEntry():
            if _close(state, entry.reservation_id, entry.cost_usd, undo) and entry.overrun_usd > 0:
                _overran(state, entry.workflow_id, entry.overrun_usd, undo)
        case ExpiredEntry():
            _close(state, entry.reservation_id, entry.cost_usd, undo)
        case DeniedEntry():
            _cap(state, entry.workflow_id, entry.workflow_cap_usd, undo)
            _remember(state, entry.consultation_id, denied(entry), undo)
        case CacheHitEntry():
            _cap(state, entry.workflow_id, entry.workflow_cap_usd, undo)
            _remember(state, entry.consultation_id, _CACHED, undo)
        case _:
            assert_never(entry)


def _reserve(state: BudgetState, e: ReservedEntry, undo: Undo | None) -> None:
    if e.reservation_id in state.open:
        return
    _cap(state, e.workflow_id, e.workflow_cap_usd, undo)
    day = e.at.date()
    _shift(_spend(state.workflows, e.workflow_id, undo), e.reserved_usd, 0.0, undo)
    _shift(_spend(state.days, day, undo), e.reserved_usd, 0.0, undo)
    r = Reservation(
        id=e.reservation_id,
        workflow_id=e.workflow_id,
        kind=e.kind,
        provider=e.provider,
        model=e.model,
        reserved_usd=e.reserved_usd,
        day=day,
        at=e.at,
        expires_at=e.expires_at,
    )
    _open(state, r)
    if undo is not None:
        undo.append(lambda: state.open.pop(r.id, None))
    _grant_in_window(state, e.provider, e.at.timestamp(), e.est_input_tokens + e.max_output_tokens, undo)
    _remember(state, e.reservation_id, granted(e), undo)


def _close(state: BudgetState, reservation_id: str, cost: float, undo: Undo | None) -> bool:
    r = state.open.pop(reservation_id, None)
    if r is None:
        return False
    if undo is not None:
        undo.append(lambda: _open(state, r))
    _shift(state.workflows[r.workflow_id], -r.reserved_usd, cost, undo)
    _shift(state.days[r.day], -r.reserved_usd, cost, undo)
    return True


def _overran(state: BudgetState, workflow_id: str, overrun: float, undo: Undo | None) -> None:
    overruns = state.overruns
    before = overruns.get(workflow_id)
    overruns[workflow_id] = (before or 0.0) + overrun
    if undo is not None:
        if before is None:
            undo.append(lambda: overruns.pop(workflow_id, None))
        else:
            undo.append(partial(overruns.__setitem__, workflow_id, before))


def _open(state: BudgetState, r: Reservation) -> None:
    """Add an open reservation, keeping ``open`` in order of expiry (so expiry stops early)."""
    last = next(reversed(state.open.values()), None)
    state.open[r.id] = r
    if last is not None and last.expires_at > r.expires_at:  # rare: clock skew between replicas, or an undo
        ordered = sorted(state.open.values(), key=lambda x: x.expires_at)
        state.open.clear()
        state.open.update((x.id, x) for x in ordered)


def _cap(state: BudgetState, workflow_id: str, cap: float, undo: Undo | None) -> None:
    if workflow_id in state.caps:
        return
    state.caps[workflow_id] = cap
    if undo is not None:
        undo.append(lambda: state.caps.pop(workflow_id, None))


def _spend(accounts: dict[K, Spend], key: K, undo: Undo | None) -> Spend:
    spend = accounts.get(key)
    if spend is None:
        spend = accounts[key] = Spend()
        if undo is not None:
            undo.append(lambda: accounts.pop(key, None))
    return spend


def _shift(spend: Spend, reserved: float, settled: float, undo: Undo | None) -> None:
    if undo is not None:
        before = (spend.reserved_usd, spend.settled_usd)
        undo.append(lambda: _set(spend, *before))
    spend.reserved_usd += reserved
    spend.settled_usd += settled


def _set(spend: Spend, reserved: float, settled: float) -> None:
    spend.reserved_usd = reserved
    spend.settled_usd = settled


def _grant_in_window(state: BudgetState, provider: str, ts: float, tokens: int, undo: Undo | None) -> None:
    window = state.windows.get(provider)
    if window is None:
        window = state.windows[provider] = Window()
        if undo is not None:
            undo.append(lambda: state.windows.pop(provider, None))
    if undo is not None:
        undo.append(partial(setattr, window, "tokens", window.tokens))
    grants = window.grants
    while grants and grants[0][0] <= ts - WINDOW_S:
        old = grants.popleft()
        window.tokens -= old[1]
        if undo is not None:
            undo.append(partial(grants.appendleft, old))
    grants.append((ts, tokens))
    window.tokens += tokens
    if undo is not None:
        undo.append(grants.pop)


def _remember(state: BudgetState, consultation_id: str, decision: Decision, undo: Undo | None) -> None:
    decisions = state.decisions
    before = decisions.get(consultation_id)
    decisions[consultation_id] = decision
    if undo is not None:
        if before is None:
            undo.append(lambda: decisions.pop(consultation_id, None))
        else:
            undo.append(partial(decisions.__setitem__, consultation_id, before))
    while len(decisions) > state.decision_memory:
        oldest = next(iter(decisions))
        forgotten = decisions.pop(oldest)
        if undo is not None:
            undo.append(partial(decisions.__setitem__, oldest, forgotten))


# -- decisions ----------------------------------------------------------------------------------


def worst_case_usd(c: Consultation, config: BudgetConfig) -> tuple[int, float]:
    """(input tokens reserved, USD reserved) of a consultation under ``config``'s prices: its
    ``max_input_tokens`` bound priced by :func:`planner.providers.pricing.bound_usd`, or, for a
    consultation without a bound, the older rule (:func:`planner.providers.pricing.worst_case`,
    the estimate times the input safety factor)."""
    if c.max_input_tokens is not None:
        return c.max_input_tokens, bound_usd(config.prices, c.model, c.max_input_tokens, c.max_output_tokens)
    return worst_case(config.prices, c.model, c.est_input_tokens, c.max_output_tokens, config.input_safety_factor)


def overran(state: BudgetState, workflow_id: str) -> str | None:
    """None unless a settlement of the workflow billed more than its reservation; else why
    it gets no further grant."""
    overrun = state.overruns.get(workflow_id)
    if overrun is None:
        return None
    return (
        f"workflow {workflow_id!r}: a provider billed ${overrun:.4f} more than its reservations' bound; "
        "no further grants for this workflow"
    )


def decide(
    state: BudgetState, config: BudgetConfig, c: Consultation, now: datetime, cached: dict[str, Any] | None = None
) -> tuple[Decision, LedgerEntry | None]:
    """The answer to a consultation and the entry recording it (None: nothing changes).

    ``cached`` is what the inference cache holds under ``c.cache_key`` (looked up by the
    caller, only when the cache is on), or None.
    """
    prior = state.decisions.get(c.id)
    if prior is not None:
        if prior.outcome == "denied":
            return prior, None
        if prior.outcome == "cached" and cached is not None:
            return Decision(outcome="cached", cached_answer=cached), None
    # A grant is repeated only while its reservation is open: once settled, the same id
    # asks for a new call (a handler run again), which must be reserved and paid again.
    r = state.open.get(c.id)
    if r is not None:
        return Decision(outcome="granted", reservation_id=r.id, reserved_usd=r.reserved_usd), None
    cap = state.caps.get(c.workflow_id)
    if cap is None:
        cap = c.budget_usd if c.budget_usd is not None else config.workflow_usd
    why = gate(c.kind, c.intelligence, c.mode)
    if why is not None:
        return _deny(c, now, cap, "not_allowed", why)
    if cached is not None:
        hit = CacheHitEntry(
            workflow_id=c.workflow_id,
            kind=c.kind,
            provider=c.provider,
            model=c.model,
            at=now,
            consultation_id=c.id,
            cache_key=c.cache_key or "",
            workflow_cap_usd=cap,
        )
        return Decision(outcome="cached", cached_answer=cached), hit
    input_tokens, worst = worst_case_usd(c, config)
    limited = rate_limited(state, config, c, now)
    if limited is not None:
        return _deny(c, now, cap, "rate_limited", limited[0], worst, limited[1])
    stopped = overran(state, c.workflow_id)
    if stopped is not None:
        return _deny(c, now, cap, "over_workflow_cap", stopped, worst)
    over = over_cap(state, config, c.workflow_id, cap, worst, now.date())
    if over is not None:
        return _deny(c, now, cap, over[0], over[1], worst)
    entry = ReservedEntry(
        workflow_id=c.workflow_id,
        kind=c.kind,
        provider=c.provider,
        model=c.model,
        at=now,
        reservation_id=c.id,
        est_input_tokens=c.est_input_tokens,
        max_output_tokens=c.max_output_tokens,
        reserved_input_tokens=input_tokens,
        reserved_usd=worst,
        workflow_cap_usd=cap,
        expires_at=now + timedelta(seconds=config.reservation_timeout_s),
    )
    return granted(entry), entry


def _deny(
    c: Consultation,
    now: datetime,
    cap: float,
    reason: str,
    message: str,
    worst: float = 0.0,
    retry_after_s: float | None = None,
) -> tuple[Decision, LedgerEntry]:
    entry = DeniedEntry(
        workflow_id=c.workflow_id,
        kind=c.kind,
        provider=c.provider,
        model=c.model,
        at=now,
        reason=reason,
        consultation_id=c.id,
        message=message,
        worst_case_usd=worst,
        workflow_cap_usd=cap,
        retry_after_s=retry_after_s,
    )
    return denied(entry), entry


def rate_limited(
    state: BudgetState, config: BudgetConfig, c: Consultation, now: datetime
) -> tuple[str, float | None] | None:
    """None when the provider's limits leave room for this call; else (why, seconds until the
    oldest grant of the window leaves it, or None when waiting cannot help)."""
    rpm, tpm = config.rate_limit(c.provider)
    tokens = c.est_input_tokens + c.max_output_tokens
    if rpm <= 0:
        return f"provider {c.provider!r} allows no requests (requests_per_minute is 0)", None
    if tokens > tpm:
        return f"this call's {tokens} tokens exceed provider {c.provider!r}'s limit of {tpm} tokens per minute", None
    window = state.windows.get(c.provider)
    if window is None or not window.grants:
        return None
    now_ts = now.timestamp()
    start = now_ts - WINDOW_S
    count, used = len(window.grants), window.tokens
    for ts, n in window.grants:  # take out the grants that left the window since the latest one
        if ts > start:
            break
        count -= 1
        used -= n
    if count < rpm and used + tokens <= tpm:
        return None
    oldest = window.grants[len(window.grants) - count][0]  # count > 0: some grant is in the window
    retry = max(round(oldest + WINDOW_S - now_ts, 3), 0.001)
    if count >= rpm:
        why = f"provider {c.provider!r} had {count} grants in the last 60 s (limit {rpm} requests per minute)"
    else:
        why = (
            f"provider {c.provider!r} had {used} tokens granted in the last 60 s; this call's {tokens} "
            f"would exceed the limit of {tpm} tokens per minute"
        )
    return f"{why}; retry in {retry:g} s", retry


def over_cap(
    state: BudgetState, config: BudgetConfig, workflow_id: str, cap: float, worst: float, day: date
) -> tuple[str, str] | None:
    """None when ``worst`` fits under the workflow's cap and the day's; else (reason, message)."""
    spend = state.workflows.get(workflow_id) or Spend()
    total = spend.settled_usd + spend.reserved_usd + worst
    if cap <= 0 or total > cap:
        return "over_workflow_cap", _over("workflow " + repr(workflow_id), spend, worst, total, cap)
    today = state.days.get(day) or Spend()
    total = today.settled_usd + today.reserved_usd + worst
    if config.daily_usd <= 0 or total > config.daily_usd:
        return "over_global_cap", _over(
            f"the daily cap of {day.isoformat()} (UTC)", today, worst, total, config.daily_usd
        )
    return None


def _over(whose: str, spend: Spend, worst: float, total: float, cap: float) -> str:
    return (
        f"{whose}: settled ${spend.settled_usd:.4f} + reserved ${spend.reserved_usd:.4f} + this call's worst "
        f"case ${worst:.4f} = ${total:.4f}, over the cap of ${cap:.4f}"
    )


def settle(
    state: BudgetState, config: BudgetConfig, s: Settlement, now: datetime
) -> tuple[Settled, SettledEntry | None]:
    """The answer to a settlement and the entry recording it (None: unknown, or settled or
    expired before — answered ``already_settled`` with cost 0, so nothing counts twice).

    Raises :class:`InvalidSettlement` when the reservation belongs to another workflow.
    """
    r = state.open.get(s.reservation_id)
    if r is None:
        return Settled(reservation_id=s.reservation_id, cost_usd=0.0, released_usd=0.0, already_settled=True), None
    if r.workflow_id != s.workflow_id:
        raise InvalidSettlement(
            f"reservation {s.reservation_id!r} belongs to workflow {r.workflow_id!r}, not {s.workflow_id!r}"
        )
    usage = Usage(
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        cache_read_tokens=s.cache_read_tokens,
        cache_write_tokens=s.cache_write_tokens,
    )
    cost = cost_usd(usage, s.model, config.prices)
    released = max(r.reserved_usd - cost, 0.0)
    overrun = max(cost - r.reserved_usd, 0.0)
    entry = SettledEntry(
        workflow_id=r.workflow_id,
        kind=r.kind,
        provider=r.provider,
        model=s.model,
        at=now,
        reason="overrun" if overrun > 0 else "",
        reservation_id=r.id,
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        cache_read_tokens=s.cache_read_tokens,
        cache_write_tokens=s.cache_write_tokens,
        cost_usd=cost,
        reserved_usd=r.reserved_usd,
        released_usd=released,
        overrun_usd=overrun,
        ok=s.ok,
        error=s.error,
    )
    return Settled(reservation_id=r.id, cost_usd=cost, released_usd=released), entry


def expire(state: BudgetState, now: datetime) -> list[ExpiredEntry]:
    """Entries charging every reservation whose time is up at its worst case."""
    out: list[ExpiredEntry] = []
    for r in state.open.values():
        if r.expires_at > now:
            break  # ``open`` is in order of expiry
        out.append(
            ExpiredEntry(
                workflow_id=r.workflow_id,
                kind=r.kind,
                provider=r.provider,
                model=r.model,
                at=now,
                reason="not settled in time: charged at its worst case",
                reservation_id=r.id,
                cost_usd=r.reserved_usd,
                reserved_usd=r.reserved_usd,
            )
        )
    return out


def next_expiry(state: BudgetState) -> datetime | None:
    """When the first open reservation expires (None: none is open)."""
    first = next(iter(state.open.values()), None)
    return first.expires_at if first is not None else None


def entry_id(entry: LedgerEntry) -> str:
    """A stable id of an entry: what it is about (a reservation or a consultation) and what happened."""
    match entry:
        case ReservedEntry():
            return "r:" + entry.reservation_id
        case SettledEntry():
            return "s:" + entry.reservation_id
        case ExpiredEntry():
            return "x:" + entry.reservation_id
        case DeniedEntry():
            return "d:" + entry.consultation_id
        case CacheHitEntry():
            return "c:" + entry.consultation_id
        case _:
            assert_never(entry)
