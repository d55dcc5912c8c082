"""Partitioned work: what each agent process decodes, and workflows/s, with 1, 2, 4 agent processes.

    .venv/bin/python bench/partitions.py [--agents 1,2,4] [--partitions P] [--workflows N]
                                         [--concurrency C] [--rounds R] [--nats URL]

For each count N of agent processes, a fresh prefix and stream; this process runs the planner,
validator, decomposer, budget and intake (``run_system``, with the same ``partitions``: every process
of a stream has the stream's count, and this one, alone in its group, holds all of them); N agent
processes (``bench/partitions.py --worker``, each ``run_system`` with the agent kind only) run with
``partitions=P`` (and once more with partitions off, for the decode count).
A client submits N workflows (explicit plans, the DAG ``a, b -> c`` of ``bench.burn`` steps that
hash ``rounds`` times each: a tool that uses the process's CPU), at most C in flight, after a
warm-up. At the end each agent process reports the events it decoded (its state cache's feed,
its log reads and its own decodes: ``StateCache.decoded``) and the inputs it handed on to the
partition's holder undecoded (``ActorSystem.handed_on``).

Figures: events decoded per agent process per workflow (all workflows of the run, warm-up
included), and workflows/s of the measured runs (median of R). One JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import bench_server, bench_settings, environment, median, note, percentile
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import NoKeysError

from cadre.actors.intake import workflow_id_for
from cadre.actors.partitions import bucket_name
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.settings import Settings
from cadre.system import run_system
from cadre.wiring import open_bus

HERE = Path(__file__).resolve().parent


def plan(rounds: int) -> dict[str, Any]:
    burn = "bench.burn"
    return {
        "nodes": [
            {"id": "a", "tool": burn, "inputs": {"value": "alpha", "rounds": rounds}},
            {"id": "b", "tool": burn, "inputs": {"value": "beta", "rounds": rounds}},
            {"id": "c", "tool": burn, "depends_on": ["a", "b"], "inputs": {"value": "${a.value}", "rounds": rounds}},
        ],
        "output": "c",
    }


def settings_for(url: str, data_dir: Path, prefix: str, partitions: int, lease_ttl: float = 10.0) -> Settings:
    return bench_settings(
        url, data_dir, prefix, tool_modules=["_cpu_tools"], partitions=partitions, partition_lease_ttl_s=lease_ttl
    )


# -- an agent process -----------------------------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    """Run the agents until SIGTERM; then print what the process decoded and handed on."""
    settings = settings_for(args.nats, Path(args.data_dir), args.prefix, args.partitions, args.lease_ttl)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with open_bus(settings, name="bench-agent") as bus, run_system(bus, settings, ["agent"]) as system:
        assert system is not None
        print("ready", flush=True)
        await stop.wait()
        out = {"decoded": system.cache.decoded, "handed_on": system.handed_on}
    print(json.dumps(out), flush=True)


# -- the driver -----------------------------------------------------------------------------------


class Agents:
    def __init__(self, url: str, data_dir: Path, prefix: str, partitions: int, n: int, lease_ttl: float) -> None:
        self.cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--nats",
            url,
            "--lease-ttl",
            str(lease_ttl),
        ]
        self.cmd += ["--data-dir", str(data_dir), "--prefix", prefix, "--partitions", str(partitions)]
        self.n = n
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        env = os.environ | {"PYTHONPATH": str(HERE)}
        for _ in range(self.n):
            self.procs.append(
                subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
            )
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"an agent process did not start: {line!r}")

    def stop(self) -> list[dict[str, int]]:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        out = []
        for p in self.procs:
            stdout, _ = p.communicate(timeout=30)
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def settled(nc: NATS, prefix: str, n: int, partitions: int) -> None:
    """Until the agent processes hold an even share each (the leases move on a timer)."""
    kv = await nc.jetstream().key_value(bucket_name(prefix))
    share = -(-partitions // n)
    async with asyncio.timeout(30):
        while True:
            try:
                keys = await kv.keys()
            except NoKeysError:
                keys = []
            owners: dict[str, int] = {}
            for k in keys:
                if k.startswith("agent.p"):
                    owner = (await kv.get(k)).value or b""
                    owners[owner.decode()] = owners.get(owner.decode(), 0) + 1
            if len(owners) == n and sum(owners.values()) == partitions and max(owners.values()) <= share:
                return
            await asyncio.sleep(0.2)


async def run_config(args: argparse.Namespace, url: str, data_dir: Path, n: int, partitions: int) -> dict[str, Any]:
    prefix = f"part{secrets.token_hex(3)}"
    settings = settings_for(url, data_dir, prefix, partitions, args.lease_ttl)
    client = await connect(ConnectOptions(url=url, name="bench-client"))
    agents = Agents(url, data_dir, prefix, partitions, n, args.lease_ttl)
    done: dict[str, asyncio.Future[float]] = {}
    submitted = 0
    try:
        async with (
            open_bus(settings, name="bench-cadre") as bus,
            run_system(bus, settings, ("planner", "validator", "decomposer", "budget")),
        ):
            await asyncio.to_thread(agents.start)
            if partitions:
                await settled(client, prefix, n, partitions)

            async def on_end(m: Any) -> None:
                parsed = settings.subjects.parse_event(m.subject)
                fut = done.pop(parsed[0], None) if parsed else None
                if fut is not None and not fut.done():
                    fut.set_result(time.perf_counter())

            js = client.jetstream()
            completed = settings.subjects.stored_of_type("workflow_completed")  # with a partition or not
            sub = await js.subscribe(
                completed[0],
                stream=settings.stream_name,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW,
                config=api.ConsumerConfig(filter_subjects=list(completed)),
                cb=on_end,
            )
            await barrier(client)
            body_plan = plan(args.rounds)

            async def run(label: str, count: int) -> tuple[float, list[float]]:
                nonlocal submitted
                slots = asyncio.Semaphore(args.concurrency)
                lat: list[float] = []

                async def one(i: int) -> None:
                    key = f"{prefix}-{label}-{i}"
                    async with slots:
                        fut = asyncio.get_running_loop().create_future()
                        done[workflow_id_for(key)] = fut
                        start = time.perf_counter()
                        body = json.dumps({"plan": body_plan, "idempotency_key": key}).encode()
                        await client.request(settings.subjects.requests, body, timeout=10)
                        lat.append(await fut - start)

                start = time.perf_counter()
                async with asyncio.timeout(60 + count), asyncio.TaskGroup() as tg:
                    for i in range(count):
                        tg.create_task(one(i))
                submitted += count
                return time.perf_counter() - start, lat

            await run("warm", min(30, args.workflows))
            runs = [await run(f"r{r}", args.workflows) for r in range(args.runs)]
            await sub.unsubscribe()
            reports = await asyncio.to_thread(agents.stop)
    finally:
        agents.kill()
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(settings.stream_name)
        with contextlib.suppress(Exception):
            await client.jetstream().delete_key_value(bucket_name(prefix))
        await client.close()
    wps = [len(lat) / s for s, lat in runs]
    return {
        "agent_processes": n,
        "partitions": partitions,
        "workflows": submitted,
        "decoded_per_process_per_workflow": [round(r["decoded"] / submitted, 2) for r in reports],
        "handed_on_per_process_per_workflow": [round(r["handed_on"] / submitted, 2) for r in reports],
        "workflows_per_s": round(median(wps), 1),
        "runs_workflows_per_s": [round(x, 1) for x in wps],
        "p50_ms": round(median([percentile(lat, 50) * 1000 for _, lat in runs]), 1),
    }


async def main(args: argparse.Namespace, url: str, data_dir: Path) -> dict[str, Any]:
    client = await connect(ConnectOptions(url=url, name="bench-env"))
    out: dict[str, Any] = {**environment(client), "rounds_per_step": args.rounds, "concurrency": args.concurrency}
    await client.close()
    results = []
    for n in args.agents:
        for partitions in (args.partitions, 0) if args.unpartitioned else (args.partitions,):
            note(f"{n} agent process(es), partitions={partitions}")
            r = await run_config(args, url, data_dir, n, partitions)
            note(json.dumps(r))
            results.append(r)
    out["results"] = results
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="partitioned work: decodes per agent process, workflows/s")
    ap.add_argument("--agents", default="1,2,4", help="agent process counts, comma-separated")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--unpartitioned", action="store_true", help="also run each count with partitions off")
    ap.add_argument("--workflows", type=int, default=150, help="workflows per measured run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=30_000, help="hash rounds per step (about 10 ms of CPU)")
    ap.add_argument(
        "--lease-ttl",
        type=float,
        default=10.0,
        help="partition lease TTL, s (the CPU-bound steps hold an agent's loop for seconds at a time)",
    )
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    ap.add_argument("--data-dir", help="data dir (keys, workspace); default: a fresh temp dir")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.agents = [int(x) for x in str(args.agents).split(",")]
    return args


def run() -> None:
    args = parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cadre-part-") as tmp, bench_server(args.nats, None) as url:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        result = asyncio.run(main(args, url, data_dir))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    run()
