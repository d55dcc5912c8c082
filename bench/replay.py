"""Benchmark of deterministic replay, beside the raw read rate of the same events.

    .venv/bin/python bench/replay.py [--workflows N] [--concurrency C] [--big-tasks K] [--runs R]
                                     [--jobs J] [--distinct] [--profile FILE] [--data-dir DIR] [--nats URL]

**Recording.** Every actor kind runs in this process (``cadre.system.run_system``) on a
file-storage stream of its own, with a deployment's keys (every event signed, as with the
embedded server's auth); a client submits N workflows (at most C in flight), each an
explicit plan of six instant tools (``bench.echo``: two parallel branches of two tasks, a
join, a last task: 28 events per workflow), and one big workflow of K tasks in parallel chains (4 events per task;
the validator allows 50). No model: planning and decomposition are rule based, so the handlers that
replay are the ones that run (validation of every plan and step, reference resolution, the
planner's scheduling). The N workflows are the same plan with the same literal inputs, so a
process that validated one has the verdicts of the others (``actors.validator.Memo``);
``--distinct`` gives each its own literal inputs (every plan and step verdict is then made anew).

**Measurements**, each the median of R runs; the reads alternate, then the replays do (a
replay side starts after a second of quiet: after a read, nats-server keeps a core busy for
a while, which the parallel replay would otherwise compete with):

1. ``raw_read``: one ordered push consumer over every event of the stream, with a callback
   that touches ``m.data`` (nats-py's fastest way to read), until nothing is pending, on a
   connection of nats-py's own client (cadre's connections use ``cadre.bus.nats_client``);
2. ``cadre_read``: the same consumer, each message decoded into a record as the log's
   ``read_records`` does (``store.records.to_record``) and grouped by workflow: how a bulk
   replay reads (one ``read_records`` per workflow costs a consumer each);
3. ``replay``: :meth:`actors.replay.Replayer.replay` of every workflow's records, in memory,
   one process, without a keyring (no signature checked); every workflow must reproduce;
   ``replay_keys``: the same with the deployment's keyring, each event's signature checked
   (what ``cadre replay`` does, once it has read, in a deployment with keys); beside ``replay``,
   its CPU time per event (``cpu_us_per_event``, ``time.process_time``: what a loaded machine
   changes least);
4. ``replay_jobs``: the same split over J worker processes (forked: they inherit the
   records, so nothing is copied), as a CI job re-verifying many workflows would;
5. ``big_workflow``: the big workflow alone: the raw read, ``JetStreamLog.read_records``
   (what ``cadre replay WF`` does), and its replay.

``--profile FILE`` writes a cProfile (clock: the process's CPU time) of one more one-process
replay of the many workflows, after the measurements, to FILE (read it with ``pstats``).

By default the bundled nats-server runs in a fresh temporary data dir and is stopped at the
end. One JSON object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import json
import multiprocessing
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import bench_server, bench_settings, environment, median, note, timed
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from cadre.actors.intake import workflow_id_for
from cadre.actors.replay import Replayer, live_specs
from cadre.bus.auth import ensure_auth
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.settings import Settings
from cadre.store.jetstream import stream_seq
from cadre.store.records import Record, to_record
from cadre.system import catalog_for, run_system
from cadre.trust import find_keyring
from cadre.wiring import Bus, open_bus

RUN_TIMEOUT = 120.0
TOTAL_TIMEOUT = 900.0
TARGET_EVENTS_PER_S = 50_000
SETTLE_S = 1.0  # idle time before a replay side: the server finishes its own work after a read

WIDE: dict[str, Any] = {
    "nodes": [
        {"id": "a1", "tool": "bench.echo", "inputs": {"value": "alpha"}},
        {"id": "a2", "tool": "bench.echo", "depends_on": ["a1"], "inputs": {"value": "${a1.value}"}},
        {"id": "b1", "tool": "bench.echo", "inputs": {"value": "beta"}},
        {"id": "b2", "tool": "bench.echo", "depends_on": ["b1"], "inputs": {"value": "${b1.value}"}},
        {"id": "join", "tool": "bench.echo", "depends_on": ["a2", "b2"], "inputs": {"value": "${a2.value}"}},
        {"id": "last", "tool": "bench.echo", "depends_on": ["join"], "inputs": {"value": "${join.value}"}},
    ],
    "output": "last",
}


def wide(i: int | None) -> dict[str, Any]:
    """:data:`WIDE`, with literal inputs of its own for workflow ``i`` (None: :data:`WIDE` itself)."""
    if i is None:
        return WIDE
    nodes = [
        {**n, "inputs": {"value": f"{n['inputs']['value']}-{i}"}} if n["id"] in ("a1", "b1") else n
        for n in WIDE["nodes"]
    ]
    return {**WIDE, "nodes": nodes}


def grid(k: int, depth: int = 5) -> dict[str, Any]:
    """``k`` tasks in parallel chains of ``depth`` (the validator allows 50 tasks, 20 deep), and a
    last task that joins the chains."""
    nodes: list[dict[str, Any]] = []
    ends = []
    for i in range(k - 1):
        row, col = divmod(i, depth)
        node: dict[str, Any] = {"id": f"r{row}c{col}", "tool": "bench.echo", "inputs": {"value": f"v{i}"}}
        if col:
            node["depends_on"] = [f"r{row}c{col - 1}"]
            node["inputs"] = {"value": f"${{r{row}c{col - 1}.value}}"}
        nodes.append(node)
        if col == depth - 1 or i == k - 2:
            ends.append(node["id"])
    nodes.append({"id": "end", "tool": "bench.echo", "depends_on": ends, "inputs": {"value": "done"}})
    return {"nodes": nodes, "output": "end"}


# -- recording ----------------------------------------------------------------------------------


async def record(bus: Bus, settings: Settings, plans: list[dict[str, Any]], concurrency: int) -> list[str]:
    """Run every plan as a workflow (at most ``concurrency`` at once) to its end; their ids."""
    tag = secrets.token_hex(4)
    keys = [f"{tag}-{i}" for i in range(len(plans))]
    ids = [workflow_id_for(k) for k in keys]
    waiting: dict[str, asyncio.Future[None]] = {}
    loop = asyncio.get_running_loop()
    js = bus.nc.jetstream(timeout=5.0)

    async def on_end(m: Msg) -> None:
        parsed = settings.subjects.parse_event(m.subject)
        fut = waiting.pop(parsed[0], None) if parsed else None
        if fut is not None and not fut.done():
            if m.subject.endswith("workflow_failed"):
                fut.set_exception(RuntimeError(f"workflow {parsed} failed: {m.data[:300]!r}"))
            else:
                fut.set_result(None)

    subs = [
        await js.subscribe(
            settings.subjects.of_type(t),
            stream=settings.stream_name,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            cb=on_end,
        )
        for t in ("workflow_completed", "workflow_failed")
    ]
    await barrier(bus.nc)
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            fut: asyncio.Future[None] = loop.create_future()
            waiting[ids[i]] = fut
            body = json.dumps({"plan": plans[i], "idempotency_key": keys[i]}).encode()
            await bus.nc.request(settings.subjects.requests, body, timeout=5.0)
            await fut

    try:
        async with asyncio.timeout(RUN_TIMEOUT * 4), asyncio.TaskGroup() as tg:
            for i in range(len(plans)):
                tg.create_task(one(i))
    finally:
        for sub in subs:
            await sub.unsubscribe()
    return ids


# -- reading ------------------------------------------------------------------------------------


async def read_stream(
    bus: Bus, subject: str, expected: int, decode: bool, nc: NATS | None = None
) -> tuple[float, dict[str, list[Record]]]:
    """Seconds an ordered push consumer with a callback takes to read every event on ``subject``
    (touching ``m.data``; with ``decode``, each message decoded into a record, as the log's
    ``read_records`` does, and grouped by workflow), and the records by workflow. ``nc``: read
    through this connection instead of the bus's (the raw read's: nats-py's own client)."""
    count = 0
    subjects = bus.log.subjects
    by_wf: dict[str, list[Record]] = {}

    async def go() -> None:
        nonlocal count
        done = asyncio.Event()

        async def on_msg(m: Msg) -> None:
            nonlocal count
            count += bool(m.data)
            if decode:
                r = to_record(subjects, stream_seq(m.reply), m.subject, m.data, m.headers)
                parsed = subjects.parse_event(m.subject)
                by_wf.setdefault(parsed[0] if parsed else "", []).append(r)
            if m.metadata.num_pending == 0:
                done.set()

        sub = (
            await (nc or bus.nc)
            .jetstream()
            .subscribe(
                subject, stream=bus.log.stream, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL, cb=on_msg
            )
        )
        try:
            await done.wait()
        finally:
            await sub.unsubscribe()

    seconds = await timed(go, RUN_TIMEOUT)
    if count != expected:
        raise RuntimeError(f"the reader saw {count} events, expected {expected}")
    return seconds, by_wf


async def read_records(bus: Bus, wf: str) -> float:
    """Seconds ``JetStreamLog.read_records`` takes for one workflow (how ``cadre replay WF`` reads)."""

    async def go() -> None:
        await bus.log.read_records(wf)

    return await timed(go, RUN_TIMEOUT)


# -- replaying ----------------------------------------------------------------------------------

_WORK: tuple[Replayer, list[list[Record]]] | None = None  # what forked workers replay


def _replay_slice(bounds: tuple[int, int]) -> tuple[int, int, float]:
    """(events, workflows that did not reproduce, seconds) of a slice of the work (in a worker)."""
    assert _WORK is not None
    replayer, workflows = _WORK
    events = bad = 0
    start = time.perf_counter()
    for records in workflows[bounds[0] : bounds[1]]:
        result = replayer.replay(records)
        events += result.events
        bad += not result.ok or result.forged > 0
    return events, bad, time.perf_counter() - start


WORKER_SECONDS: list[list[float]] = []  # each parallel run's seconds per worker, for the output
CPU_SECONDS: list[float] = []  # each one-process run's CPU time (time.process_time)


def replay_all(replayer: Replayer, workflows: list[list[Record]], jobs: int) -> float:
    """Seconds to replay every workflow with ``jobs`` processes; raise if one does not reproduce."""
    global _WORK
    _WORK = (replayer, workflows)
    n = len(workflows)
    if jobs == 1:
        start, cpu = time.perf_counter(), time.process_time()
        _, bad, _ = _replay_slice((0, n))
        seconds = time.perf_counter() - start
        CPU_SECONDS.append(time.process_time() - cpu)
    else:
        step = -(-n // jobs)
        slices = [(i, min(i + step, n)) for i in range(0, n, step)]
        # Keep the workers' collections off the inherited heap: a full collection in a forked
        # worker writes to every object it scans, and so copies every page of the records.
        gc.freeze()
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            pool.map(_replay_slice, [(0, 0)] * jobs)  # the workers exist before the clock starts
            start = time.perf_counter()
            parts = pool.map(_replay_slice, slices, chunksize=1)
            seconds = time.perf_counter() - start
        gc.unfreeze()
        bad = sum(p[1] for p in parts)
        WORKER_SECONDS.append([round(p[2], 3) for p in parts])
    if bad:
        raise RuntimeError(f"{bad} workflow(s) did not reproduce")
    return seconds


async def alternate(runs: int, sides: dict[str, Callable[[], Awaitable[float]]]) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for run in range(runs):
        k = run % len(names)
        for name in names[k:] + names[:k]:
            seconds[name].append(await sides[name]())
        note(f"  run {run + 1}/{runs}: " + ", ".join(f"{name} {s[-1]:.3f} s" for name, s in seconds.items()))
    return seconds


def rates(events: int, seconds: list[float]) -> dict[str, Any]:
    return {"per_s": round(median([events / s for s in seconds])), "runs_per_s": [round(events / s) for s in seconds]}


async def main(args: argparse.Namespace, url: str, data_dir: Path) -> dict[str, Any]:
    prefix = f"rpl{secrets.token_hex(3)}"
    settings = bench_settings(
        url,
        data_dir,
        prefix,
        llm_provider="none",
        ledger_stream_name=prefix.upper() + "_LEDGER",
        inference_cache_bucket=prefix.upper() + "_INFERENCE",
    )
    ensure_auth(settings.auth_dir, settings.auth_names())  # the deployment's keys: the system signs
    keyring, _ = find_keyring(settings)
    assert keyring is not None
    replayer = Replayer(
        live_specs(catalog_for(settings), approval_timeout=timedelta(seconds=settings.approval_timeout_s))
    )
    keyed = dataclasses.replace(replayer, keyring=keyring)
    # The raw read connects as a user's program would: nats-py's own client, not cadre's.
    raw_nc = await connect(ConnectOptions(url=url, name="cadre-bench-raw-read"), nats_py=True)
    async with open_bus(settings, name="cadre-bench-replay") as bus:
        out: dict[str, Any] = {**environment(bus.nc), "runs": args.runs, "jobs": args.jobs, "storage": "file"}
        try:
            note(f"recording {args.workflows} workflows of 6 tasks and one of {args.big_tasks} tasks")
            started = time.perf_counter()
            async with run_system(bus, settings):
                plans = [wide(i if args.distinct else None) for i in range(args.workflows)]
                ids = await record(bus, settings, plans, args.concurrency)
                [big] = await record(bus, settings, [grid(args.big_tasks)], 1)
            note(f"  recorded in {time.perf_counter() - started:.1f} s")
            total = await bus.log.last_seq(big)
            _, records = await read_stream(bus, settings.subjects.events, total, decode=True)
            events = sum(len(records[wf]) for wf in ids)
            big_events = len(records[big])
            note(f"  {events} events in {len(ids)} workflows; the big workflow has {big_events}")
            workflows = [records[wf] for wf in ids]
            first = keyed.replay(workflows[0])
            if not first.ok or first.forged:
                raise RuntimeError("\n".join(first.lines()))

            one_cpu: list[float] = []

            async def replay_one() -> float:
                await asyncio.sleep(SETTLE_S)
                seconds = replay_all(replayer, workflows, 1)
                one_cpu.append(CPU_SECONDS[-1])
                return seconds

            async def replay_keys() -> float:
                await asyncio.sleep(SETTLE_S)
                return replay_all(keyed, workflows, 1)

            async def replay_jobs() -> float:
                await asyncio.sleep(SETTLE_S)
                return replay_all(replayer, workflows, args.jobs)

            async def read_cadre() -> float:
                return (await read_stream(bus, settings.subjects.events, total, decode=True))[0]

            async def read_raw() -> float:
                return (await read_stream(bus, settings.subjects.events, total, decode=False, nc=raw_nc))[0]

            note(f"many workflows: {events} events (of {total} in the stream) x {args.runs} runs")
            s = await alternate(args.runs, {"raw_read": read_raw, "cadre_read": read_cadre})
            s |= await alternate(
                args.runs, {"replay": replay_one, "replay_keys": replay_keys, "replay_jobs": replay_jobs}
            )
            out["workflows"] = {
                "workflows": len(ids),
                "events": events,
                "raw_read": rates(total, s["raw_read"]),
                "cadre_read": rates(total, s["cadre_read"]),
                "distinct_inputs": args.distinct,
                "replay": rates(events, s["replay"]),
                "cpu_us_per_event": round(median(one_cpu) / events * 1e6, 2),
                "replay_keys": rates(events, s["replay_keys"]),
                f"replay_{args.jobs}_jobs": rates(events, s["replay_jobs"]),
                "worker_seconds": WORKER_SECONDS[-args.runs :],
                "target": TARGET_EVENTS_PER_S,
            }
            if args.profile is not None:
                note(f"profiling one more one-process replay into {args.profile}")
                profile = cProfile.Profile(time.process_time)
                profile.runcall(replay_all, replayer, workflows, 1)
                profile.dump_stats(args.profile)

            async def big_raw() -> float:
                return (await read_stream(bus, settings.subjects.workflow(big), big_events, decode=False, nc=raw_nc))[0]

            async def big_cadre() -> float:
                return await read_records(bus, big)

            async def big_replay() -> float:
                return replay_all(replayer, [records[big]], 1)

            note(f"the big workflow: {big_events} events x {args.runs} runs")
            b = await alternate(args.runs, {"raw_read": big_raw, "cadre_read": big_cadre, "replay": big_replay})
            out["big_workflow"] = {
                "tasks": args.big_tasks,
                "events": big_events,
                **{name: rates(big_events, secs) for name, secs in b.items()},
            }
            return out
        finally:
            await raw_nc.close()
            js = bus.nc.jetstream()
            for name in (settings.stream_name, settings.ledger_stream_name):
                try:
                    await asyncio.wait_for(js.delete_stream(name), 10)
                except Exception as exc:  # a bench cleans up what it can
                    note(f"could not delete stream {name}: {exc!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="cadre replay vs raw reads of the same events")
    ap.add_argument("--workflows", type=int, default=1500, help="workflows of 6 tasks (28 events each)")
    ap.add_argument("--concurrency", type=int, default=64, help="workflows in flight while recording")
    ap.add_argument("--big-tasks", type=int, default=50, help="tasks of the one big workflow (at most 50)")
    ap.add_argument("--runs", type=int, default=3, help="runs per side; figures are medians")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of the parallel replay")
    ap.add_argument(
        "--distinct", action="store_true", help="give each workflow its own literal inputs (no verdict repeats)"
    )
    ap.add_argument("--profile", type=Path, metavar="FILE", help="write a cProfile of one more one-process replay")
    ap.add_argument("--data-dir", type=Path, help="embedded server data dir (default: a fresh temp dir)")
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    args = ap.parse_args(argv)
    if min(args.workflows, args.concurrency, args.runs, args.jobs) < 1 or not 2 <= args.big_tasks <= 50:
        ap.error("every count must be at least 1, and --big-tasks from 2 to 50 (the validator's limit)")
    return args


def run() -> None:
    args = parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="cadre-bench-replay-") as work,
        bench_server(args.nats, args.data_dir) as url,
    ):
        result = asyncio.run(asyncio.wait_for(main(args, url, Path(work)), TOTAL_TIMEOUT))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    run()
