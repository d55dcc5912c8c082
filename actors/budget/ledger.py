"""The budget ledger's I/O: append a group of entries under optimistic concurrency, read the
messages (all of them, or one by sequence), follow the stream live, decode what it holds.

    <prefix>.ledger   a stream of its own, one subject; each message a JSON array of LedgerEntry

Errors::

    BudgetError (actors.budget.rules)
     └── LedgerError   the ledger could not be read or written (wire code ``ledger_error``)
    Conflict           not an error of the API: the ledger moved past what the replica folded
                       (another replica wrote first, or an ack was lost); read, then decide again

:class:`LedgerLog` is the one seam between a budget replica and its ledger stream;
:func:`read_ledger` is the reader ``cadre budget`` uses. Only the budget writes the ledger: a
message that is not a list of entries holds no spend and is skipped (logged, or reported).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.errors import NotFoundError

from cadre.actors.budget import rules
from cadre.actors.budget.rules import BudgetError
from cadre.bus.ledger import LedgerEntry
from cadre.bus.stream import StreamSpec, ensure_stream
from cadre.store.jetstream import stream_seq

log = logging.getLogger("cadre.budget")

_WRONG_LAST_SEQUENCE: Final = 10071

_encode = msgspec.json.Encoder().encode
_entries = msgspec.json.Decoder(list[LedgerEntry])


class LedgerError(BudgetError):
    """The ledger could not be read or written."""

    code = "ledger_error"


class Conflict(Exception):
    """The ledger moved past the state: ``last`` is its last sequence, when JetStream said."""

    def __init__(self, last: int | None) -> None:
        super().__init__(f"ledger is at {last}")
        self.last = last


class _AckError(msgspec.Struct, gc=False):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct, gc=False):
    seq: int = 0
    duplicate: bool = False
    error: _AckError | None = None


_ack = msgspec.json.Decoder(_Ack)


class LedgerLog:
    """A replica's access to its ledger stream ``spec``; ``timeout`` bounds each JetStream request."""

    def __init__(self, nc: NATS, spec: StreamSpec, timeout: float) -> None:
        self.spec = spec
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._timeout = timeout

    async def create(self) -> None:
        """Create the stream (or check the one that exists)."""
        await ensure_stream(self._js, self.spec)

    async def append(self, expected: int, entries: list[LedgerEntry]) -> int:
        """Append ``entries`` as one message that must become sequence ``expected + 1``; return it.

        The message carries ``Nats-Expected-Last-Sequence: expected`` and a ``Nats-Msg-Id``
        derived from its sequence and entries. Raises :class:`Conflict` when another message
        got there first, or when the ack is lost or says "duplicate" (the write may have landed:
        read and see), and :class:`LedgerError` when the stream is missing or refuses it.
        """
        headers = {"Nats-Msg-Id": message_id(expected + 1, entries), "Nats-Expected-Last-Sequence": str(expected)}
        try:
            reply = await self._nc.request(self.spec.subjects, _encode(entries), timeout=self._timeout, headers=headers)
        except nats.errors.TimeoutError:
            raise Conflict(None) from None
        except nats.errors.NoRespondersError:
            raise LedgerError(f"no stream stores {self.spec.subjects!r}; the ledger stream is missing") from None
        ack = _ack.decode(reply.data)
        if ack.error is not None:
            if ack.error.err_code == _WRONG_LAST_SEQUENCE:
                raise Conflict(_last_from(ack.error.description))
            raise LedgerError(
                f"JetStream refused the ledger append: {ack.error.description} (err_code {ack.error.err_code})"
            )
        if ack.duplicate or ack.seq != expected + 1:
            raise Conflict(None)
        return ack.seq

    async def last_seq(self) -> int:
        """The sequence of the ledger's last message."""
        return (await self._js.stream_info(self.spec.name)).state.last_seq

    async def get(self, seq: int) -> list[LedgerEntry]:
        """The entries of message ``seq`` (none when it was deleted, or does not decode: logged)."""
        try:
            m = await self._js.get_msg(self.spec.name, seq=seq, direct=True)
        except NotFoundError:
            return []
        return decode_entries(seq, m.data or b"[]")

    async def read(self, each: Callable[[int, list[LedgerEntry]], None], malformed: Callable[[int, str], None]) -> int:
        """Every message up to the last at the time of the call (see :func:`_read_messages`)."""
        return await _read_messages(self._nc, self.spec.name, self._timeout, each, malformed)

    async def follow(self, after: int, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """Deliver every message after sequence ``after`` to ``cb``, as it is stored (an ordered
        push consumer: in order, no gaps, recreated by the client when it falls behind)."""
        return await self._js.subscribe(
            self.spec.subjects,
            stream=self.spec.name,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=after + 1),
            cb=cb,
        )


def message_id(seq: int, entries: list[LedgerEntry]) -> str:
    """The Msg-Id of the ledger message that should become ``seq``: deterministic for a group."""
    if len(entries) == 1:
        return f"{seq}-{rules.entry_id(entries[0])}"
    digest = hashlib.blake2b("\n".join(map(rules.entry_id, entries)).encode(), digest_size=12).hexdigest()
    return f"{seq}-g{digest}"


def _last_from(description: str) -> int | None:
    """The actual last sequence from "wrong last sequence: N"."""
    tail = description.rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None


def decode_entries(seq: int, data: bytes) -> list[LedgerEntry]:
    """The entries of ledger message ``seq``; none, with an error in the log, when it is not a list of them."""
    try:
        return _entries.decode(data)
    except msgspec.DecodeError as exc:
        log.error("budget: ledger message %d is not a list of entries, skipped: %s", seq, exc)
        return []


# -- reading the whole ledger ---------------------------------------------------------------------


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

    def skip(seq: int, reason: str) -> None:
        malformed.append((seq, reason))

    await _read_messages(nc, stream_name, timeout_s, lambda _, entries: found.extend(entries), skip)
    for seq, reason in malformed:
        if on_malformed is None:
            raise LedgerError(f"ledger message {seq} of {stream_name!r} is not a list of entries: {reason}")
        on_malformed(seq, reason)
    return found


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
    """Wait for ``done`` as long as messages keep coming: ``timeout_s`` without one is a stall."""
    while not done.is_set():
        before = count()
        try:
            async with asyncio.timeout(timeout_s):
                await done.wait()
        except TimeoutError:
            if count() == before:
                raise LedgerError(f"reading ledger {name!r} stalled after {before} messages (of {last})") from None
