"""The intake: requests from any NATS client become workflows, none lost on the way.

A request is published on ``<prefix>.requests``, with a reply subject (a requester) or without
(publish only). The requests stream (``bus.requests_stream``) stores every one, also while no
intake runs; it does not store reply subjects, so the intake has two sides:

* a **durable pull consumer** turns each stored request into a workflow: it validates the request
  (unknown fields, wrong types, oversize, empty: a structured error and nothing appended) and
  appends ``workflow_requested`` with ``expected_seq=0``. The workflow id derives from the
  ``idempotency_key``, else from the stored message's stream sequence (and the stream's creation
  time), so a request redelivered after a crash makes no second workflow;
* a **queue-group subscriber** holds the reply subjects. It meets the consumer in the pairing
  bucket (``actors.intake_pairing``, keyed by the payload's digest) and answers
  ``{"workflow_id": ...}`` (``"existing": true`` for a repeated idempotency key) or the request's
  ``{"error": ...}``. When no stored copy of the request was turned into a workflow within the
  wait (``intake_reply_wait_s``), it answers ``{"error": {"code": "overloaded", "retry_after_s":
  N}}``, after writing a refusal that makes the consumer drop that copy: the answer is true.

A request without a reply subject that the stream refuses (it is full) cannot be told so; the
intake counts and logs those it sees arrive while the stream is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from cadre.actors import intake_pairing as pairing
from cadre.actors import tracing
from cadre.actors.clock import random_token, utc_now
from cadre.actors.intake_metrics import IntakeMetrics
from cadre.bus.errors import CadreError, ConcurrencyConflict, StreamConfigError
from cadre.bus.events import make_event
from cadre.bus.request import RequestError, parse_request
from cadre.bus.requests_stream import IntakeOptions, IntakeSpec, intake_spec
from cadre.store.jetstream import JetStreamLog

log = logging.getLogger("cadre.intake")
_json = msgspec.json.Encoder()
T = TypeVar("T")

QUEUE = "cadre-intake"
_SETTLED_KEPT = 10_000


def workflow_id_for(idempotency_key: str | None, *, dry_run: bool = False) -> str:
    """A fresh id, or the key's own; a dry run's key names another workflow than the real run's,
    so that a dry run never stands in for (or blocks) the real run with the same key."""
    if idempotency_key is None:
        return "wf-" + random_token(8)
    return _keyed_id(idempotency_key, dry_run)


def _keyed_id(key: str, dry_run: bool) -> str:
    key = key + "\x1fdry-run" if dry_run else key
    return "wf-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def stored_workflow_id(epoch: str, seq: int, idempotency_key: str | None, *, dry_run: bool = False) -> str:
    """The id of the workflow a stored request becomes: the key's, else one of the stored message
    (its stream sequence, and the stream's creation time ``epoch``: a stream made again numbers
    from 1 again), the same on every delivery of it."""
    if idempotency_key is not None:
        return _keyed_id(idempotency_key, dry_run)
    return "wf-" + hashlib.blake2b(f"{epoch}\x1f{seq}".encode(), digest_size=8).hexdigest()


def payload_digest(data: bytes) -> str:
    """The pairing key of a request's bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


async def submit(elog: JetStreamLog, data: bytes) -> dict[str, Any]:
    """Validate and append one request; the reply to send (``workflow_id`` or ``error``).

    For a process that takes a request itself (``cadre run``), not through the requests stream."""
    return await tracing.taken(_submit(elog, data), None, None)


async def _submit(elog: JetStreamLog, data: bytes) -> dict[str, Any]:
    try:
        requested = parse_request(data)
    except RequestError as exc:
        return {"error": exc.to_wire()}
    wf = workflow_id_for(requested.idempotency_key, dry_run=requested.dry_run)
    try:
        return await _append_requested(elog, wf, requested, keyed=requested.idempotency_key is not None)
    except CadreError as exc:
        return {"error": exc.to_wire()}


async def _append_requested(elog: JetStreamLog, wf: str, requested: Any, *, keyed: bool) -> dict[str, Any]:
    """Append the workflow's first event; the answer. A conflict means the workflow exists: made by
    the same key before (``existing``), or by an earlier delivery of the same stored request."""
    event = make_event(requested, workflow_id=wf, actor="intake", at=utc_now())
    try:
        result = await elog.append(wf, [event], expected_seq=0)
    except ConcurrencyConflict:
        return {"workflow_id": wf, "existing": True} if keyed else {"workflow_id": wf}
    return {"workflow_id": wf, "existing": True} if result.already_stored and keyed else {"workflow_id": wf}


async def workflow_of_stored(elog: JetStreamLog, data: bytes, epoch: str, seq: int) -> dict[str, Any]:
    """The answer for the stored request ``seq``: its workflow (made now, or before) or its error.
    Raises :class:`CadreError` when the event log could not be written (to be tried again)."""
    try:
        requested = parse_request(data)
    except RequestError as exc:
        return {"error": exc.to_wire()}
    key = requested.idempotency_key
    wf = stored_workflow_id(epoch, seq, key, dry_run=requested.dry_run)
    return await _append_requested(elog, wf, requested, keyed=key is not None)


def overloaded(retry_after_s: int) -> dict[str, Any]:
    return {
        "error": {
            "code": "overloaded",
            "message": f"the intake is overloaded and did not take this request; send it again in {retry_after_s} s",
            "path": "$",
            "retry_after_s": retry_after_s,
        }
    }


@dataclass
class _Rate:
    """Stored requests taken per second by this process, over the last few seconds."""

    window: float = 5.0
    stamps: list[float] = field(default_factory=list)

    def tick(self, now: float) -> None:
        self.stamps.append(now)
        if len(self.stamps) > 4096:
            del self.stamps[:2048]

    def per_second(self, now: float) -> float:
        recent = sum(1 for t in self.stamps if t > now - self.window)
        return recent / self.window


def retry_after(backlog: int, per_second: float) -> int:
    """A requester's retry hint: the time to work off the backlog, between 1 and 60 s."""
    return max(1, min(60, math.ceil(backlog / max(per_second, 1.0))))


class Intake:
    """One intake replica: its consumer, its subscriber and its notifications."""

    def __init__(self, elog: JetStreamLog, spec: IntakeSpec, options: IntakeOptions, metrics: IntakeMetrics) -> None:
        self.elog = elog
        self.spec = spec
        self.options = options
        self.metrics = metrics
        self.nc = elog.nc
        self.js = elog.nc.jetstream(timeout=elog._timeout)
        self.settled_subject = elog.subjects.intake_settled
        self.epoch = ""
        self.kv: KeyValue | None = None
        self.stopping = asyncio.Event()
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._settled: OrderedDict[str, None] = OrderedDict()  # digests lately announced settled
        self._known: OrderedDict[str, tuple[int, pairing.Pairing]] = OrderedDict()  # records as last written here
        self._answering: set[asyncio.Task[None]] = set()
        self._rate = _Rate()
        self._backlog = 0
        self._full = False
        self._full_logged = 0.0
        self._failed_at = -math.inf  # when taking a stored request last failed (the log could not be written)

    # -- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            info = await self.js.stream_info(self.spec.stream)
            self.kv = await self.js.key_value(self.spec.bucket)
        except (NotFoundError, BucketNotFoundError):
            raise StreamConfigError(
                f"the intake's stream {self.spec.stream!r} or bucket {self.spec.bucket!r} is missing: "
                "create them with `cadre auth bootstrap` (or start cadre once as admin)"
            ) from None
        self.epoch = info.created.isoformat() if info.created is not None else ""
        self._note_state(info.state.messages, info.state.bytes)
        await self.js.add_consumer(
            self.spec.stream,
            api.ConsumerConfig(
                durable_name=self.spec.durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.options.ack_wait,
                max_deliver=-1,
                max_ack_pending=self.options.concurrency * 4,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )

    # -- the record of a digest ---------------------------------------------------------------

    async def change(self, key: str, decide: Callable[[pairing.Pairing], tuple[pairing.Pairing | None, T]]) -> T:
        """Apply ``decide`` to the record of ``key`` with compare-and-set; its result.

        The first try decides on what this process last wrote to the record (or, for a record it
        never saw, on none: most payloads are new), and writes expecting that revision; a stale view
        fails the write, or decides nothing to do, and the record is then read.
        """
        kv = self.kv
        assert kv is not None
        view: tuple[int | None, pairing.Pairing] | None = self._known.get(key, (None, pairing.Pairing()))
        while True:
            if view is None:
                try:
                    entry = await kv.get(key)
                    view = entry.revision, pairing.decode(entry.value)
                except KeyNotFoundError:
                    view = None, pairing.Pairing()
                read = True
            else:
                read = False
            rev, current = view
            new, result = decide(current)
            if new is None:
                if not read:  # nothing to do, on a view that may be stale: look at the record itself
                    view = None
                    continue
                return result
            try:
                if rev is None:
                    written = await kv.create(key, pairing.encode(new))
                else:
                    written = await kv.update(key, pairing.encode(new), last=rev)
            except KeyWrongLastSequenceError:
                self._known.pop(key, None)
                view = None
                continue
            self._known[key] = (written, new)
            self._known.move_to_end(key)
            if len(self._known) > _SETTLED_KEPT:
                self._known.popitem(last=False)
            return result

    # -- the consumer ----------------------------------------------------------------------------

    async def consume(self, ready: asyncio.Event) -> None:
        sub = await self.js.pull_subscribe_bind(durable=self.spec.durable, stream=self.spec.stream)
        ready.set()
        slots = asyncio.Semaphore(self.options.concurrency)
        try:
            async with asyncio.TaskGroup() as inflight:
                while not self.stopping.is_set():
                    await slots.acquire()
                    want = 1
                    while want < 32 and not slots.locked():
                        await slots.acquire()
                        want += 1
                    try:
                        msgs = await sub.fetch(want, timeout=0.5)
                    except (TimeoutError, nats.errors.TimeoutError):
                        msgs = []
                    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                        msgs = []
                        self.stopping.set()
                    except Exception as exc:  # JetStream unavailable for a while (an election, a restart)
                        log.warning("the intake could not fetch stored requests (%r); trying again in 1 s", exc)
                        msgs = []
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.stopping.wait(), 1.0)
                    for _ in range(want - len(msgs)):
                        slots.release()
                    for m in msgs:
                        inflight.create_task(self._take(m, slots))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _take(self, m: Msg, slots: asyncio.Semaphore) -> None:
        try:
            await self._take_one(m)
        except Exception as exc:  # the request stays stored: taken again after a pause
            self._failed_at = time.monotonic()
            log.warning("stored request %s not taken yet (%s); it is taken again", m.metadata.sequence.stream, exc)
            with contextlib.suppress(Exception):
                await m.nak(delay=1.0)
        finally:
            slots.release()

    async def _take_one(self, m: Msg) -> None:
        seq = m.metadata.sequence.stream
        key = payload_digest(m.data)
        step = await self.change(key, lambda p: pairing.reserve(p, seq))
        if step == "drop":
            self.metrics.stored.labels("dropped").inc()
            await m.ack()
            return
        if step == "proceed" or step == "again":
            answer = await tracing.taken(workflow_of_stored(self.elog, m.data, self.epoch, seq), m.headers, seq)
            await self.change(key, lambda p: (pairing.settle(p, seq, answer), None))
            self.metrics.stored.labels(_outcome(answer)).inc()
            if "error" in answer:
                log.info("stored request %s refused: %s", seq, answer["error"])
            await self.nc.publish(self.settled_subject, key.encode())
        await m.ack()
        self._rate.tick(time.monotonic())

    # -- the requesters ------------------------------------------------------------------------

    async def on_request(self, m: Msg) -> None:
        if m.reply.startswith("$JS.ACK."):
            return  # a stream consumer pointed at the subject, not a requester
        if not m.reply:
            if self._full:
                self.metrics.publish_only_refused.inc()
                now = time.monotonic()
                if now - self._full_logged > 10:
                    self._full_logged = now
                    log.warning(
                        "the requests stream %s is full: requests published without a reply subject are refused "
                        "by it and lost (cadre_intake_publish_only_refused counts them)",
                        self.spec.stream,
                    )
            return
        task = asyncio.create_task(self._answer(m))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    def on_settled(self, key: str) -> None:
        self._settled[key] = None
        self._settled.move_to_end(key)
        if len(self._settled) > _SETTLED_KEPT:
            self._settled.popitem(last=False)
        for ev in self._waiting.get(key, ()):
            ev.set()

    async def _answer(self, m: Msg) -> None:
        key = payload_digest(m.data)
        loop = asyncio.get_running_loop()
        start = loop.time()
        wait = self.options.reply_wait if len(self._answering) <= self.options.max_waiting else 1.0
        deadline, hard = start + wait, start + 3 * wait
        ev = asyncio.Event()
        self._waiting.setdefault(key, set()).add(ev)
        try:
            if key not in self._settled:
                # A request arrives here before its stored copy is taken (JetStream stores it first,
                # then the consumer takes it): wait for the notice rather than read the record at once.
                await _wait(ev, min(self.options.poll, wait))
            while True:
                ev.clear()
                answer = await self.change(key, _claim)
                if answer is None and loop.time() >= deadline:
                    answer = await self._refuse(key)
                    if answer is None and loop.time() >= hard:
                        self.metrics.unanswered.inc()
                        log.warning("a requester waited %.1f s for a request still being taken; no answer sent", wait)
                        return
                if answer is not None:
                    await m.respond(_json.encode(answer))
                    self.metrics.replies.labels(_reply_kind(answer)).inc()
                    return
                now = loop.time()
                # Before the deadline, wake on a settled copy (or look again after a poll); after it, a
                # copy is being taken (reserved): its answer comes soon.
                left = min(self.options.poll, deadline - now) if now < deadline else 0.2
                await _wait(ev, left)
        except asyncio.CancelledError:
            self.metrics.unanswered.inc()
            raise
        except Exception as exc:  # the bucket or the stream could not be read: the request is still stored
            self.metrics.unanswered.inc()
            log.warning("a requester gets no answer (%r); its stored request still becomes a workflow", exc)
        finally:
            waiters = self._waiting.get(key)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._waiting[key]

    async def _refuse(self, key: str) -> dict[str, Any] | None:
        """Refuse the requester of ``key``'s bytes, unless a copy is there to claim or being taken.

        Not while taking stored requests fails (the event log cannot be written): the refusal might
        outlive its record before the refused copy is reached; the requester is left to time out."""
        if time.monotonic() - self._failed_at < 5 * self.options.reply_wait:
            return await self.change(key, _claim)
        info = await self.js.stream_info(self.spec.stream)
        self._note_state(info.state.messages, info.state.bytes)
        until = info.state.last_seq

        def decide(p: pairing.Pairing) -> tuple[pairing.Pairing | None, dict[str, Any] | None]:
            claimed = pairing.claim(p)
            if claimed is not None:
                return claimed
            refused = pairing.refuse(p, until)
            if refused is None:
                return None, None
            return refused, overloaded(retry_after(self._backlog, self._rate.per_second(time.monotonic())))

        return await self.change(key, decide)

    # -- the stream's state ------------------------------------------------------------------

    def _note_state(self, messages: int, size: int) -> None:
        self._backlog = messages
        self.metrics.backlog.set(messages)
        self._full = messages >= self.spec.max_msgs or (self.spec.max_bytes > 0 and size >= self.spec.max_bytes)

    async def watch_state(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                info = await self.js.stream_info(self.spec.stream)
                self._note_state(info.state.messages, info.state.bytes)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 1.0)

    async def drain_answers(self, within: float) -> None:
        """Let waiting requesters get their answers (up to ``within`` seconds), then give up on the rest."""
        pending = set(self._answering)
        if pending:
            _done, late = await asyncio.wait(pending, timeout=within)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)


async def _wait(ev: asyncio.Event, seconds: float) -> None:
    """Until ``ev`` is set or ``seconds`` pass (no task of its own, unlike ``asyncio.wait_for``)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await ev.wait()


def _claim(p: pairing.Pairing) -> tuple[pairing.Pairing | None, dict[str, Any] | None]:
    claimed = pairing.claim(p)
    return claimed if claimed is not None else (None, None)


def _outcome(answer: dict[str, Any]) -> str:
    if "error" in answer:
        return "invalid"
    return "existing" if answer.get("existing") else "accepted"


def _reply_kind(answer: dict[str, Any]) -> str:
    if "error" in answer:
        return "overloaded" if answer["error"].get("code") == "overloaded" else "invalid"
    return "existing" if answer.get("existing") else "workflow"


@asynccontextmanager
async def serve_intake(
    elog: JetStreamLog,
    spec: IntakeSpec | None = None,
    options: IntakeOptions | None = None,
    metrics: IntakeMetrics | None = None,
) -> AsyncIterator[Intake]:
    """Take requests until the block exits (then: stop listening, answer who waits, stop taking)."""
    spec = spec or intake_spec(elog.spec, elog.subjects)
    intake = Intake(elog, spec, options or IntakeOptions(), metrics or IntakeMetrics.create())
    await intake.start()

    async def on_settled(m: Msg) -> None:
        intake.on_settled(m.data.decode())

    # No pending limits on the subscriptions (0 = none): nats-py would drop what is over them with
    # no more than a SlowConsumerError; each callback only starts a task, so nothing piles up there.
    settled = await intake.nc.subscribe(
        intake.settled_subject, cb=on_settled, pending_msgs_limit=0, pending_bytes_limit=0
    )
    ready = asyncio.Event()
    tasks = [asyncio.create_task(intake.consume(ready)), asyncio.create_task(intake.watch_state())]
    await ready.wait()
    requests = await intake.nc.subscribe(
        spec.subject, queue=QUEUE, cb=intake.on_request, pending_msgs_limit=0, pending_bytes_limit=0
    )
    try:
        yield intake
    finally:
        with contextlib.suppress(Exception):
            await requests.unsubscribe()
        await intake.drain_answers(intake.options.reply_wait + 1.0)
        intake.stopping.set()
        _done, late = await asyncio.wait(tasks, timeout=intake.options.ack_wait)
        for t in late:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await settled.unsubscribe()
