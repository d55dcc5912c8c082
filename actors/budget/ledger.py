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
from cadre.bus.retry import RetryPolicy, is_transient, retrying
from cadre.bus.stream import StreamSpec, ensure_stream
from cadre.store.jetstream import stream_seq

log = logging.getLogger("cadre.budget")

_WRONG_LAST_SEQUENCE: Final = 10071
_HEARTBEAT_S: Final = 1.0  # an ordered consumer silent for twice this is recreated from where it was (nats-py)

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
    """A replica's access to its ledger stream ``spec``; ``timeout`` bounds each JetStream request,
    ``retry`` how long a call rides out an outage (a cluster electing the ledger's leader: ``bus.retry``)."""

    def __init__(self, nc: NATS, spec: StreamSpec, timeout: float, retry: RetryPolicy | None = None) -> None:
        self.spec = spec
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._timeout = timeout
        self.retry = retry or RetryPolicy()

    async def create(self) -> None:
        """Create the stream (or check the one that exists)."""
        await ensure_stream(self._js, self.spec, self.retry)

    async def append(self, expected: int, entries: list[LedgerEntry]) -> int:
        """Append ``entries`` as one message that must become sequence ``expected + 1``; return it.

        The message carries ``Nats-Expected-Last-Sequence: expected`` and a ``Nats-Msg-Id``
        derived from its sequence and entries. Raises :class:`Conflict` when another message
        got there first, or when the ack is lost or says "duplicate" (the write may have landed:
        read and see), and :class:`LedgerError` when the stream is missing or refuses it. While the
        stream has no leader (no responders, a 503 answer), nothing was stored: sent again, with backoff.
        """
        headers = {"Nats-Msg-Id": message_id(expected + 1, entries), "Nats-Expected-Last-Sequence": str(expected)}
        payload = _encode(entries)

        async def send() -> _Ack:
            try:
                reply = await self._nc.request(self.spec.subjects, payload, timeout=self._timeout, headers=headers)
            except nats.errors.NoRespondersError:
                try:
                    await self._js.stream_info(self.spec.name)  # an outage on the way is retried
                except NotFoundError:
                    raise LedgerError(
                        f"no stream stores {self.spec.subjects!r}; the ledger stream is missing"
                    ) from None
                raise
            ack = _ack.decode(reply.data)
            if ack.error is not None and ack.error.code == 503:
                raise nats.errors.NoRespondersError  # not stored: the stream has no leader right now
            return ack

        try:
            ack = await retrying(send, "budget ledger append", self.retry, transient=_not_stored)
        except nats.errors.TimeoutError:
            raise Conflict(None) from None  # the write may have landed: read, then decide again
        except nats.errors.NoRespondersError:
            raise LedgerError(f"the ledger stream had no leader for {self.retry.bound_s:g} s") from None
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
        info = await retrying(lambda: self._js.stream_info(self.spec.name), "budget ledger read", self.retry)
        return info.state.last_seq

    async def get(self, seq: int) -> list[LedgerEntry]:
        """The entries of message ``seq`` (none when it was deleted, or does not decode: logged)."""
        try:
            m = await retrying(
                lambda: self._js.get_msg(self.spec.name, seq=seq, direct=True), "budget ledger read", self.retry
            )
        except NotFoundError:
            return []
        return decode_entries(seq, m.data or b"[]")

    async def read(self, each: Callable[[int, list[LedgerEntry]], None], malformed: Callable[[int, str], None]) -> int:
        """Every message up to the last at the time of the call (see :func:`_read_messages`)."""
        return await _read_messages(self._nc, self.spec.name, self._timeout, each, malformed, self.retry)

    async def follow(self, after: int, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """Deliver every message after sequence ``after`` to ``cb``, as it is stored (an ordered
        push consumer: in order, no gaps, recreated by the client when it falls behind or goes silent)."""
        return await retrying(
            lambda: self._js.subscribe(
                self.spec.subjects,
                stream=self.spec.name,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                config=api.ConsumerConfig(opt_start_seq=after + 1, idle_heartbeat=_HEARTBEAT_S),
                cb=cb,
            ),
            "budget ledger subscribe",
            self.retry,
        )


def _not_stored(exc: BaseException) -> bool:
    """An append error after which the message is surely not stored (sent again at once); a timeout
    is not one (the write may have landed: the caller reads the ledger and decides again)."""
    return is_transient(exc) and not isinstance(exc, nats.errors.TimeoutError | TimeoutError)


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
    retry: RetryPolicy | None = None,
) -> int:
    """Call ``each(seq, entries)`` for every ledger message in order (``malformed(seq, reason)``
    for one that does not decode), up to the last at the time of the call; return its sequence."""
    js = nc.jetstream(timeout=timeout_s)
    retry = retry or RetryPolicy()
    try:
        info = await retrying(lambda: js.stream_info(stream_name), "budget ledger read", retry)
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

    subject = info.config.subjects[0]
    sub = await retrying(
        lambda: js.subscribe(
            subject,
            stream=stream_name,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
            config=api.ConsumerConfig(idle_heartbeat=_HEARTBEAT_S),  # recreated where it was if it goes silent
            cb=on_msg,
        ),
        "budget ledger subscribe",
        retry,
    )
    try:
        # A stall longer than an outage is: nats-py recreates a silent consumer from where it was.
        await _wait_progress(done, lambda: seen, max(timeout_s, retry.bound_s), stream_name, last)
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
