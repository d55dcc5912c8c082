"""A budget replica's view of its ledger: the state folded up to a ledger sequence, kept current
by reading what the replica missed (catch-up, direct gets) and, while other replicas write, by
following the ledger live.

On start a replica folds the whole ledger (:meth:`LedgerView.read_all`). Once another replica
shows up (an append conflicts), it follows the ledger (an ordered push consumer) so that it
seldom conflicts again; after ``FOLLOW_IDLE_S`` without another replica's entries it stops,
since a lone replica's own appends would only come back to it. Correctness never rests on the
feed: every append is checked against the ledger's last sequence.

Invariant (shared with :class:`~actors.budget.service.BudgetService`): the state changes across
an ``await`` only while the service's lock is held (``busy()``); the feed folds a message at
once only while the lock is free, and otherwise keeps it for the next group to fold, under the
lock (:meth:`LedgerView.fold_feed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cadre.actors.budget import rules
from cadre.actors.budget.ledger import LedgerError, LedgerLog, decode_entries
from cadre.actors.budget.rules import BudgetState
from cadre.bus.ledger import LedgerEntry
from cadre.store.jetstream import stream_seq

log = logging.getLogger("cadre.budget")

FOLLOW_IDLE_S: Final = 30.0  # stop following the ledger after this long without another replica's entries
_GETS: Final = 64  # direct gets in flight at most while catching up


class LedgerView:
    """``state`` as of ledger sequence ``state.seq``. ``busy()`` tells whether the service's lock
    is held; ``appending`` is the sequence the replica's own append in flight would get."""

    def __init__(self, ledger: LedgerLog, state: BudgetState, busy: Callable[[], bool]) -> None:
        self.state = state
        self.appending = 0
        self._ledger = ledger
        self._busy = busy
        self._closed = False
        self._follower: Subscription | None = None
        self._feed: list[tuple[int, bytes]] = []  # fed while the lock was held: folded by the next group
        self._last_foreign = 0.0  # loop time another replica's entries last arrived
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def following(self) -> bool:
        """Whether the view folds the ledger as other replicas append to it."""
        return self._follower is not None

    @property
    def fed(self) -> bool:
        """Whether the feed brought messages that wait to be folded (by :meth:`fold_feed`)."""
        return bool(self._feed)

    async def read_all(self) -> None:
        """Fold the whole ledger (before taking requests: nothing else changes the state)."""
        state = self.state

        def fold(seq: int, entries: list[LedgerEntry]) -> None:
            for entry in entries:
                rules.apply(state, entry)
            state.seq = seq

        def skip(seq: int, reason: str) -> None:
            log.error("budget: ledger message %d is not a list of entries, skipped: %s", seq, reason)
            state.seq = seq

        state.seq = await self._ledger.read(fold, skip)

    async def folded(self, seq: int) -> None:
        """Return once the state includes ledger sequence ``seq`` (this waits; it does not read)."""
        if self.state.seq < seq:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((seq, waiter))
            await waiter

    def advance(self, seq: int) -> None:
        """The state now includes ``seq``: wake whoever waits for it."""
        self.state.seq = seq
        if self._waiters:
            still = []
            for want, waiter in self._waiters:
                if want > seq:
                    still.append((want, waiter))
                elif not waiter.done():
                    waiter.set_result(None)
            self._waiters = still

    async def catch_up(self, last: int | None) -> None:
        """Fold the ledger messages after ``state.seq`` up to ``last`` (None: the ledger's end)."""
        if last is None:
            last = await self._ledger.last_seq()
        if last < self.state.seq:
            raise LedgerError(
                f"ledger {self._ledger.spec.name!r} ends at sequence {last} but this budget has folded "
                f"{self.state.seq}: was the stream deleted or purged? restart the budget"
            )
        while self.state.seq < last:
            seqs = range(self.state.seq + 1, min(last, self.state.seq + _GETS) + 1)
            messages = await asyncio.gather(*(self._ledger.get(seq) for seq in seqs))
            for seq, entries in zip(seqs, messages, strict=True):
                for entry in entries:
                    rules.apply(self.state, entry)
                self.advance(seq)

    # -- following ------------------------------------------------------------------------------

    async def follow(self) -> None:
        """Fold what other replicas append as it arrives (from the sequence after ``state.seq``)."""
        if self._follower is not None:
            return
        self._last_foreign = asyncio.get_running_loop().time()
        self._follower = await self._ledger.follow(self.state.seq, self._on_ledger)

    async def unfollow_if_quiet(self) -> None:
        """Stop following after ``FOLLOW_IDLE_S`` without another replica's entries."""
        if self._follower is not None and asyncio.get_running_loop().time() - self._last_foreign > FOLLOW_IDLE_S:
            await self.unfollow()

    async def unfollow(self) -> None:
        """Stop following the ledger."""
        follower, self._follower = self._follower, None
        if follower is not None:
            with contextlib.suppress(Exception):
                await follower.unsubscribe()

    async def close(self) -> None:
        """Stop following and fold nothing more (the service has stopped)."""
        self._closed = True
        await self.unfollow()

    async def _on_ledger(self, m: Msg) -> None:
        seq = stream_seq(m.reply)
        if seq <= self.state.seq or seq == self.appending or self._closed:
            # Folded already (read while catching up), or most likely this replica's own append,
            # whose ack is on its way: if it is another replica's, that append fails and catches up.
            return
        if self._busy() or not self._fold(seq, m.data):
            self._feed.append((seq, m.data))  # folded by the next group, under the lock

    def _fold(self, seq: int, data: bytes) -> bool:
        """Fold the ledger message at ``seq`` unless it is past the next one (a gap: False)."""
        if seq > self.state.seq + 1:
            return False
        if seq == self.state.seq + 1:
            for entry in decode_entries(seq, data):
                rules.apply(self.state, entry)
            self.advance(seq)
            self._last_foreign = asyncio.get_running_loop().time()
        return True

    async def fold_feed(self) -> None:
        """Fold what the feed brought while the lock was held (under the lock)."""
        feed, self._feed = self._feed, []
        for seq, data in sorted(feed):
            if not self._fold(seq, data):
                await self.catch_up(seq - 1)  # read what the feed skipped
                self._fold(seq, data)
