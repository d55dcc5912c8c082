"""The event log's requests and their replies, on one reply subscription per connection.

An append is a JetStream publish that waits for its ack: a request. nats-py's ``Client.request``
pays per request for a NUID and a ``secrets.token_hex`` token, a future with a done callback, and
``asyncio.wait_for`` (a timer handle, a waiter future and their callbacks), and its reply goes
through a ``Msg``, the reply subscription's queue and the task that reads it. :class:`ReplyMux`
does the same request/reply with less:

* one subscription per connection, ``<inbox prefix>.<NUID>.*`` (the connection's own inbox prefix,
  ``_INBOX`` unless set; every role of ``cadre.bus.auth`` may subscribe ``_INBOX.>``);
* a counter as each request's token (``<inbox prefix>.<NUID>.<n>``);
* the reply resolves the request's future in place (``cadre.bus.nats_client.Client`` hands it over
  before nats-py builds a ``Msg``);
* timeouts by one periodic sweep (every :data:`SWEEP_S` while requests are waiting), not a timer
  per request: a request times out between ``within`` and ``within + SWEEP_S`` seconds.

What a caller sees is what ``Client.request`` gives: the reply's payload, or the same errors:
``nats.errors.NoRespondersError`` for a "no responders" status reply, ``nats.errors.TimeoutError``
when no reply came in time, and whatever ``Client.publish`` raises (closed, draining, reconnecting
with a full buffer). A request in flight when the connection drops is not failed early: as with
nats-py, its reply is lost and it times out (the log retries it, ``cadre.bus.retry``); the
subscription is sent again on reconnect with every other one.
"""

from __future__ import annotations

import asyncio

import nats.errors
from nats.js.api import Header

from cadre.bus.nats_client import Client

SWEEP_S = 0.05  # how often waiting requests are checked for their deadline
_NO_RESPONDERS = "503"


class ReplyMux:
    """Requests of one connection whose replies come back on its one reply subscription."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prefix = ""  # "<inbox prefix>.<NUID>."
        self._skip = 0  # len(self._prefix) as bytes
        self._next = 0
        self._waiting: dict[int, tuple[asyncio.Future[bytes], float]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._subscribing = asyncio.Lock()

    async def _subscribe(self) -> None:
        nc = self._nc
        prefix = bytes(nc._inbox_prefix) + b"." + bytes(nc._nuid.next()) + b"."
        self._prefix, self._skip = prefix.decode(), len(prefix)
        self._loop = asyncio.get_running_loop()
        if self._sweep is not None:  # a sweep of the connection before (perhaps on another loop): start anew
            self._sweep.cancel()
            self._sweep = None
        sub = await nc.subscribe(self._prefix + "*")  # no callback: Client._process_msg hands replies to deliver
        nc.reply_sid = sub._id

    async def request(self, subject: str, payload: bytes, headers: dict[str, str], within: float) -> bytes:
        """Publish with a reply subject of this mux and return the reply's payload (``Client.request``'s errors)."""
        nc = self._nc
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        # Subscribe on the first request, or when the connection was closed and connected again; not
        # while it drains (its subscriptions are going): as with nats-py, the request goes out and times out.
        if nc.reply_sid not in nc._subs and not (self._prefix and nc.is_draining):
            async with self._subscribing:
                if nc.reply_sid not in nc._subs:
                    await self._subscribe()
        loop = self._loop
        assert loop is not None
        self._next += 1
        token = self._next
        future: asyncio.Future[bytes] = loop.create_future()
        self._waiting[token] = (future, loop.time() + within)
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_S, self._expire)
        try:
            await nc.publish(subject, payload, reply=f"{self._prefix}{token}", headers=headers)
            return await future
        finally:
            self._waiting.pop(token, None)

    def deliver(self, subject: bytes, data: bytes, headers: dict[str, str] | None) -> None:
        """A reply arrived on ``subject``: resolve its request (a late or unknown reply is dropped)."""
        try:
            waiting = self._waiting.get(int(subject[self._skip :]))
        except ValueError:
            return
        if waiting is None or waiting[0].done():
            return
        if headers is not None and headers.get(Header.STATUS) == _NO_RESPONDERS:
            waiting[0].set_exception(nats.errors.NoRespondersError())
        else:
            waiting[0].set_result(data)

    def _expire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for future, deadline in self._waiting.values():
            if deadline <= now and not future.done():
                future.set_exception(nats.errors.TimeoutError())
        self._sweep = self._loop.call_later(SWEEP_S, self._expire) if self._waiting else None


def mux_for(nc: object) -> ReplyMux | None:
    """The reply mux of ``nc`` when it is cadre's client (``bus.connection.connect``), else None
    (a nats-py client made elsewhere: its caller uses ``Client.request``)."""
    if not isinstance(nc, Client):
        return None
    if nc.reply_mux is None:
        nc.reply_mux = ReplyMux(nc)
    return nc.reply_mux
