"""The actor runtime's guarantees, with small actors of the tests' own on a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from cadre.actors.context import Context, Outside
from cadre.actors.outcome import Defer, Outcome
from cadre.actors.runtime import ActorSpec, Lifecycle, RuntimeOptions, consumer_name, run_actors
from cadre.bus.events import HandlerFailed, WorkflowCompleted, WorkflowRequested
from cadre.store import JetStreamLog, StoredEvent
from cadre.store.state import WorkflowState
from tests.conftest import requested

FAST = RuntimeOptions(backoff=(0.05,), max_attempts=3, fetch_timeout=0.2, drain_timeout=5)


@pytest_asyncio.fixture
async def elog(log: JetStreamLog) -> AsyncIterator[JetStreamLog]:
    yield log


async def wait_for_type(log: JetStreamLog, wf: str, etype: str, within: float = 10) -> list[StoredEvent]:
    async with asyncio.timeout(within):
        async for r in log.follow(wf):
            if isinstance(r, StoredEvent) and r.event.type == etype:
                break
    return await log.read(wf)


async def test_start_returns_once_consumers_exist_and_stop_drains(elog: JetStreamLog, nc: NATS) -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        started.set()
        await asyncio.sleep(0.5)
        finished.set()
        return [WorkflowCompleted(result="done")]

    spec = ActorSpec(kind="slow", handles=frozenset({WorkflowRequested.TYPE}), handler=slow)
    async with run_actors(elog, [(spec, 1)], outside=Outside(), options=FAST) as system:
        info = await nc.jetstream().consumer_info(elog.stream, consumer_name(elog.subjects.prefix, "slow"))
        assert info.config.filter_subjects == [elog.subjects.of_type("workflow_requested")]
        assert system.lifecycle is Lifecycle.RUNNING
        await elog.append("wf", [requested("wf")], expected_seq=0)
        await asyncio.wait_for(started.wait(), 5)
    # leaving the block waited for the handler in flight, whose output is stored
    assert finished.is_set()
    assert system.lifecycle is Lifecycle.STOPPED
    assert [e.event.type for e in await elog.read("wf")] == ["workflow_requested", "workflow_completed"]


async def test_failing_handler_is_retried_then_dead_lettered(elog: JetStreamLog) -> None:
    calls = 0

    async def broken(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        nonlocal calls
        calls += 1
        raise RuntimeError("the handler has a bug")

    spec = ActorSpec(kind="broken", handles=frozenset({WorkflowRequested.TYPE}), handler=broken)
    async with run_actors(elog, [(spec, 1)], outside=Outside(), options=FAST):
        await elog.append("wf", [requested("wf")], expected_seq=0)
        events = await wait_for_type(elog, "wf", HandlerFailed.TYPE)
        await asyncio.sleep(0.3)  # no further delivery after the dead letter
    assert calls == 3
    dead = events[-1].event.data
    assert isinstance(dead, HandlerFailed)
    assert (dead.input_type, dead.attempts, dead.error.code, dead.exception) == (
        "workflow_requested",
        3,
        "handler_error",
        "RuntimeError",
    )
    assert dead.error.message == "the handler has a bug"
    assert events[-1].event.causation_id == events[0].event.id


async def test_defer_is_a_durable_timer(elog: JetStreamLog) -> None:
    seen: list[float] = []

    async def later(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        seen.append(asyncio.get_running_loop().time())
        if len(seen) == 1:
            return Defer(until=ctx.now() + timedelta(seconds=0.4))
        return [WorkflowCompleted(result=len(seen))]

    spec = ActorSpec(kind="later", handles=frozenset({WorkflowRequested.TYPE}), handler=later)
    async with run_actors(elog, [(spec, 1)], outside=Outside(), options=FAST):
        await elog.append("wf", [requested("wf")], expected_seq=0)
        await wait_for_type(elog, "wf", WorkflowCompleted.TYPE)
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.35


async def test_consistent_handlers_see_the_latest_state(elog: JetStreamLog) -> None:
    """Two replicas race to complete one workflow; optimistic concurrency lets exactly one win."""
    gate = asyncio.Barrier(2)

    async def finish(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        if state.done:
            return []
        if rec.event.actor == "intake":
            with pytest.raises(TimeoutError):  # both replicas decide on the same state, then append
                await asyncio.wait_for(gate.wait(), 0.3)
        return [WorkflowCompleted(result=rec.event.id)]

    spec = ActorSpec(
        kind="finisher",
        handles=frozenset({WorkflowRequested.TYPE}),
        handler=finish,
        consistent=frozenset({WorkflowRequested.TYPE}),
    )
    async with run_actors(elog, [(spec, 2)], outside=Outside(), options=FAST):
        root = requested("wf")
        await elog.append("wf", [root], expected_seq=0)
        events = await wait_for_type(elog, "wf", WorkflowCompleted.TYPE)
        await asyncio.sleep(0.3)
        events = await elog.read("wf")
    assert [e.event.type for e in events] == ["workflow_requested", "workflow_completed"]


def test_a_fan_out_stored_in_part_keeps_its_ids_when_decided_again() -> None:
    """A crash between two outputs leaves one stored; the redelivered input, handled on the
    newer state, emits only the missing one, and it gets the id it had the first time."""
    from cadre.actors.invocation import wrap
    from cadre.bus.events import TaskReady
    from cadre.bus.plan import Task

    cause = requested("wf")
    a, b = TaskReady(task=Task(id="a", tool="x")), TaskReady(task=Task(id="b", tool="x"))
    first = wrap("planner", cause, [a, b], cause.at)
    again = wrap("planner", cause, [b], cause.at)
    assert again[0].id == first[1].id
    assert first[0].id != first[1].id


async def test_non_atomic_append_stores_in_order_and_is_idempotent(elog: JetStreamLog) -> None:
    from tests.conftest import ev, unchained

    root = requested("wf")
    r0 = await elog.append("wf", [root], expected_seq=0)
    outs = [ev(WorkflowCompleted(result=i), "wf", cause=root.id, i=i) for i in range(4)]
    first = await elog.append("wf", outs, expected_seq=r0.last_seq, atomic=False)
    again = await elog.append("wf", outs, expected_seq=r0.last_seq, atomic=False)
    assert not first.already_stored
    assert again.already_stored
    assert unchained([e.event for e in await elog.read("wf")]) == [root, *outs]


async def test_a_handler_sees_the_same_state_after_an_await_live_and_under_replay(elog: JetStreamLog) -> None:
    """The state a handler is given does not change under it: while it awaits a tool, the cache
    folds a newer event of its workflow, and what it reads afterwards is still the state it was
    invoked on, the one a replay gives it."""
    from cadre.actors.replay import Replayer
    from cadre.actors.state_cache import StateCache
    from cadre.bus.events import PlanProposed
    from cadre.bus.plan import Plan, Task
    from tests.conftest import ev

    wf = "wf"
    root = requested(wf)

    class Gate:
        """A tool that returns only once another event of the workflow is folded by the cache."""

        cache: StateCache | None = None

        async def run(self, tool: str, inputs: dict[str, object], idempotency_key: str) -> dict[str, object]:
            assert self.cache is not None
            plan = Plan(nodes=(Task(id="a", tool="x"),))
            stored = await elog.append(wf, [ev(PlanProposed(plan=plan), wf, cause=root.id, actor="planner")])
            await self.cache.state_at(wf, stored.last_seq)
            return {}

    async def read_after_await(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        await ctx.call_tool("gate", {}, idempotency_key="gate")
        return [WorkflowCompleted(result={"status": state.status, "events": state.events, "seq": state.last_seq})]

    spec = ActorSpec(kind="reader", handles=frozenset({WorkflowRequested.TYPE}), handler=read_after_await)
    gate = Gate()
    async with run_actors(elog, [(spec, 1)], outside=Outside(tools=gate), options=FAST) as system:
        gate.cache = system.cache
        await elog.append(wf, [root], expected_seq=0)
        events = await wait_for_type(elog, wf, WorkflowCompleted.TYPE)
    assert [e.event.type for e in events] == ["workflow_requested", "plan_proposed", "workflow_completed"]
    result = Replayer(specs=[spec]).replay(await elog.read_records(wf))
    assert result.ok, "\n".join(result.lines())
    assert result.rederived == 1
    done = events[-1].event.data
    assert isinstance(done, WorkflowCompleted)
    assert done.result == {"status": "requested", "events": 1, "seq": events[0].seq}


async def test_a_handler_longer_than_ack_wait_runs_once(elog: JetStreamLog) -> None:
    """The replica's beat keeps a long input in progress: JetStream does not redeliver it."""
    calls = 0

    async def slow(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        nonlocal calls
        calls += 1
        await asyncio.sleep(2.5)
        return [WorkflowCompleted(result="done")]

    spec = ActorSpec(kind="slow", handles=frozenset({WorkflowRequested.TYPE}), handler=slow)
    options = RuntimeOptions(ack_wait=1.0, fetch_timeout=0.2, drain_timeout=5)
    async with run_actors(elog, [(spec, 1)], outside=Outside(), options=options):
        await elog.append("wf", [requested("wf")], expected_seq=0)
        await wait_for_type(elog, "wf", WorkflowCompleted.TYPE)
        await asyncio.sleep(1.2)  # past another ack_wait: a redelivery would have come by now
    assert calls == 1
