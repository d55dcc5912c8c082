"""The actor runtime: mailboxes on durable JetStream consumers, handlers, supervision.

An actor kind declares the event types it handles. Its mailbox is one durable pull
consumer filtered on those types (``<prefix>.evt.*.<type>``) and shared by every replica of
the kind, in every process: JetStream hands each event to one of them.

For each input the runtime:

1. waits until the process's :class:`StateCache` holds the workflow's state including the input;
2. calls the handler with a :class:`Context` over the process's live answers (the clock,
   tools, budget, library, model; each answer recorded as a typed effect);
3. appends the handler's events, or ``effects_recorded`` when it learned anything from
   outside but emitted nothing (:func:`actors.invocation.envelopes`, which a replay runs
   too), with ids derived from (input id, kind, index) and ``basis`` = the state's last
   sequence. Every append expects the workflow's last sequence and chains to
   it (``prev``), one event at a time. On a conflict, a handler of the kind's *consistent*
   types re-runs on the newer state; any other handler is not run again (that would call
   its tools again): its same outputs, those not stored yet, are appended on the newer state;
4. acks the input only after its outputs are stored. A handler error naks with backoff;
   after ``max_attempts`` deliveries the runtime appends ``handler_failed`` (a dead letter
   the planner turns into a workflow failure) and terminates the input.

A handler may return :class:`Defer` to see its input again later (a durable timer).
A NATS outage (a cluster electing a leader: ``503``, no responders, timeouts; a reconnect) never
ends a replica: its fetch loop backs off (:mod:`bus.retry`) and fetches again, recreating its
durable consumer if it vanished; appends, reads and acks retry the same way.
Structured concurrency: replicas run in a TaskGroup owned by :func:`run_actors`; entering it
returns once every consumer exists and every replica is fetching; leaving it drains.

With ``partitions`` (:mod:`actors.partitions`) the process holds leases on some partitions of the
workflows: its state cache follows only those, and each replica fetches from a durable consumer per
held partition (``<durable>_p<i>``, filtered on ``<prefix>.evt.*.<type>.<i>``: the stream stores the
partition in the subject), one loop each, started and stopped as the leases move; the loops share
the replica's ``max_in_flight`` slots. The kind's shared consumer then holds only inputs stored
before the stream had partitions: those of partitions held elsewhere are nak'd undecoded, so that
JetStream offers them to the process that holds their partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import assert_never

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError
from prometheus_client import Counter, Histogram

from cadre.actors import invocation, pull, tracing
from cadre.actors.answers import LiveAnswers
from cadre.actors.clock import utc_now
from cadre.actors.context import Context, Outside
from cadre.actors.metrics import Metrics
from cadre.actors.outcome import Defer, Outcome
from cadre.actors.partitions import Leases, bucket_name, group_of
from cadre.actors.state_cache import StateCache, stored_after
from cadre.actors.trust import Trust
from cadre.bus.effects import (
    BudgetDecided,
    CallSettled,
    Effect,
    Estimated,
    Grounded,
    LibrarySearched,
    ModelCalled,
    ToolCalled,
)
from cadre.bus.errors import CadreError, ConcurrencyConflict, InvalidName
from cadre.bus.events import Envelope, ForgedEvent, HandlerFailed, StepsProposed, chain_hash, make_event
from cadre.bus.plan import ErrorInfo
from cadre.bus.retry import Backoff, RetryPolicy, is_transient, retrying
from cadre.bus.signing import Verdict
from cadre.bus.stream import partitions_of, partitions_refused
from cadre.store.authenticity import verdict
from cadre.store.jetstream import JetStreamLog
from cadre.store.records import Malformed, Record, StoredEvent
from cadre.store.state import WorkflowState

log = logging.getLogger("cadre.actors")

Handler = Callable[[Context, StoredEvent, WorkflowState], Awaitable[Outcome]]


@dataclass(frozen=True)
class ActorSpec:
    """An actor kind: the types it handles, its handler, and which types need the latest state."""

    kind: str
    handles: frozenset[str]
    handler: Handler
    consistent: frozenset[str] = frozenset()
    pool: str | None = None  # an agent pool's agents: their own durable consumer (``consumer_name``)


@dataclass(frozen=True)
class RuntimeOptions:
    """Knobs of the runtime; every one is a setting (``CADRE_ACTOR_*``)."""

    batch: int = 32  # messages per fetch
    max_in_flight: int = 64  # handlers running at once per replica
    max_ack_pending: int = 1000  # per consumer (all replicas of a kind)
    ack_wait: float = 30.0  # seconds before JetStream redelivers an unacked input
    max_attempts: int = 5  # deliveries before an input is dead-lettered
    backoff: tuple[float, ...] = (0.2, 1.0, 5.0, 15.0)  # nak delays by attempt
    conflict_retries: int = 50
    fetch_timeout: float = 0.5
    drain_timeout: float = 10.0
    state_release_after: float = 5.0  # seconds the state cache keeps a workflow after it ends
    state_max_workflows: int = 10_000  # workflows the state cache keeps at most
    state_recent_events: int = 2_000  # decoded events the state cache keeps for actors' inputs
    partitions: int = 0  # workflows' partitions shared by processes through leases (0: none, every process all)
    partition_lease_ttl: float = 6.0  # seconds a partition lease lasts unrenewed (a dead process's, at most)
    state_feed: bool = True  # the state cache follows the stream; off: own appends and inputs, gaps read


class Lifecycle(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


def consumer_name(prefix: str, kind: str, pool: str | None = None) -> str:
    """The durable consumer of an actor kind, shared by its replicas; an agent pool's agents have
    their own (each pool sees every step and runs its own: ``actors.agent``)."""
    base = f"{prefix.replace('.', '_')}_{kind}"
    return base if pool is None else f"{base}_pool_{pool}"


def partition_consumer(durable: str, partition: int) -> str:
    """The durable consumer of one partition of a kind (with partitions: ``<durable>_p<i>``)."""
    return f"{durable}_p{partition}"


class _Replica:
    """One replica of a kind: a fetch loop on the kind's shared consumer and, with partitions, one on
    each held partition's consumer (started when its lease is claimed, stopped when it is handed
    back or lost); the loops share the replica's ``max_in_flight`` slots."""

    def __init__(self, system: ActorSystem, spec: ActorSpec, index: int) -> None:
        self.system = system
        self.spec = spec
        self.name = f"{spec.kind}#{index}"
        self.durable = consumer_name(system.log.subjects.prefix, spec.kind, spec.pool)
        self._slots = asyncio.Semaphore(system.options.max_in_flight)
        self._tg: asyncio.TaskGroup | None = None
        self._stops: dict[int, asyncio.Event] = {}  # held partition -> what stops its loop
        self._loops: set[asyncio.Task[None]] = set()

    async def run(self, ready: asyncio.Event) -> None:
        sys_ = self.system
        shared = await sys_.log.js.pull_subscribe_bind(durable=self.durable, stream=sys_.log.stream)
        try:
            async with asyncio.TaskGroup() as tg:  # the fetch loops and the handlers they start
                self._tg = tg
                self._loop(tg.create_task(self._fetch(shared, self.durable)))
                if sys_.leases is not None:
                    sys_.replicas.append(self)
                    bound = self.partitions_changed(sys_.leases.held)
                    await asyncio.gather(*(b.wait() for b in bound))
                ready.set()
                await sys_.stopping.wait()
                while self._loops:  # each ends after its fetch
                    await asyncio.wait(set(self._loops))
                await self._drain()
        finally:
            self._tg = None
            if self in sys_.replicas:
                sys_.replicas.remove(self)
            with contextlib.suppress(Exception):
                await shared.unsubscribe()

    def _loop(self, task: asyncio.Task[None]) -> None:
        self._loops.add(task)
        task.add_done_callback(self._loops.discard)

    def partitions_changed(self, held: frozenset[int]) -> list[asyncio.Event]:
        """Start a loop on each newly held partition and stop those of partitions no longer held;
        returns the events set once the new loops are bound to their consumers."""
        tg = self._tg
        if tg is None or self.system.stopping.is_set():
            return []
        for p in set(self._stops) - held:
            self._stops.pop(p).set()
        bound = []
        for p in sorted(held - set(self._stops)):
            stop, ready = asyncio.Event(), asyncio.Event()
            self._stops[p] = stop
            self._loop(tg.create_task(self._partition(p, stop, ready)))
            bound.append(ready)
        return bound

    async def _partition(self, p: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
        """Fetch from partition ``p``'s consumer until ``stop``; then hand back what reached this
        process after it (nak, no delay: the partition's new holder gets it at once)."""
        sys_ = self.system
        durable = partition_consumer(self.durable, p)
        js = sys_.log.js

        async def bind() -> JetStreamContext.PullSubscription:
            return await js.pull_subscribe_bind(durable=durable, stream=sys_.log.stream)

        sub = await retrying(bind, f"{self.name} bind {durable}", sys_.log.retry)
        ready.set()
        try:
            await self._fetch(sub, durable, p, stop)
            if not sys_.stopping.is_set():
                # A pull request of the last fetch may still deliver until it expires: wait that out.
                await asyncio.sleep(sys_.options.fetch_timeout + 0.1)
                for m in pull.queued(sub):
                    sys_.handed_on += 1
                    with contextlib.suppress(Exception):
                        await sys_.settle(functools.partial(m.nak, delay=0), "nak")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch(
        self,
        sub: JetStreamContext.PullSubscription,
        durable: str,
        p: int | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        sys_ = self.system
        tg = self._tg
        assert tg is not None
        outage = Backoff(f"{self.name} fetch", sys_.log.retry)
        opts = sys_.options
        # After a fetch that timed out, fetch one message, not a batch. The timed-out pull
        # request's late "408 Request Timeout" can reach the next fetch, which nats-py 2.16
        # then answers with a plain lingering pull request (no ``no_wait``). That request stays
        # open on the server for fetch_timeout; a fetch that receives a message through it gets
        # no "404 No Messages" after it and waits for the rest of its batch until its timeout,
        # holding the message: up to 0.5 s more latency for the first input after an idle spell.
        # A one-message fetch returns as soon as it has that message. With partitions, the loops
        # share the replica's slots: a loop's batch is at most its share of them (``_batch``), so a
        # fetch waiting for inputs never holds the slots the other loops need to fetch at all.
        idle = False
        while not sys_.stopping.is_set() and not (stop is not None and stop.is_set()):
            await self._slots.acquire()
            want, cap = 1, self._batch()
            while not idle and want < cap and not self._slots.locked():
                await self._slots.acquire()
                want += 1
            failed: Exception | None = None
            try:
                msgs = await pull.fetch(sub, want, opts.fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                msgs = []
                sys_.stopping.set()
            except Exception as exc:  # an outage (503 during an election, a reconnect): wait and fetch again
                if not (is_transient(exc) or _consumer_trouble(exc)):
                    for _ in range(want):
                        self._slots.release()
                    raise
                msgs, failed = [], exc
            idle = not msgs
            for _ in range(want - len(msgs)):
                self._slots.release()
            for m in msgs:
                tg.create_task(self._process(m, p))
            if failed is not None:
                await self._recover(durable, p)
                await outage.failed(failed)
            elif msgs:
                outage.ok()

    def _batch(self) -> int:
        """The most a fetch asks for: the batch, and with several loops each its share of the slots
        (a fetch that waits holds a slot per message asked for; the others' loops must fetch too)."""
        opts = self.system.options
        return max(1, min(opts.batch, opts.max_in_flight // max(1, len(self._loops))))

    async def _recover(self, durable: str, p: int | None) -> None:
        """After a failed fetch: recreate the durable consumer if it is gone (a pull request to a
        consumer that does not exist is answered 503, as one to a consumer between leaders)."""
        sys_ = self.system
        try:
            await sys_.log.js.consumer_info(sys_.log.stream, durable)
        except NotFoundError:
            log.warning("%s: consumer %s is gone; creating it again", self.name, durable)
            with contextlib.suppress(Exception):  # an outage again: the next failed fetch tries again
                await sys_.ensure_consumer(self.spec, p)
        except Exception as exc:
            if not is_transient(exc):
                raise

    async def _drain(self) -> None:
        """Let in-flight handlers finish (up to the drain timeout); unfinished inputs are redelivered later."""
        opts = self.system.options
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(opts.drain_timeout):
                for _ in range(opts.max_in_flight):
                    await self._slots.acquire()
                return
        log.warning(
            "%s: drain timed out after %ss; in-flight inputs will be redelivered", self.name, opts.drain_timeout
        )
        raise _DrainTimeout

    async def _process(self, m: Msg, p: int | None = None) -> None:
        """Handle one input; ``p``: the partition whose consumer delivered it (None: the shared one)."""
        sys_, kind = self.system, self.spec.kind
        try:
            seq, delivered = delivery(m)
            if p is not None and p not in self._stops:  # handed back since it was fetched: to the new holder
                sys_.handed_on += 1
                await sys_.settle(lambda: m.nak(delay=0), "nak")
                return
            if p is None and not sys_.mine(m.subject):  # another process holds its partition: it goes there
                sys_.handed_on += 1
                await sys_.settle(lambda: m.nak(delay=elsewhere_delay(delivered)), "nak")
                return
            rec, checked = await sys_.input_record(seq, m.subject, m.data, m.headers)
            if delivered > 1:
                sys_.metrics.redeliveries.labels(kind).inc()
            if isinstance(rec, Malformed):
                await sys_.dead_letter_malformed(kind, rec)
                await sys_.settle(m.term, "term")
                return
            etype = rec.event.type
            if checked is not None and not checked.trusted:
                await sys_.refuse(kind, rec, checked)
                await sys_.settle(m.term, "term")
                sys_.handled(kind, etype, "forged").inc()
                return
            started = time.perf_counter()
            try:
                try:
                    work = tracing.handled(
                        sys_.handle(self.spec, rec), kind, rec, m.headers, self.spec.pool
                    )  # a span, when on
                    outcome = await self._with_keepalive(m, work)
                finally:
                    sys_.handler_seconds(kind, etype).observe(time.perf_counter() - started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if sys_.attempts_spent(seq, delivered):
                    log.error("%s: giving up on %s #%d after %d attempts: %r", self.name, etype, seq, delivered, exc)
                    await sys_.dead_letter(kind, rec, delivered, exc)
                    await sys_.settle(m.term, "term")
                    sys_.handled(kind, etype, "dead_letter").inc()
                else:
                    delay = sys_.options.backoff[min(delivered, len(sys_.options.backoff)) - 1]
                    log.warning(
                        "%s: %s #%d failed (attempt %d), retry in %ss: %r", self.name, etype, seq, delivered, delay, exc
                    )
                    await sys_.settle(lambda: m.nak(delay=delay), "nak")
                    sys_.handled(kind, etype, "retry").inc()
                return
            if isinstance(outcome, Defer):
                until = max(0.0, (outcome.until - utc_now()).total_seconds())
                await sys_.settle(lambda: m.nak(delay=until), "nak")
                sys_.handled(kind, etype, "deferred").inc()
                return
            await sys_.settle(m.ack, "ack")
            sys_.handled(kind, etype, "ok").inc()
        except asyncio.CancelledError:
            raise
        except Exception:  # NATS gone while acking: the input is redelivered after ack_wait
            log.exception("%s: could not settle a message", self.name)
        finally:
            self._slots.release()

    async def _with_keepalive(self, m: Msg, work: Awaitable[Outcome | None]) -> Outcome | None:
        """Run ``work`` while telling JetStream, every third of ack_wait, that the input is in progress.

        A timer per input, not a task: most inputs finish long before the first beat, and a
        task (and a TaskGroup) per input cost about 5 % of a busy process's CPU. The handler's
        own error reaches the caller as it is.
        """
        period = self.system.options.ack_wait / 3
        loop = asyncio.get_running_loop()
        beat: asyncio.Task[None] | None = None
        timer: asyncio.TimerHandle | None = None

        async def progress() -> None:
            with contextlib.suppress(Exception):
                await m.in_progress()

        def tick() -> None:
            nonlocal beat, timer
            if beat is None or beat.done():
                beat = loop.create_task(progress())
            timer = loop.call_later(period, tick)

        timer = loop.call_later(period, tick)
        try:
            return await work
        finally:
            timer.cancel()
            if beat is not None:
                beat.cancel()


class _DrainTimeout(Exception):
    pass


def elsewhere_delay(delivered: int) -> float:
    """Seconds before an input of a partition this process does not hold is offered again: at once
    the first time, then longer each time (up to 0.2 s), so that a process with free slots does not
    spin on inputs while their partition's holder is busy, or while no process holds it (a dead
    process's lease running out)."""
    return 0.0 if delivered <= 1 else min(0.2, 0.01 * 2 ** (delivered - 2))


def _consumer_trouble(exc: Exception) -> bool:
    """A fetch refused because of its consumer: gone (404), deleted or changed under it (409)."""
    return isinstance(exc, APIError) and exc.code in (404, 409)


def delivery(m: Msg) -> tuple[int, int]:
    """(stream sequence, delivery count) of a JetStream delivery, read from its reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9 tokens) or the
    v2 form with domain and account hash before the stream (11 or 12 tokens). Cheaper than
    ``m.metadata``, which also builds a datetime and three dataclasses per message; any
    other reply goes through ``m.metadata`` (which raises for a message that is not JetStream's).
    """
    tokens = (m.reply or "").split(".")
    if tokens[:2] == ["$JS", "ACK"]:
        if len(tokens) == 9:
            return int(tokens[5]), int(tokens[4])
        if len(tokens) >= 11:
            return int(tokens[7]), int(tokens[6])
    meta = m.metadata
    return meta.sequence.stream, meta.num_delivered


@dataclass
class ActorSystem:
    """The actors of one process, their shared state cache, and the ports they use."""

    log: JetStreamLog
    outside: Outside
    options: RuntimeOptions
    metrics: Metrics
    cache: StateCache
    trust: Trust = field(default_factory=Trust)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    lifecycle: Lifecycle = Lifecycle.CREATED
    leases: Leases | None = None  # the partitions this process holds (None: no partitions, all of them)
    handed_on: int = 0  # inputs offered here of partitions another process holds (naked, undecoded)
    # Labelled metric children, looked up once each: prometheus_client's ``labels()`` validates
    # its arguments and takes a lock on every call (three calls per input cost about 3 % of a
    # busy process's CPU).
    _latency: dict[tuple[str, str], Histogram] = field(default_factory=dict, repr=False)
    _handled: dict[tuple[str, str, str], Counter] = field(default_factory=dict, repr=False)
    _logs: dict[str, JetStreamLog] = field(default_factory=dict, repr=False)
    _failures: dict[int, int] = field(default_factory=dict, repr=False)  # with partitions: failures by input seq
    replicas: list[_Replica] = field(default_factory=list, repr=False)  # with partitions: told of lease changes

    def log_for(self, kind: str) -> JetStreamLog:
        """The log as ``kind`` writes to it: every event it appends is signed with its role's key."""
        view = self._logs.get(kind)
        if view is None:
            view = self._logs[kind] = self.log.signed_by(self.trust.signer(kind))
        return view

    answers: LiveAnswers = field(init=False, repr=False)
    _settle_retry: RetryPolicy = field(init=False, repr=False)  # acks ride out an outage up to ack_wait

    def __post_init__(self) -> None:
        self.answers = tracing.answers_for(self.outside)  # traced tool and model calls when tracing is on
        self._settle_retry = dataclasses.replace(self.log.retry, bound_s=self.options.ack_wait)

    def handler_seconds(self, kind: str, etype: str) -> Histogram:
        child = self._latency.get((kind, etype))
        if child is None:
            child = self._latency[(kind, etype)] = self.metrics.handler_seconds.labels(kind, etype)
        return child

    def handled(self, kind: str, etype: str, outcome: str) -> Counter:
        child = self._handled.get((kind, etype, outcome))
        if child is None:
            child = self._handled[(kind, etype, outcome)] = self.metrics.events_handled.labels(kind, etype, outcome)
        return child

    async def settle(self, call: Callable[[], Awaitable[None]], how: str) -> None:
        """Ack, nak or term an input through an outage (each may be sent again: JetStream keeps the
        first); past ack_wait the input is redelivered anyway."""
        await retrying(call, f"{how} of inputs", self._settle_retry)

    async def ensure_consumer(self, spec: ActorSpec, partition: int | None = None) -> None:
        """Create (or bring up to date) the kind's durable consumers: the shared one, whose filter
        takes the inputs stored without a partition (all of them on a stream without partitions),
        and with partitions one per partition, created here up front so that each holds its inputs
        from the first one whoever holds the partition (``partition``: that one only)."""
        subjects = self.log.subjects
        durable = consumer_name(subjects.prefix, spec.kind, spec.pool)
        types = sorted(spec.handles)
        wanted: list[tuple[str, list[str]]] = []
        if partition is None:
            wanted.append((durable, [subjects.of_type(t) for t in types]))
        for p in range(self.options.partitions) if partition is None else (partition,):
            wanted.append((partition_consumer(durable, p), [subjects.of_type_in(t, p) for t in types]))
        for name, filters in wanted:
            cfg = api.ConsumerConfig(
                durable_name=name,
                filter_subjects=filters,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.options.ack_wait,
                max_deliver=-1,  # the runtime dead-letters after max_attempts itself, so the failure is logged
                max_ack_pending=self.options.max_ack_pending,
                deliver_policy=api.DeliverPolicy.ALL,
            )
            await retrying(
                functools.partial(self.log.js.add_consumer, self.log.stream, cfg), "consumer create", self.log.retry
            )

    def partitions_changed(self, held: frozenset[int]) -> None:
        """The leases changed: each replica starts or stops its partitions' loops."""
        for replica in list(self.replicas):
            replica.partitions_changed(held)

    def attempts_spent(self, seq: int, delivered: int) -> bool:
        """Whether a failed input has had its ``max_attempts`` (then it is dead-lettered).

        Without partitions, JetStream's delivery count. With them, deliveries also count the times
        the input was handed on to its partition's holder, so the handler's failures here are
        counted (and a cap of 4x the deliveries holds after a restart, which forgets them)."""
        limit = self.options.max_attempts
        if self.leases is None:
            return delivered >= limit
        failed = self._failures.pop(seq, 0) + 1
        if failed >= limit or delivered >= 4 * limit:
            return True
        self._failures[seq] = failed
        if len(self._failures) > 10_000:
            self._failures.pop(next(iter(self._failures)))
        return False

    def mine(self, subject: str) -> bool:
        """Whether this process handles the input on ``subject`` (always, without partitions): for an
        input of the shared consumer, one stored before the stream had partitions."""
        if self.leases is None:
            return True
        parsed = self.log.subjects.parse_event(subject)
        return parsed is None or self.leases.owns(parsed[0])

    async def input_record(
        self, seq: int, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> tuple[Record, Verdict | None]:
        """The input as a record, once the state cache holds its workflow's state up to it, and
        the keyring's verdict on it (None for a malformed one).

        The cache's feed has usually decoded and checked the same event already; decode and check
        it here only if not. Without the feed, the cache has it when this process appended it;
        else it is decoded here and handed to the cache with the sequence JetStream stored it
        expecting, which folds it if that is the state's (and reads the log if not).
        """
        parsed = self.log.subjects.parse_event(subject)
        rec: Record | None = None
        if parsed is not None:
            with contextlib.suppress(InvalidName):  # a subject no workflow id can have: decoded below
                wf, cache = parsed[0], self.cache
                if cache.feed or cache.recent(seq) is not None:
                    await cache.state_at(wf, seq)
                else:  # without the feed, an input this process did not append: handed over
                    rec = await self.log.record(seq, subject, data, headers)
                    cache.decoded += 1
                    after = stored_after(headers, self.log.subjects.workflow(wf))
                    await cache.state_at(wf, seq, given=rec, after=after)
                if (known := cache.recent(seq)) is not None:
                    return known
        if rec is None:
            rec = await self.log.record(seq, subject, data, headers)
            self.cache.decoded += 1
        return rec, verdict(rec, self.trust.keyring) if isinstance(rec, StoredEvent) else None

    async def handle(self, spec: ActorSpec, rec: StoredEvent) -> Outcome | None:
        """Run the handler on the input and store its outputs; returns the handler's outcome."""
        wf = rec.event.workflow_id
        consistent = rec.event.type in spec.consistent
        state = await self.cache.state_at(wf, rec.seq)
        for _ in range(self.options.conflict_retries):
            now = utc_now()
            ctx = Context(kind=spec.kind, stored=rec, now=now, answers=self.answers)
            # The state the handler decides on (the cache folds newer events into a copy).
            basis, basis_data = state.last_seq, state.last_data
            outcome = await spec.handler(ctx, rec, state)
            if isinstance(outcome, Defer):
                return outcome
            envelopes = invocation.envelopes(spec.kind, rec.event, list(outcome), tuple(ctx.effects), now, basis)
            if not envelopes:
                return outcome
            moved = await self._store(spec, wf, envelopes, (basis, basis_data) if consistent else None)
            if moved is not None:  # consistent, and the workflow moved on: decide again on the newer state
                state = await self.cache.state_at(wf, moved)
                continue
            self._count(envelopes)
            self._count_effects(ctx.effects)
            return outcome
        raise RuntimeError(f"{spec.kind}: gave up after {self.options.conflict_retries} concurrency conflicts")

    async def _store(
        self, spec: ActorSpec, wf: str, envelopes: list[Envelope], decided: tuple[int, bytes] | None
    ) -> int | None:
        """Append a handler's outputs, chained to the workflow's last message; None once stored.

        One message at a time, each expecting the one before, keeps the chain in stored order
        (an atomic batch would cost the server ~2 ms on file storage: bench/log.py). If a crash
        stores only some outputs, the redelivered input is handled on a state that includes
        them, and the outputs still missing keep their ids (output_key): nothing is lost or
        doubled. The process's appends to one workflow take turns (the cache's append lock) and
        chain to each other at once (``cache.head``), so only other processes cause conflicts.

        ``decided`` (a consistent handler's): the sequence and bytes of the state it decided on;
        the outputs are stored only right after it, else the sequence to decide again at is
        returned. Otherwise the outputs go to the workflow's end: after a conflict, those not
        stored yet are appended again on the newer state (same ids, same basis: the handler
        does not run again, which would call its tools again).
        """
        pending = envelopes
        async with self.cache.append_lock(wf):
            for _ in range(self.options.conflict_retries):
                if decided is not None:
                    seq, data = decided
                    head = chain_hash(data) if seq else ""
                    newest = self.cache.head(wf)[0]
                    if newest > seq:  # moved on since the handler decided: no need to ask JetStream
                        self.metrics.conflicts.labels(spec.kind).inc()
                        return newest
                else:
                    seq, head = self.cache.head(wf)
                try:
                    result = await self.log_for(spec.kind).append(
                        wf, pending, expected_seq=seq, prev=head, atomic=False
                    )
                except ConcurrencyConflict as exc:
                    self.metrics.conflicts.labels(spec.kind).inc()
                    if decided is not None:
                        return exc.actual
                    pending = pending[exc.stored :]
                    await self.cache.state_at(wf, exc.actual)
                    continue
                self.cache.appended(wf, result.last_seq, result.last_hash)
                return None
        raise RuntimeError(f"{spec.kind}: gave up after {self.options.conflict_retries} concurrency conflicts")

    def _count(self, envelopes: Sequence[Envelope]) -> None:
        for e in envelopes:
            if e.type == "workflow_completed":
                self.metrics.workflows.labels("completed").inc()
            elif e.type == "workflow_failed":
                self.metrics.workflows.labels("failed").inc()
            elif e.type == "workflow_cancelled":
                self.metrics.workflows.labels("cancelled").inc()
            elif e.type == "plan_proposed":
                self.metrics.workflows.labels("started").inc()
            elif isinstance(e.data, StepsProposed):
                for step in e.data.steps:
                    self.metrics.steps_proposed.labels("yes" if step.documentation_references else "no").inc()

    def _count_effects(self, effects: Sequence[Effect]) -> None:
        provider = self.outside.llm.provider.name if self.outside.llm is not None else "none"
        model = "none"
        m = self.metrics
        for e in effects:
            match e:
                case ToolCalled():
                    m.tool_calls.labels(e.tool, "error" if e.error else "ok").inc()
                case BudgetDecided():
                    if e.asked is not None:  # the provider asked (a fallback's, after the first)
                        if e.asked.attempt:  # handed on from the provider of the round before
                            m.llm_fallbacks.labels(e.call, provider, e.asked.provider).inc()
                        provider, model = e.asked.provider, e.asked.model
                    m.consultations.labels(e.call, provider, e.decision.outcome).inc()
                case ModelCalled():
                    if e.outcome in ("answered", "failed"):
                        m.llm_seconds.labels(e.call, provider, model).observe(e.ms / 1000)
                    if e.error is not None:
                        m.consultations.labels(e.call, provider, "failed").inc()
                    usage = e.response.usage if e.response is not None else e.usage
                    if usage is not None:
                        for direction, tokens in (
                            ("input", usage.input_tokens),
                            ("output", usage.output_tokens),
                            ("cache_read", usage.cache_read_tokens),
                            ("cache_write", usage.cache_write_tokens),
                        ):
                            if tokens:
                                m.llm_tokens.labels(provider, e.call, direction).inc(tokens)
                case CallSettled():
                    m.llm_usd.labels(provider, e.call).inc(e.cost_usd)
                case LibrarySearched() | Estimated() | Grounded():
                    pass
                case _:
                    assert_never(e)

    async def dead_letter(self, kind: str, rec: StoredEvent, attempts: int, exc: Exception) -> None:
        failed = HandlerFailed(
            input_id=rec.event.id,
            input_type=rec.event.type,
            input_seq=rec.seq,
            attempts=attempts,
            error=ErrorInfo(
                code=exc.code if isinstance(exc, CadreError) else "handler_error",
                message=str(exc)[:2000] or repr(exc),
            ),
            exception=type(exc).__name__,
        )
        self.metrics.dead_letters.labels(kind).inc()
        env = make_event(
            failed,
            workflow_id=rec.event.workflow_id,
            actor=kind,
            at=utc_now(),
            causation_id=rec.event.id,
            index="handler_failed",  # apart from the handler's own outputs
        )
        # Decided on no state (basis 0): appended at the workflow's end, chained by the log.
        await self.log_for(kind).append(rec.event.workflow_id, [env])

    async def refuse(self, kind: str, rec: StoredEvent, verdict: Verdict) -> None:
        """Record that ``kind`` refused an input the keyring does not accept; it is not handled.

        The record's id derives from the input's and the kind, so a redelivery records it once.
        """
        refused = ForgedEvent(
            input_id=rec.event.id,
            input_type=rec.event.type,
            input_seq=rec.seq,
            status=verdict.status,
            reason=verdict.reason,
            signer=rec.signature.signer if rec.signature is not None else None,
        )
        self.metrics.forged.labels(kind).inc()
        log.warning("%s: refused %s #%d as %s: %s", kind, rec.event.type, rec.seq, verdict.status, verdict.reason)
        env = make_event(
            refused,
            workflow_id=rec.event.workflow_id,
            actor=kind,
            at=utc_now(),
            causation_id=rec.event.id,
            index="forged_event",
        )
        await self.log_for(kind).append(rec.event.workflow_id, [env])

    async def dead_letter_malformed(self, kind: str, rec: Malformed) -> None:
        parsed = self.log.subjects.parse_event(rec.subject)
        if parsed is None:
            return
        wf, etype = parsed
        failed = HandlerFailed(
            input_id="",
            input_type=etype,
            input_seq=rec.seq,
            attempts=1,
            error=ErrorInfo(code="malformed_event", message=rec.reason),
        )
        self.metrics.dead_letters.labels(kind).inc()
        env = make_event(
            failed, workflow_id=wf, actor=kind, at=utc_now(), causation_id=f"seq:{rec.seq}", index="handler_failed"
        )
        await self.log_for(kind).append(wf, [env])


@asynccontextmanager
async def run_actors(
    elog: JetStreamLog,
    specs: Sequence[tuple[ActorSpec, int]],
    *,
    outside: Outside,
    options: RuntimeOptions | None = None,
    metrics: Metrics | None = None,
    trust: Trust | None = None,
) -> AsyncIterator[ActorSystem]:
    """Run ``replicas`` of each actor kind until the block exits, then drain.

    Entering returns once every consumer exists and every replica is fetching. With ``trust``,
    each kind signs what it appends, and inputs its keyring does not accept are refused.
    """
    trust = trust or Trust()
    trust.require(spec.kind for spec, _ in specs)
    opts = options or RuntimeOptions()
    cache = StateCache(
        elog,
        keyring=trust.keyring,
        max_workflows=opts.state_max_workflows,
        recent_events=opts.state_recent_events,
        release_after=opts.state_release_after,
        feed=opts.state_feed,
    )
    system = ActorSystem(elog, outside, opts, metrics or Metrics.create(), cache, trust)
    info = await retrying(lambda: elog.js.stream_info(elog.stream), "stream info", elog.retry)
    if partitions_of(info.config) != opts.partitions:  # its consumers would miss the inputs
        raise partitions_refused(elog.stream, partitions_of(info.config), opts.partitions)
    for spec, _ in specs:
        await system.ensure_consumer(spec)
    if opts.partitions > 0 and opts.max_in_flight <= opts.partitions:
        log.warning(
            "max_in_flight %d is not above the partitions (%d): a replica's loops, one per held partition and "
            "one shared, each hold a slot while they wait for inputs, so some cannot fetch until another's "
            "fetch times out; raise CADRE_ACTOR_MAX_IN_FLIGHT",
            opts.max_in_flight,
            opts.partitions,
        )
    if opts.partitions > 0:
        leases = Leases(
            elog.js,
            bucket=bucket_name(elog.subjects.prefix),
            group=group_of(consumer_name("g", s.kind, s.pool)[2:] for s, _ in specs),
            partitions=opts.partitions,
            ttl=opts.partition_lease_ttl,
            on_lost=lambda lost: cache.forget_where(lambda wf: not leases.owns(wf)),
            on_change=system.partitions_changed,
        )
        await leases.start()
        system.leases = leases
        cache.owns = leases.owns
    try:
        await cache.start()
    except BaseException:
        if system.leases is not None:
            await system.leases.stop()
        raise
    body_error: Exception | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            for spec, replicas in specs:
                for i in range(replicas):
                    ready = asyncio.Event()
                    tg.create_task(_Replica(system, spec, i).run(ready))
                    await ready.wait()
            system.lifecycle = Lifecycle.RUNNING
            try:
                yield system
            except Exception as exc:  # the caller's error: drain, then re-raise it as it was
                body_error = exc
            finally:
                system.lifecycle = Lifecycle.DRAINING
                system.stopping.set()
    except* _DrainTimeout:
        pass
    finally:
        system.lifecycle = Lifecycle.STOPPED
        await cache.stop()
        if system.leases is not None:
            await system.leases.stop()
    if body_error is not None:
        raise body_error
