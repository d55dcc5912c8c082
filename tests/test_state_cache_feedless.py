"""The state cache without its feed (``CADRE_STATE_FEED=off``): it folds the process's own appends
at their ack and the inputs handed to it when they continue the chain, and reads a gap from the
log, once; its states are always the fold of the log up to their sequence."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from cadre.actors.context import Context, Outside
from cadre.actors.outcome import Outcome
from cadre.actors.runtime import ActorSpec, run_actors
from cadre.actors.state_cache import StateCache, stored_after
from cadre.bus import codec
from cadre.bus.errors import ConcurrencyConflict
from cadre.bus.events import Envelope, PlanProposed, StepsProposed, WorkflowCompleted, WorkflowRequested
from cadre.bus.plan import Plan, Task
from cadre.settings import Settings
from cadre.store import JetStreamLog, StoredEvent
from cadre.store.records import to_record
from cadre.store.state import WorkflowState, fold
from cadre.system import KINDS, state_feed
from tests.conftest import ev, requested, until, with_partitions
from tests.test_runtime import FAST, wait_for_type

OFF = dataclasses.replace(FAST, state_feed=False)
PLAN = Plan(nodes=(Task(id="a", tool="x"),))


@pytest_asyncio.fixture
async def cache(log: JetStreamLog) -> AsyncIterator[StateCache]:
    c = StateCache(log, feed=False)
    await c.start()
    yield c
    await c.stop()


@pytest_asyncio.fixture
async def other(nc: NATS, log: JetStreamLog) -> JetStreamLog:
    """The same stream as another process writes to it (no cache of this process hears its appends)."""
    return JetStreamLog(nc, stream=log.spec, subjects=log.subjects)


def plan_event(wf: str, cause: str, i: int = 1) -> Envelope:
    return ev(PlanProposed(plan=PLAN), wf, cause=cause, i=i, actor="planner")


async def assert_is_the_log(log: JetStreamLog, state: WorkflowState) -> None:
    """The state is the fold of the log up to its sequence: nothing missing, nothing twice."""
    events = [e for e in await log.read(state.workflow_id) if e.seq <= state.last_seq]
    expected = fold(state.workflow_id, events)
    assert state.last_seq == expected.last_seq == events[-1].seq
    assert state.events == expected.events == len(events)
    assert state.last_hash == expected.last_hash
    assert state.status == expected.status


async def test_own_appends_are_folded_at_their_ack_with_no_feed(log: JetStreamLog, cache: StateCache) -> None:
    root = requested("wf")
    first = await log.append("wf", [root], expected_seq=0)
    plan = ev(PlanProposed(plan=PLAN), "wf", cause=root.id, actor="planner")
    second = await log.append("wf", [plan], expected_seq=first.last_seq, prev=first.last_hash, atomic=False)
    state = await asyncio.wait_for(cache.state_at("wf", second.last_seq), 1)
    assert cache._sub is None  # no feed
    assert cache.reads == 0  # nothing read from the log
    assert cache.decoded == 2
    assert state.status == "planned"
    assert state.last_seq == second.last_seq
    assert cache.head("wf") == (second.last_seq, second.last_hash)
    known = cache.recent(second.last_seq)
    assert known is not None
    assert known[0].event.id == plan.id
    assert known[1].trusted
    await assert_is_the_log(log, state)


async def test_a_gap_another_process_appended_is_read_once_for_every_waiter(
    log: JetStreamLog, other: JetStreamLog, cache: StateCache
) -> None:
    root = requested("wf")
    first = await log.append("wf", [root], expected_seq=0)
    theirs = await other.append("wf", [plan_event("wf", root.id)], expected_seq=first.last_seq, prev=first.last_hash)
    assert (await cache.state_at("wf", first.last_seq)).last_seq == first.last_seq
    assert cache.reads == 0
    states = await asyncio.gather(*(cache.state_at("wf", theirs.last_seq) for _ in range(5)))
    assert (cache.gets, cache.reads) == (1, 0)  # one message asked for, once for the five
    for state in states:
        assert state.last_seq == theirs.last_seq
        assert state.status == "planned"
        await assert_is_the_log(log, state)


async def handed(log: JetStreamLog, seq: int) -> tuple[StoredEvent, int | None]:
    """The message at ``seq`` as the runtime hands it over: decoded, and where JetStream stored it."""
    subject, data, headers = await log.raw_message(seq)
    rec = to_record(log.subjects, seq, subject, data, headers)
    assert isinstance(rec, StoredEvent)
    return rec, stored_after(headers, log.subjects.workflow(rec.event.workflow_id))


async def test_a_handed_input_stored_right_after_the_state_is_folded_else_the_log_is_read(
    log: JetStreamLog, other: JetStreamLog, cache: StateCache
) -> None:
    root = requested("wf")
    first = await other.append("wf", [root], expected_seq=0)
    second = await other.append("wf", [plan_event("wf", root.id)], expected_seq=first.last_seq)
    third = await other.append(
        "wf", [ev(WorkflowCompleted(result="ok"), "wf", cause=root.id, i=2)], expected_seq=second.last_seq
    )
    # The workflow's first message (stored expecting nothing) starts it: no read.
    rec, after = await handed(log, first.last_seq)
    assert after == 0
    state = await cache.state_at("wf", first.last_seq, given=rec, after=after)
    assert (state.last_seq, cache.reads, cache.gets) == (first.last_seq, 0, 0)
    # Its next message, stored expecting the first: folded, no read.
    rec, after = await handed(log, second.last_seq)
    state = await cache.state_at("wf", second.last_seq, given=rec, after=after)
    assert (state.last_seq, cache.reads, cache.gets) == (second.last_seq, 0, 0)
    await assert_is_the_log(log, state)
    # A message after a gap is not folded over it: the gap is read, then it is folded.
    cache.forget("wf")
    rec, after = await handed(log, first.last_seq)
    await cache.state_at("wf", first.last_seq, given=rec, after=after)
    rec, after = await handed(log, third.last_seq)
    state = await cache.state_at("wf", third.last_seq, given=rec, after=after)
    assert state.last_seq == third.last_seq
    assert (cache.gets, cache.reads) == (1, 0)
    assert state.status == "completed"
    await assert_is_the_log(log, state)


async def test_an_input_stored_with_no_expected_sequence_is_never_folded_over_a_gap(
    log: JetStreamLog, nc: NATS, cache: StateCache
) -> None:
    """A writer that skips the expected sequence and copies the ``prev`` of an event it saw: its
    message carries the right ``prev`` but is not the workflow's next; the state reads the one
    between instead of folding over it."""
    root = requested("wf")
    first = await log.append("wf", [root], expected_seq=0)
    cache.forget("wf")  # another process's view: it has seen the first message only
    await cache.state_at("wf", first.last_seq)
    between = await other_writer(nc, log).append("wf", [plan_event("wf", root.id)], expected_seq=first.last_seq)
    copied = msgspec.structs.replace(
        ev(StepsProposed(task_id="a", steps=()), "wf", cause=root.id, i=7), prev=first.last_hash
    )
    ack = await nc.jetstream().publish(log.subjects.event("wf", copied.type), codec.encode(copied))
    rec, after = await handed(log, ack.seq)
    assert after is None
    assert rec.event.prev == cache.head("wf")[1]  # it would pass a check on prev alone
    state = await cache.state_at("wf", ack.seq, given=rec, after=after)
    assert between.last_seq < ack.seq == state.last_seq
    assert state.plan is not None  # the message between was read, not skipped
    await assert_is_the_log(log, state)


def other_writer(nc: NATS, log: JetStreamLog) -> JetStreamLog:
    return JetStreamLog(nc, stream=log.spec, subjects=log.subjects)


async def test_a_long_gap_is_asked_for_message_by_message_then_read(
    log: JetStreamLog, other: JetStreamLog, cache: StateCache
) -> None:
    root = requested("wf")
    first = await log.append("wf", [root], expected_seq=0)
    theirs = [plan_event("wf", root.id, i) for i in range(1, 8)]
    stored = await other.append("wf", theirs, expected_seq=first.last_seq, atomic=False)
    state = await cache.state_at("wf", stored.last_seq)
    assert (cache.gets, cache.reads) == (4, 1)
    await assert_is_the_log(log, state)
    assert state.events == 8


async def test_an_unchained_input_is_read_from_the_log(log: JetStreamLog, cache: StateCache) -> None:
    """An input handed with no stored expectation (a v1 event's writer set none) is never folded
    from the hand-over: the workflow is loaded."""
    stored = await log.append("wf", [requested("wf")], expected_seq=0)
    cache.forget("wf")
    m = (await log.read("wf"))[0]
    v1 = StoredEvent(m.seq, m.subject, msgspec.structs.replace(m.event, v=1), m.data)
    state = await cache.state_at("wf", stored.last_seq, given=v1, after=None)
    assert cache.reads == 1  # loaded, not folded from the hand-over
    await assert_is_the_log(log, state)


async def test_another_process_appending_between_two_of_ours_is_read_and_ours_goes_after(
    log: JetStreamLog, other: JetStreamLog, cache: StateCache
) -> None:
    """Ours, theirs, ours: the second of ours, stored expecting the first, conflicts; the state
    reads theirs, and ours stored after it is folded at its ack."""
    root = requested("wf")
    first = await log.append("wf", [root], expected_seq=0)
    theirs = await other.append("wf", [plan_event("wf", root.id)], expected_seq=first.last_seq)
    seq, head = cache.head("wf")
    assert seq == first.last_seq
    mine = ev(StepsProposed(task_id="a", steps=()), "wf", cause=root.id, i=3, actor="decomposer")
    with pytest.raises(ConcurrencyConflict) as conflict:
        await log.append("wf", [mine], expected_seq=seq, prev=head, atomic=False)
    assert conflict.value.actual == theirs.last_seq
    state = await cache.state_at("wf", conflict.value.actual)
    assert (state.last_seq, cache.gets) == (theirs.last_seq, 1)
    seq, head = cache.head("wf")
    stored = await log.append("wf", [mine], expected_seq=seq, prev=head, atomic=False)
    state = await cache.state_at("wf", stored.last_seq)
    assert (state.last_seq, cache.gets, cache.reads) == (stored.last_seq, 1, 0)  # ours folded at its ack
    await assert_is_the_log(log, state)


async def test_an_evicted_workflow_is_loaded_again_for_a_late_event(log: JetStreamLog) -> None:
    cache = StateCache(log, feed=False, max_workflows=1)
    await cache.start()
    try:
        root = requested("wf1")
        first = await log.append("wf1", [root], expected_seq=0)
        await log.append("wf2", [requested("wf2")], expected_seq=0)
        assert len(cache) == 1
        assert cache.head("wf1") == (0, "")
        # A late event of it, appended here: not folded on nothing; read when needed.
        late = await log.append("wf1", [plan_event("wf1", root.id)], expected_seq=first.last_seq)
        state = await cache.state_at("wf1", late.last_seq)
        assert cache.reads == 1
        assert state.status == "planned"
        await assert_is_the_log(log, state)
    finally:
        await cache.stop()


async def test_a_state_handed_out_does_not_change_when_an_own_append_is_folded(
    log: JetStreamLog, cache: StateCache
) -> None:
    root = requested("wf")
    first = await log.append("wf", [root], expected_seq=0)
    held = await cache.state_at("wf", first.last_seq)
    second = await log.append("wf", [plan_event("wf", root.id)], expected_seq=first.last_seq, prev=first.last_hash)
    newer = await cache.state_at("wf", second.last_seq)
    assert (held.last_seq, held.status) == (first.last_seq, "requested")
    assert (newer.last_seq, newer.status) == (second.last_seq, "planned")


async def _plan(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
    assert state.last_seq == rec.seq
    assert state.status == "requested"
    return [PlanProposed(plan=PLAN)]


async def _finish(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
    assert state.last_seq >= rec.seq
    assert state.plan is not None
    return [WorkflowCompleted(result="done")]


PLANNER = ActorSpec(kind="planner", handles=frozenset({WorkflowRequested.TYPE}), handler=_plan)
FINISHER = ActorSpec(kind="finisher", handles=frozenset({PlanProposed.TYPE}), handler=_finish)


async def test_actors_without_the_feed_read_nothing_for_workflows_they_carry_alone(log: JetStreamLog) -> None:
    async with run_actors(log, [(PLANNER, 1), (FINISHER, 1)], outside=Outside(), options=OFF) as system:
        assert not system.cache.feed
        for i in range(5):
            await log.append(f"wf{i}", [requested(f"wf{i}")], expected_seq=0)
        for i in range(5):
            events = await wait_for_type(log, f"wf{i}", WorkflowCompleted.TYPE)
            assert [e.event.type for e in events] == ["workflow_requested", "plan_proposed", "workflow_completed"]
            await assert_is_the_log(log, await system.cache.state_at(f"wf{i}", events[-1].seq))
        assert system.cache.reads == 0
        assert system.cache.decoded == 15  # each event once: at its append's ack


async def test_actors_without_the_feed_read_the_inputs_another_process_appended(
    log: JetStreamLog, other: JetStreamLog
) -> None:
    """The intake of another process: the input is handed over and starts the workflow (no read);
    a plan another process appends in the middle of it is read once."""
    async with run_actors(log, [(FINISHER, 1)], outside=Outside(), options=OFF) as system:
        root = requested("wf")
        first = await other.append("wf", [root], expected_seq=0)
        await other.append("wf", [plan_event("wf", root.id)], expected_seq=first.last_seq)
        events = await wait_for_type(log, "wf", WorkflowCompleted.TYPE)
        assert [e.event.type for e in events] == ["workflow_requested", "plan_proposed", "workflow_completed"]
        assert system.cache.reads == 1  # the finisher's input arrives with no state here: loaded once
        await assert_is_the_log(log, await system.cache.state_at("wf", events[-1].seq))


def test_auto_turns_the_feed_off_only_where_every_appending_kind_runs() -> None:
    settings = Settings()
    assert not state_feed(settings, KINDS, (None,))  # cadre up
    assert not state_feed(settings, [k for k in KINDS if k != "budget"], (None,))
    assert state_feed(settings, ["agent"], (None,))  # a split deployment
    assert state_feed(settings, [k for k in KINDS if k != "approvals"], (None,))
    assert state_feed(Settings(state_feed="on"), KINDS, (None,))
    assert not state_feed(Settings(state_feed="off"), ["agent"], (None,))


async def test_a_partition_taken_over_is_loaded_by_its_new_holder(log: JetStreamLog, nc: NATS) -> None:
    """x handles a workflow's first input and stops; y takes its partition over with no state of it,
    loads it, and handles the next input on the whole state, once."""
    seen: list[tuple[str, str, int]] = []

    def stepper(tag: str) -> ActorSpec:
        async def step(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
            seen.append((tag, rec.event.type, state.events))
            if rec.event.type == WorkflowRequested.TYPE:
                return [PlanProposed(plan=PLAN)]
            return [WorkflowCompleted(result=state.events)]

        return ActorSpec(kind="stepper", handles=frozenset({WorkflowRequested.TYPE, StepsProposed.TYPE}), handler=step)

    options = dataclasses.replace(OFF, partitions=2, partition_lease_ttl=0.9)
    log = await with_partitions(log, 2)
    own = [JetStreamLog(nc, stream=log.spec, subjects=log.subjects) for _ in range(2)]  # a log per process
    async with contextlib.AsyncExitStack() as xs:
        x = await xs.enter_async_context(run_actors(own[0], [(stepper("x"), 1)], outside=Outside(), options=options))
        async with run_actors(own[1], [(stepper("y"), 1)], outside=Outside(), options=options) as y:
            assert x.leases is not None
            assert y.leases is not None
            xl, yl = x.leases, y.leases
            await until(lambda: len(xl.held) == 1 and len(yl.held) == 1, 5)
            wf = next(f"wf{i}" for i in range(100) if xl.owns(f"wf{i}"))
            root = requested(wf)
            await log.append(wf, [root], expected_seq=0)
            planned = await wait_for_type(log, wf, PlanProposed.TYPE)
            await xs.aclose()  # x stops and hands its leases back; y claims them at its next tick
            await until(lambda: len(yl.held) == 2, 5)
            assert wf not in y.cache._entries
            steps = ev(StepsProposed(task_id="a", steps=()), wf, cause=root.id, i=5, actor="decomposer")
            await log.append(wf, [steps], expected_seq=planned[-1].seq)
            done = await wait_for_type(log, wf, WorkflowCompleted.TYPE)
            assert y.cache.reads == 1  # loaded, as a workflow it never saw
            await assert_is_the_log(log, await y.cache.state_at(wf, done[-1].seq))
    assert seen == [("x", WorkflowRequested.TYPE, 1), ("y", StepsProposed.TYPE, 3)]
    assert [e.event.type for e in done] == [
        WorkflowRequested.TYPE,
        PlanProposed.TYPE,
        StepsProposed.TYPE,
        WorkflowCompleted.TYPE,
    ]
