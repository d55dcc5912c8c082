"""What the state cache reads from the log without its feed (``CADRE_STATE_FEED=off``), by deployment.

    .venv/bin/python bench/state_feed.py [--workflows N] [--concurrency C] [--nats URL]

For each layout of the actor kinds over "processes" (each a ``run_system`` on a NATS connection and
an event log of its own, so that none hears another's appends: in one Python process here, which
changes nothing the cache counts), runs N workflows of the pipeline bench's DAG (``a, b -> c``,
explicit plans, instant tools) with the feed off, then the same with it on, and prints per
workflow: the reads of the log with a consumer (loads and long catch-ups, ``StateCache.reads``),
the messages of gaps asked for one by one (``StateCache.gets``) and the events decoded, summed
over the processes, and every NATS message they received (feed, mailboxes, replies). One JSON object goes to stdout.

Layouts: ``one`` (every kind in one process: ``cadre up``), ``agents apart`` (the agents in a
process of their own), ``two cadre up`` (two processes each running every kind, sharing the
mailboxes), ``per kind`` (the planner with the intake and budget, then the validator, the
decomposer, the agents and the approvals each in a process of its own), and ``two cadre up`` again
with 8 partitions (``CADRE_PARTITIONS``: each workflow handled by the process holding its partition).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import sys
from pathlib import Path
from typing import Any

from _common import bench_settings, note, run_in_workdir
from nats.aio.client import Client as NATS
from pipeline import CadreSide, run_timeout

from cadre.actors.metrics import Metrics
from cadre.actors.runtime import ActorSystem
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.system import KINDS, run_system
from cadre.wiring import open_bus

LAYOUTS: dict[str, tuple[list[tuple[str, ...]], int]] = {  # the processes' kinds, and CADRE_PARTITIONS
    "one": ([KINDS], 0),
    "agents apart": ([tuple(k for k in KINDS if k != "agent"), ("agent",)], 0),
    "two cadre up": ([KINDS, KINDS], 0),
    "two cadre up, 8 partitions": ([KINDS, KINDS], 8),
    "per kind": ([("planner", "budget"), ("validator",), ("decomposer",), ("agent",), ("approvals",)], 0),
}


async def measure(
    url: str, work: Path, layout: list[tuple[str, ...]], partitions: int, feed: str, n: int, c: int
) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    prefix = f"feed{tag}"
    settings = bench_settings(url, work, prefix, state_feed=feed, partitions=partitions)
    client = await connect(ConnectOptions(url=url, name="bench-client"))
    systems: list[ActorSystem] = []
    conns: list[NATS] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            for i, kinds in enumerate(layout):
                bus = await stack.enter_async_context(open_bus(settings, name=f"bench-p{i}"))
                conns.append(bus.nc)
                system = await stack.enter_async_context(run_system(bus, settings, kinds, metrics=Metrics.create()))
                if system is not None:
                    systems.append(system)
                await barrier(bus.nc)
            if partitions:  # until the processes hold an even share (a new process gets its own at a tick)
                share = partitions // len(systems)
                async with asyncio.timeout(30):
                    while any(s.leases is None or len(s.leases.held) != share for s in systems):  # noqa: ASYNC110
                        await asyncio.sleep(0.2)  # the leases change at their ticks
            cadre = CadreSide(client, settings, Metrics.create(), tag)
            await cadre.start()
            try:
                await cadre.run("dag", "warm", 20, c)
                reads, gets, decoded = (sum(getattr(s.cache, k) for s in systems) for k in ("reads", "gets", "decoded"))
                received = sum(nc.stats["in_msgs"] for nc in conns)
                seconds, _ = await cadre.run("dag", "m", n, c)
                return {
                    "feed": [s.cache.feed for s in systems],
                    "consumer_reads_per_workflow": round((sum(s.cache.reads for s in systems) - reads) / n, 2),
                    "gets_per_workflow": round((sum(s.cache.gets for s in systems) - gets) / n, 2),
                    "decoded_per_workflow": round((sum(s.cache.decoded for s in systems) - decoded) / n, 2),
                    # every NATS message the processes received: feed, mailboxes, replies, pings
                    "received_per_workflow": round((sum(nc.stats["in_msgs"] for nc in conns) - received) / n, 1),
                    "events_per_workflow": round(cadre.events["dag"][-1], 2),
                    "workflows_per_s": round(n / seconds, 1),
                }
            finally:
                await cadre.stop()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.jetstream().delete_stream(settings.stream_name), 10)
        await client.close()


async def main(args: argparse.Namespace, url: str, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"workflows": args.workflows, "concurrency": args.concurrency, "layouts": {}}
    for name, (layout, partitions) in LAYOUTS.items():
        if args.layouts and name not in args.layouts:
            continue
        out["layouts"][name] = {"processes": [list(k) for k in layout], "partitions": partitions}
        for feed in ("off", "on"):
            note(f"{name}, feed {feed}")
            try:
                out["layouts"][name][feed] = await measure(
                    url, work, layout, partitions, feed, args.workflows, args.concurrency
                )
            except Exception as exc:  # a layout that fails says so; the others still run
                note(f"  failed: {exc!r}")
                out["layouts"][name][feed] = {"error": repr(exc)}
    return out


def run() -> None:
    ap = argparse.ArgumentParser(description="the state cache's log reads without its feed, by deployment")
    ap.add_argument("--workflows", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    ap.add_argument("--layouts", nargs="*", choices=list(LAYOUTS), help="only these layouts (default: all)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    timeout = 60 + 2 * len(LAYOUTS) * (run_timeout(args.workflows) + run_timeout(20))
    run_in_workdir(args.nats, None, lambda url, work: main(args, url, work), timeout, "cadre-state-feed-")


if __name__ == "__main__":
    run()
