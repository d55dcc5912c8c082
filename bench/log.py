"""Benchmark of the JetStream event log, each figure beside a raw nats-py baseline of the same run.

    .venv/bin/python bench/log.py [--events N] [--events-one N] [--runs R] [--batch B]
                                  [--data-dir DIR] [--nats URL]

Measurements, each the median of R runs, cadre and baseline runs alternating (the
order flips every run) on the same server and connection, so that the noise of this shared
machine hits both alike. Appends go to a fresh workflow per run and side; the two sides
append the same events (twin workflow ids of equal length, so the bytes have equal size):

1. ``append_one``: ``JetStreamLog.append(wf, [e], expected_seq=last, prev=head)`` awaited
   one by one (each chained to the one before: ``head`` is the previous append's
   ``last_hash``) vs ``await js.publish(subject, payload, headers={"Nats-Msg-Id": id})`` of
   the same bytes.
2. ``append_batched``: ``JetStreamLog.append(wf, chunk, expected_seq=last, prev=head)`` with
   chunks of ``--batch`` events (atomic batches) vs ``js.publish_async`` of every event, then
   ``js.publish_async_completed()``.
3. ``read_decode_fold``: ``fold(wf, await log.read(wf))`` of one workflow whose events are
   interleaved with other workflows' in the stream vs an ordered push consumer read with
   ``sub.next_msg()`` until ``num_pending == 0``, touching ``m.data`` only. A second raw
   reader with a callback (how cadre reads) is reported beside it as ``raw_cb_per_s``.
4. ``append_small_batches`` (informational, no target): appends of 3 events each, like one
   handler's outputs (atomic batches) vs awaited ``js.publish`` of the same events one by one.
5. ``append_small_each`` (informational, no target): the same appends of 3 events with
   ``atomic=False``: one message at a time, each expecting (and chained to) the one before,
   as the actors append, vs the same baseline. Beside 4, it is the choice between the two
   ways to keep a multi-event append contiguous in the chain.

By default the bundled nats-server runs in a fresh temporary data dir (file storage) and is
stopped at the end. One JSON object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import comparison, environment, median, note, run_on_server, timed
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from cadre.bus import codec
from cadre.bus.connection import ConnectOptions, connect
from cadre.bus.events import (
    Envelope,
    Event,
    PlanProposed,
    PlanValidated,
    StepCompleted,
    StepReady,
    StepsProposed,
    TaskReady,
    WorkflowCompleted,
    WorkflowRequested,
    make_event,
)
from cadre.bus.plan import Check, Plan, StepIntent, Task
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects
from cadre.store.jetstream import JetStreamLog
from cadre.store.state import fold

RUN_TIMEOUT = 30.0  # seconds for any one timed run; a stuck run fails the bench instead of hanging it
TOTAL_TIMEOUT = 300.0  # the whole bench, set-up included
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# -- realistic events -------------------------------------------------------------------------

_PLAN = Plan(
    nodes=(
        Task(
            id="fetch",
            description="fetch the 2024 orders from the warehouse",
            tool="sql.query",
            inputs={"sql": "select customer, total from orders where year = 2024"},
        ),
        Task(
            id="rank",
            description="rank customers by total spend",
            depends_on=("fetch",),
            tool="python.eval",
            inputs={"rows": "${fetch.rows}", "top": 3},
        ),
        Task(
            id="report",
            description="write a short report of the top three",
            depends_on=("rank",),
            tool="llm.write",
            inputs={"facts": "${rank.top}", "max_words": 150},
        ),
    ),
    output="report",
    rationale="fetch, rank, then write",
)
_CHECKS = (
    Check(name="acyclic", passed=True, severity="info"),
    Check(name="tools_exist", passed=True, severity="info"),
)
_OUTPUTS: dict[str, dict[str, Any]] = {
    "fetch": {"rows": [["Ada", 4120.5], ["Grace", 3980.0], ["Linus", 2210.75]], "elapsed_ms": 41},
    "rank": {"top": ["Ada", "Grace", "Linus"], "elapsed_ms": 3},
    "report": {"text": "Ada, Grace and Linus spent most in 2024.", "tokens": 212},
}


def workflow_events(wf: str, n: int) -> list[Envelope]:
    """``n`` events of one workflow as actors would emit them, each caused by the one before.

    A request, then rounds of (plan proposed with a 3-node plan, plan validated, and per task:
    task ready, steps proposed, step ready, step completed with a small output, task
    completed), then workflow completed. Step ids are unique per round, like the steps of a
    long-running workflow that re-plans.
    """
    out: list[Envelope] = []

    def emit(data: Event, actor: str) -> None:
        cause = out[-1].id if out else None
        at = T0 + timedelta(milliseconds=len(out))
        out.append(make_event(data, workflow_id=wf, actor=actor, at=at, causation_id=cause))

    emit(WorkflowRequested(request="find the three customers who spent most in 2024"), "intake")
    rnd = 0
    while len(out) < n - 1:
        rnd += 1
        emit(PlanProposed(plan=_PLAN, revision=rnd, source="model", score=0.92), "planner")
        emit(PlanValidated(revision=rnd, checks=_CHECKS), "validator")
        for task in _PLAN.nodes:
            assert task.tool is not None
            step = StepIntent(id=f"{task.id}.{rnd}", task_id=task.id, tool=task.tool, inputs=task.inputs)
            output = _OUTPUTS[task.id]
            emit(TaskReady(task=task), "planner")
            emit(StepsProposed(task_id=task.id, steps=(step,)), "decomposer")
            emit(StepReady(step=step, checks=_CHECKS[:1]), "validator")
            emit(
                StepCompleted(task_id=task.id, step_id=step.id, tool=task.tool, planned_tool=task.tool, output=output),
                "agent",
            )
    del out[n - 1 :]
    emit(WorkflowCompleted(result=_OUTPUTS["report"]), "planner")
    return out


async def publish_each(js: JetStreamContext, msgs: list[tuple[str, bytes, str]]) -> None:
    """The raw baseline of one-by-one appends: awaited ``js.publish`` with the event id as Msg-Id."""
    for subject, payload, msg_id in msgs:
        await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})


def wire(subjects: Subjects, events: list[Envelope]) -> list[tuple[str, bytes, str]]:
    """(subject, encoded bytes, msg id) of each event: what the raw baselines publish."""
    return [(subjects.event(e.workflow_id, e.type), codec.encode(e), e.id) for e in events]


# -- the bench --------------------------------------------------------------------------------


@dataclass
class Bench:
    js: JetStreamContext
    log: JetStreamLog
    subjects: Subjects
    tag: str

    def wf(self, kind: str, run: int, side: str) -> str:
        """A fresh workflow id; ids of the two sides have the same length, so payloads do too."""
        return f"{kind}-{self.tag}-{side}{run:02d}"


async def alternate(runs: int, sides: dict[str, Callable[[int], Awaitable[float]]]) -> dict[str, list[float]]:
    """Seconds of each run of each side; the order rotates every run (A B, B A, ...)."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for run in range(runs):
        k = run % len(names)
        for name in names[k:] + names[:k]:
            seconds[name].append(await sides[name](run))
        note(f"  run {run + 1}/{runs}: " + ", ".join(f"{name} {s[-1]:.3f} s" for name, s in seconds.items()))
    return seconds


async def append_one(b: Bench, n: int, runs: int) -> dict[str, Any]:
    note(f"append one by one: {n} events x {runs} runs")

    async def cadre(run: int) -> float:
        wf = b.wf("one", run, "c")
        events = workflow_events(wf, n)

        async def go() -> None:
            last, head = 0, ""
            for e in events:
                r = await b.log.append(wf, [e], expected_seq=last, prev=head)
                last, head = r.last_seq, r.last_hash

        return await timed(go, RUN_TIMEOUT)

    async def raw(run: int) -> float:
        msgs = wire(b.subjects, workflow_events(b.wf("one", run, "r"), n))
        return await timed(lambda: publish_each(b.js, msgs), RUN_TIMEOUT)

    # Warm-up (not measured): the first requests on a connection and a stream are slower.
    await raw(99)
    await cadre(99)
    s = await alternate(runs, {"raw": raw, "cadre": cadre})
    return comparison(n, s["cadre"], s["raw"], 0.80)


async def append_batched(b: Bench, n: int, runs: int, batch: int) -> dict[str, Any]:
    note(f"append batched: {n} events in chunks of {batch} x {runs} runs")

    async def cadre(run: int) -> float:
        wf = b.wf("bat", run, "c")
        events = workflow_events(wf, n)
        chunks = [events[i : i + batch] for i in range(0, n, batch)]

        async def go() -> None:
            last, head = 0, ""
            for chunk in chunks:
                r = await b.log.append(wf, chunk, expected_seq=last, prev=head)
                last, head = r.last_seq, r.last_hash

        return await timed(go, RUN_TIMEOUT)

    async def raw(run: int) -> float:
        msgs = wire(b.subjects, workflow_events(b.wf("bat", run, "r"), n))
        futures: list[asyncio.Future[api.PubAck]] = []

        async def go() -> None:
            # wait_stall=None is publish_async's fastest path (a timeout wraps every acquire in
            # wait_for); the whole run is bounded by timed()'s timeout instead, which also
            # covers futures that never resolve (nats.py#985).
            for subject, payload, msg_id in msgs:
                futures.append(await b.js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}))
            await b.js.publish_async_completed()

        seconds = await timed(go, RUN_TIMEOUT)
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} raw publishes failed, first: {failed[0]!r}")
        return seconds

    s = await alternate(runs, {"raw": raw, "cadre": cadre})
    return comparison(n, s["cadre"], s["raw"], 0.50, batch=batch)


async def append_small_batches(b: Bench, appends: int, size: int, runs: int, *, atomic: bool = True) -> dict[str, Any]:
    """Informational (no target): appends of a few events each, like one handler's outputs.

    cadre stores each group as one atomic batch (``atomic=False``: one message at a time,
    each expecting the one before); the baseline publishes the same events with awaited
    ``js.publish`` one by one, which is what a client without atomic batches does.
    """
    n = appends * size
    how = "atomic batches" if atomic else "one at a time"
    note(f"append small groups ({how}): {appends} appends of {size} events x {runs} runs")
    tag = "sml" if atomic else "sme"

    async def cadre(run: int) -> float:
        wf = b.wf(tag, run, "c")
        events = workflow_events(wf, n)

        async def go() -> None:
            last, head = 0, ""
            for i in range(0, n, size):
                r = await b.log.append(wf, events[i : i + size], expected_seq=last, prev=head, atomic=atomic)
                last, head = r.last_seq, r.last_hash

        return await timed(go, RUN_TIMEOUT)

    async def raw(run: int) -> float:
        msgs = wire(b.subjects, workflow_events(b.wf(tag, run, "r"), n))
        return await timed(lambda: publish_each(b.js, msgs), RUN_TIMEOUT)

    s = await alternate(runs, {"raw": raw, "cadre": cadre})
    return comparison(n, s["cadre"], s["raw"], None, batch=size)


async def read_decode_fold(b: Bench, n: int, runs: int, others: int) -> dict[str, Any]:
    """Read one workflow of ``n`` events interleaved with ``others`` workflows' events."""
    wf = b.wf("read", 0, "c")
    events = workflow_events(wf, n)
    other_events = [workflow_events(b.wf("read", 1 + k, "o"), n // 4 // others + 1) for k in range(others)]
    note(f"read + decode + fold: storing {n} events of {wf} interleaved with {others} other workflows")
    chunk = 500
    last = 0
    other_last = [0] * others
    for i in range(0, n, chunk):
        last = (await b.log.append(wf, events[i : i + chunk], expected_seq=last)).last_seq
        k = (i // chunk) % others
        o = other_events[k]
        take = o[: chunk // 4]
        if take:
            other_last[k] = (await b.log.append(o[0].workflow_id, take, expected_seq=other_last[k])).last_seq
            del o[: chunk // 4]
    info = await b.js.stream_info(b.log.stream)
    note(f"  stream holds {info.state.messages} messages; reading {n} x {runs} runs")
    filter_ = b.subjects.workflow(wf)

    async def cadre(_run: int) -> float:
        state = None

        async def go() -> None:
            nonlocal state
            state = fold(wf, await b.log.read(wf))

        seconds = await timed(go, RUN_TIMEOUT)
        if state is None or state.events != n or state.status != "completed":
            raise RuntimeError(f"cadre read a wrong state: {state!r:.300}")
        return seconds

    async def raw(_run: int) -> float:
        count = 0

        async def go() -> None:
            nonlocal count
            sub = await b.js.subscribe(
                filter_, stream=b.log.stream, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
            )
            try:
                while True:
                    m = await sub.next_msg(timeout=2)
                    count += bool(m.data)
                    if m.metadata.num_pending == 0:
                        break
            finally:
                await sub.unsubscribe()

        seconds = await timed(go, RUN_TIMEOUT)
        if count != n:
            raise RuntimeError(f"raw reader got {count} messages, expected {n}")
        return seconds

    async def raw_cb(_run: int) -> float:
        count = 0

        async def go() -> None:
            nonlocal count
            done = asyncio.Event()

            async def on_msg(m: Msg) -> None:
                nonlocal count
                count += bool(m.data)
                if m.metadata.num_pending == 0:
                    done.set()

            sub = await b.js.subscribe(
                filter_, stream=b.log.stream, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL, cb=on_msg
            )
            try:
                await done.wait()
            finally:
                await sub.unsubscribe()

        seconds = await timed(go, RUN_TIMEOUT)
        if count != n:
            raise RuntimeError(f"raw reader got {count} messages, expected {n}")
        return seconds

    await cadre(-1)  # warm-up: the first read of the file store pulls its blocks into the page cache
    s = await alternate(runs, {"raw": raw, "cadre": cadre, "raw_cb": raw_cb})
    result = comparison(n, s["cadre"], s["raw"], 0.70, stream_messages=info.state.messages)
    # A second baseline: the same ordered consumer read with a callback, as cadre reads.
    cb = median([n / x for x in s["raw_cb"]])
    result["raw_cb_per_s"] = round(cb)
    result["ratio_vs_raw_cb"] = round(median([n / x for x in s["cadre"]]) / cb, 3)
    result["raw_cb_runs_per_s"] = [round(n / x) for x in s["raw_cb"]]
    return result


async def main(args: argparse.Namespace, url: str) -> dict[str, Any]:
    nc = await connect(ConnectOptions(url=url, name="cadre-bench"))
    tag = secrets.token_hex(3)
    prefix = f"bench{tag}"
    subjects = Subjects(prefix)
    spec = StreamSpec(name=prefix.upper(), subjects=subjects.events, storage="file")
    log = JetStreamLog(nc, stream=spec, subjects=subjects)
    js = nc.jetstream(timeout=5.0)
    await log.ensure_stream()
    b = Bench(js, log, subjects, tag)
    try:
        out: dict[str, Any] = {**environment(nc), "runs": args.runs, "storage": spec.storage}
        out["append_one"] = await append_one(b, args.events_one, args.runs)
        out["append_batched"] = await append_batched(b, args.events, args.runs, args.batch)
        out["read_decode_fold"] = await read_decode_fold(b, args.events, args.runs, others=4)
        out["append_small_batches"] = await append_small_batches(b, 200, 3, args.runs)
        out["append_small_each"] = await append_small_batches(b, 200, 3, args.runs, atomic=False)
        return out
    finally:
        try:
            await asyncio.wait_for(js.delete_stream(spec.name), 10)
        finally:
            await asyncio.wait_for(nc.close(), 10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="cadre event log vs raw nats-py, same server, same run")
    ap.add_argument("--events", type=int, default=20000, help="events of the batched and read benches")
    ap.add_argument("--events-one", type=int, default=2000, help="events of the one-by-one append bench")
    ap.add_argument("--runs", type=int, default=3, help="runs per side; figures are medians")
    ap.add_argument("--batch", type=int, default=500, help="events per append in the batched bench")
    ap.add_argument("--data-dir", type=Path, help="embedded server data dir (default: a fresh temp dir)")
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    args = ap.parse_args(argv)
    if min(args.events, args.events_one, args.runs, args.batch) < 1 or args.events < 100:
        ap.error("--events >= 100 and --events-one, --runs, --batch >= 1")
    return args


def run() -> None:
    args = parse_args()
    run_on_server(args.nats, args.data_dir, lambda url: main(args, url), TOTAL_TIMEOUT)


if __name__ == "__main__":
    run()
