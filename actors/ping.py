"""Liveness: every cadre process answers on ``<prefix>.ping`` with what it runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cadre.bus.subjects import Subjects


@asynccontextmanager
async def serve_ping(nc: NATS, subjects: Subjects, kinds: Sequence[str], replicas: int) -> AsyncIterator[None]:
    answer = msgspec.json.encode(
        {"kinds": list(kinds), "replicas": replicas, "pid": os.getpid(), "host": socket.gethostname()}
    )

    async def on_msg(m: Msg) -> None:
        if m.reply:
            await m.respond(answer)

    sub = await nc.subscribe(subjects.ping, cb=on_msg)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def ping_all(nc: NATS, subjects: Subjects, wait: float = 0.3) -> list[dict[str, Any]]:
    """Every answer to one ping within ``wait`` seconds."""
    answers: list[dict[str, Any]] = []
    inbox = nc.new_inbox()

    async def on_msg(m: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            answers.append(msgspec.json.decode(m.data))

    sub = await nc.subscribe(inbox, cb=on_msg)
    await nc.publish(subjects.ping, b"", reply=inbox)
    await asyncio.sleep(wait)
    await sub.unsubscribe()
    return answers
