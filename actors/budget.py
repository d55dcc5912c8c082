"""The budget actor: gates every LLM consultation and keeps its ledger on JetStream.

    <prefix>.budget.consult   Consultation -> Decision   (core request/reply, queue group cadre-budget)
    <prefix>.budget.settle    Settlement   -> Settled    (same queue group)
    <prefix>.ledger           the ledger: a stream of its own, one subject, every decision that changes state

The rules are pure (:mod:`actors.budget_rules`); this module is their I/O. A replica decides
one group of requests at a time, under a lock (its state has one writer at a time):

1. The subscription callbacks decode and validate a request (an invalid one is answered at
   once: ``{"error": {"code": "invalid_consultation" | "invalid_settlement", "message"}}``)
   and look the inference cache up when the consultation could be served from it (in a
   task of its own, so the callbacks never wait on the cache).
2. When nothing else is going on, the callback serves its request itself (no hop to another
   task). Otherwise the request waits in a queue; the worker task takes whatever queued up
   as the next group (group commit).
3. A group: charge overdue reservations at their worst case, then decide the requests one
   after another, folding each entry into the state at once (with an undo journal) so that
   later requests see earlier ones.
4. Append the group's entries as **one** ledger message, a JSON array, with
   ``Nats-Expected-Last-Sequence`` = the last sequence folded and a ``Nats-Msg-Id`` derived
   from that sequence and the entries. One message makes the group all or nothing: entries
   pipelined as separate messages could be stored after a sibling was refused.
5. On "wrong last sequence" (10071: another replica wrote first) or a lost ack: undo, read
   the ledger messages that are missing (direct gets), fold them, and decide again.
6. Reply. A settlement carrying a cache value first writes the inference cache.

On start a replica folds the whole ledger before it takes requests: a restarted budget keeps
its spend, open reservations and caps. Once another replica shows up (a conflict), a replica
follows the ledger live (an ordered push consumer) so that it seldom conflicts again; after
``FOLLOW_IDLE_S`` without another replica's entries it stops, since a lone replica's own
appends would only come back to it. Correctness never rests on the feed: every append is
checked against the ledger's last sequence, and the answers that write nothing and could
come from a stale state ("unknown reservation", "the same grant again") read the ledger's
end first.

:class:`BudgetClient` is the callers' side: no answer means denied (``budget_unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram

from actors import budget_rules as rules
from actors.budget_rules import BudgetConfig, BudgetError, BudgetState, InvalidSettlement
from actors.clock import utc_now
from actors.metrics import Metrics
from bus.connection import barrier
from bus.ledger import CONSULTATION_KINDS, Consultation, Decision, LedgerEntry, Settled, Settlement
from bus.stream import StreamSpec, ensure_stream
from bus.subjects import Subjects
from store.jetstream import stream_seq

__all__ = [
    "BudgetClient",
    "BudgetService",
    "LedgerError",
    "read_ledger",
    "serve_budget",
]

log = logging.getLogger("cadre.budget")

QUEUE_GROUP: Final = "cadre-budget"
MAX_GROUP: Final = 256  # requests decided and appended together at most
MAX_QUEUE: Final = 10_000  # requests waiting at most; beyond, consultations are denied at once
MAX_ATTEMPTS: Final = 20  # decide-append rounds of one group before it is denied as unavailable
FOLLOW_IDLE_S: Final = 30.0  # stop following the ledger after this long without another replica's entries
_WRONG_LAST_SEQUENCE: Final = 10071
_EXISTS_WITH_OTHER_CONFIG: Final = 10058

_encode = msgspec.json.Encoder().encode
_consultation = msgspec.json.Decoder(Consultation)
_settlement = msgspec.json.Decoder(Settlement)
_entries = msgspec.json.Decoder(list[LedgerEntry])
_json_object = msgspec.json.Decoder(dict[str, Any])


class LedgerError(BudgetError):
    """The ledger could not be read or written."""

    code = "ledger_error"


class _AckError(msgspec.Struct, gc=False):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct, gc=False):
    seq: int = 0
    duplicate: bool = False
    error: _AckError | None = None


_ack = msgspec.json.Decoder(_Ack)


class _Conflict(Exception):
    """The ledger moved past the state: ``last`` is its last sequence, when JetStream said."""

    def __init__(self, last: int | None) -> None:
        super().__init__(f"ledger is at {last}")
        self.last = last


@dataclass(slots=True)
class _Ask:
    msg: Msg
    request: Consultation
    cached: dict[str, Any] | None
    started: float


@dataclass(slots=True)
class _Settle:
    msg: Msg
    request: Settlement
    started: float


_Request = _Ask | _Settle
_STOP: Final = object()


@dataclass(slots=True)
class _Answer:
    """What to send back: ``payload``; ``decision`` for the metrics of a consultation;
    ``cache``: write the settlement's value to the inference cache first."""

    request: _Request
    payload: bytes
    decision: Decision | None = None
    cache: bool = False


def _error(code: str, message: str) -> bytes:
    return _encode({"error": {"code": code, "message": message}})


def _unavailable(message: str) -> Decision:
    return Decision(outcome="denied", reason="budget_unavailable", message=message)


class BudgetService:
    """One budget replica. ``state`` is the fold of the ledger it serves from (for tests and
    diagnostics). ``conflicts`` counts appends another replica got in before, ``groups`` the
    ledger messages this replica wrote.

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
    ) -> None:
        self.state = BudgetState(decision_memory=config.decision_memory)
        self.config = config
        self.conflicts = 0
        self.groups = 0
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._subjects = subjects
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._timeout = timeout
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        # Requests that arrive while a group is being decided wait here for the worker, which
        # takes them all as the next group (group commit).
        self._queue: asyncio.Queue[_Request | object] = asyncio.Queue(MAX_QUEUE)
        self._tg: asyncio.TaskGroup | None = None
        self._consults: Any = None  # the subscriptions
        self._settles: Any = None
        # The live feed of the ledger runs while other replicas write (it saves them conflicts);
        # a lone replica stops it: its own appends would come back to it for nothing.
        self._follower: Any = None
        self._feed: list[tuple[int, bytes]] = []  # fed while the lock was held: folded by the next group
        self._last_foreign = 0.0  # loop time another replica's entries last arrived
        self._appending = 0  # the sequence this replica's append in flight would get
        self._reserved = asyncio.Event()  # a reservation is open: the expiry timer has work
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closed = False
        self._decisions: dict[tuple[str, str, str], Counter] = {}
        self._seconds: dict[str, Histogram] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def _start(self, tg: asyncio.TaskGroup, cache_bucket: str | None, cache_ttl_s: float) -> None:
        self._tg = tg
        await ensure_stream(self._js, self._ledger)
        if cache_bucket and cache_ttl_s > 0:
            self._kv = await _open_cache(self._js, cache_bucket, cache_ttl_s, self._ledger)
        await self._read_all()
        log.info("budget: folded %d ledger messages of %s", self.state.seq, self._ledger.name)
        self._tasks = [
            tg.create_task(self._run(), name="cadre-budget-worker"),
            tg.create_task(self._expire_when_due(), name="cadre-budget-expiry"),
        ]
        if self.state.open:
            self._reserved.set()
        self._consults = await self._nc.subscribe(self._subjects.budget, queue=QUEUE_GROUP, cb=self._on_consult)
        self._settles = await self._nc.subscribe(self._subjects.budget_settle, queue=QUEUE_GROUP, cb=self._on_settle)
        await barrier(self._nc)  # the subscriptions exist on the server before anyone is told

    async def _read_all(self) -> None:
        """Fold the whole ledger (before taking requests: nothing else changes the state)."""

        def fold(seq: int, entries: list[LedgerEntry]) -> None:
            for entry in entries:
                rules.apply(self.state, entry)
            self.state.seq = seq

        def skip(seq: int, reason: str) -> None:
            log.error("budget: ledger message %d is not a list of entries, skipped: %s", seq, reason)
            self.state.seq = seq

        self.state.seq = await _read_messages(self._nc, self._ledger.name, self._timeout, fold, skip)

    async def _stop(self) -> None:
        for sub in (self._consults, self._settles):  # drain: requests already received are still answered
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.drain()
        if self._tasks:
            await self._queue.put(_STOP)
            await asyncio.wait(self._tasks[:1])
            self._tasks[1].cancel()
        self._closed = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Ask | _Settle):
                await self._answer_unavailable(item, "the budget actor is stopping")
        await self._unfollow()

    @property
    def following(self) -> bool:
        """Whether this replica folds the ledger as other replicas append to it."""
        return self._follower is not None

    async def folded(self, seq: int) -> None:
        """Return once the state includes ledger sequence ``seq`` (this waits; it does not read)."""
        if self.state.seq < seq:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((seq, waiter))
            await waiter

    def _advance(self, seq: int) -> None:
        self.state.seq = seq
        if self._waiters:
            still = []
            for want, waiter in self._waiters:
                if want > seq:
                    still.append((want, waiter))
                elif not waiter.done():
                    waiter.set_result(None)
            self._waiters = still

    async def _follow(self) -> None:
        """Fold what other replicas append as it arrives (from the sequence after ``state.seq``)."""
        if self._follower is not None:
            return
        self._last_foreign = asyncio.get_running_loop().time()
        self._follower = await self._js.subscribe(
            self._ledger.subjects,
            stream=self._ledger.name,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=self.state.seq + 1),
            cb=self._on_ledger,
        )

    async def _unfollow(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            with contextlib.suppress(Exception):
                await follower.unsubscribe()

    # -- intake (subscription callbacks) --------------------------------------------------------

    async def _on_consult(self, m: Msg) -> None:
        started = time.perf_counter()
        try:
            c = _consultation.decode(m.data)
        except msgspec.DecodeError as exc:
            await _respond(m, _error("invalid_consultation", str(exc)))
            return
        if self._kv is not None and c.cache_key is not None and self._may_be_cached(c):
            assert self._tg is not None
            self._tg.create_task(self._look_up(m, c, started))  # the callback does not wait on the cache
            return
        await self._submit(_Ask(m, c, None, started), self._consults)

    async def _on_settle(self, m: Msg) -> None:
        started = time.perf_counter()
        try:
            s = _settlement.decode(m.data)
        except msgspec.DecodeError as exc:
            await _respond(m, _error("invalid_settlement", str(exc)))
            return
        await self._submit(_Settle(m, s, started), self._settles)

    def _may_be_cached(self, c: Consultation) -> bool:
        """Worth a cache look-up: the gate allows it, and no denial or open grant stands for its id."""
        prior = self.state.decisions.get(c.id)
        if (prior is not None and prior.outcome == "denied") or c.id in self.state.open:
            return False
        return rules.gate(c.kind, c.intelligence, c.mode) is None

    async def _look_up(self, m: Msg, c: Consultation, started: float) -> None:
        assert self._kv is not None
        assert c.cache_key is not None
        cached: dict[str, Any] | None = None
        try:
            entry = await self._kv.get(c.cache_key)
            if entry.value:
                cached = _json_object.decode(entry.value)
        except KeyNotFoundError:
            pass
        except Exception as exc:  # the cache is an optimisation: decide without it
            log.warning("budget: inference cache look-up of %s failed: %r", c.cache_key, exc)
        await self._submit(_Ask(m, c, cached, started), None)

    async def _submit(self, item: _Request, sub: Any) -> None:
        """Serve ``item`` at once when nothing else is going on (one request at a time: no hop to
        the worker); else queue it for the worker's next group."""
        if self._closed:
            await self._answer_unavailable(item, "the budget actor is stopping")
        elif not self._lock.locked() and self._queue.empty() and (sub is None or sub.pending_msgs == 0):
            async with self._lock:
                await self._serve([item])
        else:
            try:
                self._queue.put_nowait(item)
            except asyncio.QueueFull:
                await self._answer_unavailable(item, f"the budget actor is overloaded ({MAX_QUEUE} requests waiting)")

    async def _on_ledger(self, m: Msg) -> None:
        seq = stream_seq(m.reply)
        if seq <= self.state.seq or seq == self._appending or self._closed:
            # Folded already (read while catching up), or most likely this replica's own append,
            # whose ack is on its way: if it is another replica's, that append fails and catches up.
            return
        if self._lock.locked() or not self._fold(seq, m.data):
            self._feed.append((seq, m.data))  # folded by the next group, under the lock

    def _fold(self, seq: int, data: bytes) -> bool:
        """Fold the ledger message at ``seq`` unless it is past the next one (a gap: False)."""
        if seq > self.state.seq + 1:
            return False
        if seq == self.state.seq + 1:
            for entry in _decode_entries(seq, data):
                rules.apply(self.state, entry)
            self._advance(seq)
            self._last_foreign = asyncio.get_running_loop().time()
        return True

    async def _fold_feed(self) -> None:
        """Fold what the feed brought while the lock was held (under the lock)."""
        feed, self._feed = self._feed, []
        for seq, data in sorted(feed):
            if not self._fold(seq, data):
                await self._catch_up(seq - 1)  # read what the feed skipped
                self._fold(seq, data)

    # -- the worker and the expiry timer ---------------------------------------------------------

    async def _run(self) -> None:
        """Serve what queued up while a group was being decided, as one group at a time."""
        while True:
            items = [await self._queue.get()]
            while len(items) < MAX_GROUP and not self._queue.empty():
                items.append(self._queue.get_nowait())
            requests = [item for item in items if isinstance(item, _Ask | _Settle)]
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

    async def _serve(self, requests: list[_Request]) -> None:
        """Decide the group, append its entries as one ledger message, then answer (under the lock)."""
        fresh = False
        for _attempt in range(MAX_ATTEMPTS):
            try:
                if self._feed:
                    await self._fold_feed()
                if not fresh and any(map(self._needs_fresh_state, requests)):
                    await self._catch_up(None)
                    fresh = True
                undo: rules.Undo = []
                entries, answers = self._decide(requests, undo)
                if entries:
                    try:
                        await self._append(entries)
                    except BaseException:
                        for take_back in reversed(undo):
                            take_back()
                        raise
            except _Conflict as conflict:
                self.conflicts += 1
                try:
                    await self._catch_up(conflict.last)
                    await self._follow()  # another replica writes: follow it from now on
                except Exception as exc:
                    await self._fail(requests, exc)
                    return
                continue
            except Exception as exc:
                await self._fail(requests, exc)
                return
            if self.state.open:
                self._reserved.set()
            await self._answer(answers)
            if self._follower is not None and asyncio.get_running_loop().time() - self._last_foreign > FOLLOW_IDLE_S:
                await self._unfollow()
            return
        await self._fail(requests, LedgerError(f"the ledger kept moving: {MAX_ATTEMPTS} attempts conflicted"))

    def _needs_fresh_state(self, r: _Request) -> bool:
        """An answer that writes nothing must not come from a stale state: "unknown reservation"
        (another replica may have granted it) and "the same grant again" (another replica may
        have settled it). Both are rare (retries), so they read the ledger's end first."""
        if isinstance(r, _Settle):
            return r.request.reservation_id not in self.state.open
        return r.request.id in self.state.open

    def _decide(self, requests: list[_Request], undo: rules.Undo) -> tuple[list[LedgerEntry], list[_Answer]]:
        """The group's entries (folded into the state, journaled in ``undo``) and its answers."""
        now = self._clock()
        state, config = self.state, self.config
        entries: list[LedgerEntry] = []
        for expired in rules.expire(state, now):
            rules.apply(state, expired, undo)
            entries.append(expired)
        answers: list[_Answer] = []
        for r in requests:
            entry: LedgerEntry | None
            if isinstance(r, _Ask):
                decision, entry = rules.decide(state, config, r.request, now, r.cached)
                answers.append(_Answer(r, _encode(decision), decision))
            else:
                try:
                    settled, entry = rules.settle(state, config, r.request, now)
                except InvalidSettlement as exc:
                    answers.append(_Answer(r, _error(exc.code, exc.message)))
                    continue
                answers.append(_Answer(r, _encode(settled), cache=entry is not None and self._caches(r.request)))
            if entry is not None:
                rules.apply(state, entry, undo)
                entries.append(entry)
        return entries, answers

    def _caches(self, s: Settlement) -> bool:
        return self._kv is not None and s.ok and s.cache_key is not None and s.cache_value is not None

    async def _append(self, entries: list[LedgerEntry]) -> None:
        expected = self.state.seq
        self._appending = expected + 1
        headers = {"Nats-Msg-Id": _message_id(expected + 1, entries), "Nats-Expected-Last-Sequence": str(expected)}
        try:
            reply = await self._nc.request(
                self._ledger.subjects, _encode(entries), timeout=self._timeout, headers=headers
            )
        except nats.errors.TimeoutError:
            raise _Conflict(None) from None  # the ack may be lost while the write landed: read and see
        except nats.errors.NoRespondersError:
            raise LedgerError(f"no stream stores {self._ledger.subjects!r}; the ledger stream is missing") from None
        ack = _ack.decode(reply.data)
        if ack.error is not None:
            if ack.error.err_code == _WRONG_LAST_SEQUENCE:
                raise _Conflict(_last_from(ack.error.description))
            raise LedgerError(
                f"JetStream refused the ledger append: {ack.error.description} (err_code {ack.error.err_code})"
            )
        if ack.duplicate or ack.seq != expected + 1:
            raise _Conflict(None)
        self._advance(ack.seq)
        self.groups += 1

    async def _catch_up(self, last: int | None) -> None:
        """Fold the ledger messages after ``state.seq`` up to ``last`` (None: the ledger's end)."""
        if last is None:
            last = (await self._js.stream_info(self._ledger.name)).state.last_seq
        if last < self.state.seq:
            raise LedgerError(
                f"ledger {self._ledger.name!r} ends at sequence {last} but this budget has folded {self.state.seq}: "
                "was the stream deleted or purged? restart the budget"
            )
        while self.state.seq < last:
            seqs = range(self.state.seq + 1, min(last, self.state.seq + 64) + 1)
            msgs = await asyncio.gather(*(self._get(seq) for seq in seqs))
            for seq, data in zip(seqs, msgs, strict=True):
                for entry in _decode_entries(seq, data):
                    rules.apply(self.state, entry)
                self._advance(seq)

    async def _get(self, seq: int) -> bytes:
        try:
            m = await self._js.get_msg(self._ledger.name, seq=seq, direct=True)
        except NotFoundError:
            return b"[]"  # deleted: nothing to fold
        return m.data or b"[]"

    # -- answering ----------------------------------------------------------------------------

    async def _answer(self, answers: list[_Answer]) -> None:
        for a in answers:
            if a.cache:
                assert self._tg is not None
                self._tg.create_task(self._cache_then_reply(a))
                continue
            await _respond(a.request.msg, a.payload)
            if isinstance(a.request, _Ask) and a.decision is not None:
                self._count(a.request.request.kind, a.decision)
            self._observe("consult" if isinstance(a.request, _Ask) else "settle", a.request.started)

    async def _cache_then_reply(self, a: _Answer) -> None:
        s = a.request.request
        assert self._kv is not None
        assert isinstance(s, Settlement)
        assert s.cache_key is not None
        try:
            await self._kv.put(s.cache_key, _encode(s.cache_value))
        except Exception as exc:  # the cache is an optimisation: the settlement stands
            log.warning("budget: could not cache %s: %r", s.cache_key, exc)
        await _respond(a.request.msg, a.payload)
        self._observe("settle", a.request.started)

    async def _fail(self, requests: Sequence[_Request], exc: Exception) -> None:
        log.error("budget: could not record %d decisions: %r", len(requests), exc)
        for r in requests:
            await self._answer_unavailable(r, f"the budget could not write its ledger: {exc}")

    async def _answer_unavailable(self, r: _Request, message: str) -> None:
        if isinstance(r, _Ask):
            decision = _unavailable(message)
            self._count(r.request.kind, decision)
            await _respond(r.msg, _encode(decision))
        else:
            await _respond(r.msg, _error("ledger_error", message))

    def _count(self, kind: str, d: Decision) -> None:
        if self._metrics is None:
            return
        key = (kind if kind in CONSULTATION_KINDS else "other", d.outcome, d.reason)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self._metrics.budget_decisions.labels(*key)
        child.inc()

    def _observe(self, operation: str, started: float) -> None:
        if self._metrics is None:
            return
        child = self._seconds.get(operation)
        if child is None:
            child = self._seconds[operation] = self._metrics.budget_decision_seconds.labels(operation)
        child.observe(time.perf_counter() - started)


async def _surviving(work: Awaitable[None]) -> None:
    """Run ``work``; a bug in it is logged, and the task that runs it goes on serving."""
    try:
        await work
    except Exception:
        log.exception("budget: unexpected error while serving a group")


async def _respond(m: Msg, payload: bytes) -> None:
    if m.reply:
        with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            await m.respond(payload)


def _message_id(seq: int, entries: list[LedgerEntry]) -> str:
    """The Msg-Id of the ledger message that should become ``seq``: deterministic for a group."""
    if len(entries) == 1:
        return f"{seq}-{rules.entry_id(entries[0])}"
    digest = hashlib.blake2b("\n".join(map(rules.entry_id, entries)).encode(), digest_size=12).hexdigest()
    return f"{seq}-g{digest}"


def _last_from(description: str) -> int | None:
    """The actual last sequence from "wrong last sequence: N"."""
    tail = description.rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None


def _decode_entries(seq: int, data: bytes) -> list[LedgerEntry]:
    try:
        return _entries.decode(data)
    except msgspec.DecodeError as exc:
        # Only the budget writes the ledger; anything else there is skipped (it holds no spend).
        log.error("budget: ledger message %d is not a list of entries, skipped: %s", seq, exc)
        return []


async def _open_cache(js: JetStreamContext, bucket: str, ttl_s: float, like: StreamSpec) -> KeyValue:
    """The inference cache: a KV bucket whose entries live ``ttl_s`` seconds, one version per key."""
    config = api.KeyValueConfig(
        bucket=bucket,
        history=1,
        ttl=ttl_s,
        storage=api.StorageType.MEMORY if like.storage == "memory" else api.StorageType.FILE,
        replicas=like.replicas,
        direct=True,
    )
    try:
        return await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != _EXISTS_WITH_OTHER_CONFIG:
            raise
        log.warning("budget: inference cache %s exists with another configuration; using it as it is", bucket)
        return await js.key_value(bucket)


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
) -> AsyncIterator[BudgetService]:
    """Run one budget replica until the block exits.

    Entering creates the ledger stream (and the inference-cache bucket when ``cache_bucket``
    is set and ``cache_ttl_s`` > 0), folds the whole ledger, and returns once the replica
    answers requests. Leaving stops taking requests, answers the queued ones, and stops.
    ``request_timeout_s`` bounds each JetStream request.
    """
    service = BudgetService(
        nc, subjects, config, ledger=ledger, metrics=metrics, clock=clock, timeout=request_timeout_s
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


# -- the callers' side ----------------------------------------------------------------------------


class _ErrorBody(msgspec.Struct, gc=False):
    code: str = "budget_error"
    message: str = ""


class _ErrorReply(msgspec.Struct, gc=False):
    error: _ErrorBody


_decision = msgspec.json.Decoder(Decision)
_settled = msgspec.json.Decoder(Settled)
_error_reply = msgspec.json.Decoder(_ErrorReply)


def _error_of(data: bytes) -> _ErrorBody:
    try:
        return _error_reply.decode(data).error
    except msgspec.DecodeError:
        return _ErrorBody(message=f"unreadable answer from the budget: {data[:200]!r}")


class BudgetClient:
    """Asks the budget actor. When none answers, a consultation is denied (the safe default)."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float = 2.0) -> None:
        self._nc = nc
        self._consult = subjects.budget
        self._settle = subjects.budget_settle
        self._timeout = timeout

    async def consult(self, request: Consultation) -> Decision:
        """The budget's decision; ``denied``/``budget_unavailable`` when nobody answers in time.
        An error answer (an invalid consultation) is a denial whose reason is the error code."""
        try:
            reply = await self._nc.request(self._consult, _encode(request), timeout=self._timeout)
        except nats.errors.NoRespondersError:
            return _unavailable(f"no budget actor listens on {self._consult}")
        except (nats.errors.TimeoutError, TimeoutError):
            return _unavailable(f"no budget actor answered within {self._timeout:g} s")
        try:
            return _decision.decode(reply.data)
        except msgspec.DecodeError:
            err = _error_of(reply.data)
            return Decision(outcome="denied", reason=err.code, message=err.message)

    async def settle(self, settlement: Settlement) -> Settled | None:
        """What the call cost; None when nobody answered (or the budget refused the settlement:
        logged) — the reservation then expires and is charged at its worst case."""
        try:
            reply = await self._nc.request(self._settle, _encode(settlement), timeout=self._timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            return None
        try:
            return _settled.decode(reply.data)
        except msgspec.DecodeError:
            err = _error_of(reply.data)
            log.error("budget refused settlement of %s: %s: %s", settlement.reservation_id, err.code, err.message)
            return None


# -- reading the ledger -----------------------------------------------------------------------------


async def read_ledger(
    nc: NATS,
    stream_name: str,
    *,
    timeout_s: float = 5.0,
    on_malformed: Callable[[int, str], None] | None = None,
) -> list[LedgerEntry]:
    """Every entry of the ledger, in order (an empty list when the stream does not exist).

    A message that is not a list of entries raises :class:`LedgerError`, or, given
    ``on_malformed``, is reported to it (sequence, reason) and skipped.
    """
    found: list[LedgerEntry] = []
    malformed: list[tuple[int, str]] = []
    await _read_messages(nc, stream_name, timeout_s, lambda _, entries: found.extend(entries), _collect(malformed))
    for seq, reason in malformed:
        if on_malformed is None:
            raise LedgerError(f"ledger message {seq} of {stream_name!r} is not a list of entries: {reason}")
        on_malformed(seq, reason)
    return found


def _collect(into: list[tuple[int, str]]) -> Callable[[int, str], None]:
    return lambda seq, reason: into.append((seq, reason))


async def _read_messages(
    nc: NATS,
    stream_name: str,
    timeout_s: float,
    each: Callable[[int, list[LedgerEntry]], None],
    malformed: Callable[[int, str], None],
) -> int:
    """Call ``each(seq, entries)`` for every ledger message in order (``malformed(seq, reason)``
    for one that does not decode), up to the last at the time of the call; return its sequence."""
    js = nc.jetstream(timeout=timeout_s)
    try:
        info = await js.stream_info(stream_name)
    except NotFoundError:
        return 0
    last = info.state.last_seq
    if info.state.messages == 0 or not info.config.subjects:
        return last
    done = asyncio.Event()
    seen = 0

    async def on_msg(m: Msg) -> None:
        nonlocal seen
        seq = stream_seq(m.reply)
        if seq > last or done.is_set():
            return
        seen += 1
        try:
            entries = _entries.decode(m.data)
        except msgspec.DecodeError as exc:
            malformed(seq, str(exc))
        else:
            each(seq, entries)
        if seq >= last:
            done.set()

    sub = await js.subscribe(
        info.config.subjects[0],
        stream=stream_name,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
        cb=on_msg,
    )
    try:
        await _wait_progress(done, lambda: seen, timeout_s, stream_name, last)
    finally:
        await sub.unsubscribe()
    return last


async def _wait_progress(done: asyncio.Event, count: Callable[[], int], timeout_s: float, name: str, last: int) -> None:
    while not done.is_set():
        before = count()
        try:
            async with asyncio.timeout(timeout_s):
                await done.wait()
        except TimeoutError:
            if count() == before:
                raise LedgerError(f"reading ledger {name!r} stalled after {before} messages (of {last})") from None
