"""A pull consumer's ``fetch``, as nats-py 2.16 does it, without a task per message.

nats-py's ``PullSubscription.fetch`` takes each message with ``Subscription.next_msg``, which
names a task with ``uuid4()`` (an ``os.urandom`` call) and starts it, and that task runs
``asyncio.wait_for`` on the queue's ``get()``, a second task: about 8 % of a busy cadre
process's samples (py-spy, ``bench/pipeline.py``). :func:`fetch` sends the same pull requests
and reads the same subscription queue, with one wait per fetch instead of two tasks per
message: messages already queued are taken at once, and an empty queue is awaited under
one ``asyncio.timeout``.

It reads the subscription's queue as nats-py's own fetch does (``_sub._pending_queue``); a
nats-py without those attributes gets its own ``fetch``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

_STATUS = api.Header.STATUS
_ENDS_REQUEST = (api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT)
_TEMPORARY = (api.StatusCode.NO_MESSAGES, api.StatusCode.CONFLICT, api.StatusCode.REQUEST_TIMEOUT)


def _status(msg: Msg) -> str | None:
    return msg.headers.get(_STATUS) if msg.headers else None


def _processable(status: str | None, msg: Msg) -> bool:
    """A message to hand out (no status); a temporary status is skipped; any other is an error."""
    if not status:
        return True
    if status in _TEMPORARY:
        return False
    raise nats.js.errors.APIError.from_msg(msg)


class _Queue:
    """The subscription's pending queue, read as ``Subscription.next_msg`` reads it."""

    def __init__(self, psub: Any) -> None:
        self.sub = psub._sub
        self.queue: asyncio.Queue[Msg] = self.sub._pending_queue

    def take(self, msg: Msg) -> Msg:
        self.sub._pending_size -= len(msg.data)
        self.queue.task_done()
        return msg

    def now(self) -> Msg | None:
        """The next queued message, if one is queued."""
        return None if self.queue.empty() else self.take(self.queue.get_nowait())

    async def next(self, wait_s: float | None) -> Msg:
        """The next message within ``wait_s`` seconds (``nats.errors.TimeoutError`` else)."""
        if not self.queue.empty():
            return self.take(self.queue.get_nowait())
        if self.sub._conn.is_closed:
            raise nats.errors.ConnectionClosedError
        if wait_s is not None and wait_s <= 0:
            raise nats.errors.TimeoutError
        try:
            async with asyncio.timeout(wait_s):
                msg = await self.queue.get()
        except TimeoutError:
            if self.sub._conn.is_closed:
                raise nats.errors.ConnectionClosedError from None
            raise nats.errors.TimeoutError from None
        return self.take(msg)


def _left(wait_s: float, started: float) -> float:
    return wait_s - (time.monotonic() - started)


async def fetch(psub: JetStreamContext.PullSubscription, batch: int, wait_s: float) -> list[Msg]:
    """``psub.fetch(batch, timeout=wait_s)``, with the same requests and outcomes."""
    if not all(hasattr(psub, a) for a in ("_sub", "_nms", "_deliver", "_nc")) or not hasattr(
        getattr(psub, "_sub", None), "_pending_queue"
    ):
        return await psub.fetch(batch, timeout=wait_s)
    if batch < 1 or wait_s <= 0:
        raise ValueError("nats: invalid batch size or fetch wait")
    expires = int(wait_s * 1_000_000_000) - 100_000
    q = _Queue(psub)
    return [await _fetch_one(psub, q, expires, wait_s)] if batch == 1 else await _fetch_n(psub, q, batch, wait_s)


async def _request(psub: Any, req: dict[str, Any]) -> None:
    await psub._nc.publish(psub._nms, json.dumps(req).encode(), psub._deliver)


async def _fetch_one(psub: Any, q: _Queue, expires: int, wait_s: float) -> Msg:
    while (msg := q.now()) is not None:
        if not _status(msg):
            return msg  # a status left from an earlier request is dropped
    await _request(psub, {"batch": 1, "expires": expires})
    started = time.monotonic()
    got_any_response = False
    while True:
        try:
            msg = await q.next(_left(wait_s, started))
        except nats.errors.TimeoutError:
            if _left(wait_s, started) < 0 and got_any_response:
                raise nats.js.errors.FetchTimeoutError from None
            raise
        status = _status(msg)
        if not status:
            return msg
        if status == api.StatusCode.CONTROL_MESSAGE:
            got_any_response = True
            continue
        if status in _TEMPORARY:
            raise nats.errors.TimeoutError
        raise nats.js.errors.APIError.from_msg(msg)


async def _fetch_n(psub: Any, q: _Queue, batch: int, wait_s: float) -> list[Msg]:
    msgs: list[Msg] = []
    started = time.monotonic()
    needed = batch
    while needed and (msg := q.now()) is not None:
        if not _status(msg):  # a status left from an earlier request is dropped
            msgs.append(msg)
            needed -= 1
    if not needed:
        return msgs
    # First request: no_wait, for what is there now (without ``expires`` when the queue had some:
    # the server treats a no_wait request with ``expires`` as a lingering one).
    req: dict[str, Any] = {"batch": needed}
    if not msgs:
        req["expires"] = int(wait_s * 1_000_000_000) - 100_000
    req["no_wait"] = True
    await _request(psub, req)
    await asyncio.sleep(0)
    try:
        msg = await q.next(wait_s)
    except nats.errors.TimeoutError:
        if msgs:
            return msgs
        raise
    got_any_response = False
    status = _status(msg)
    if status == api.StatusCode.CONTROL_MESSAGE:
        got_any_response = True
    elif _processable(status, msg):
        msgs.append(msg)
        needed -= 1
        _rest(q, msgs, needed)
    if msgs:
        return msgs
    # Second request: a lingering one, expiring with what is left of the wait.
    left = _left(wait_s, started)
    if left <= 0 or int(left * 1_000_000_000) - 100_000 <= 0:
        raise nats.errors.TimeoutError
    await _request(psub, {"batch": needed, "expires": int(left * 1_000_000_000) - 100_000})
    await asyncio.sleep(0)
    while True:
        try:
            msg = await q.next(_left(wait_s, started))
        except nats.errors.TimeoutError:
            if got_any_response:
                raise nats.js.errors.FetchTimeoutError from None
            raise
        status = _status(msg)
        if status == api.StatusCode.CONTROL_MESSAGE:
            got_any_response = True
            continue
        if not status:
            msgs.append(msg)
            _rest(q, msgs, needed - 1)
            return msgs
        break  # the request ended (404, 408, a 409) with nothing
    if got_any_response:
        raise nats.js.errors.FetchTimeoutError
    return msgs


def _rest(q: _Queue, msgs: list[Msg], needed: int) -> None:
    """Add to ``msgs`` the messages already queued, up to ``needed``, without waiting for more.

    nats-py waits for the rest of the batch until the request ends or the fetch times out; but a
    pull request that got a message as it lingered may never end early, and the message would be
    held for the whole fetch timeout (0.5 s). What the request delivers later stays queued, and
    the replica's next fetch takes it first.
    """
    while needed and (msg := q.now()) is not None:
        status = _status(msg)
        if status in _ENDS_REQUEST:
            return
        if status == api.StatusCode.CONTROL_MESSAGE:
            continue
        if _processable(status, msg):
            needed -= 1
            msgs.append(msg)


def queued(psub: JetStreamContext.PullSubscription) -> list[Msg]:
    """The messages already delivered to the subscription and not fetched yet (statuses dropped):
    what a pull request that was still open delivered after the last fetch."""
    if not hasattr(getattr(psub, "_sub", None), "_pending_queue"):
        return []
    q = _Queue(psub)
    out = []
    while (msg := q.now()) is not None:
        if not _status(msg):
            out.append(msg)
    return out
