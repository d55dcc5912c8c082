"""The budget's report, pure: what the ledger says, summed up for ``cadre budget``.

:func:`report` reads ledger entries (no I/O, no clock: ``today`` is a parameter) and returns a
:class:`Report`: spend by workflow, provider and kind, denials by reason, cache hits, expiries,
overruns, open reservations and a UTC day's global spend. ``cadre/budget_report.py`` renders it
as tables; ``cadre budget --json`` prints it as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import assert_never

import msgspec

from cadre.bus.ledger import CacheHitEntry, DeniedEntry, ExpiredEntry, LedgerEntry, ReservedEntry, SettledEntry


class SpendLine(msgspec.Struct, kw_only=True):
    """Calls that were paid (settled or expired), their tokens and cost. ``cap_usd``: the
    workflow's cap (lines by workflow only)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cap_usd: float | None = None


class OpenReservation(msgspec.Struct, frozen=True, kw_only=True):
    reservation_id: str
    workflow_id: str
    kind: str
    provider: str
    model: str
    reserved_usd: float
    at: datetime
    expires_at: datetime


class DaySpend(msgspec.Struct, kw_only=True):
    """A UTC day's global spend (every workflow), against the daily cap."""

    day: date
    settled_usd: float = 0.0
    reserved_usd: float = 0.0
    cap_usd: float | None = None


class Report(msgspec.Struct, kw_only=True):
    """What the ledger says: spend by workflow, provider and kind, denials by reason, cache
    hits, expired reservations, overruns (calls that cost more than they reserved), open
    reservations, and a day's global spend. With ``workflow_id`` everything but the day is
    about that workflow only."""

    workflow_id: str | None
    entries: int
    spend_usd: float = 0.0
    by_workflow: dict[str, SpendLine] = msgspec.field(default_factory=dict)
    by_provider: dict[str, SpendLine] = msgspec.field(default_factory=dict)
    by_kind: dict[str, SpendLine] = msgspec.field(default_factory=dict)
    denials: dict[str, int] = msgspec.field(default_factory=dict)
    cache_hits: int = 0
    expired: int = 0
    overruns: int = 0
    open_reservations: list[OpenReservation] = msgspec.field(default_factory=list)
    today: DaySpend | None = None


def report(
    entries: Iterable[LedgerEntry],
    workflow_id: str | None = None,
    *,
    today: date | None = None,
    daily_cap_usd: float | None = None,
) -> Report:
    """Summarise the ledger (optionally one workflow). ``today`` defaults to the UTC day of
    the last entry; spend counts on the day of its reservation, as the daily cap does."""
    out = Report(workflow_id=workflow_id, entries=0)
    opened: dict[str, ReservedEntry] = {}
    days: dict[date, DaySpend] = {}
    caps: dict[str, float] = {}
    last_day: date | None = None
    for e in entries:
        out.entries += 1
        last_day = e.at.date()
        mine = workflow_id is None or e.workflow_id == workflow_id
        match e:
            case ReservedEntry():
                caps.setdefault(e.workflow_id, e.workflow_cap_usd)
                if e.reservation_id not in opened:
                    opened[e.reservation_id] = e
                    days.setdefault(e.at.date(), DaySpend(day=e.at.date())).reserved_usd += e.reserved_usd
            case SettledEntry() | ExpiredEntry():
                r = opened.pop(e.reservation_id, None)
                if r is None:
                    continue
                spent = days[r.at.date()]
                spent.reserved_usd -= r.reserved_usd
                spent.settled_usd += e.cost_usd
                if mine:
                    _paid(out, e)
            case DeniedEntry():
                caps.setdefault(e.workflow_id, e.workflow_cap_usd)
                if mine:
                    out.denials[e.reason] = out.denials.get(e.reason, 0) + 1
            case CacheHitEntry():
                caps.setdefault(e.workflow_id, e.workflow_cap_usd)
                out.cache_hits += mine
            case _:
                assert_never(e)
    for wf, line in out.by_workflow.items():
        line.cap_usd = caps.get(wf)
    out.open_reservations = [
        OpenReservation(
            reservation_id=r.reservation_id,
            workflow_id=r.workflow_id,
            kind=r.kind,
            provider=r.provider,
            model=r.model,
            reserved_usd=r.reserved_usd,
            at=r.at,
            expires_at=r.expires_at,
        )
        for r in opened.values()
        if workflow_id is None or r.workflow_id == workflow_id
    ]
    shown = today or last_day
    if shown is not None:
        out.today = days.get(shown) or DaySpend(day=shown)
        out.today.cap_usd = daily_cap_usd
    return out


def _paid(out: Report, e: SettledEntry | ExpiredEntry) -> None:
    input_tokens = output_tokens = 0
    if isinstance(e, SettledEntry):
        input_tokens = e.input_tokens + e.cache_read_tokens + e.cache_write_tokens
        output_tokens = e.output_tokens
        out.overruns += e.overrun_usd > 0
    else:
        out.expired += 1
    out.spend_usd += e.cost_usd
    for lines, key in ((out.by_workflow, e.workflow_id), (out.by_provider, e.provider), (out.by_kind, e.kind)):
        line = lines.get(key)
        if line is None:
            line = lines[key] = SpendLine()
        line.calls += 1
        line.input_tokens += input_tokens
        line.output_tokens += output_tokens
        line.cost_usd += e.cost_usd
