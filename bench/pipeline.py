"""Benchmark of a whole cadre pipeline, beside a raw nats-py actor chain of the same run.

    .venv/bin/python bench/pipeline.py [--workflows N] [--concurrency C] [--runs R]
                                       [--latency-workflows M] [--data-dir DIR] [--nats URL]
                                       [--profile FILE]

**cadre**: every actor kind (planner, validator, decomposer, agent, budget, and the intake)
runs in this process with ``cadre.system.run_system``, on a file-storage stream of its own,
as in production. A client submits N workflows, at most C in flight. Each is an explicit
plan, so planning is rule based and uses no model: the DAG ``a, b -> c`` of three instant
tools (``bench.echo`` from ``bench/_tools.py``). ``a`` and ``b`` run in parallel and ``c``
depends on both. A submit is a NATS request to ``<prefix>.requests``: the intake appends
``workflow_requested`` and replies. A workflow ends with its ``workflow_completed`` event,
which the client sees on one ordered consumer filtered on
``<prefix>.evt.*.workflow_completed``, so it only sees stored events. Latency is the time
from submit to completion.

**cadre_chain** (informational): the same with the chain ``a -> b -> c``. It has as many
events per workflow as the DAG, but no append of more than one event (the DAG's planner
dispatches ``a`` and ``b`` as one atomic batch of two events) and no concurrency conflict.

**raw** (the baseline): 4 "actors" in a ring. Each is a durable pull consumer (``fetch`` +
``ack``) on a subject of its own in a file-storage stream. Each republishes what it takes
to the next actor's subject with an awaited ``js.publish`` that carries a ``Nats-Msg-Id``.
The ring and the client connect with nats-py's own client, as a user's program would (cadre's
actors use ``cadre.bus.nats_client``, its subclass).
A message goes round until it has made as many hops as cadre's actors append events per
workflow; the last hop publishes to a ``done`` subject, which the client follows as it
follows cadre's completions. The client submits with an awaited ``js.publish``, with the
same N and C. Payloads have the average size of cadre's events. Each raw actor handles a
fetched batch concurrently, as cadre's replicas do.

The figure to read is the hop rate: events appended by cadre's actors per second against
raw hops per second. With the same number of hops per workflow, this equals the ratio of
workflows per second. Latency is also measured unloaded, with M workflows one at a time.
Every figure is the median of R runs. ``cpu_ms_per_workflow``: this process's CPU time
per cadre DAG workflow (``time.process_time``), steadier than throughput on a shared machine.
The sides alternate, and the order rotates every run, after a warm-up of each.
``--profile FILE`` writes a cProfile of the measured cadre (DAG) runs to FILE. It covers the
whole process: actors, client and nats-py.

By default the bundled nats-server runs in a fresh temporary data dir (file storage) and is
stopped at the end. One JSON object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from _common import bench_settings, environment, median, note, percentile, run_in_workdir
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from cadre.actors.intake import workflow_id_for
from cadre.actors.metrics import Metrics
from cadre.bus.auth import ensure_auth
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.settings import Settings
from cadre.store.jetstream import JetStreamLog
from cadre.system import run_system
from cadre.wiring import open_bus

TARGET_HOP_RATIO = 0.75
TARGET_WORKFLOWS_PER_S = 150.0
TARGET_P50_MS = 25.0
RAW_ACTORS = 4
RAW_BATCH = 32  # messages per fetch of a raw actor, like cadre's default actor_batch

DAG = "a, b -> c (bench.echo x 3; a and b in parallel, c after both)"
CHAIN = "a -> b -> c (bench.echo x 3)"
PLANS: dict[str, dict[str, Any]] = {
    "dag": {
        "nodes": [
            {"id": "a", "tool": "bench.echo", "inputs": {"value": "alpha"}},
            {"id": "b", "tool": "bench.echo", "inputs": {"value": "beta"}},
            {"id": "c", "tool": "bench.echo", "depends_on": ["a", "b"], "inputs": {"value": "${a.value}"}},
        ],
        "output": "c",
    },
    "chain": {
        "nodes": [
            {"id": "a", "tool": "bench.echo", "inputs": {"value": "alpha"}},
            {"id": "b", "tool": "bench.echo", "depends_on": ["a"], "inputs": {"value": "${a.value}"}},
            {"id": "c", "tool": "bench.echo", "depends_on": ["b"], "inputs": {"value": "${b.value}"}},
        ],
        "output": "c",
    },
}

Run = tuple[float, list[float]]  # seconds of the run, latency of each workflow


def run_timeout(n: int) -> float:
    """Seconds any one run may take (a bench never hangs): generous, 20 workflows/s at worst."""
    return 30.0 + n / 20


# -- driving workflows --------------------------------------------------------------------------


class Driver:
    """Submits workflows, at most ``concurrency`` in flight, and times each until its end.

    The completion feeds call :meth:`completed` / :meth:`failed` with a workflow id.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[float]] = {}

    def completed(self, wf: str) -> None:
        fut = self._waiting.pop(wf, None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    def failed(self, wf: str, why: str) -> None:
        fut = self._waiting.pop(wf, None)
        if fut is not None and not fut.done():
            fut.set_exception(RuntimeError(f"workflow {wf} failed: {why}"))

    async def run(
        self, ids: Sequence[str], submit: Callable[[int], Awaitable[None]], concurrency: int, limit: float
    ) -> Run:
        """Seconds from the first submit to the last completion, and each workflow's latency."""
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(concurrency)
        latencies: list[float] = []

        async def one(i: int) -> None:
            async with slots:
                fut: asyncio.Future[float] = loop.create_future()
                self._waiting[ids[i]] = fut  # before the submit: the end may come before the reply
                start = time.perf_counter()
                await submit(i)
                latencies.append(await fut - start)

        gc.collect()  # one run does not pay for the previous one's garbage
        start = time.perf_counter()
        try:
            async with asyncio.timeout(limit), asyncio.TaskGroup() as tg:
                for i in range(len(ids)):
                    tg.create_task(one(i))
        except TimeoutError:
            raise TimeoutError(
                f"run timed out after {limit:.0f} s with {len(latencies)} of {len(ids)} workflows completed"
            ) from None
        finally:
            self._waiting.clear()
        return time.perf_counter() - start, latencies


def summary(runs: list[Run], hops_per_wf: float) -> dict[str, Any]:
    """Medians over runs of workflows/s, hops/s, p50 and p99 latency."""
    wps = [len(lat) / s for s, lat in runs]
    p50 = [percentile(lat, 50) * 1000 for _, lat in runs]
    p99 = [percentile(lat, 99) * 1000 for _, lat in runs]
    return {
        "workflows_per_s": round(median(wps), 1),
        "hops_per_s": round(median(wps) * hops_per_wf),
        "p50_ms": round(median(p50), 1),
        "p99_ms": round(median(p99), 1),
        "runs_workflows_per_s": [round(x, 1) for x in wps],
        "runs_p50_ms": [round(x, 1) for x in p50],
        "runs_p99_ms": [round(x, 1) for x in p99],
    }


def server_cpu_reader(url: str) -> Callable[[], float | None]:
    """The CPU seconds (user + system) so far of the local nats-server listening on ``url``'s port,
    read from /proc (None when there is no such process here, or no /proc)."""
    pid: int | None = None
    port = f"\0{url.rsplit(':', 1)[-1].strip('/')}\0".encode()
    with contextlib.suppress(OSError):
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    cmd = (proc / "cmdline").read_bytes()
                    if b"nats-server" in cmd and b"\0-p" + port in cmd:
                        pid = int(proc.name)
                        break
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float | None:
        if pid is None:
            return None
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / ticks

    return read


def unloaded(runs: list[Run]) -> dict[str, Any]:
    """Latency of workflows run one at a time: medians over runs of p50 and p99."""
    return {
        "p50_ms": round(median([percentile(lat, 50) * 1000 for _, lat in runs]), 2),
        "p99_ms": round(median([percentile(lat, 99) * 1000 for _, lat in runs]), 2),
    }


# -- cadre --------------------------------------------------------------------------------------


class CadreSide:
    """Submits explicit-plan requests to a running cadre and follows their completions."""

    def __init__(self, client: NATS, settings: Settings, metrics: Metrics, tag: str) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.tag = tag
        self.driver = Driver()
        self.js = client.jetstream(timeout=5.0)
        self._subs: list[Any] = []
        # Per run, by plan: messages the run added to the stream, and concurrency conflicts,
        # each per workflow.
        self.events: dict[str, list[float]] = {}
        self.conflicts: dict[str, list[float]] = {}
        # CPU of this whole process (every thread: actors, client, a span exporter's) per workflow, ms.
        self.cpu_ms: dict[str, list[float]] = {}
        # CPU of the nats-server per workflow, ms (when this bench started it: ``server_cpu``).
        self.server_cpu_ms: dict[str, list[float]] = {}
        self.server_cpu: Callable[[], float | None] = lambda: None

    async def start(self) -> None:
        subjects = self.settings.subjects
        for etype, on_end in (("workflow_completed", self._on_completed), ("workflow_failed", self._on_failed)):
            self._subs.append(
                await self.js.subscribe(
                    subjects.of_type(etype),
                    stream=self.settings.stream_name,
                    ordered_consumer=True,
                    deliver_policy=api.DeliverPolicy.NEW,
                    # stored with or without a partition in the subject (CADRE_PARTITIONS)
                    config=api.ConsumerConfig(filter_subjects=list(subjects.stored_of_type(etype))),
                    cb=on_end,
                )
            )
        await barrier(self.client)

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _wf(self, m: Msg) -> str:
        parsed = self.settings.subjects.parse_event(m.subject)
        return parsed[0] if parsed else ""

    async def _on_completed(self, m: Msg) -> None:
        self.driver.completed(self._wf(m))

    async def _on_failed(self, m: Msg) -> None:
        self.driver.failed(self._wf(m), m.data[:300].decode(errors="replace"))

    async def stream_messages(self) -> int:
        info = await self.js.stream_info(self.settings.stream_name)
        return int(info.state.messages)

    def ids(self, plan: str, label: str, n: int) -> tuple[list[str], list[str]]:
        """Idempotency keys and the workflow ids the intake derives from them (known before submitting)."""
        keys = [f"{self.tag}-{plan}-{label}-{i}" for i in range(n)]
        return keys, [workflow_id_for(k) for k in keys]

    async def run(self, plan: str, label: str, n: int, concurrency: int) -> Run:
        keys, ids = self.ids(plan, label, n)
        bodies = [json.dumps({"plan": PLANS[plan], "idempotency_key": k}).encode() for k in keys]
        subject = self.settings.subjects.requests

        async def submit(i: int) -> None:
            resp = await self.client.request(subject, bodies[i], timeout=5.0)
            reply = json.loads(resp.data)
            if reply.get("workflow_id") != ids[i] or reply.get("existing"):
                raise RuntimeError(f"intake replied {reply!r} to request {keys[i]}")

        before, conflicts = await self.stream_messages(), counter_total(self.metrics, "cadre_conflicts")
        cpu, server_cpu = time.process_time(), self.server_cpu()
        result = await self.driver.run(ids, submit, concurrency, run_timeout(n))
        self.cpu_ms.setdefault(f"{plan}/{concurrency}", []).append((time.process_time() - cpu) * 1000 / n)
        if server_cpu is not None and (server_after := self.server_cpu()) is not None:
            self.server_cpu_ms.setdefault(f"{plan}/{concurrency}", []).append((server_after - server_cpu) * 1000 / n)
        self.events.setdefault(plan, []).append((await self.stream_messages() - before) / n)
        self.conflicts.setdefault(plan, []).append((counter_total(self.metrics, "cadre_conflicts") - conflicts) / n)
        return result


# -- raw nats-py chain -------------------------------------------------------------------------


class RawChain:
    """4 durable pull-consumer actors in a ring on a stream of their own, and its client side."""

    def __init__(self, client: NATS, actors_nc: NATS, tag: str) -> None:
        self.client_js = client.jetstream(timeout=5.0)
        self.js = actors_nc.jetstream(timeout=5.0)
        self.actors_nc = actors_nc
        self.stream = f"RAW_{tag.upper()}"
        self.prefix = f"raw{tag}"
        self.done_subject = f"{self.prefix}.done"
        self.driver = Driver()
        self.actors = RAW_ACTORS
        self.hops = 15  # set to cadre's actor events per workflow before measuring
        self.pad = b""
        self._done_sub: Any = None
        self.cpu_ms: dict[str, list[float]] = {}  # this process's CPU per workflow, by concurrency
        self.server_cpu_ms: dict[str, list[float]] = {}
        self.server_cpu: Callable[[], float | None] = lambda: None

    def hop_subject(self, k: int) -> str:
        return f"{self.prefix}.hop.{k}"

    def durable(self, k: int) -> str:
        return f"raw_actor_{k}"

    async def setup(self) -> None:
        await self.client_js.add_stream(
            api.StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"], storage=api.StorageType.FILE)
        )
        for k in range(RAW_ACTORS):
            cfg = api.ConsumerConfig(
                durable_name=self.durable(k),
                filter_subject=self.hop_subject(k),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_ack_pending=1000,
                deliver_policy=api.DeliverPolicy.ALL,
            )
            await self.client_js.add_consumer(self.stream, cfg)

        async def on_done(m: Msg) -> None:
            self.driver.completed(m.data.partition(b" ")[0].decode())

        self._done_sub = await self.client_js.subscribe(
            self.done_subject,
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            cb=on_done,
        )

    async def teardown(self) -> None:
        if self._done_sub is not None:
            with contextlib.suppress(Exception):
                await self._done_sub.unsubscribe()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client_js.delete_stream(self.stream), 10)

    def payload(self, wf: str, hop: int) -> bytes:
        return f"{wf} {hop} ".encode() + self.pad

    def pad_to(self, size: int) -> None:
        """Pad payloads to about ``size`` bytes (cadre's average event)."""
        self.pad = b"x" * max(0, size - len(self.payload("r-x-00000", 10)))

    async def _actor(self, k: int, ready: asyncio.Event, stop: asyncio.Event) -> None:
        sub = await self.js.pull_subscribe_bind(durable=self.durable(k), stream=self.stream)
        ready.set()

        async def hop(m: Msg) -> None:
            wf, h, _ = m.data.split(b" ", 2)
            nxt = int(h) + 1
            subject = self.done_subject if nxt == self.hops else self.hop_subject(nxt % RAW_ACTORS)
            wfs = wf.decode()
            await self.js.publish(subject, self.payload(wfs, nxt), headers={"Nats-Msg-Id": f"{wfs}-{nxt}"})
            await m.ack()

        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(RAW_BATCH, timeout=0.5)
                except TimeoutError:
                    continue
                await asyncio.gather(*(hop(m) for m in msgs))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def run(self, label: str, n: int, concurrency: int) -> Run:
        ids = [f"r-{label}-{i:05d}" for i in range(n)]
        first = self.hop_subject(0)

        async def submit(i: int) -> None:
            wf = ids[i]
            await self.client_js.publish(first, self.payload(wf, 0), headers={"Nats-Msg-Id": f"{wf}-0"})

        return await self._measured(ids, submit, n, concurrency)

    async def _measured(
        self, ids: list[str], submit: Callable[[int], Awaitable[None]], n: int, concurrency: int
    ) -> Run:
        """Start the actors, run the workflows through the driver, and note this process's and the
        server's CPU per workflow."""
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for k in range(self.actors):
                ready = asyncio.Event()
                tg.create_task(self._actor(k, ready, stop))
                await ready.wait()
            await barrier(self.actors_nc)
            cpu, server_cpu = time.process_time(), self.server_cpu()
            try:
                return await self.driver.run(ids, submit, concurrency, run_timeout(n))
            finally:
                stop.set()
                self.cpu_ms.setdefault(str(concurrency), []).append((time.process_time() - cpu) * 1000 / n)
                if server_cpu is not None and (server_after := self.server_cpu()) is not None:
                    self.server_cpu_ms.setdefault(str(concurrency), []).append((server_after - server_cpu) * 1000 / n)


# -- the bench ----------------------------------------------------------------------------------


def counter_total(metrics: Metrics, name: str) -> float:
    """Sum over all labels of a counter's samples (``<name>_total``)."""
    return float(sum(s.value for fam in metrics.registry.collect() for s in fam.samples if s.name == f"{name}_total"))


async def workflow_shape(elog: JetStreamLog, wf: str) -> tuple[list[str], float]:
    """The event types of a stored workflow, in order, and the average size of its events."""
    records = await elog.read_records(wf)
    return [r.subject.rsplit(".", 1)[1] for r in records], sum(len(r.data) for r in records) / len(records)


async def measure(
    args: argparse.Namespace, cadre: CadreSide, raw: RawChain, profile: cProfile.Profile | None
) -> dict[str, list[Run]]:
    """Every measured run of every side, the order rotating every run."""
    n, c, m = args.workflows, args.concurrency, args.latency_workflows

    async def profiled(work: Awaitable[Run]) -> Run:
        if profile is None:
            return await work
        profile.enable()
        try:
            return await work
        finally:
            profile.disable()

    sides: dict[str, Callable[[int], Awaitable[Run]]] = {
        "raw": lambda r: raw.run(f"{r:02d}", n, c),
        "cadre": lambda r: profiled(cadre.run("dag", f"m{r}", n, c)),
        "cadre_chain": lambda r: cadre.run("chain", f"m{r}", n, c),
        "raw_unloaded": lambda r: raw.run(f"u{r:02d}", m, 1),
        "cadre_unloaded": lambda r: cadre.run("dag", f"u{r}", m, 1),
        "cadre_chain_unloaded": lambda r: cadre.run("chain", f"u{r}", m, 1),
    }
    runs: dict[str, list[Run]] = {name: [] for name in sides}
    names = list(sides)
    note(f"measuring: {n} workflows with {c} in flight, {m} one at a time, {args.runs} runs per side")
    for r in range(args.runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            runs[name].append(await sides[name](r))
        figures = []
        for name in ("cadre", "cadre_chain", "raw"):
            s, lat = runs[name][-1]
            figures.append(f"{name} {len(lat) / s:.0f} wf/s p50 {percentile(lat, 50) * 1000:.1f} ms")
        note(f"  run {r + 1}/{args.runs}: " + ", ".join(figures))
    return runs


def traced(mode: str) -> Callable[[], int] | None:
    """Turn tracing on (``on``): spans batched, as with OTLP, to an exporter that counts and drops
    them (``bench/traces.py``); returns how to count the spans exported (after a flush)."""
    if mode == "off":
        return None
    from traces import dropping

    provider, exporter = dropping()

    def exported() -> int:
        provider.force_flush()
        return exporter.spans

    return exported


async def main(args: argparse.Namespace, url: str, data_dir: Path) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    prefix = f"pipe{tag}"
    settings = bench_settings(url, data_dir, prefix)
    if args.signing == "on":
        # The deployment's keys in the data dir, as the embedded server's first start makes them:
        # every event is signed by its writer and checked by its readers (the server itself runs
        # without NATS authorization here, so the figures show signing's cost alone).
        await asyncio.to_thread(ensure_auth, settings.auth_dir, settings.auth_names())
    spans = traced(args.tracing)
    # The client and the raw ring connect as a user's program would: nats-py's own client.
    client = await connect(ConnectOptions(url=url, name="bench-client"), nats_py=True)
    raw_nc = await connect(ConnectOptions(url=url, name="bench-raw-actors"), nats_py=True)
    metrics = Metrics.create()
    profile = cProfile.Profile() if args.profile else None
    out: dict[str, Any] = {
        **environment(client),
        "runs": args.runs,
        "storage": "file",
        "signing": args.signing,
        "tracing": args.tracing,
    }
    raw = RawChain(client, raw_nc, tag)
    try:
        async with open_bus(settings, name="bench-cadre") as bus:
            try:
                async with run_system(bus, settings, metrics=metrics) as system:
                    await barrier(bus.nc)
                    cadre = CadreSide(client, settings, metrics, tag)
                    cadre.server_cpu = raw.server_cpu = server_cpu_reader(url)
                    await cadre.start()
                    await raw.setup()
                    try:
                        warm = min(args.workflows, 50)
                        note(f"warm-up: {warm} workflows of each side")
                        await cadre.run("dag", "warm", warm, args.concurrency)
                        dag_types, dag_bytes = await workflow_shape(bus.log, cadre.ids("dag", "warm", 1)[1][0])
                        await cadre.run("chain", "warm", warm, args.concurrency)
                        chain_types, _ = await workflow_shape(bus.log, cadre.ids("chain", "warm", 1)[1][0])
                        raw.hops = len(dag_types) - 1  # the events cadre's actors append per workflow
                        raw.pad_to(round(dag_bytes))
                        await raw.run("w", warm, args.concurrency)
                        cadre.events.clear()
                        cadre.conflicts.clear()
                        cadre.cpu_ms.clear()
                        cadre.server_cpu_ms.clear()
                        raw.cpu_ms.clear()
                        raw.server_cpu_ms.clear()
                        redeliveries = counter_total(metrics, "cadre_redeliveries")
                        assert system is not None
                        cache, reads, decoded = system.cache, system.cache.reads, system.cache.decoded
                        runs = await measure(args, cadre, raw, profile)
                        redeliveries = counter_total(metrics, "cadre_redeliveries") - redeliveries
                        measured = args.runs * 2 * (args.workflows + args.latency_workflows)
                        out["state_cache"] = {  # CADRE_STATE_FEED (auto: off here, every kind in one process)
                            "feed": cache.feed,
                            "decoded_per_workflow": round((cache.decoded - decoded) / measured, 2),
                            "log_reads_per_workflow": round((cache.reads - reads) / measured, 3),
                        }
                    finally:
                        await cadre.stop()
                        await raw.teardown()
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.jetstream().delete_stream(settings.stream_name), 10)
    finally:
        for nc in (raw_nc, client):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 10)
    if spans is not None:
        out["spans"] = spans()
    if profile is not None:
        profile.dump_stats(args.profile)
        note(f"cProfile of the measured cadre runs written to {args.profile}")

    n = args.workflows
    per_wf = {plan: median(ev) for plan, ev in cadre.events.items()}
    dag_hops = per_wf["dag"] - 1  # the intake's workflow_requested is not an actor hop
    chain_hops = per_wf["chain"] - 1
    result = summary(runs["cadre"], dag_hops)
    chain = summary(runs["cadre_chain"], chain_hops)
    baseline = summary(runs["raw"], raw.hops)
    ratio = result["hops_per_s"] / baseline["hops_per_s"]
    lat_unloaded = {
        "workflows": args.latency_workflows,
        "cadre": unloaded(runs["cadre_unloaded"]),
        "cadre_chain": unloaded(runs["cadre_chain_unloaded"]),
        "raw": unloaded(runs["raw_unloaded"]),
    }
    out.update(
        {
            "workflows": n,
            "concurrency": args.concurrency,
            "dag": DAG,
            "events_per_workflow": round(per_wf["dag"], 2),
            "actor_events_per_workflow": round(dag_hops, 2),
            "event_types": dag_types,
            "event_bytes_avg": round(dag_bytes),
            "conflicts_per_workflow": round(median(cadre.conflicts["dag"]), 2),
            "cpu_ms_per_workflow": round(median(cadre.cpu_ms[f"dag/{args.concurrency}"]), 2),
            "server_cpu_ms_per_workflow": (
                round(median(cadre.server_cpu_ms[f"dag/{args.concurrency}"]), 2)
                if cadre.server_cpu_ms.get(f"dag/{args.concurrency}")
                else None
            ),
            "redeliveries": round(redeliveries),
            "cadre": result,
            "raw": {
                **baseline,
                "hops_per_workflow": raw.hops,
                "actors": RAW_ACTORS,
                "payload_bytes": len(raw.payload("r-00-00000", 10)),
                "cpu_ms_per_workflow": round(median(raw.cpu_ms[str(args.concurrency)]), 2),
                "server_cpu_ms_per_workflow": (
                    round(median(raw.server_cpu_ms[str(args.concurrency)]), 2)
                    if raw.server_cpu_ms.get(str(args.concurrency))
                    else None
                ),
            },
            "hop_ratio": round(ratio, 3),
            "unloaded_latency": lat_unloaded,
            "cadre_chain": {
                "dag": CHAIN,
                "events_per_workflow": round(per_wf["chain"], 2),
                "conflicts_per_workflow": round(median(cadre.conflicts["chain"]), 2),
                "event_types": chain_types,
                **chain,
                "hop_ratio": round(chain["hops_per_s"] / baseline["hops_per_s"], 3),
            },
            "targets": {
                "hop_ratio": {"target": TARGET_HOP_RATIO, "value": round(ratio, 3), "ok": ratio >= TARGET_HOP_RATIO},
                "workflows_per_s": {
                    "target": TARGET_WORKFLOWS_PER_S,
                    "value": result["workflows_per_s"],
                    "ok": result["workflows_per_s"] >= TARGET_WORKFLOWS_PER_S,
                },
                "p50_ms": {"target": TARGET_P50_MS, "value": result["p50_ms"], "ok": result["p50_ms"] <= TARGET_P50_MS},
                "p50_ms_unloaded": {
                    "target": TARGET_P50_MS,
                    "value": lat_unloaded["cadre"]["p50_ms"],
                    "ok": lat_unloaded["cadre"]["p50_ms"] <= TARGET_P50_MS,
                },
            },
        }
    )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="a whole cadre pipeline vs a raw nats-py actor chain, same server")
    ap.add_argument("--workflows", type=int, default=300, help="workflows per run")
    ap.add_argument("--concurrency", type=int, default=32, help="workflows in flight at most")
    ap.add_argument("--runs", type=int, default=3, help="runs per side; figures are medians")
    ap.add_argument("--latency-workflows", type=int, default=50, help="workflows run one at a time, per run")
    ap.add_argument("--data-dir", type=Path, help="embedded server data dir (default: a fresh temp dir)")
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the measured cadre runs here")
    ap.add_argument(
        "--tracing",
        choices=("off", "on"),
        default="off",
        help="off (the default): no traces; on: OpenTelemetry spans of every run and call, batched to an "
        "exporter that drops them (what tracing costs short of sending spans to a collector)",
    )
    ap.add_argument(
        "--signing",
        choices=("on", "off"),
        default="on",
        help="sign every event and check every input (the default, as deployed); off: no keyring",
    )
    args = ap.parse_args(argv)
    if args.workflows < 10 or min(args.concurrency, args.runs, args.latency_workflows) < 1:
        ap.error("--workflows >= 10 and --concurrency, --runs, --latency-workflows >= 1")
    return args


def run() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    per_round = 3 * run_timeout(args.workflows) + 3 * run_timeout(args.latency_workflows)
    total = 120 + (args.runs + 1) * per_round
    # cadre's workspace and sample database in a temporary directory
    run_in_workdir(args.nats, args.data_dir, lambda url, work: main(args, url, work), total, "cadre-pipeline-")


if __name__ == "__main__":
    run()
