"""Partitioned work (actors.partitions): the hash (the server's), the share, the leases on a real
server, the stream's partitions, and two actor systems that split the workflows between them through
a consumer per partition (each decodes and handles only its own, and hands nothing on)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from cadre.actors.context import Context, Outside
from cadre.actors.outcome import Outcome
from cadre.actors.partitions import Leases, bucket_name, group_of, partition_of, rebalance
from cadre.actors.runtime import ActorSpec, elsewhere_delay, run_actors
from cadre.auth_cli import bootstrap, prepare_embedded
from cadre.bus.auth import AuthNames, creds_path
from cadre.bus.embedded import start_embedded
from cadre.bus.errors import ConcurrencyConflict, StreamConfigError
from cadre.bus.events import HandlerFailed, PlanProposed, WorkflowCompleted, WorkflowRequested
from cadre.bus.plan import Plan, Task
from cadre.bus.signing import Keyring, Signer, new_seed
from cadre.bus.stream import partitions_of
from cadre.settings import Settings
from cadre.store import JetStreamLog, StoredEvent
from cadre.store.authenticity import verdict
from cadre.store.integrity import verify
from cadre.store.state import WorkflowState
from tests.conftest import ev, requested, unique, until, with_partitions
from tests.test_runtime import FAST, wait_for_type


def test_a_workflow_has_one_partition_everywhere() -> None:
    assert partition_of("wf-1", 8) == partition_of("wf-1", 8)
    assert partition_of("wf-1", 1) == 0
    # Pinned: the hash must not change between versions, or a rolling upgrade splits a workflow; and it
    # is the server's (FNV-1a of the workflow token: the test below checks it against the server).
    assert [partition_of(f"wf-{i}", 1024) for i in range(4)] == [373, 994, 591, 188]
    assert [partition_of(f"wf{i}", 4) for i in range(1, 10)] == [3, 2, 1, 0, 3, 2, 1, 0, 3]
    spread = Counter(partition_of(f"wf-{i}", 4) for i in range(4000))
    assert set(spread) == {0, 1, 2, 3}
    assert min(spread.values()) > 800  # about 1000 each


def test_the_share_is_even_and_claims_only_free_partitions() -> None:
    alone = rebalance(8, frozenset(), frozenset(), members=1)
    assert alone.claim == tuple(range(8))
    assert alone.release == ()
    # A second member joined: the first hands back the top half; the second claims nothing yet.
    first = rebalance(8, frozenset(range(8)), frozenset(), members=2)
    assert first.release == (4, 5, 6, 7)
    assert first.claim == ()
    second = rebalance(8, frozenset(), frozenset(range(8)), members=2)
    assert second.claim == ()
    assert second.release == ()
    # Once handed back, the second claims them.
    assert rebalance(8, frozenset(), frozenset(range(4)), members=2).claim == (4, 5, 6, 7)
    # Three members, 8 partitions: shares of 3, 3 and 2 cover them all.
    assert rebalance(8, frozenset({0, 1, 2}), frozenset({3, 4, 5, 6}), members=3).claim == ()
    assert rebalance(8, frozenset(), frozenset(range(6)), members=3).claim == (6, 7)
    assert group_of(["planner", "agent", "planner"]) == "agent-planner"


async def test_leases_split_and_a_dead_holders_move_to_the_living(nc: NATS) -> None:
    bucket = bucket_name(unique("lease"))
    a = Leases(nc.jetstream(), bucket=bucket, group="agent", partitions=8, ttl=0.9)
    b = Leases(nc.jetstream(), bucket=bucket, group="agent", partitions=8, ttl=0.9)
    await a.start()
    assert a.held == frozenset(range(8))
    await b.start()
    try:
        await until(lambda: len(a.held) == 4 and len(b.held) == 4, 5)
        assert a.held | b.held == frozenset(range(8))
        assert not a.held & b.held
        # a dies (no hand-back, as under kill -9): its leases expire and b takes them.
        assert a._task is not None
        a._task.cancel()
        await until(lambda: b.held == frozenset(range(8)), 5)
    finally:
        await b.stop()
        a._kv = None  # dead: nothing to hand back
        await a.stop()
    await nc.jetstream().delete_key_value(bucket)


async def test_partition_of_is_the_partition_the_server_stores(log: JetStreamLog) -> None:
    plog = await with_partitions(log, 7)
    wfs = [f"w{i}-{'x' * (i % 5)}" for i in range(60)]
    for wf in wfs:
        await plog.append(wf, [requested(wf)], expected_seq=0)
    stored = {}
    for subject in await plog.subject_counts():
        parsed = plog.subjects.parse_event(subject)
        assert parsed is not None
        stored[parsed[0]] = int(subject.rsplit(".", 1)[1])
    assert stored == {wf: partition_of(wf, 7) for wf in wfs}
    # Read back as published: the subject a signature binds, and the workflow's reads still match.
    (rec,) = await plog.read(wfs[0])
    assert rec.subject == plog.subjects.event(wfs[0], WorkflowRequested.TYPE)
    last = await plog.last_of_type(wfs[0], WorkflowRequested.TYPE)
    assert isinstance(last, StoredEvent)
    assert last.seq == rec.seq


PLAN = Plan(nodes=(Task(id="a", tool="x"),))


async def test_signatures_and_the_chain_hold_on_a_partitioned_stream(log: JetStreamLog) -> None:
    """The signature binds the published subject (the partition is the server's function of the
    workflow id): a reader that did not sign it checks it against the keyring, and the chain holds."""
    plog = await with_partitions(log, 4)
    intake, planner = Signer(new_seed(), "intake"), Signer(new_seed(), "planner")
    keyring = Keyring.of([(intake.public_key, "intake"), (planner.public_key, "planner")])
    root = requested("wf-signed")
    r = await plog.signed_by(intake).append("wf-signed", [root], expected_seq=0)
    proposed = ev(PlanProposed(plan=PLAN), "wf-signed", cause=root.id, actor="planner")
    await plog.signed_by(planner).append("wf-signed", [proposed], expected_seq=r.last_seq)
    reader = JetStreamLog(plog.nc, stream=plog.spec, subjects=plog.subjects)  # signed nothing itself
    records = await reader.read_records("wf-signed")
    assert [verdict(rec, keyring).trusted for rec in records if isinstance(rec, StoredEvent)] == [True, True]
    assert verify(records).status == "intact"
    # The appends' expected sequence is checked against the stored (partitioned) subjects: stale is refused.
    late = ev(PlanProposed(plan=PLAN), "wf-signed", cause=root.id, i=2, actor="planner")
    with pytest.raises(ConcurrencyConflict):
        await plog.signed_by(planner).append("wf-signed", [late], expected_seq=r.last_seq)
    # An atomic batch is stored whole, under the workflow's partition.
    first = requested("wf-batch")
    batch = [first, ev(PlanProposed(plan=PLAN), "wf-batch", cause=first.id, actor="planner")]
    assert (await plog.append("wf-batch", batch, expected_seq=0)).count == 2
    assert [x.event.type for x in await plog.read("wf-batch")] == [WorkflowRequested.TYPE, PlanProposed.TYPE]
    # Moved to another workflow's subject, the same bytes and signature would not be accepted.
    assert isinstance(records[1], StoredEvent)
    moved = msgspec.structs.replace(records[1], subject=plog.subjects.event("wf-other", PlanProposed.TYPE))
    assert not verdict(moved, keyring).trusted


async def test_a_stream_keeps_the_partitions_it_got(log: JetStreamLog) -> None:
    plog = await with_partitions(log, 4)
    assert partitions_of((await log.js.stream_info(log.stream)).config) == 4
    # A process of another count is refused, with what to do; one without partitions leaves them.
    with pytest.raises(StreamConfigError, match="CADRE_PARTITIONS=4"):
        await with_partitions(log, 8)
    await log.ensure_stream()
    assert partitions_of((await log.js.stream_info(log.stream)).config) == 4
    # An actor system of another setting does not start: its consumers would miss the inputs.
    spec = ActorSpec(kind="finisher", handles=frozenset({WorkflowRequested.TYPE}), handler=_never)
    for options in (FAST, dataclasses.replace(FAST, partitions=2)):
        with pytest.raises(StreamConfigError, match="stores its events in 4 partitions"):
            async with run_actors(plog, [(spec, 1)], outside=Outside(), options=options):
                pass


async def _never(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
    raise AssertionError("not run")


def finisher(handled: list[str], tag: str = "done") -> ActorSpec:
    async def complete(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        handled.append(rec.event.workflow_id)
        return [WorkflowCompleted(result=tag)]

    return ActorSpec(kind="finisher", handles=frozenset({WorkflowRequested.TYPE}), handler=complete)


async def test_two_systems_split_the_workflows_and_handle_each_once(log: JetStreamLog) -> None:
    log = await with_partitions(log, 4)
    handled: dict[str, list[str]] = {"x": [], "y": []}

    def finisher(tag: str) -> ActorSpec:
        async def complete(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
            handled[tag].append(rec.event.workflow_id)
            return [WorkflowCompleted(result=tag)]

        return ActorSpec(kind="finisher", handles=frozenset({WorkflowRequested.TYPE}), handler=complete)

    options = dataclasses.replace(FAST, partitions=4, partition_lease_ttl=0.9)
    async with run_actors(log, [(finisher("x"), 1)], outside=Outside(), options=options) as x:
        async with run_actors(log, [(finisher("y"), 1)], outside=Outside(), options=options) as y:
            assert x.leases is not None
            assert y.leases is not None
            xl, yl = x.leases, y.leases
            await until(lambda: len(xl.held) == 2 and len(yl.held) == 2, 5)
            # Settled: x's pull requests on the partitions it handed back have expired (until then,
            # what they deliver is handed on at once: test_a_partition_handed_back_naks_...).
            await asyncio.sleep(options.fetch_timeout + 0.2)
            decoded = (x.cache.decoded, y.cache.decoded)
            reads = (x.cache.reads, y.cache.reads)
            handed_on = (x.handed_on, y.handed_on)
            wfs = [f"wf{i}" for i in range(24)]
            for wf in wfs:
                await log.append(wf, [requested(wf)], expected_seq=0)
            for wf in wfs:
                await wait_for_type(log, wf, WorkflowCompleted.TYPE)
            assert sorted(handled["x"] + handled["y"]) == sorted(wfs)  # each once
            assert all(xl.owns(wf) for wf in handled["x"])
            assert all(yl.owns(wf) for wf in handled["y"])
            # Each decoded its own workflows' events (2 a workflow), not the other's (48 in all): more
            # only where a state was read from the log (the feed late under load: 2 events at most
            # each), and a few of the runtime's own.
            for system, tag, before, read in ((x, "x", decoded[0], reads[0]), (y, "y", decoded[1], reads[1])):
                extra = 2 * (system.cache.reads - read) + 6
                assert 2 * len(handled[tag]) <= system.cache.decoded - before <= 2 * len(handled[tag]) + extra
            # Each input reached its partition's holder first: none was handed on.
            assert (x.handed_on, y.handed_on) == handed_on
        # y stopped and handed its leases back: x holds all four at its next tick.
        await until(lambda: len(xl.held) == 4, 5)
        await log.append("late", [requested("late")], expected_seq=0)
        await wait_for_type(log, "late", WorkflowCompleted.TYPE)
        assert handled["x"][-1] == "late"


async def test_an_actor_role_keeps_its_leases_under_least_privilege(tmp_path: Path) -> None:
    """With NATS authorization on, an actor's credentials reach the lease bucket (created if missing);
    a client's do not."""
    settings = Settings.load(data_dir=tmp_path / "data")
    server = start_embedded(settings.data_dir, config=prepare_embedded(settings))
    try:
        await bootstrap(settings, server.url, settings.auth_dir)
        assert bucket_name(settings.subject_prefix) == AuthNames(prefix=settings.subject_prefix).lease_bucket
        agent = await nats.connect(server.url, user_credentials=str(creds_path(settings.auth_dir, "agent")))
        client = await nats.connect(server.url, user_credentials=str(creds_path(settings.auth_dir, "client")))
        try:
            leases = Leases(
                agent.jetstream(), bucket=bucket_name(settings.subject_prefix), group="agent", partitions=4, ttl=3
            )
            await leases.start()
            assert leases.held == frozenset(range(4))
            await leases.stop()
            assert leases.held == frozenset()
            other = Leases(
                client.jetstream(timeout=0.5),
                bucket=bucket_name(settings.subject_prefix),
                group="agent",
                partitions=4,
                ttl=3,
            )
            with pytest.raises((nats.errors.TimeoutError, nats.js.errors.APIError)):
                await other.start()
        finally:
            await agent.close()
            await client.close()
    finally:
        server.stop()


def test_an_input_handed_on_waits_longer_each_time() -> None:
    assert [elsewhere_delay(d) for d in (1, 2, 3, 4)] == [0.0, 0.01, 0.02, 0.04]
    assert elsewhere_delay(30) == 0.2


async def test_with_partitions_a_failing_input_is_dead_lettered_after_its_attempts(log: JetStreamLog) -> None:
    calls: list[str] = []

    async def broken(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        calls.append(rec.event.workflow_id)
        raise RuntimeError("boom")

    spec = ActorSpec(kind="finisher", handles=frozenset({WorkflowRequested.TYPE}), handler=broken)
    options = dataclasses.replace(FAST, partitions=2, partition_lease_ttl=3)
    log = await with_partitions(log, 2)
    async with run_actors(log, [(spec, 1)], outside=Outside(), options=options):
        await log.append("wf", [requested("wf")], expected_seq=0)
        events = await wait_for_type(log, "wf", HandlerFailed.TYPE)
    assert calls == ["wf"] * FAST.max_attempts
    dead = events[-1].event.data
    assert isinstance(dead, HandlerFailed)
    assert dead.attempts == FAST.max_attempts


async def test_a_process_with_another_ttl_renews_at_the_buckets_pace(nc: NATS) -> None:
    bucket = bucket_name(unique("lease"))
    first = Leases(nc.jetstream(), bucket=bucket, group="agent", partitions=2, ttl=1.2)
    later = Leases(nc.jetstream(), bucket=bucket, group="agent", partitions=2, ttl=30)
    await first.start()
    await later.start()
    try:
        assert later.ttl == 1.2  # renewing every 10 s, its leases would expire every 1.2 s
    finally:
        await later.stop()
        await first.stop()
    await nc.jetstream().delete_key_value(bucket)


async def test_inputs_stored_before_the_partitions_complete_after_them(log: JetStreamLog) -> None:
    """A stream that existed before partitions were switched on: its stored inputs (no partition in
    their subjects) go through the kind's shared consumer, handed on to their partition's holder."""
    handled: list[str] = []
    old = [f"old{i}" for i in range(8)]
    for wf in old:
        await log.append(wf, [requested(wf)], expected_seq=0)
    plog = await with_partitions(log, 2)
    options = dataclasses.replace(FAST, partitions=2, partition_lease_ttl=0.9)
    async with (
        run_actors(plog, [(finisher(handled), 1)], outside=Outside(), options=options),
        run_actors(plog, [(finisher(handled), 1)], outside=Outside(), options=options),
    ):
        for wf in ("new0", "new1", "new2"):
            await plog.append(wf, [requested(wf)], expected_seq=0)
        for wf in [*old, "new0", "new1", "new2"]:
            await wait_for_type(plog, wf, WorkflowCompleted.TYPE)
        await until(lambda: len(handled) == 11, 5)
        assert sorted(handled) == sorted([*old, "new0", "new1", "new2"])  # each once
    # The old inputs' subjects have no partition, the new ones' have theirs.
    subjects = await plog.subject_counts()
    assert f"{plog.subjects.event('old0', WorkflowRequested.TYPE)}" in subjects
    assert f"{plog.subjects.event('new1', WorkflowRequested.TYPE)}.{partition_of('new1', 2)}" in subjects


async def test_a_partition_handed_back_naks_what_reached_it_at_once(log: JetStreamLog) -> None:
    """x holds both partitions, its loops waiting in long pull requests; y joins and x hands partition
    1 back. An input of partition 1 stored then reaches x's open request: x naks it without delay, and
    y handles it long before the ack wait would have let it go."""
    log = await with_partitions(log, 2)
    handled: dict[str, list[str]] = {"x": [], "y": []}
    base = dataclasses.replace(FAST, partitions=2, partition_lease_ttl=0.9, ack_wait=30)
    slow = dataclasses.replace(base, fetch_timeout=2.0)  # x's pull requests stay open 2 s
    async with run_actors(log, [(finisher(handled["x"]), 1)], outside=Outside(), options=slow) as x:
        xl = x.leases
        assert xl is not None
        assert xl.held == frozenset({0, 1})
        async with run_actors(log, [(finisher(handled["y"]), 1)], outside=Outside(), options=base) as y:
            await until(lambda: xl.held == frozenset({0}), 5)
            wf = next(f"wf{i}" for i in range(1, 20) if partition_of(f"wf{i}", 2) == 1)
            await log.append(wf, [requested(wf)], expected_seq=0)
            async with asyncio.timeout(10):  # far less than the ack wait (30 s)
                await wait_for_type(log, wf, WorkflowCompleted.TYPE)
            assert handled == {"x": [], "y": [wf]}
            assert x.handed_on >= 1  # it did reach x first (and maybe again, while x's request was open)
            assert y.handed_on == 0
