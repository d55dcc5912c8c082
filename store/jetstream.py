"""The event log on JetStream.

Appending *is* sending: an event is stored on ``<prefix>.evt.<workflow_id>.<type>`` and
actors consume it from there. Four guarantees hold for :meth:`JetStreamLog.append`:

* **Exactly once.** Each event's id is its ``Nats-Msg-Id``; JetStream drops a duplicate.
* **Optimistic concurrency.** Given ``expected_seq``, the append only succeeds if the
  workflow's last event (over ``<prefix>.evt.<wf>.>``) is still at that stream sequence,
  using ``Nats-Expected-Last-Subject-Sequence(-Subject)``. Otherwise
  :class:`~bus.errors.ConcurrencyConflict` carries the actual sequence.
* **A chain.** Every event is stored with ``prev`` = the chain hash of the exact stored bytes
  of the workflow's previous message (``store.integrity``). Each message is stored expecting
  the one it chains to, so the chain holds in stored order with any number of writers.
* **Contiguity.** ``atomic=True`` stores several events as one JetStream atomic batch
  (ADR-50): all or nothing, side by side. Batches over :data:`MAX_ATOMIC_BATCH` events are
  split into consecutive batches. ``atomic=False`` stores them one at a time, each expecting
  the previous one: side by side unless another writer gets in between, and then the append
  stops there with ``ConcurrencyConflict.stored`` saying how many landed.

A lost ack is retried, and so is every call that meets a NATS outage (a cluster electing a
stream leader answers 503 or not at all; a client reconnects to another node): with the
backoff of :mod:`bus.retry`, for up to ``retry.bound_s`` seconds. JetStream checks the
expected sequence *before* the Msg-Id dedupe (SDK-FACTS §3.3), so a retry of a write that did
land is answered "wrong last sequence"; the log then looks at the workflow's message after the
expected one, and if it is our own first event, the append had succeeded and is reported as
``already_stored``: a retried append never stores an event twice. "No responders" is an
outage only while the stream exists: without it, an append fails at once with how to fix it.

Appends use core request/reply with hand-built headers instead of ``js.publish`` /
``publish_async``: nats-py has no atomic-batch API, and ``publish_async`` futures never
resolve on a JetStream API error (nats.py#985). On cadre's own client (``bus.connection.connect``)
the request goes through the connection's :class:`~cadre.bus.pubacks.ReplyMux` (one reply
subscription, a counter token, a periodic timeout sweep: a fraction of ``Client.request``'s CPU,
with the same replies and errors); on another nats-py client through ``Client.request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from cadre.bus import codec, trace_headers
from cadre.bus.errors import AppendError, ConcurrencyConflict, StoreError
from cadre.bus.events import Envelope, chain_hash
from cadre.bus.pubacks import mux_for
from cadre.bus.retry import RetryPolicy, describe, is_transient, retrying
from cadre.bus.signing import Signer
from cadre.bus.stream import StreamSpec, ensure_stream
from cadre.bus.subjects import Subjects
from cadre.store.objects import OutputObjects, outsized
from cadre.store.records import Record, StoredEvent, events_only, to_record

T = TypeVar("T")

MAX_ATOMIC_BATCH = 1000  # nats-server's default limit of messages in one atomic batch

_WRONG_LAST_SEQUENCE = 10071
_DUPLICATE_IN_BATCH = 10201
_ACTUAL = re.compile(r"wrong last sequence: (\d+)")

_FEED_HEARTBEAT_S = 1.0  # an ordered consumer that hears nothing for twice this is recreated (nats-py)
_SIGNED_KEPT = 5_000  # the events this process signed lately (about 400 bytes each), to skip checking them again


def _digest(subject: str, data: bytes) -> bytes:
    return hashlib.blake2b(subject.encode() + b"\n" + data, digest_size=16).digest()


_Msg = tuple[str, bytes, str, dict[str, str]]  # subject, stored bytes, event id, signature headers

StoredHook = Callable[[str, int, int, Sequence[_Msg]], None]
"""Told of messages this log stored (:meth:`JetStreamLog.on_stored`): (workflow id, the sequence they
were stored expecting, the stream sequence of the last one, the messages in order: (subject, stored
bytes, event id, signature headers)). They are consecutive in the stream, the first right after the
expected sequence in the workflow."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append ended: the workflow's last stream sequence and its chain hash.

    ``last_seq``/``last_hash`` are what the workflow's next append expects and chains to (when
    every event was a duplicate of an earlier one, they are the head the append found).
    """

    last_seq: int
    count: int
    already_stored: bool = False
    last_hash: str = ""


def _api_error(error: dict[str, Any]) -> dict[str, Any]:
    """The fields of a JetStream error object that :class:`APIError` takes."""
    return {"code": error.get("code"), "err_code": error.get("err_code"), "description": error.get("description")}


def stream_seq(reply: str) -> int:
    """The stream sequence from a JetStream delivery's reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9 tokens) or the
    v2 form with domain and account hash before the stream (12 tokens).
    """
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


class JetStreamLog:
    """Append to and read from the cadre event stream."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: StreamSpec | None = None,
        subjects: Subjects | None = None,
        timeout: float = 5.0,
        conflict_retries: int = 50,
        retry: RetryPolicy | None = None,
        objects: OutputObjects | None = None,
        inline_max_bytes: int = 256 * 1024,
    ) -> None:
        self.spec = stream or StreamSpec()
        self.subjects = subjects or Subjects()
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._timeout = timeout
        self.retry = retry or RetryPolicy()
        self._conflict_retries = conflict_retries
        # Large outputs by reference (store.objects; open_bus always gives one): None keeps every
        # output inline (one above the server's max payload then cannot be appended) and leaves
        # references unresolved.
        self.objects = objects
        self.inline_max_bytes = inline_max_bytes
        self.signer: Signer | None = None
        # What this process signed, by event id: the digest of the bytes and the signature (shared by
        # every signed_by view), so that its own events need no Ed25519 check when they come back.
        self._signed: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        # Told of every message stored through this log or a view of it (shared by every signed_by view).
        self._stored_hooks: list[StoredHook] = []

    def on_stored(self, hook: StoredHook) -> Callable[[], None]:
        """Call ``hook`` at the ack of each append of new messages through this log (or a view of it),
        before the append returns; returns what removes it. A duplicate, or a write found stored
        after a lost ack, is not told."""
        self._stored_hooks.append(hook)
        return lambda: self._stored_hooks.remove(hook)

    def signed_by(self, signer: Signer | None) -> JetStreamLog:
        """This log (same connection) appending as ``signer``: every event it stores is signed."""
        view = copy.copy(self)
        view.signer = signer
        return view

    def _message(self, subject: str, data: bytes, event_id: str) -> _Msg:
        if self.signer is None:
            return (subject, data, event_id, {})
        signature = self.signer.sign(subject, event_id, data)
        self._signed[event_id] = (_digest(subject, data), signature.sig)
        if len(self._signed) > _SIGNED_KEPT:
            self._signed.popitem(last=False)
        return (subject, data, event_id, signature.headers())

    def signed_here(self, rec: StoredEvent) -> bool:
        """Whether this process signed exactly this message (same id, subject, bytes and signature)."""
        mine = self._signed.get(rec.event.id)
        return (
            mine is not None
            and rec.signature is not None
            and mine == (_digest(rec.subject, rec.data), rec.signature.sig)
        )

    @property
    def stream(self) -> str:
        return self.spec.name

    @property
    def js(self) -> JetStreamContext:
        return self._js

    @property
    def nc(self) -> NATS:
        return self._nc

    async def ensure_stream(self) -> api.StreamInfo:
        """Create or update the event stream (safe from many processes at once)."""
        return await ensure_stream(self._js, self.spec, self.retry)

    async def _retry(self, call: Callable[[], Awaitable[T]], op: str) -> T:
        """``call()`` through an outage, with this log's retry policy (:mod:`bus.retry`)."""
        return await retrying(call, op, self.retry)

    # -- writing ---------------------------------------------------------------------------

    async def append(
        self,
        workflow_id: str,
        events: Sequence[Envelope],
        *,
        expected_seq: int | None = None,
        prev: str | None = None,
        atomic: bool = True,
    ) -> AppendResult:
        """Store ``events`` (all of ``workflow_id``) in order, each chained to the message before it.

        ``expected_seq``: the workflow's last stream sequence the caller based its decision
        on (0 = the workflow has no events yet). ``prev``: the chain hash of the message at
        ``expected_seq`` (the caller's ``WorkflowState.last_hash``); None makes the log read
        that message (one more round trip). The ``prev`` an event carries in is replaced.
        ``expected_seq=None`` appends at the end, whatever is there: the log reads the
        workflow's last message, chains to it, and reads again after a conflict (for writers
        that decide on no state, such as dead letters).
        ``atomic=False`` stores the events one at a time, each expecting the previous one (a
        round trip each, but no atomic batch, which costs the server ~2 ms on file storage);
        a conflict after some of them were stored says how many in ``ConcurrencyConflict.stored``.
        """
        if not events:
            raise ValueError("append needs at least one event")
        for e in events:
            if e.workflow_id != workflow_id:
                raise ValueError(f"event {e.id} belongs to workflow {e.workflow_id!r}, not {workflow_id!r}")
        if expected_seq is None:
            return await self._append_at_end(workflow_id, events, atomic)
        if prev is None:
            prev = await self._hash_at(workflow_id, expected_seq)
        if atomic:
            return await self._append_batches(workflow_id, events, expected_seq, prev)
        return await self._append_each(workflow_id, events, expected_seq, prev)

    async def _append_at_end(self, workflow_id: str, events: Sequence[Envelope], atomic: bool) -> AppendResult:
        done = 0
        fresh = False
        for _ in range(self._conflict_retries):
            seq, head = await self.head(workflow_id)
            rest = events[done:]
            try:
                if atomic:
                    result = await self._append_batches(workflow_id, rest, seq, head)
                else:
                    result = await self._append_each(workflow_id, rest, seq, head)
            except ConcurrencyConflict as exc:
                done += exc.stored
                fresh = fresh or exc.stored > 0
                continue
            return AppendResult(result.last_seq, len(events), result.already_stored and not fresh, result.last_hash)
        raise AppendError(
            f"workflow {workflow_id!r} kept moving: {self._conflict_retries} appends at its end "
            f"lost to other writers; is something appending to it in a loop?"
        )

    async def _append_each(
        self, workflow_id: str, events: Sequence[Envelope], expected_seq: int, prev: str
    ) -> AppendResult:
        """One message per event, each expecting (and chained to) the workflow's message before it."""
        seq, head = expected_seq, prev
        fresh = False
        for k, e in enumerate(events):
            e = await self._outsized(e)
            data = codec.encode(msgspec.structs.replace(e, prev=head))
            msg = self._message(self.subjects.event(workflow_id, e.type), data, e.id)
            try:
                r = await self._append_chunk(workflow_id, [msg], seq, head)
            except ConcurrencyConflict as exc:
                exc.stored = k
                raise
            if r.last_seq > seq:  # stored here (now, or by an earlier attempt whose ack was lost)
                seq, head = r.last_seq, r.last_hash
                fresh = fresh or not r.already_stored
            # else a duplicate of an event stored earlier: the head did not move
        return AppendResult(seq, len(events), not fresh, head)

    async def _append_batches(
        self, workflow_id: str, events: Sequence[Envelope], expected_seq: int, prev: str
    ) -> AppendResult:
        """Atomic batches of up to MAX_ATOMIC_BATCH events, each expecting the previous one's end."""
        seq, head = expected_seq, prev
        fresh = False
        done = 0
        for start in range(0, len(events), MAX_ATOMIC_BATCH):
            msgs: list[_Msg] = []
            link = head
            for e in events[start : start + MAX_ATOMIC_BATCH]:
                e = await self._outsized(e)
                data = codec.encode(msgspec.structs.replace(e, prev=link))
                msgs.append(self._message(self.subjects.event(workflow_id, e.type), data, e.id))
                link = chain_hash(data)
            try:
                r = await self._append_chunk(workflow_id, msgs, seq, head)
            except ConcurrencyConflict as exc:
                exc.stored = done
                raise
            done += len(msgs)
            if r.last_seq > seq:
                seq, head = r.last_seq, r.last_hash
                fresh = fresh or not r.already_stored
        return AppendResult(seq, len(events), not fresh, head)

    async def _outsized(self, e: Envelope) -> Envelope:
        """The event as it is stored: each output above ``inline_max_bytes`` put in the object store
        and replaced by its reference (before the event is encoded, chained and signed)."""
        if self.objects is None:
            return e
        stored, objects = outsized(e, self.inline_max_bytes)
        if objects:
            await self.objects.put(objects)
        return stored

    async def resolve(self, rec: Record) -> Record:
        """The record as readers see it: each output reference replaced by its object, checked
        against the digest (a missing or mismatching object makes it Malformed)."""
        return rec if self.objects is None else await self.objects.resolve(rec)

    async def record(self, seq: int, subject: str, data: bytes, headers: dict[str, str] | None) -> Record:
        """One stored message decoded, its output references resolved."""
        return await self.resolve(to_record(self.subjects, seq, subject, data, headers))

    async def object_bytes(self, digests: list[str]) -> dict[str, bytes]:
        """The stored objects of these digests (for an export); a missing one is left out."""
        return {} if self.objects is None else await self.objects.get(digests)

    async def _append_chunk(self, workflow_id: str, msgs: list[_Msg], expected_seq: int, prev: str) -> AppendResult:
        """One event, or one atomic batch, expecting ``expected_seq`` (whose hash is ``prev``)."""
        batch = len(msgs) > 1
        last_hash = chain_hash(msgs[-1][1])

        async def send() -> dict[str, Any]:
            try:
                reply = await self._send(workflow_id, msgs, expected_seq, batch)
            except nats.errors.NoRespondersError:
                # Nobody stores the subject: no stream (say so at once), or a cluster between stream leaders.
                if not await self._stream_exists():
                    raise AppendError(
                        f"no stream stores {msgs[0][0]!r}: create the event stream first "
                        f"(JetStreamLog.ensure_stream(), done by every cadre command)"
                    ) from None
                raise
            error = reply.get("error")
            if error is not None and is_transient(APIError(**_api_error(error))):
                raise APIError(**_api_error(error))  # a stream without a leader right now: retried
            return reply

        try:
            # A lost ack (a timeout) is retried too: the write may have landed, which the retry finds out.
            reply = await retrying(send, "event log append", self.retry)
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise AppendError(
                f"no ack from JetStream for workflow {workflow_id!r} within {self.retry.bound_s:g} s "
                f"({describe(exc)}); is the cluster without a quorum, the server overloaded or the stream offline?"
            ) from None
        error = reply.get("error")
        if error is None:
            result = AppendResult(int(reply["seq"]), len(msgs), bool(reply.get("duplicate", False)), last_hash)
            if not result.already_stored:
                for hook in self._stored_hooks:
                    hook(workflow_id, expected_seq, result.last_seq, msgs)
            return result
        code = error.get("err_code")
        if code in (_WRONG_LAST_SEQUENCE, _DUPLICATE_IN_BATCH):
            return await self._already_stored_or_conflict(
                workflow_id, msgs, expected_seq, prev, error.get("description", "")
            )
        raise AppendError(
            f"JetStream refused the append to workflow {workflow_id!r}: "
            f"{error.get('description', error)} (err_code {code})"
        )

    async def _stream_exists(self) -> bool:
        """Whether the event stream exists (an outage on the way is raised, for the caller to retry)."""
        try:
            await self._js.stream_info(self.spec.name)
        except NotFoundError:
            return False
        return True

    async def _send(
        self,
        workflow_id: str,
        msgs: list[_Msg],
        expected_seq: int,
        batch: bool,
    ) -> dict[str, Any]:
        """Publish one event, or an atomic batch; return JetStream's parsed reply."""
        batch_id = msgs[0][2]
        last = len(msgs) - 1
        traced = trace_headers.outgoing()  # the current span's context, when tracing is on (not signed)
        for i, (subject, payload, event_id, signature) in enumerate(msgs):
            headers = {"Nats-Msg-Id": event_id, **signature, **traced}
            if i == 0:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = self.subjects.workflow(workflow_id)
            if batch:
                headers["Nats-Batch-Id"] = batch_id
                headers["Nats-Batch-Sequence"] = str(i + 1)
            if i < last:
                await self._nc.publish(subject, payload, headers=headers)
            else:
                if batch:
                    headers["Nats-Batch-Commit"] = "1"
                mux = mux_for(self._nc)
                if mux is None:  # a nats-py client made elsewhere
                    data = (await self._nc.request(subject, payload, timeout=self._timeout, headers=headers)).data
                else:
                    data = await mux.request(subject, payload, headers, self._timeout)
                parsed: dict[str, Any] = json.loads(data)
                return parsed
        raise AssertionError("unreachable: msgs is not empty")

    async def _already_stored_or_conflict(
        self, workflow_id: str, msgs: list[_Msg], expected_seq: int, prev: str, description: str
    ) -> AppendResult:
        """After "wrong last sequence" or "duplicate in batch": did our own earlier write land?

        Our write would be the workflow's first message after ``expected_seq`` (an atomic
        batch stores its messages consecutively); it is ours when it carries our first
        event's id. Otherwise another writer got there first, unless the workflow has not
        moved: then a batch of events stored earlier was sent again, and nothing changed.
        """
        try:
            mine = await self._retry(
                lambda: self._js.get_msg(
                    self.spec.name, seq=expected_seq + 1, subject=self.subjects.workflow(workflow_id), next=True
                ),
                "event log read",
            )
        except NotFoundError:
            mine = None
        if mine is not None and (mine.headers or {}).get("Nats-Msg-Id") == msgs[0][2]:
            count = len(msgs)
            last = mine.data if count == 1 and mine.data is not None else msgs[-1][1]
            return AppendResult((mine.seq or 0) + count - 1, count, already_stored=True, last_hash=chain_hash(last))
        m = _ACTUAL.search(description)
        actual = int(m.group(1)) if m else await self.last_seq(workflow_id)
        if actual == expected_seq:  # a duplicate batch (10201) on an unchanged workflow
            return AppendResult(expected_seq, len(msgs), True, prev)
        raise ConcurrencyConflict(workflow_id, expected_seq, actual)

    async def _hash_at(self, workflow_id: str, seq: int) -> str:
        """The chain hash of the message at ``seq`` ("" for 0: the workflow's first event chains to nothing)."""
        if seq == 0:
            return ""
        try:
            m = await self._retry(lambda: self._js.get_msg(self.spec.name, seq=seq), "event log read")
        except NotFoundError:
            raise ConcurrencyConflict(workflow_id, seq, await self.last_seq(workflow_id)) from None
        return chain_hash(m.data or b"")

    async def head(self, workflow_id: str) -> tuple[int, str]:
        """The workflow's last stream sequence and its chain hash ((0, "") when it has no events)."""
        last = await self._last_msg(workflow_id)
        if last is None:
            return 0, ""
        return last.seq or 0, chain_hash(last.data or b"")

    # -- reading ---------------------------------------------------------------------------

    async def last_of_type(self, workflow_id: str, event_type: str) -> Record | None:
        """The workflow's last message of ``event_type`` with its signature (None: it has none)."""
        m = await self.last_msg_of_type(workflow_id, event_type)
        if m is None:
            return None
        return await self.record(m.seq or 0, m.subject or "", m.data or b"", m.headers)

    async def last_msg_of_type(self, workflow_id: str, event_type: str) -> api.RawStreamMsg | None:
        """The workflow's last stored message of ``event_type``, undecoded (None: it has none): the later
        of the last one stored without a partition and the last one with (a stream that got its
        partitions later may hold both)."""
        found: list[api.RawStreamMsg] = []
        for subject in self.subjects.stored_event(workflow_id, event_type):
            read = functools.partial(self._js.get_last_msg, self.spec.name, subject)
            with contextlib.suppress(NotFoundError):
                found.append(await self._retry(read, "event log read"))
        return max(found, key=lambda m: m.seq or 0, default=None)

    async def _last_msg(self, workflow_id: str) -> api.RawStreamMsg | None:
        subject = self.subjects.workflow(workflow_id)
        try:
            return await self._retry(lambda: self._js.get_last_msg(self.spec.name, subject), "event log read")
        except NotFoundError:
            return None

    async def last_seq(self, workflow_id: str) -> int:
        """Stream sequence of the workflow's last event, 0 when it has none."""
        last = await self._last_msg(workflow_id)
        return (last.seq or 0) if last is not None else 0

    async def read(self, workflow_id: str, *, after_seq: int = 0) -> list[StoredEvent]:
        """The workflow's events in order; raise MalformedEvent at a message that is not one."""
        return events_only(await self.read_records(workflow_id, after_seq=after_seq))

    async def read_records(self, workflow_id: str, *, after_seq: int = 0) -> list[Record]:
        """Every message of the workflow after ``after_seq``, in order, malformed ones included.

        Reads with an ordered push consumer up to the workflow's last sequence at the time of
        the call (later appends are not waited for). A read that an outage interrupts is read again.
        """
        try:
            return await self._retry(lambda: self._read_records(workflow_id, after_seq), "event log read")
        except _Stalled as exc:
            raise StoreError(str(exc)) from None

    async def _read_records(self, workflow_id: str, after_seq: int) -> list[Record]:
        last = await self.last_seq(workflow_id)
        if last <= after_seq:
            return []
        records: list[Record] = []
        done = asyncio.Event()
        subjects = self.subjects

        async def on_msg(m: Msg) -> None:
            seq = stream_seq(m.reply)
            records.append(to_record(subjects, seq, m.subject, m.data, m.headers))
            if seq >= last:
                done.set()

        sub = await self._subscribe(workflow_id, after_seq, cb=on_msg)
        try:
            while not done.is_set():
                seen = len(records)
                try:
                    await asyncio.wait_for(done.wait(), self._timeout)
                except TimeoutError:
                    if len(records) == seen:  # no progress for a whole timeout (an outage: read again)
                        raise _Stalled(
                            f"reading workflow {workflow_id!r} stalled at {seen} events "
                            f"(expected up to stream sequence {last})"
                        ) from None
        finally:
            await sub.unsubscribe()
        # The ordered consumer may still deliver a message appended after `last`; cut there.
        while records and records[-1].seq > last:
            records.pop()
        if self.objects is not None:
            records = [await self.objects.resolve(r) for r in records]
        return records

    async def _subscribe(self, workflow_id: str, after_seq: int, cb: Any = None) -> Any:
        return await self.ordered(self.subjects.workflow(workflow_id), after_seq, cb)

    async def ordered(self, subject: str | Sequence[str], after_seq: int | None, cb: Any) -> Any:
        """An ordered push consumer of ``subject`` (or of several filters) from the message after
        ``after_seq`` (None: new messages only), created through an outage. nats-py recreates it
        from where it was when it hears nothing for two heartbeats (its server died, or the stream
        moved to another leader)."""
        config = api.ConsumerConfig(idle_heartbeat=_FEED_HEARTBEAT_S)
        if not isinstance(subject, str):
            config.filter_subjects = list(subject)
            subject = subject[0]
        if after_seq is None:
            policy = api.DeliverPolicy.NEW
        elif after_seq > 0:
            policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = after_seq + 1
        else:
            policy = api.DeliverPolicy.ALL

        async def subscribe() -> Any:
            return await self._js.subscribe(
                subject, stream=self.spec.name, ordered_consumer=True, deliver_policy=policy, config=config, cb=cb
            )

        if after_seq is None:  # what "new" starts after, at the latest (read before the consumer starts)
            info = await self._retry(lambda: self._js.stream_info(self.spec.name), "event log read")
            after_seq = info.state.last_seq
        sub = await self._retry(subscribe, "event log subscribe")
        # nats-py recreates the consumer from the last sequence it delivered + 1, which is 0 until the
        # first message: without this, a reset before the first message would start over at sequence 1.
        jsi = getattr(sub, "_jsi", None)
        if jsi is not None and getattr(jsi, "_sseq", None) == 0:
            jsi._sseq = after_seq
        return sub

    async def follow(self, workflow_id: str, *, after_seq: int = 0) -> AsyncGenerator[Record, None]:
        """Every message of the workflow after ``after_seq``, then new ones as they arrive (through
        an outage: the consumer is recreated from where it was).

        Runs until the caller stops iterating (or cancels); a bounded queue keeps a slow
        reader from buffering without limit. Close it when done
        (``async with contextlib.aclosing(log.follow(wf)) as records``).
        """
        queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=1024)
        subjects = self.subjects

        async def on_msg(m: Msg) -> None:
            await queue.put(await self.resolve(to_record(subjects, stream_seq(m.reply), m.subject, m.data, m.headers)))

        sub = await self._subscribe(workflow_id, after_seq, cb=on_msg)
        try:
            while True:
                yield await queue.get()
        finally:
            # The reader may stop late (a generator closed after its connection): nothing to undo then.
            with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                await sub.unsubscribe()

    async def subject_counts(self) -> dict[str, int]:
        """Messages per subject of the event stream (paged through the stream info API)."""
        counts: dict[str, int] = {}
        offset = 0
        while True:
            req = json.dumps({"subjects_filter": self.subjects.events, "offset": offset}).encode()
            info = await self._stream_info(req)
            if "error" in info:
                raise StoreError(f"could not list the subjects of stream {self.spec.name!r}: {info['error']}")
            page: dict[str, int] = info.get("state", {}).get("subjects") or {}
            counts.update(page)
            offset += len(page)
            if not page or offset >= int(info.get("total", 0)):
                return counts

    async def deleted_seqs(self) -> frozenset[int]:
        """Stream sequences deleted from the middle of the event stream (``nats stream rmm``,
        ``js.delete_msg``): what tells a removed event from a modified one on the live log."""
        info = await self._stream_info(json.dumps({"deleted_details": True}).encode())
        if "error" in info:
            raise StoreError(f"could not read the state of stream {self.spec.name!r}: {info['error']}")
        return frozenset(int(s) for s in info.get("state", {}).get("deleted") or ())

    async def _stream_info(self, req: bytes) -> dict[str, Any]:
        """The stream info API's answer to ``req`` (through an outage: a 503 answer is retried too)."""

        async def ask() -> dict[str, Any]:
            resp = await self._nc.request(f"$JS.API.STREAM.INFO.{self.spec.name}", req, timeout=self._timeout)
            info: dict[str, Any] = json.loads(resp.data)
            error = info.get("error")
            if isinstance(error, dict) and is_transient(APIError(**_api_error(error))):
                raise APIError(**_api_error(error))
            return info

        try:
            return await self._retry(ask, "event log read")
        except nats.errors.NoRespondersError:
            raise StoreError("JetStream is not enabled on this NATS server (start it with -js)") from None

    async def workflows(self) -> list[str]:
        """Ids of every workflow in the stream, sorted."""
        found = {p[0] for s in await self.subject_counts() if (p := self.subjects.parse_event(s)) is not None}
        return sorted(found)

    async def raw_message(self, seq: int) -> tuple[str, bytes, dict[str, str]]:
        """Subject, payload and headers of the message at ``seq`` (for diagnostics)."""
        m = await self._retry(lambda: self._js.get_msg(self.spec.name, seq=seq), "event log read")
        return m.subject or "", m.data or b"", dict(m.headers or {})


class _Stalled(TimeoutError):
    """A read that stopped receiving (its consumer vanished with a server): read again."""
