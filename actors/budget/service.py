"""The budget service: one replica of the budget actor, answering from its fold of the ledger.

    <prefix>.budget.consult   Consultation -> Decision   (core request/reply, queue group cadre-budget)
    <prefix>.budget.settle    Settlement   -> Settled    (same queue group)

The rules are pure (:mod:`actors.budget.rules`); this module and the ones it composes are
their I/O. A replica serves one group of requests at a time, under a lock (its state has one
writer at a time):

1. The subscription callbacks decode and validate a request (an invalid one is answered at
   once: ``{"error": {"code": "invalid_consultation" | "invalid_settlement", "message"}}``)
   and look the inference cache up when the consultation could be served from it (in a task
   of its own, so the callbacks never wait on the cache).
2. When nothing else is going on, the callback serves its request itself (no hop to another
   task). Otherwise the request waits in a queue; the worker task takes whatever queued up as
   the next group.
3. A group is decided, its settlements answered, its entries appended as one ledger message,
   its settlements folded (releasing their reservations only once durable), and its
   consultations answered: :mod:`actors.budget.commit`.

On start a replica folds the whole ledger before it takes requests, so a restarted budget
keeps its spend, open reservations and caps; while other replicas write, it follows the
ledger (:mod:`actors.budget.view`). Overdue reservations are charged by the next group, or by
the expiry timer when no request comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cadre.actors.budget import rules
from cadre.actors.budget.cache import InferenceCache
from cadre.actors.budget.commit import GroupCommit
from cadre.actors.budget.ledger import LedgerLog
from cadre.actors.budget.requests import (
    Ask,
    DecisionMetrics,
    Request,
    Settle,
    answer_unavailable,
    error_payload,
    respond,
)
from cadre.actors.budget.rules import BudgetConfig, BudgetState
from cadre.actors.budget.view import LedgerView
from cadre.actors.clock import utc_now
from cadre.actors.metrics import Metrics
from cadre.bus.connection import barrier
from cadre.bus.ledger import Consultation, Settlement
from cadre.bus.retry import RetryPolicy, retrying
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects

log = logging.getLogger("cadre.budget")

QUEUE_GROUP: Final = "cadre-budget"
MAX_GROUP: Final = 256  # requests decided and appended together at most
MAX_QUEUE: Final = 10_000  # requests waiting at most; beyond, consultations are denied at once

_consultation = msgspec.json.Decoder(Consultation)
_settlement = msgspec.json.Decoder(Settlement)
_STOP: Final = object()


class BudgetService:
    """One budget replica. ``state`` is the fold of the ledger it serves from (for tests and
    diagnostics); ``ledger`` is its ledger stream.

    Invariant: only a holder of ``_lock`` changes ``state`` across an ``await`` (a group is
    decided, folded with an undo journal, appended, and taken back on failure, all under the
    lock); the ledger feed folds synchronously, and only while the lock is free.
    """

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        config: BudgetConfig,
        *,
        ledger: StreamSpec,
        metrics: Metrics | None,
        clock: Callable[[], datetime],
        timeout: float,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.config = config
        self.ledger = LedgerLog(nc, ledger, timeout, retry)
        self._nc = nc
        self._subjects = subjects
        self._metrics = DecisionMetrics(metrics)
        if metrics is not None:  # what the dashboards draw spend against
            metrics.budget_cap.labels(cap="daily").set(config.daily_usd)
            metrics.budget_cap.labels(cap="workflow").set(config.workflow_usd)
        self._clock = clock
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._view = LedgerView(self.ledger, BudgetState(decision_memory=config.decision_memory), self._lock.locked)
        self._commit: GroupCommit | None = None  # made on start, in the service's task group
        # Requests that arrive while a group is being served wait here for the worker, which
        # takes them all as the next group (group commit).
        self._queue: asyncio.Queue[Request | object] = asyncio.Queue(MAX_QUEUE)
        self._tg: asyncio.TaskGroup | None = None  # for cache look-ups
        self._cache: InferenceCache | None = None
        self._consults: Subscription | None = None
        self._settles: Subscription | None = None
        self._reserved = asyncio.Event()  # a reservation is open: the expiry timer has work
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def state(self) -> BudgetState:
        """The budget's state as of ledger sequence ``state.seq``."""
        return self._view.state

    @property
    def conflicts(self) -> int:
        """Appends another replica got in before."""
        return self._commit.conflicts if self._commit is not None else 0

    @property
    def groups(self) -> int:
        """Ledger messages this replica wrote."""
        return self._commit.groups if self._commit is not None else 0

    @property
    def following(self) -> bool:
        """Whether this replica folds the ledger as other replicas append to it."""
        return self._view.following

    async def folded(self, seq: int) -> None:
        """Return once the state includes ledger sequence ``seq`` (this waits; it does not read)."""
        await self._view.folded(seq)

    async def recorded(self) -> None:
        """Return once every settlement answered so far is in the ledger and in ``state`` — or
        its append failed for good, and its reservation stays open until it expires.

        A settlement is answered by a group that holds the lock until its append is
        acknowledged and folded: taking the lock waits for that group.
        """
        async with self._lock:
            pass

    # -- lifecycle ----------------------------------------------------------------------------

    async def _start(self, tg: asyncio.TaskGroup, cache_bucket: str | None, cache_ttl_s: float) -> None:
        self._tg = tg
        await self.ledger.create()
        if cache_bucket and cache_ttl_s > 0:
            js = self._nc.jetstream(timeout=self._timeout)
            self._cache = await retrying(
                lambda: InferenceCache.open(js, cache_bucket, cache_ttl_s, self.ledger.spec),
                "inference cache open",
                self.ledger.retry,
            )
        await self._view.read_all()
        self._commit = GroupCommit(self.config, self._clock, self._view, self.ledger, self._cache, self._metrics, tg)
        log.info("budget: folded %d ledger messages of %s", self.state.seq, self.ledger.spec.name)
        self._tasks = [
            tg.create_task(self._run(), name="cadre-budget-worker"),
            tg.create_task(self._expire_when_due(), name="cadre-budget-expiry"),
        ]
        if self.state.open:
            self._reserved.set()
        self._consults = await self._nc.subscribe(self._subjects.budget, queue=QUEUE_GROUP, cb=self._on_consult)
        self._settles = await self._nc.subscribe(self._subjects.budget_settle, queue=QUEUE_GROUP, cb=self._on_settle)
        await barrier(self._nc)  # the subscriptions exist on the server before anyone is told

    async def _stop(self) -> None:
        for sub in (self._consults, self._settles):  # drain: requests already received are still answered
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves drain() unannotated
        if self._tasks:
            await self._queue.put(_STOP)
            await asyncio.wait(self._tasks[:1])
            self._tasks[1].cancel()
        self._closed = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Ask | Settle):
                await answer_unavailable(item, "the budget actor is stopping", self._metrics)
        await self._view.close()

    # -- intake (subscription callbacks) --------------------------------------------------------

    async def _on_consult(self, m: Msg) -> None:
        started = time.perf_counter()
        try:
            c = _consultation.decode(m.data)
        except msgspec.DecodeError as exc:
            await respond(m, error_payload("invalid_consultation", str(exc)))
            return
        if self._cache is not None and c.cache_key is not None and self._may_be_cached(c):
            assert self._tg is not None
            self._tg.create_task(self._look_up(self._cache, m, c, started))  # the callback does not wait on it
            return
        await self._submit(Ask(m, c, None, started), self._consults)

    async def _on_settle(self, m: Msg) -> None:
        started = time.perf_counter()
        try:
            s = _settlement.decode(m.data)
        except msgspec.DecodeError as exc:
            await respond(m, error_payload("invalid_settlement", str(exc)))
            return
        await self._submit(Settle(m, s, started), self._settles)

    def _may_be_cached(self, c: Consultation) -> bool:
        """Worth a cache look-up: the gate allows it, and no denial or open grant stands for its id."""
        prior = self.state.decisions.get(c.id)
        if (prior is not None and prior.outcome == "denied") or c.id in self.state.open:
            return False
        return rules.gate(c.kind, c.intelligence, c.mode) is None

    async def _look_up(self, cache: InferenceCache, m: Msg, c: Consultation, started: float) -> None:
        assert c.cache_key is not None
        await self._submit(Ask(m, c, await cache.get(c.cache_key), started), None)

    async def _submit(self, item: Request, sub: Subscription | None) -> None:
        """Serve ``item`` at once when nothing else is going on (one request at a time: no hop to
        the worker); else queue it for the worker's next group."""
        if self._closed:
            await answer_unavailable(item, "the budget actor is stopping", self._metrics)
        elif not self._lock.locked() and self._queue.empty() and (sub is None or sub.pending_msgs == 0):
            async with self._lock:
                await self._serve([item])
        else:
            try:
                self._queue.put_nowait(item)
            except asyncio.QueueFull:
                message = f"the budget actor is overloaded ({MAX_QUEUE} requests waiting)"
                await answer_unavailable(item, message, self._metrics)

    # -- the worker and the expiry timer ---------------------------------------------------------

    async def _run(self) -> None:
        """Serve what queued up while a group was being served, as the next group."""
        while True:
            items = [await self._queue.get()]
            while len(items) < MAX_GROUP and not self._queue.empty():
                items.append(self._queue.get_nowait())
            requests = [item for item in items if isinstance(item, Ask | Settle)]
            if requests:
                async with self._lock:
                    await _surviving(self._serve(requests))
            if len(requests) < len(items):  # _STOP
                return

    async def _expire_when_due(self) -> None:
        """Charge reservations nobody settled in time, when no request comes to do it first."""
        while True:
            due = rules.next_expiry(self.state)
            if due is None:
                self._reserved.clear()
                await self._reserved.wait()
                continue
            delay = (due - self._clock()).total_seconds()
            if delay > 0:
                await asyncio.sleep(min(delay, 60.0))  # a timer, re-armed: the first expiry may change
                continue
            async with self._lock:
                await _surviving(self._serve([]))

    async def _serve(self, requests: list[Request]) -> None:
        """Serve a group (under the lock); none: charge the reservations that expired."""
        assert self._commit is not None
        await self._commit.serve(requests)
        if self.state.open:
            self._reserved.set()


async def _surviving(work: Awaitable[None]) -> None:
    """Run ``work``; a bug in it is logged, and the task that runs it goes on serving."""
    try:
        await work
    except Exception:
        log.exception("budget: unexpected error while serving a group")


@asynccontextmanager
async def serve_budget(
    nc: NATS,
    subjects: Subjects,
    config: BudgetConfig,
    *,
    ledger: StreamSpec,
    cache_bucket: str | None,
    cache_ttl_s: float,
    metrics: Metrics | None = None,
    clock: Callable[[], datetime] = utc_now,
    request_timeout_s: float = 5.0,
    retry: RetryPolicy | None = None,
) -> AsyncIterator[BudgetService]:
    """Run one budget replica until the block exits.

    Entering creates the ledger stream (and the inference-cache bucket when ``cache_bucket``
    is set and ``cache_ttl_s`` > 0), folds the whole ledger, and returns once the replica
    answers requests. Leaving stops taking requests, serves the ones received (their ledger
    appends included), and stops. ``request_timeout_s`` bounds each JetStream request, ``retry`` how
    long one rides out an outage (``bus.retry``): a replica never stops for one.
    """
    service = BudgetService(
        nc, subjects, config, ledger=ledger, metrics=metrics, clock=clock, timeout=request_timeout_s, retry=retry
    )
    body_error: Exception | None = None
    async with asyncio.TaskGroup() as tg:
        try:
            await service._start(tg, cache_bucket, cache_ttl_s)
            yield service
        except Exception as exc:  # the caller's error: stop, then re-raise it as it was (not in a group)
            body_error = exc
        finally:
            await service._stop()
    if body_error is not None:
        raise body_error
