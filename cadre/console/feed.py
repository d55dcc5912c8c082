"""Keeping the console's index live: one ordered consumer over every workflow's events, from the
stream's first message on (the one pass that builds the index), then each new one as it is stored.
``ready`` is set once the messages stored when the feed began are all in (at once for an empty
stream), which is when the console starts answering."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.msg import Msg

from cadre.console.index import WorkflowIndex
from cadre.store.jetstream import JetStreamLog, stream_seq
from cadre.store.records import to_record


class Feed:
    """The subscription that keeps ``index`` up to date (:meth:`start`, :meth:`stop`)."""

    def __init__(self, log: JetStreamLog, index: WorkflowIndex) -> None:
        self.log = log
        self.index = index
        self.ready = asyncio.Event()
        self.caught_up_at = 0  # the stream's last sequence when the feed began
        self._sub: Any = None

    async def start(self) -> None:
        info = await self.log.js.stream_info(self.log.stream)
        self.caught_up_at = info.state.last_seq
        if not info.state.messages:
            self.ready.set()
        subjects = self.log.subjects

        async def on_msg(m: Msg) -> None:
            seq = stream_seq(m.reply)
            parsed = subjects.parse_event(m.subject)
            if parsed is not None:
                self.index.add(parsed[0], to_record(subjects, seq, m.subject, m.data, m.headers))
            if seq >= self.caught_up_at or m.metadata.num_pending == 0:
                self.ready.set()

        self._sub = await self.log.ordered(subjects.events, 0, on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
