"""A request/reply service on the bus: a queue-group subscriber that answers each request.

The approvals service (``<prefix>.approvals``) is one (the intake, ``actors.intake``, answers
through its requests stream instead). A message whose reply subject is a JetStream acknowledgement is not a request: a
stream consumer was pointed at the subject (a reader may point a consumer of its own mirror
anywhere), so it is ignored rather than answered (answering would acknowledge it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg


@asynccontextmanager
async def serve(nc: NATS, subject: str, queue: str, answer: Callable[[Msg], Awaitable[bytes]]) -> AsyncIterator[None]:
    """Answer requests on ``subject`` (one replica of the ``queue`` group) until the block exits."""

    async def on_msg(m: Msg) -> None:
        if m.reply.startswith("$JS.ACK."):
            return
        reply = await answer(m)
        if m.reply:
            await m.respond(reply)

    sub = await nc.subscribe(subject, queue=queue, cb=on_msg)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
