"""The event log on a real nats-server: the read contract, then appends and their guarantees."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from cadre.bus import StreamSpec, Subjects
from cadre.bus.errors import AppendError, ConcurrencyConflict
from cadre.bus.events import Envelope, StepCompleted, WorkflowCompleted
from cadre.bus.pubacks import mux_for
from cadre.bus.retry import RetryPolicy
from cadre.store import MAX_ATOMIC_BATCH, FileLog, JetStreamLog, Malformed, StoredEvent, export
from tests.conftest import ev, requested, unchained
from tests.log_contract import LogContract, MakeSource, happy_run


class TestJetStreamLog(LogContract):
    @pytest.fixture
    def make_source(self, log: JetStreamLog, nc: NATS) -> MakeSource:
        async def make(workflows: dict[str, list[Envelope]], garbage: list[tuple[str, bytes]]) -> JetStreamLog:
            for wf, events in workflows.items():
                await log.append(wf, events, expected_seq=0)
            js = nc.jetstream()
            for suffix, data in garbage:
                await js.publish(f"{log.subjects.prefix}.evt.{suffix}", data)
            return log

        return make


def steps(wf: str, n: int, cause: str) -> list[Envelope]:
    return [
        ev(StepCompleted(task_id="t", step_id=f"s{i}", tool="x", planned_tool="x"), wf, cause=cause, i=i)
        for i in range(n)
    ]


async def test_duplicate_msg_id_is_stored_once(log: JetStreamLog) -> None:
    root = requested("wf")
    first = await log.append("wf", [root])
    again = await log.append("wf", [root])
    assert (first.already_stored, again.already_stored) == (False, True)
    assert again.last_seq == first.last_seq
    assert len(await log.read("wf")) == 1


async def test_conflict_carries_the_current_sequence(log: JetStreamLog) -> None:
    root = requested("wf")
    r1 = await log.append("wf", [root], expected_seq=0)
    r2 = await log.append("wf", steps("wf", 2, root.id), expected_seq=r1.last_seq)
    late = ev(WorkflowCompleted(result=1), "wf", cause="someone-else")
    with pytest.raises(
        ConcurrencyConflict,
        match=rf"^workflow 'wf' moved on: expected .* {r1.last_seq}, found {r2.last_seq};",
    ):
        await log.append("wf", [late], expected_seq=r1.last_seq)
    with pytest.raises(ConcurrencyConflict) as info:
        await log.append("wf", [late], expected_seq=r1.last_seq)
    assert (info.value.expected, info.value.actual, info.value.code) == (
        r1.last_seq,
        r2.last_seq,
        "concurrency_conflict",
    )
    assert len(await log.read("wf")) == 3


async def test_first_append_expects_an_empty_workflow(log: JetStreamLog) -> None:
    await log.append("wf", [requested("wf")], expected_seq=0)
    with pytest.raises(ConcurrencyConflict, match=r"expected its last event at stream sequence 0, found 1"):
        await log.append("wf", [ev(WorkflowCompleted(result=1), "wf", cause="x")], expected_seq=0)


async def test_other_workflows_do_not_conflict(log: JetStreamLog) -> None:
    r = await log.append("a", [requested("a")], expected_seq=0)
    await log.append("b", [requested("b")], expected_seq=0)  # moves the stream, not workflow a
    await log.append("a", steps("a", 1, "x"), expected_seq=r.last_seq)


@pytest.mark.parametrize("n", [1, 5])
async def test_retry_after_lost_ack_recognises_its_own_write(log: JetStreamLog, n: int) -> None:
    """The same append sent again with the same expectation (what a retry after a lost ack
    does) is answered 'wrong last sequence' by JetStream; the log sees its own events there."""
    root = requested("wf")
    r0 = await log.append("wf", [root], expected_seq=0)
    batch = steps("wf", n, root.id)
    first = await log.append("wf", batch, expected_seq=r0.last_seq)
    retry = await log.append("wf", batch, expected_seq=r0.last_seq)
    assert retry.already_stored
    assert not first.already_stored
    assert retry.last_seq == first.last_seq
    assert len(await log.read("wf")) == 1 + n


async def test_lost_ack_on_the_wire_is_retried(log: JetStreamLog, nc: NATS) -> None:
    """Lose the first ack for real: the event is stored and JetStream answers, but the reply is
    dropped as it reaches cadre's client (its reply mux); the append times out, the log retries,
    gets 'wrong last sequence', and recognises its own write."""
    root = requested("wf")
    quick = JetStreamLog(nc, stream=log.spec, subjects=log.subjects, timeout=0.3, retry=RetryPolicy(bound_s=2))
    mux = mux_for(nc)
    assert mux is not None
    real_deliver = mux.deliver
    dropped: list[bytes] = []
    delivered: list[bytes] = []

    def lossy_deliver(subject: bytes, data: bytes, headers: dict[str, str] | None) -> None:
        if not dropped:
            dropped.append(data)
            return
        delivered.append(data)
        real_deliver(subject, data, headers)

    mux.deliver = lossy_deliver  # type: ignore[method-assign]
    try:
        result = await quick.append("wf", [root], expected_seq=0)
    finally:
        mux.deliver = real_deliver  # type: ignore[method-assign]
    assert json.loads(dropped[0])["seq"] > 0  # the lost reply was the ack of a stored event
    assert [json.loads(d)["error"]["err_code"] for d in delivered] == [10071]  # the retry: wrong last sequence
    assert result.already_stored
    assert [s.event for s in await log.read("wf")] == [root]


async def test_lost_ack_is_retried_on_a_nats_py_client(log: JetStreamLog, nats_url: str) -> None:
    """The same on a client made by nats-py itself, whose appends go through ``Client.request``."""
    nc = await nats.connect(nats_url)
    root = requested("wf")
    quick = JetStreamLog(nc, stream=log.spec, subjects=log.subjects, timeout=0.3, retry=RetryPolicy(bound_s=2))
    real_request = nc.request
    sends: list[str] = []

    async def lossy_request(subject: str, payload: bytes = b"", **kw: Any) -> Any:
        if subject.startswith(log.subjects.prefix + ".evt."):
            sends.append(subject)
            if len(sends) == 1:  # deliver the publish, drop its ack
                await nc.publish(subject, payload, headers=kw.get("headers"))
                raise nats.errors.TimeoutError
        return await real_request(subject, payload, **kw)

    nc.request = lossy_request  # type: ignore[method-assign]
    try:
        assert mux_for(nc) is None
        result = await quick.append("wf", [root], expected_seq=0)
    finally:
        await nc.close()
    assert len(sends) == 2
    assert result.already_stored
    assert [s.event for s in await log.read("wf")] == [root]


async def test_batch_is_all_or_nothing(log: JetStreamLog) -> None:
    root = requested("wf")
    r = await log.append("wf", [root], expected_seq=0)
    await log.append("wf", steps("wf", 1, "other"), expected_seq=r.last_seq)
    with pytest.raises(ConcurrencyConflict):
        await log.append("wf", steps("wf", 10, root.id), expected_seq=r.last_seq)
    assert len(await log.read("wf")) == 2  # none of the 10


async def test_batch_larger_than_one_atomic_batch(log: JetStreamLog) -> None:
    n = MAX_ATOMIC_BATCH + 250
    events = steps("wf", n, "c")
    result = await log.append("wf", events, expected_seq=0)
    assert result.count == n
    assert unchained([s.event for s in await log.read("wf")]) == events


async def test_ten_thousand_events_read_back_in_order(log: JetStreamLog) -> None:
    events = steps("wf", 10_000, "c")
    await log.append("wf", events, expected_seq=0)
    await log.append("other", [requested("other")])  # interleaved noise after the workflow
    stored = await log.read("wf")
    assert len(stored) == 10_000
    assert [s.event.id for s in stored] == [e.id for e in events]
    assert all(a.seq < b.seq for a, b in itertools.pairwise(stored))


async def test_export_then_file_reader_gives_equal_events(log: JetStreamLog, nc: NATS, tmp_path: Path) -> None:
    await log.append("a", happy_run("a"), expected_seq=0)
    await log.append("b", happy_run("b"), expected_seq=0)
    await nc.jetstream().publish(f"{log.subjects.prefix}.evt.a.junk", b"{not json")
    buf = io.BytesIO()
    n = await export(log, ["a", "b"], buf)
    assert n == 9
    path = tmp_path / "export.jsonl"
    path.write_bytes(buf.getvalue())
    flog = FileLog.load(path)
    for wf in ("a", "b"):
        assert await flog.read_records(wf) == await log.read_records(wf)
    assert await flog.workflows() == ["a", "b"]


async def test_follow_yields_history_then_live_events(log: JetStreamLog) -> None:
    events = happy_run("wf")
    await log.append("wf", events[:2], expected_seq=0)
    seen: list[StoredEvent] = []
    history_seen = asyncio.Event()

    async def reader() -> None:
        async for r in log.follow("wf"):
            assert isinstance(r, StoredEvent)
            seen.append(r)
            if len(seen) == 2:
                history_seen.set()
            if len(seen) == 4:
                return

    task = asyncio.create_task(reader())
    await asyncio.wait_for(history_seen.wait(), 5)
    last = await log.last_seq("wf")
    await log.append("wf", events[2:], expected_seq=last)
    await asyncio.wait_for(task, 5)
    assert unchained([s.event for s in seen]) == events


async def test_follow_reports_malformed_live(log: JetStreamLog, nc: NATS) -> None:
    await log.append("wf", [requested("wf")])
    agen = log.follow("wf")
    first = await asyncio.wait_for(agen.__anext__(), 5)
    await nc.jetstream().publish(f"{log.subjects.prefix}.evt.wf.x", b"oops")
    second = await asyncio.wait_for(agen.__anext__(), 5)
    await agen.aclose()
    assert isinstance(first, StoredEvent)
    assert isinstance(second, Malformed)
    assert second.seq == first.seq + 1


async def test_append_without_a_stream_says_how_to_fix(nc: NATS) -> None:
    orphan = JetStreamLog(nc, stream=StreamSpec(name="NONE"), subjects=Subjects("nostream"))
    with pytest.raises(AppendError, match=r"^no stream stores 'nostream\.evt\.wf\.workflow_requested': create"):
        await orphan.append("wf", [requested("wf")])


async def test_append_checks_its_arguments(log: JetStreamLog) -> None:
    with pytest.raises(ValueError, match=r"^append needs at least one event$"):
        await log.append("wf", [])
    with pytest.raises(ValueError, match=r"^event .* belongs to workflow 'b', not 'a'$"):
        await log.append("a", [requested("b")])
