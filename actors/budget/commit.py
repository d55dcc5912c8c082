"""Group commit: how a budget replica serves one group of requests, under its lock.

A group is served as rounds (usually one). A round:

1. Charges overdue reservations at their worst case, then decides the requests one after
   another. A grant, denial or cache hit is folded into the state at once (with an undo
   journal) so that later requests see it. A settlement is only priced: its entry is folded
   after the append (4.). A request about a reservation that an earlier settlement of the group
   names (a retried settlement, the same id asked again) waits for the next round.
2. Answers the settlements: the caller needs only the cost. One carrying a cache value first
   writes the inference cache.
3. Appends the round's entries as **one** ledger message (all or nothing), with
   ``Nats-Expected-Last-Sequence`` = the last sequence folded (:mod:`actors.budget.ledger`).
   On "wrong last sequence" (another replica wrote first) or a lost ack: undo, read the
   missing messages, fold them, decide again. A settlement answered already is not answered
   again; if it was settled or expired meanwhile it writes nothing, so it never counts twice.
4. Folds the settlements — only now, once they are durable, are their reservations released —
   then answers the consultations.

Invariant: no grant relies on a release that is not in the ledger. A settlement whose append
fails for good leaves its reservation open in memory as in the ledger; it expires and is
charged at its worst case, which keeps "settled spend never exceeds a cap" across restarts.
The price of the early answer: the cost a caller was told may then differ from what the
ledger charges, and a consultation that another replica decides right after the answer may
find the reservation still held and be denied over a cap (conservative; on this replica it
waits for the append, since it needs the lock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final, NamedTuple

from cadre.actors.budget import rules
from cadre.actors.budget.cache import InferenceCache
from cadre.actors.budget.ledger import Conflict, LedgerError, LedgerLog
from cadre.actors.budget.requests import (
    Answer,
    Ask,
    DecisionMetrics,
    Request,
    Settle,
    answer_unavailable,
    encode,
    error_payload,
    respond,
)
from cadre.actors.budget.rules import BudgetConfig, InvalidSettlement
from cadre.actors.budget.view import LedgerView
from cadre.bus.ledger import LedgerEntry, SettledEntry, Settlement

log = logging.getLogger("cadre.budget")

MAX_ATTEMPTS: Final = 20  # decide-append attempts of one round before it is denied as unavailable


class _Decided(NamedTuple):
    """A round decided: ``entries`` is its ledger message (expirations and decisions first,
    settlements last: the order the state folds them in), ``settlements`` its settled entries
    (folded once appended), ``answers`` one per request."""

    entries: list[LedgerEntry]
    settlements: list[SettledEntry]
    answers: list[Answer]


class GroupCommit:
    """Decides and records the groups of one replica. ``conflicts`` counts appends another
    replica got in before, ``groups`` the ledger messages written. Tasks that write the cache
    before answering run in ``tg``."""

    def __init__(
        self,
        config: BudgetConfig,
        clock: Callable[[], datetime],
        view: LedgerView,
        ledger: LedgerLog,
        cache: InferenceCache | None,
        metrics: DecisionMetrics,
        tg: asyncio.TaskGroup,
    ) -> None:
        self.conflicts = 0
        self.groups = 0
        self._config = config
        self._clock = clock
        self._view = view
        self._ledger = ledger
        self._cache = cache
        self._metrics = metrics
        self._tg = tg

    async def serve(self, requests: list[Request]) -> None:
        """Serve the group (none: charge what expired), as rounds: what one defers, the next serves."""
        while True:
            now, requests = _split(requests)
            await self._round(now)
            if not requests:
                return

    async def _round(self, requests: list[Request]) -> None:
        view = self._view
        fresh = False
        for _attempt in range(MAX_ATTEMPTS):
            try:
                if view.fed:
                    await view.fold_feed()
                if not fresh and any(map(self._needs_fresh_state, requests)):
                    await view.catch_up(None)
                    fresh = True
                undo: rules.Undo = []
                decided = self._decide(requests, undo)
                if await self._answer_settlements(decided.answers) and decided.entries:
                    # Let the answers leave before the append: sent in one write with it, they
                    # were measured to reach the caller no sooner than the append's ack.
                    await asyncio.sleep(0)
                if decided.entries:
                    try:
                        seq = await self._append(decided.entries)
                    except BaseException:
                        for take_back in reversed(undo):
                            take_back()
                        raise
                    for entry in decided.settlements:  # durable now: release the reservations
                        rules.apply(view.state, entry)
                        if entry.overrun_usd > 0:
                            self._overran(entry)
                    view.advance(seq)
                    self.groups += 1
            except Conflict as conflict:
                self.conflicts += 1
                try:
                    await view.catch_up(conflict.last)
                    await view.follow()  # another replica writes: follow it from now on
                except Exception as exc:
                    await self._fail(requests, exc)
                    return
                continue
            except Exception as exc:
                await self._fail(requests, exc)
                return
            await self._answer(decided.answers)
            await view.unfollow_if_quiet()
            return
        await self._fail(requests, LedgerError(f"the ledger kept moving: {MAX_ATTEMPTS} attempts conflicted"))

    def _needs_fresh_state(self, r: Request) -> bool:
        """An answer that writes nothing must not come from a stale state: "unknown reservation"
        (another replica may have granted it) and "the same grant again" (another replica may
        have settled it). Both are rare (retries), so they read the ledger's end first."""
        if isinstance(r, Settle):
            return r.request.reservation_id not in self._view.state.open
        return r.request.id in self._view.state.open

    def _decide(self, requests: list[Request], undo: rules.Undo) -> _Decided:
        """The round's entries and answers; all but the settlements are folded (journaled in ``undo``)."""
        now = self._clock()
        state, config = self._view.state, self._config
        entries: list[LedgerEntry] = []
        for expired in rules.expire(state, now):
            rules.apply(state, expired, undo)
            entries.append(expired)
        settlements: list[SettledEntry] = []
        answers: list[Answer] = []
        for r in requests:
            if isinstance(r, Ask):
                decision, entry = rules.decide(state, config, r.request, now, r.cached)
                answers.append(Answer(r, encode(decision), decision))
                if entry is not None:
                    rules.apply(state, entry, undo)
                    entries.append(entry)
                continue
            try:
                settled, settlement = rules.settle(state, config, r.request, now)
            except InvalidSettlement as exc:
                answers.append(Answer(r, error_payload(exc.code, exc.message)))
                continue
            answers.append(Answer(r, encode(settled), cache=settlement is not None and self._caches(r.request)))
            if settlement is not None:
                settlements.append(settlement)
        entries.extend(settlements)
        return _Decided(entries, settlements, answers)

    def _caches(self, s: Settlement) -> bool:
        return self._cache is not None and s.ok and s.cache_key is not None and s.cache_value is not None

    async def _append(self, entries: list[LedgerEntry]) -> int:
        expected = self._view.state.seq
        self._view.appending = expected + 1
        return await self._ledger.append(expected, entries)

    # -- answering ----------------------------------------------------------------------------

    def _overran(self, entry: SettledEntry) -> None:
        self._metrics.overrun(entry.provider, entry.kind)
        log.warning(
            "budget: overrun: %s billed $%.6f for reservation %s of workflow %s, $%.6f over its reserved $%.6f "
            "(%d input, %d output, %d cache-read, %d cache-write tokens); no further grants for this workflow",
            entry.provider,
            entry.cost_usd,
            entry.reservation_id,
            entry.workflow_id,
            entry.overrun_usd,
            entry.reserved_usd,
            entry.input_tokens,
            entry.output_tokens,
            entry.cache_read_tokens,
            entry.cache_write_tokens,
        )

    async def _answer_settlements(self, answers: list[Answer]) -> bool:
        """Answer the settlements not answered yet; whether an answer went out (rather than
        waiting for a cache write)."""
        sent = False
        for a in answers:
            r = a.request
            if not isinstance(r, Settle) or r.answered:
                continue
            r.answered = True
            if a.cache:
                self._tg.create_task(self._cache_then_answer(r, a.payload))
                continue
            await respond(r.msg, a.payload)
            self._metrics.observe("settle", r.started)
            sent = True
        return sent

    async def _cache_then_answer(self, r: Settle, payload: bytes) -> None:
        s = r.request
        assert self._cache is not None
        assert s.cache_key is not None
        await self._cache.put(s.cache_key, s.cache_value)
        await respond(r.msg, payload)
        self._metrics.observe("settle", r.started)

    async def _answer(self, answers: list[Answer]) -> None:
        for a in answers:
            r = a.request
            if isinstance(r, Settle):
                continue  # answered before the append
            await respond(r.msg, a.payload)
            if a.decision is not None:
                self._metrics.count(r.request.kind, a.decision)
            self._metrics.observe("consult", r.started)

    async def _fail(self, requests: Sequence[Request], exc: Exception) -> None:
        log.error("budget: could not record %d decisions: %r", len(requests), exc)
        for r in requests:
            if isinstance(r, Settle) and r.answered:
                log.error(
                    "budget: the settlement of %s was answered but not recorded: its reservation stays open "
                    "and will be charged at its worst case when it expires",
                    r.request.reservation_id,
                )
                continue
            await answer_unavailable(r, f"the budget could not write its ledger: {exc}", self._metrics)


def _split(requests: list[Request]) -> tuple[list[Request], list[Request]]:
    """The requests of a round, and those deferred to the next: a request about a reservation
    that an earlier settlement of the group names waits until that settlement is folded, so
    the two are decided one after the other (the settlement is not folded when it is decided)."""
    now: list[Request] = []
    later: list[Request] = []
    settling: set[str] = set()
    for r in requests:
        reservation = r.request.reservation_id if isinstance(r, Settle) else r.request.id
        if reservation in settling:
            later.append(r)
            continue
        now.append(r)
        if isinstance(r, Settle):
            settling.add(reservation)
    return now, later
