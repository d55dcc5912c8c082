"""Benchmark of a whole cadre pipeline, beside a raw nats-py actor chain of the same run.

    .venv/bin/python bench/pipeline.py [--workflows N] [--concurrency C] [--runs R]
                                       [--data-dir DIR] [--nats URL] [--profile FILE]

**cadre**: every actor kind (planner, validator, decomposer, agent, budget, the intake) runs
in this process with ``cadre.system.run_system``, on a file-storage stream of its own, as in
production. A client submits N workflows, at most C in flight, each an explicit plan (rule
based planning, no model): the DAG ``a, b -> c`` of three instant tools (``bench.echo``
from ``bench/_tools.py``): ``a`` and ``b`` run in parallel, ``c`` depends on both. A submit
is a NATS request to ``<prefix>.requests`` (the intake appends ``workflow_requested`` and
replies); a workflow ends with its ``workflow_completed`` event, which the client sees on
one ordered consumer filtered on ``<prefix>.evt.*.workflow_completed`` (so it only sees
stored events). Latency = completion - submit.

**raw** (the baseline): 4 "actors", each a durable pull consumer (``fetch`` + ``ack``) on a
subject of its own in a file-storage stream, each republishing what it takes to the next
actor's subject with an awaited ``js.publish`` (with a ``Nats-Msg-Id``), in a ring, until a
message has made as many hops as cadre's actors append events per workflow; the last hop
publishes to a ``done`` subject, which the client follows like cadre's completions. The
client submits with an awaited ``js.publish``, with the same N and C. Payloads have the
average size of cadre's events. Each raw actor handles a fetched batch concurrently, as
cadre's replicas do.

The figure to read is the hop rate: events appended by cadre's actors per second against
raw hops per second (for the same number of hops per workflow this equals the ratio of
workflows per second). Every figure is the median of R runs; raw and cadre alternate, the
order flipping every run, after a warm-up of each. ``--profile FILE`` writes a cProfile of
the measured cadre runs (the whole process: actors, client, nats-py) to FILE.

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
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from _common import bench_server, environment, median, note
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from actors.intake import workflow_id_for
from actors.metrics import Metrics
from bus.connection import ConnectOptions, barrier, connect
from cadre.settings import Settings
from cadre.system import run_system
from cadre.wiring import open_bus

TARGET_HOP_RATIO = 0.75
TARGET_WORKFLOWS_PER_S = 150.0
TARGET_P50_MS = 25.0
RAW_ACTORS = 4
RAW_BATCH = 32  # messages per fetch of a raw actor, like cadre's default actor_batch

DAG = "a, b -> c: three bench.echo tasks; a and b run in parallel, c depends on both"
PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "a", "tool": "bench.echo", "inputs": {"value": "alpha"}},
        {"id": "b", "tool": "bench.echo", "inputs": {"value": "beta"}},
        {"id": "c", "tool": "bench.echo", "depends_on": ["a", "b"], "inputs": {"value": "${a.value}"}},
    ],
    "output": "c",
}


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
    ) -> tuple[float, list[float]]:
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


def summary(ids: int, hops_per_wf: float, runs: list[tuple[float, list[float]]]) -> dict[str, Any]:
    """Medians over runs of workflows/s, hops/s, p50 and p99 latency."""
    wps = [ids / s for s, _ in runs]
    p50 = [statistics.median(lat) * 1000 for _, lat in runs]
    p99 = [statistics.quantiles(lat, n=100, method="inclusive")[98] * 1000 for _, lat in runs]
    return {
        "workflows_per_s": round(median(wps), 1),
        "hops_per_s": round(median(wps) * hops_per_wf),
        "p50_ms": round(median(p50), 2),
        "p99_ms": round(median(p99), 2),
        "runs_workflows_per_s": [round(x, 1) for x in wps],
        "runs_p50_ms": [round(x, 2) for x in p50],
        "runs_p99_ms": [round(x, 2) for x in p99],
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

    async def start(self) -> None:
        subjects = self.settings.subjects
        for etype, on_end in (("workflow_completed", self._on_completed), ("workflow_failed", self._on_failed)):
            self._subs.append(
                await self.js.subscribe(
                    subjects.of_type(etype),
                    stream=self.settings.stream_name,
                    ordered_consumer=True,
                    deliver_policy=api.DeliverPolicy.NEW,
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

    async def run(self, label: str, n: int, concurrency: int) -> tuple[float, list[float], int]:
        """One run: seconds, latencies, and the messages it added to the stream."""
        keys = [f"{self.tag}-{label}-{i}" for i in range(n)]
        ids = [workflow_id_for(k) for k in keys]
        bodies = [json.dumps({"plan": PLAN, "idempotency_key": k}).encode() for k in keys]
        subject = self.settings.subjects.requests

        async def submit(i: int) -> None:
            resp = await self.client.request(subject, bodies[i], timeout=5.0)
            reply = json.loads(resp.data)
            if reply.get("workflow_id") != ids[i] or reply.get("existing"):
                raise RuntimeError(f"intake replied {reply!r} to request {keys[i]}")

        before = await self.stream_messages()
        seconds, latencies = await self.driver.run(ids, submit, concurrency, run_timeout(n))
        added = await self.stream_messages() - before
        return seconds, latencies, added


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
        self.hops = 15  # set from cadre's events per workflow before measuring
        self.pad = b""
        self._done_sub: Any = None

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
        await asyncio.wait_for(self.client_js.delete_stream(self.stream), 10)

    def payload(self, wf: str, hop: int) -> bytes:
        return f"{wf} {hop} ".encode() + self.pad

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

    async def run(self, label: str, n: int, concurrency: int) -> tuple[float, list[float]]:
        ids = [f"r{label}-{i:05d}" for i in range(n)]
        first = self.hop_subject(0)

        async def submit(i: int) -> None:
            wf = ids[i]
            await self.client_js.publish(first, self.payload(wf, 0), headers={"Nats-Msg-Id": f"{wf}-0"})

        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for k in range(RAW_ACTORS):
                ready = asyncio.Event()
                tg.create_task(self._actor(k, ready, stop))
                await ready.wait()
            await barrier(self.actors_nc)
            try:
                return await self.driver.run(ids, submit, concurrency, run_timeout(n))
            finally:
                stop.set()


# -- the bench ----------------------------------------------------------------------------------


def counter_total(metrics: Metrics, name: str, **labels: str) -> float:
    """Sum of a counter's samples (``<name>_total``) whose labels include ``labels``."""
    total = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == f"{name}_total" and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def main(args: argparse.Namespace, url: str, data_dir: Path) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    prefix = f"pipe{tag}"
    settings = Settings(
        nats_url=url,
        data_dir=data_dir,
        subject_prefix=prefix,
        stream_name=prefix.upper(),
        stream_storage="file",
        tool_modules=["_tools"],
        actor_drain_timeout_s=5.0,
    )
    n, c, runs = args.workflows, args.concurrency, args.runs
    client = await connect(ConnectOptions(url=url, name="bench-client"))
    raw_nc = await connect(ConnectOptions(url=url, name="bench-raw-actors"))
    metrics = Metrics.create()
    profile = cProfile.Profile() if args.profile else None
    out: dict[str, Any] = {**environment(client), "runs": runs, "storage": "file", "workflows": n, "concurrency": c}
    raw = RawChain(client, raw_nc, tag)
    try:
        async with open_bus(settings, name="bench-cadre") as bus:
            try:
                async with run_system(bus, settings, metrics=metrics):
                    await barrier(bus.nc)
                    side = CadreSide(client, settings, metrics, tag)
                    await side.start()
                    await raw.setup()
                    try:
                        note(f"warm-up: cadre and raw, {min(n, 50)} workflows each")
                        _, _, added = await side.run("warm", min(n, 50), c)
                        sample = next(iter(await bus.log.workflows()))
                        records = await bus.log.read_records(sample)
                        avg_bytes = sum(len(r.data) for r in records) / len(records)
                        types = [r.subject.rsplit(".", 1)[1] for r in records]
                        raw.hops = len(records) - 1  # the events cadre's actors append per workflow
                        raw.pad = b"x" * max(0, round(avg_bytes) - len(raw.payload("r00-00000", 10)))
                        await raw.run("w", min(n, 50), c)
                        conflicts0 = counter_total(metrics, "cadre_conflicts")
                        handled0 = counter_total(metrics, "cadre_events_handled")
                        redeliveries0 = counter_total(metrics, "cadre_redeliveries")

                        cadre_runs: list[tuple[float, list[float]]] = []
                        raw_runs: list[tuple[float, list[float]]] = []
                        events: list[int] = []
                        note(f"measuring: {n} workflows, {c} in flight, {runs} runs per side")
                        for r in range(runs):
                            order = ("raw", "cadre") if r % 2 == 0 else ("cadre", "raw")
                            for which in order:
                                if which == "raw":
                                    raw_runs.append(await raw.run(f"{r:02d}", n, c))
                                else:
                                    if profile is not None:
                                        profile.enable()
                                    try:
                                        s, lat, added = await side.run(f"m{r}", n, c)
                                    finally:
                                        if profile is not None:
                                            profile.disable()
                                    cadre_runs.append((s, lat))
                                    events.append(added)
                            note(
                                f"  run {r + 1}/{runs}: cadre {n / cadre_runs[-1][0]:.0f} wf/s "
                                f"(p50 {statistics.median(cadre_runs[-1][1]) * 1000:.1f} ms), "
                                f"raw {n / raw_runs[-1][0]:.0f} wf/s "
                                f"(p50 {statistics.median(raw_runs[-1][1]) * 1000:.1f} ms)"
                            )
                    finally:
                        await side.stop()
                        await raw.teardown()
            finally:
                await asyncio.wait_for(client.jetstream().delete_stream(settings.stream_name), 10)
    finally:
        for nc in (raw_nc, client):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 10)
    if profile is not None:
        profile.dump_stats(args.profile)
        note(f"cProfile of the measured cadre runs written to {args.profile}")

    per_wf = median([e / n for e in events])
    actor_events = per_wf - 1  # the intake's workflow_requested is not an actor hop
    handled = (counter_total(metrics, "cadre_events_handled") - handled0) / (n * runs)
    cadre = summary(n, actor_events, cadre_runs)
    baseline = summary(n, raw.hops, raw_runs)
    ratio = cadre["hops_per_s"] / baseline["hops_per_s"]
    out.update(
        {
            "dag": DAG,
            "events_per_workflow": round(per_wf, 2),
            "event_types": types,
            "event_bytes_avg": round(avg_bytes),
            "actor_events_per_workflow": round(actor_events, 2),
            "inputs_handled_per_workflow": round(handled, 2),
            "conflicts": round(counter_total(metrics, "cadre_conflicts") - conflicts0),
            "redeliveries": round(counter_total(metrics, "cadre_redeliveries") - redeliveries0),
            "cadre": cadre,
            "raw": {**baseline, "hops_per_workflow": raw.hops, "actors": RAW_ACTORS},
            "hop_ratio": round(ratio, 3),
            "targets": {
                "hop_ratio": {"target": TARGET_HOP_RATIO, "value": round(ratio, 3), "ok": ratio >= TARGET_HOP_RATIO},
                "workflows_per_s": {
                    "target": TARGET_WORKFLOWS_PER_S,
                    "value": cadre["workflows_per_s"],
                    "ok": cadre["workflows_per_s"] >= TARGET_WORKFLOWS_PER_S,
                },
                "p50_ms": {"target": TARGET_P50_MS, "value": cadre["p50_ms"], "ok": cadre["p50_ms"] <= TARGET_P50_MS},
            },
        }
    )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="a whole cadre pipeline vs a raw nats-py actor chain, same server")
    ap.add_argument("--workflows", type=int, default=300, help="workflows per run")
    ap.add_argument("--concurrency", type=int, default=32, help="workflows in flight at most")
    ap.add_argument("--runs", type=int, default=3, help="runs per side; figures are medians")
    ap.add_argument("--data-dir", type=Path, help="embedded server data dir (default: a fresh temp dir)")
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the measured cadre runs here")
    args = ap.parse_args(argv)
    if args.workflows < 10 or min(args.concurrency, args.runs) < 1:
        ap.error("--workflows >= 10 and --concurrency, --runs >= 1")
    return args


def run() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    total = 120 + 2 * (args.runs + 1) * run_timeout(args.workflows)
    work = Path(tempfile.mkdtemp(prefix="cadre-pipeline-"))  # cadre's workspace and sample database
    try:
        with bench_server(args.nats, args.data_dir) as url:
            result = asyncio.run(asyncio.wait_for(main(args, url, work), total))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    run()
