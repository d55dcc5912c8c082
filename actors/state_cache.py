"""Workflow states kept current in memory, for every actor of a process.

One ordered push consumer per process follows the whole event stream from the moment the
cache starts and folds each event into the state of its workflow:

* a workflow whose ``workflow_requested`` the cache sees is followed from its first event,
  so its state never needs a read from the log;
* a workflow the cache meets later (it started before this process, or was evicted) is
  loaded once from the log; events that arrive while it loads are buffered and applied
  after, so nothing falls between the read and the live feed.

``state_at(wf, seq)`` returns once the state includes stream sequence ``seq``. If the
feed falls behind (a reconnect), a waiter catches up by reading the log directly. The feed's
consumer is created through an outage and recreated from where it was when it goes silent
(its server died, the stream changed leader: :meth:`JetStreamLog.ordered`).
Invariant: an entry's ``state.last_seq`` only grows, and every event of the workflow up to
it has been applied exactly once. The cache is the only writer of these states.

A state ``state_at`` hands out never changes afterwards, so a handler that reads it after an
``await`` reads what it was invoked on, as under replay. The cache folds copy-on-write: the
first event folded after a hand-out goes into a :func:`~store.state.forked` copy (the struct
and its two dicts; ``apply`` replaces task and step entries rather than changing them), which
becomes the entry's state; events folded while nobody was handed the state go in place. So
loading or catching up a long workflow stays linear, and a hand-out costs at most one copy
of the struct and its dicts, made only if another event of the workflow comes.

For the integrity chain, the cache also keeps per workflow the newest message this process
appended (``appended``), which its feed may not have brought yet, so that the next append of
the process chains to it at once (``head``), and one lock under which the process's actors
append to the workflow one after the other (``append_lock``): writers of one process never
race each other, only writers of other processes.

Without the feed (``feed=False``: a process that runs every kind that appends, where the feed
would only bring back what the process itself stored or was handed), the cache folds:

* the messages the process appends, at their ack (:meth:`JetStreamLog.on_stored`): each was stored
  expecting the one before it, so it is folded when the state is at that one (a new workflow's
  first message, stored expecting nothing, starts its entry);
* an actor's input the runtime hands over (``state_at(wf, seq, given=record, after=...)``) when
  JetStream stored it expecting the state's last sequence (the ``Nats-Expected-Last-Subject-Sequence``
  headers it was stored with, for the workflow's subjects: :func:`stored_after`); one stored
  expecting an empty workflow starts its entry (another process's intake);
* anything else (another process appended it, a v1 event, a workflow evicted or never seen) is
  read from the log at once: a workflow never seen is loaded, a gap is asked for message by
  message (up to four, then read with a consumer), one read at a time per workflow, which its
  waiters share (the others wait for it and look again).

Nothing is folded out of order or twice there either: a fold needs the state to be exactly at
the message before, and a read starts right after the state's last sequence.

Memory stays bounded however many workflows a process sees: a workflow is released
``release_after`` seconds after its terminal event (a late event of it is loaded from the log
again, as for a workflow the cache never followed), at most ``max_workflows`` are kept (least
recently used first out), and ``recent_events`` decoded events are kept for the runtime.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from cadre.bus.events import TERMINAL_TYPES
from cadre.bus.retry import retrying
from cadre.bus.signing import Keyring, Verdict
from cadre.store.authenticity import verdict
from cadre.store.jetstream import JetStreamLog, stream_seq
from cadre.store.objects import references
from cadre.store.records import Record, StoredEvent, to_record
from cadre.store.state import WorkflowState, apply, forked, skip

log = logging.getLogger("cadre.state")

_GETS = 4  # without the feed: messages of a gap asked for one by one before the rest is read with a consumer


@dataclass
class _Entry:
    state: WorkflowState
    loading: bool = False
    buffer: list[Record] = field(default_factory=list)
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    appended: tuple[int, str] = (0, "")  # (seq, chain hash) of this process's latest append
    appending: asyncio.Lock = field(default_factory=asyncio.Lock)
    handed_out: bool = False  # ``state`` was handed out since it was last forked: fold into a copy
    reading: asyncio.Lock = field(default_factory=asyncio.Lock)  # without the feed: one gap read at a time


class StateCache:
    """Current states of workflows, shared by the actors of one process."""

    def __init__(
        self,
        elog: JetStreamLog,
        *,
        max_workflows: int = 10_000,
        catch_up_after: float = 2.0,
        recent_events: int = 2_000,
        release_after: float = 5.0,
        keyring: Keyring | None = None,
        feed: bool = True,
    ) -> None:
        self._log = elog
        self.feed = feed  # follow the stream; without: fold own appends and handed-over inputs, read gaps
        self._unhook: Callable[[], None] | None = None
        self._keyring = keyring
        self._max = max_workflows
        self._catch_up_after = catch_up_after
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._sub: Any = None
        # The events the feed decoded lately, by stream sequence: an actor's input is one of
        # them, so the runtime need not decode it a second time.
        self._recent: OrderedDict[int, tuple[StoredEvent, Verdict]] = OrderedDict()
        self._recent_max = recent_events
        self._release_after = release_after
        self._releases: dict[str, asyncio.TimerHandle] = {}
        # With partitions (``actors.partitions``): whether this process holds a workflow's partition.
        # The feed decodes and folds only those workflows; the others are skipped from the subject.
        self.owns: Callable[[str], bool] | None = None
        self.decoded = 0  # events decoded here (the feed's, the log reads', the runtime's own)
        self.reads = 0  # reads of a workflow from the log with a consumer (loads, and catch-ups after a gap)
        self.gets = 0  # without the feed: messages of a gap asked for one by one

    async def start(self) -> None:
        """Begin following the stream (returns once the feed's consumer exists), or without the
        feed, the process's own appends."""
        if self.feed:
            self._sub = await self._log.ordered(self._log.subjects.events, None, self._on_msg)
        else:
            self._unhook = self._log.on_stored(self._on_stored)

    async def stop(self) -> None:
        if self._unhook is not None:
            self._unhook()
            self._unhook = None
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for entry in self._entries.values():
            for _, fut in entry.waiters:
                fut.cancel()
        for timer in self._releases.values():
            timer.cancel()
        self._releases.clear()

    def __len__(self) -> int:
        """How many workflows the cache holds now."""
        return len(self._entries)

    def _release_later(self, wf: str) -> None:
        """Drop the workflow ``release_after`` seconds from now (it ended; later events are rare)."""
        if wf not in self._releases:
            loop = asyncio.get_running_loop()
            self._releases[wf] = loop.call_later(self._release_after, self._release, wf)

    def _release(self, wf: str) -> None:
        self._releases.pop(wf, None)
        entry = self._entries.get(wf)
        if entry is None:
            return
        if _in_use(entry):
            self._release_later(wf)  # in use right now: try again later
            return
        del self._entries[wf]

    async def _on_msg(self, m: Msg) -> None:
        parsed = self._log.subjects.parse_event(m.subject)
        if parsed is None:
            return
        wf, etype = parsed
        if self.owns is not None and not self.owns(wf):
            if wf in self._entries:  # its partition moved to another process: read it again if needed
                self.forget(wf)
            return
        entry = self._entries.get(wf)
        seq = stream_seq(m.reply)
        if entry is None and etype != "workflow_requested":
            return  # not followed here; loaded from the log if an actor needs it
        if entry is not None and seq <= entry.state.last_seq:
            return  # already folded (from the log read, or a redelivered feed message)
        # Decoded, its large outputs read from the object store (an await: look at the entry again after).
        self.decoded += 1
        try:
            record = await self._log.record(seq, m.subject, m.data, m.headers)
        except Exception as exc:  # the store did not answer: never fold the events after without this one
            log.warning("could not read the outputs of %s seq %d (%r); its state will be read again", wf, seq, exc)
            self.forget(wf)
            return
        entry = self._entries.get(wf)
        if entry is None:
            if etype != "workflow_requested":
                return
            entry = self._entries[wf] = _Entry(WorkflowState(workflow_id=wf))
            entry.loaded.set()
            self._evict()
        if seq <= entry.state.last_seq:
            return
        if entry.loading:
            entry.buffer.append(record)
            return
        self._fold(wf, entry, record)

    def _fold(self, wf: str, entry: _Entry, record: Record) -> None:
        """Apply the record (the next of the workflow) and keep it for the runtime."""
        applied = self._apply(entry, record)
        if isinstance(record, StoredEvent) and record.event.type in TERMINAL_TYPES:
            self._release_later(wf)
        if len(self._entries) > self._max:  # over because entries were in use when last evicted
            self._evict()
        if applied is not None:
            self._recent[record.seq] = applied
            if len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)

    def _new(self, wf: str) -> _Entry:
        """A workflow followed from its first message (none folded yet)."""
        entry = self._entries[wf] = _Entry(WorkflowState(workflow_id=wf))
        entry.loaded.set()
        self._evict()
        return entry

    def _on_stored(
        self, wf: str, expected_seq: int, last_seq: int, msgs: Sequence[tuple[str, bytes, str, dict[str, str]]]
    ) -> None:
        """Without the feed: fold messages this process just stored, if the state is at the one they
        were stored expecting (else the next ``state_at`` that needs them reads them)."""
        if self.owns is not None and not self.owns(wf):
            return
        try:
            entry = self._entries.get(wf)
            if entry is None:
                if expected_seq != 0:  # not followed here; loaded from the log if an actor needs it
                    return
                entry = self._new(wf)  # stored expecting an empty workflow: its first message
            elif entry.loading or entry.state.last_seq != expected_seq:
                return
            first = last_seq - len(msgs) + 1
            for i, (subject, data, _, headers) in enumerate(msgs):
                record = to_record(self._log.subjects, first + i, subject, data, headers)
                if isinstance(record, StoredEvent) and references(record.event):
                    return  # an output stored by reference: resolved when it is read from the log
                self.decoded += 1
                self._fold(wf, entry, record)
        except Exception:  # never fail the append that was stored: the state reads it from the log later
            log.exception("could not fold the append to %s; its state will be read from the log", wf)
            self.forget(wf)

    def _handed(self, wf: str, entry: _Entry | None, given: Record, after: int | None) -> _Entry | None:
        """Without the feed: fold an input the runtime decoded if it is the workflow's next message:
        JetStream stored it expecting the state's last sequence (``after``, from its headers:
        :func:`stored_after`; 0 starts the workflow). Its ``prev`` is not proof enough: a writer
        that skips the expected sequence could copy it. Returns the entry (None: still unknown)."""
        if after is None:
            return entry  # no proof of where it goes: the log is read
        if entry is None:
            if after != 0:
                return None
            entry = self._new(wf)  # stored expecting an empty workflow: its first message
        if not entry.loading and after == entry.state.last_seq and given.seq > after:
            self._fold(wf, entry, given)
        return entry

    def recent(self, seq: int) -> tuple[StoredEvent, Verdict] | None:
        """The event at ``seq`` and the keyring's verdict on it, if the cache decoded it lately (the
        feed; without it, an own append, a hand-over or a read), else None: the caller decodes it."""
        return self._recent.get(seq)

    def _apply(self, entry: _Entry, rec: Record) -> tuple[StoredEvent, Verdict] | None:
        if rec.seq <= entry.state.last_seq:
            return None  # already folded (from the log read, or a redelivered feed message)
        if entry.handed_out:  # a handler may hold this state: it must not change under it
            entry.state = forked(entry.state)
            entry.handed_out = False
        checked = (
            verdict(rec, self._keyring, signed_here=self._log.signed_here(rec))
            if isinstance(rec, StoredEvent)
            else None
        )
        if isinstance(rec, StoredEvent) and checked is not None and checked.trusted:
            apply(entry.state, rec)
        else:
            skip(entry.state, rec)  # changes nothing but the chain's head; actors dead-letter or flag it
        if entry.waiters:
            still = []
            for min_seq, fut in entry.waiters:
                if entry.state.last_seq >= min_seq:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((min_seq, fut))
            entry.waiters = still
        return (rec, checked) if isinstance(rec, StoredEvent) and checked is not None else None

    async def _load(self, wf: str) -> _Entry:
        entry = self._entries[wf] = _Entry(WorkflowState(workflow_id=wf), loading=True)
        self._evict()
        try:
            records = await self._log.read_records(wf)
            self.reads += 1
            self.decoded += len(records)
        except BaseException:
            del self._entries[wf]
            entry.loaded.set()  # wake waiters; they find no entry and load it themselves
            raise
        for r in records:
            self._apply(entry, r)
        entry.loading = False
        for r in entry.buffer:
            self._apply(entry, r)
        entry.buffer = []
        entry.loaded.set()
        return entry

    async def state_at(
        self, wf: str, min_seq: int, given: Record | None = None, after: int | None = None
    ) -> WorkflowState:
        """The workflow's state including at least stream sequence ``min_seq``; it does not
        change afterwards (the cache folds newer events into a copy).

        ``given``: the message at ``min_seq``, decoded (an actor's input), and ``after``: the
        workflow's sequence JetStream stored it expecting (:func:`stored_after`); without the feed
        it is folded if it is the workflow's next message, which spares a read of the log."""
        entry = self._entries.get(wf)
        if given is not None and (self.feed or given.seq != min_seq):
            given = None
        if given is not None:
            entry = self._handed(wf, entry, given, after)
        if entry is None:
            entry = await self._load(wf)
        else:
            self._entries.move_to_end(wf)
            if entry.loading:  # another actor is loading it: wait for that read
                await entry.loaded.wait()
                entry = self._entries.get(wf) or await self._load(wf)
        while entry.state.last_seq < min_seq and not self.feed:
            await self._catch_up(wf, entry, min_seq, given, after)
        while entry.state.last_seq < min_seq:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry.waiters.append((min_seq, fut))
            try:
                await asyncio.wait_for(fut, self._catch_up_after)
            except TimeoutError:
                # The feed is behind (reconnecting?): read what is missing from the log.
                log.info("state of %s behind (%d < %d); catching up from the log", wf, entry.state.last_seq, min_seq)
                missing = await self._log.read_records(wf, after_seq=entry.state.last_seq)
                self.reads += 1
                self.decoded += len(missing)
                for r in missing:
                    self._apply(entry, r)
        entry.handed_out = True
        return entry.state

    async def _catch_up(self, wf: str, entry: _Entry, min_seq: int, given: Record | None, after: int | None) -> None:
        """Without the feed: read what the state misses from the log, once for every waiter of the
        workflow (the others wait for the read under way, then look again).

        A gap is usually a message or two (another process's output): the workflow's next message
        is asked for directly, up to ``_GETS`` times, before the rest is read with a consumer (an
        ordered consumer per gap costs the server a consumer's creation and deletion, and many at
        once run into its limit of consumers). ``given`` (the message at ``min_seq``) is folded as
        soon as the state reaches the message before it."""
        async with entry.reading:
            for _ in range(_GETS):
                if given is not None:
                    self._handed(wf, entry, given, after)
                if entry.state.last_seq >= min_seq:
                    return
                record = await self._next(wf, entry.state.last_seq)
                if record is None:
                    break
                self.gets += 1
                self.decoded += 1
                self._fold(wf, entry, record)
            if entry.state.last_seq >= min_seq:
                return
            missing = await self._log.read_records(wf, after_seq=entry.state.last_seq)
            self.reads += 1
            self.decoded += len(missing)
            for r in missing:
                self._fold(wf, entry, r)
            if entry.state.last_seq < min_seq:  # not in the log yet (a lagging replica?): look again soon
                log.info("state of %s at %d, not yet %d in the log; reading again", wf, entry.state.last_seq, min_seq)
                await asyncio.sleep(0.05)

    async def _next(self, wf: str, after_seq: int) -> Record | None:
        """The workflow's first message after ``after_seq`` (None: it has none yet)."""
        elog = self._log
        try:
            m = await retrying(
                lambda: elog.js.get_msg(elog.stream, seq=after_seq + 1, subject=elog.subjects.workflow(wf), next=True),
                "event log read",
                elog.retry,
            )
        except NotFoundError:
            return None
        return await elog.record(m.seq or 0, m.subject or "", m.data or b"", m.headers)

    def head(self, wf: str) -> tuple[int, str]:
        """The workflow's newest (stream sequence, chain hash) this process knows: its state's, or
        the process's own latest append when the feed has not brought it yet ((0, "") unknown)."""
        entry = self._entries.get(wf)
        if entry is None:
            return 0, ""
        if entry.appended[0] > entry.state.last_seq:
            return entry.appended
        return entry.state.last_seq, entry.state.last_hash

    def appended(self, wf: str, seq: int, chain: str) -> None:
        """Note that this process stored the workflow's message ``seq`` (whose chain hash is ``chain``)."""
        entry = self._entries.get(wf)
        if entry is not None and seq > entry.appended[0]:
            entry.appended = (seq, chain)

    def append_lock(self, wf: str) -> asyncio.Lock:
        """The lock under which this process appends to the workflow (a fresh one if it is not cached)."""
        entry = self._entries.get(wf)
        return entry.appending if entry is not None else asyncio.Lock()

    def forget_where(self, gone: Callable[[str], bool]) -> None:
        """Forget every workflow ``gone`` says (those of partitions this process no longer holds)."""
        for wf in [wf for wf in self._entries if gone(wf)]:
            self.forget(wf)

    def forget(self, wf: str) -> None:
        self._entries.pop(wf, None)
        timer = self._releases.pop(wf, None)
        if timer is not None:
            timer.cancel()

    def _evict(self) -> None:
        """Drop the least recently used workflows over ``max_workflows``, skipping those in use."""
        excess = len(self._entries) - self._max
        if excess <= 0:
            return
        victims = []
        for wf, entry in self._entries.items():
            if not _in_use(entry):
                victims.append(wf)
                if len(victims) == excess:
                    break
        for wf in victims:
            self.forget(wf)


def _in_use(entry: _Entry) -> bool:
    """Whether an actor loads, waits for, reads or appends to the workflow right now (kept then)."""
    return entry.loading or bool(entry.waiters) or entry.appending.locked() or entry.reading.locked()


def stored_after(headers: dict[str, str] | None, workflow_subjects: str) -> int | None:
    """The workflow's sequence a message was stored expecting, from the headers JetStream stored it
    with (it refused the message unless the workflow's last message was there); None if it was
    stored with no such expectation on ``workflow_subjects`` (``<prefix>.evt.<wf>.>``)."""
    if not headers or headers.get("Nats-Expected-Last-Subject-Sequence-Subject") != workflow_subjects:
        return None
    expected = headers.get("Nats-Expected-Last-Subject-Sequence")
    return int(expected) if expected is not None and expected.isdigit() else None
