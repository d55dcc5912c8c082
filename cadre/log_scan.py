"""Reading many workflows of the live log in one pass: one ordered consumer over a wildcard subject
instead of a read (or a consumer) per workflow, for the commands that look at every workflow
(``cadre stats``, ``cadre workflows``). A consumer per workflow would be thousands of consumers on
a long log (past the server's limit), and a direct read per workflow a round trip each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from nats.aio.msg import Msg

from cadre.bus.errors import StoreError
from cadre.store.jetstream import JetStreamLog, stream_seq
from cadre.store.records import Record, to_record


async def _scan(
    log: JetStreamLog,
    subject: str | Sequence[str],
    keep: Callable[[str, Record], None],
    done_at: Callable[[int, int], bool],
    stall_s: float,
) -> None:
    """Deliver the stored messages of ``subject`` in order to ``keep(workflow id, record)`` until
    ``done_at(stream sequence, messages so far)``; a :class:`StoreError` when nothing arrives for
    ``stall_s`` seconds before that."""
    done = asyncio.Event()
    seen = 0

    async def on_msg(m: Msg) -> None:
        nonlocal seen
        if done.is_set():
            return
        seq = stream_seq(m.reply)
        seen += 1
        parsed = log.subjects.parse_event(m.subject)
        if parsed is not None:
            keep(parsed[0], to_record(log.subjects, seq, m.subject, m.data, m.headers))
        if done_at(seq, seen) or m.metadata.num_pending == 0:
            done.set()

    sub = await log.ordered(subject, 0, on_msg)
    try:
        while not done.is_set():
            before = seen
            try:
                await asyncio.wait_for(done.wait(), stall_s)
            except TimeoutError:
                if seen == before:
                    what = subject if isinstance(subject, str) else " and ".join(subject)
                    raise StoreError(f"reading {what} from the event log stalled after {seen} messages") from None
    finally:
        await sub.unsubscribe()


async def read_all(log: JetStreamLog, stall_s: float = 10.0) -> dict[str, list[Record]]:
    """Every workflow's records in stored order, up to the stream's last sequence when the read began."""
    info = await log.js.stream_info(log.stream)
    last = info.state.last_seq
    by_wf: dict[str, list[Record]] = {}
    if not info.state.messages:
        return by_wf

    def keep(wf: str, r: Record) -> None:
        if r.seq <= last:
            by_wf.setdefault(wf, []).append(r)

    await _scan(log, log.subjects.events, keep, lambda seq, _: seq >= last, stall_s)
    return by_wf


async def last_of_type(log: JetStreamLog, event_type: str, stored: int, stall_s: float = 10.0) -> dict[str, Record]:
    """Each workflow's last record of ``event_type``, from the first ``stored`` messages of that type
    (how many the stream held when the caller counted them: later ones arrive after those)."""
    found: dict[str, Record] = {}
    if stored <= 0:
        return found

    def keep(wf: str, r: Record) -> None:
        found[wf] = r

    # Stored with or without a partition in the subject: one consumer with both filters.
    await _scan(log, log.subjects.stored_of_type(event_type), keep, lambda _, n: n >= stored, stall_s)
    return found
