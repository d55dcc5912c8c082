"""The durable intake: requests stored by a stream, answered through the pairing bucket, none lost."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from cadre.actors import intake_pairing as pairing
from cadre.actors.intake import Intake, payload_digest, serve_intake, stored_workflow_id
from cadre.actors.intake_metrics import IntakeMetrics
from cadre.bus.auth import AuthNames, permissions
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.bus.events import WorkflowRequested
from cadre.bus.requests_stream import IntakeOptions, IntakeSpec, ensure_intake_streams, intake_spec
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects
from cadre.store.jetstream import JetStreamLog, stream_seq
from cadre.store.records import StoredEvent, to_record
from tests.conftest import unique

# -- the pairing record (plain functions) ------------------------------------------------------------


def test_a_reserved_copy_is_settled_then_claimed_once() -> None:
    p, step = pairing.reserve(pairing.Pairing(), 7)
    assert step == "proceed"
    assert p is not None
    assert pairing.claim(p) is None  # reserved, not settled: nothing to claim yet
    assert pairing.in_progress(p)
    assert pairing.refuse(p, 9) is None  # a copy is being taken: a requester may not refuse
    settled = pairing.settle(p, 7, {"workflow_id": "wf-a"})
    assert settled is not None
    claimed = pairing.claim(settled)
    assert claimed is not None
    assert claimed[1] == {"workflow_id": "wf-a"}
    assert pairing.claim(claimed[0]) is None  # one workflow id goes to one requester
    assert pairing.reserve(claimed[0], 7) == (None, "done")  # a redelivery after the answer: ack only
    assert pairing.reserve(p, 7) == (None, "again")  # a redelivery before it: take it again (idempotent)


def test_a_refusal_drops_one_copy_stored_up_to_its_sequence() -> None:
    refused = pairing.refuse(pairing.Pairing(), 10)
    assert refused is not None
    later, step = pairing.reserve(refused, 11)  # stored after the refusal: not the refused request
    assert step == "proceed"
    assert later is not None
    dropped, step = pairing.reserve(refused, 10)
    assert step == "drop"
    assert dropped is not None
    assert dropped.refusals == ()
    again, step = pairing.reserve(dropped, 9)  # the refusal was used up
    assert step == "proceed"
    assert again is not None


def test_identical_requests_pair_first_in_first_out() -> None:
    p = pairing.Pairing()
    for seq in (3, 5):
        p = pairing.reserve(p, seq)[0] or p
    p = pairing.settle(p, 5, {"workflow_id": "wf-5"}) or p
    p = pairing.settle(p, 3, {"workflow_id": "wf-3"}) or p
    first = pairing.claim(p)
    assert first is not None
    assert first[1] == {"workflow_id": "wf-3"}
    second = pairing.claim(first[0])
    assert second is not None
    assert second[1] == {"workflow_id": "wf-5"}
    assert pairing.decode(pairing.encode(second[0])) == second[0]


def test_a_stored_request_keeps_its_workflow_id_across_deliveries() -> None:
    a = stored_workflow_id("2026-12-05T00:00:00", 42, None)
    assert a == stored_workflow_id("2026-12-05T00:00:00", 42, None)
    assert a != stored_workflow_id("2026-12-05T00:00:01", 42, None)  # a stream made again numbers from 1
    assert stored_workflow_id("e", 1, "order-1") == stored_workflow_id("f", 2, "order-1")  # the key decides


def test_the_roles_that_host_the_intake_may_take_stored_requests_and_no_client_may() -> None:
    names = AuthNames(prefix="acme", stream="ACME")
    needed = {
        "$JS.API.CONSUMER.MSG.NEXT.ACME_REQUESTS.acme_intake",
        "$JS.ACK.ACME_REQUESTS.acme_intake.>",
        "$KV.ACME_INTAKE.>",
        "acme.intake.settled",
    }
    for role in ("intake", "planner", "node"):
        p = permissions(role, names)
        assert needed <= set(p.publish or ())
        assert {"acme.requests", "acme.intake.settled"} <= set(p.subscribe or ())
    for role in ("client", "approver", "validator", "agent"):
        assert not needed & set(permissions(role, names).publish or ())


# -- against the server --------------------------------------------------------------------------------


@dataclass
class Deployment:
    url: str
    log: JetStreamLog
    spec: IntakeSpec

    async def requested(self) -> dict[str, list[str]]:
        """Every stored workflow_requested: request text -> workflow ids."""
        out: dict[str, list[str]] = defaultdict(list)
        js = self.log.js
        info = await js.stream_info(self.log.stream)
        if info.state.messages == 0:
            return out
        last = info.state.last_seq
        done = asyncio.Event()

        async def on_msg(m: Msg) -> None:
            rec = to_record(self.log.subjects, stream_seq(m.reply), m.subject, m.data, m.headers)
            if isinstance(rec, StoredEvent) and isinstance(rec.event.data, WorkflowRequested):
                out[rec.event.data.request].append(rec.event.workflow_id)
            if rec.seq >= last:
                done.set()

        sub = await js.subscribe(self.log.subjects.events, stream=self.log.stream, ordered_consumer=True, cb=on_msg)
        try:
            await asyncio.wait_for(done.wait(), 10)
        finally:
            await sub.unsubscribe()
        return out

    async def backlog(self) -> int:
        return (await self.log.js.stream_info(self.spec.stream)).state.messages


@pytest.fixture
async def deployment(nats_url: str, nc: NATS) -> AsyncIterator[Deployment]:
    prefix = unique("i")
    spec = StreamSpec(name=prefix.upper(), subjects=f"{prefix}.evt.>", storage="memory")
    log = JetStreamLog(nc, stream=spec, subjects=Subjects(prefix))
    await log.ensure_stream()
    ispec = intake_spec(spec, log.subjects, max_bytes=8 * 1024 * 1024)
    await ensure_intake_streams(log.js, ispec)
    yield Deployment(nats_url, log, ispec)
    js = nc.jetstream()
    for name in (spec.name, ispec.stream, f"KV_{ispec.bucket}"):
        with contextlib.suppress(Exception):
            await js.delete_stream(name)


class Running:
    """An intake on a connection of its own, which a test can kill (connection gone, nothing drained)."""

    def __init__(self, d: Deployment, options: IntakeOptions) -> None:
        self.d, self.options = d, options
        self.started = asyncio.Event()
        self.nc: NATS | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        self.nc = await connect(ConnectOptions(url=self.d.url, name="intake"))
        elog = JetStreamLog(self.nc, stream=self.d.log.spec, subjects=self.d.log.subjects)
        async with serve_intake(elog, self.d.spec, self.options):
            await barrier(self.nc)
            self.started.set()
            await asyncio.Event().wait()

    async def kill(self) -> None:
        assert self.nc is not None
        await self.nc.close()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.nc is not None:
            await self.nc.close()


async def start(d: Deployment, options: IntakeOptions) -> Running:
    r = Running(d, options)
    await asyncio.wait_for(r.started.wait(), 10)
    return r


async def until_taken(d: Deployment, within: float = 15) -> None:
    async with asyncio.timeout(within):
        for _ in itertools.count():
            if await d.backlog() == 0:
                return
            await asyncio.sleep(0.05)


async def test_a_burst_across_an_intake_kill_loses_and_duplicates_nothing(deployment: Deployment, nc: NATS) -> None:
    """Half with reply, half publish only; the intake killed after 40 %, started again after 60 %:
    every request is a workflow, or a refusal its requester received (and then is no workflow)."""
    d, n = deployment, 1000
    options = IntakeOptions(reply_wait=2.0, ack_wait=1.0)
    client = await connect(ConnectOptions(url=d.url, name="requester"))
    answers: dict[int, dict[str, Any] | None] = {}

    async def ask(i: int) -> None:
        try:
            reply = await client.request(d.spec.subject, body(i), timeout=6)
            answers[i] = json.loads(reply.data)
        except nats.errors.TimeoutError:
            answers[i] = None  # the intake died holding it, or none ran: it must be a workflow

    first = await start(d, options)
    second: Running | None = None
    asks = []
    try:
        for i in range(n):
            if i == n * 2 // 5:
                await first.kill()
            if i == n * 3 // 5:
                second = await start(d, options)
            if i % 2:
                asks.append(asyncio.create_task(ask(i)))
            else:
                await client.publish(d.spec.subject, body(i))
            if i % 20 == 0:
                await asyncio.sleep(0.005)
        await barrier(client)
        await asyncio.gather(*asks)
        await until_taken(d)
    finally:
        await client.close()
        if second is not None:
            await second.stop()
    made = await d.requested()
    lost, refused, duplicated = [], 0, [r for r, ids in made.items() if len(set(ids)) > 1]
    for i in range(n):
        wfs = made.get(f"r{i}", [])
        answer = answers.get(i)
        if answer is not None and "error" in answer:
            assert answer["error"]["code"] == "overloaded"
            assert answer["error"]["retry_after_s"] >= 1
            assert not wfs, f"request {i} was answered overloaded, yet it is workflow {wfs}"
            refused += 1
            continue
        if not wfs:
            lost.append(i)
        elif answer is not None:
            assert answer == {"workflow_id": wfs[0]}
    assert not lost, f"{len(lost)} requests lost: {lost[:10]}"
    assert not duplicated
    assert sum(1 for a in answers.values() if a is not None and "workflow_id" in a) > 0
    assert len(made) + refused == n


async def test_requests_published_while_no_intake_runs_become_workflows(deployment: Deployment, nc: NATS) -> None:
    d = deployment
    for i in range(20):
        await nc.publish(d.spec.subject, body(i))
    await barrier(nc)
    async with asyncio.timeout(5):  # JetStream stores what it received a moment later
        while await d.backlog() < 20:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    intake = await start(d, IntakeOptions())
    try:
        await until_taken(d)
    finally:
        await intake.stop()
    made = await d.requested()
    assert sorted(made) == sorted(f"r{i}" for i in range(20))


async def test_an_idempotency_key_still_answers_existing(deployment: Deployment, nc: NATS) -> None:
    d = deployment
    intake = await start(d, IntakeOptions())
    try:
        payload = json.dumps({"request": "once", "idempotency_key": "order-7"}).encode()
        first = json.loads((await nc.request(d.spec.subject, payload, timeout=5)).data)
        again = json.loads((await nc.request(d.spec.subject, payload, timeout=5)).data)
        bad = json.loads((await nc.request(d.spec.subject, b'{"requets": "typo"}', timeout=5)).data)
    finally:
        await intake.stop()
    assert "existing" not in first
    assert again == {"workflow_id": first["workflow_id"], "existing": True}
    assert bad["error"]["code"] == "unknown_field"
    assert (await d.requested())["once"] == [first["workflow_id"]]


async def test_overloaded_is_answered_only_for_a_request_that_becomes_no_workflow(
    deployment: Deployment, nc: NATS
) -> None:
    """An intake whose consumer is held: its requesters are refused after the wait, and their stored
    requests are then dropped, not made workflows; a request published only is still taken."""
    d = deployment
    intake = Intake(d.log, d.spec, IntakeOptions(reply_wait=0.3), IntakeMetrics.create())
    await intake.start()
    sub = await nc.subscribe(d.spec.subject, queue="cadre-intake", cb=intake.on_request)
    await barrier(nc)
    requester = await connect(ConnectOptions(url=d.url, name="requester"))
    try:
        answers = await asyncio.gather(*(requester.request(d.spec.subject, body(i), timeout=5) for i in range(3)))
        await requester.publish(d.spec.subject, body(99))
        await barrier(requester)
    finally:
        await requester.close()
    for a in answers:
        err = json.loads(a.data)["error"]
        assert err["code"] == "overloaded"
        assert err["retry_after_s"] >= 1
    ready = asyncio.Event()
    consumer = asyncio.create_task(intake.consume(ready))
    try:
        await until_taken(d)
    finally:
        intake.stopping.set()
        await consumer
        await sub.unsubscribe()
    assert sorted(await d.requested()) == ["r99"]
    record = await intake.change(payload_digest(body(0)), lambda p: (None, p))
    assert record.refusals == ()
    assert record.copies == ()


def body(i: int) -> bytes:
    return json.dumps({"request": f"r{i}"}).encode()


async def test_a_full_stream_refuses_a_request_and_the_requester_is_told(deployment: Deployment, nc: NATS) -> None:
    """Stream bound 3: three requests published only fill it; a requester's request is refused by the
    stream, and after the wait it is answered overloaded; a request published only while it is full
    is counted. The three stored ones still become workflows."""
    d = deployment
    js = d.log.js
    await js.delete_stream(d.spec.stream)
    small = dataclasses.replace(d.spec, max_msgs=3)
    await ensure_intake_streams(js, small)
    registry = CollectorRegistry()
    intake = Intake(d.log, small, IntakeOptions(reply_wait=0.3), IntakeMetrics.create(registry))
    await intake.start()
    sub = await nc.subscribe(small.subject, queue="cadre-intake", cb=intake.on_request)
    requester = await connect(ConnectOptions(url=d.url, name="requester"))
    try:
        for i in range(3):
            await requester.publish(small.subject, body(i))
        await barrier(requester)
        async with asyncio.timeout(5):
            while await d.backlog() < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        answer = json.loads((await requester.request(small.subject, body(7), timeout=5)).data)
        await requester.publish(small.subject, body(8))  # the stream is full (and known to be)
        await barrier(requester)
    finally:
        await requester.close()
    assert answer["error"]["code"] == "overloaded"
    # The publish-only refusal is counted by the intake's own subscriber, which may take its turn
    # after the requester's flush has returned (seen on a loaded machine): wait for it, bounded.
    refused = "cadre_intake_publish_only_refused_total"
    async with asyncio.timeout(5):
        while registry.get_sample_value(refused) != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # and it stays one: the request is counted once
    assert registry.get_sample_value(refused) == 1
    ready = asyncio.Event()
    consumer = asyncio.create_task(intake.consume(ready))
    try:
        await until_taken(d)
    finally:
        intake.stopping.set()
        await consumer
        await sub.unsubscribe()
    assert sorted(await d.requested()) == ["r0", "r1", "r2"]
