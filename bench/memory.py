"""Memory of long-running actor processes: RSS after N completed workflows (issue 12).

    .venv/bin/python bench/memory.py [--workflows 10000] [--at 0,1000,5000,10000]
                                     [--concurrency 50] [--nats URL] [--data-dir DIR]

Starts two processes as a deployment would: ``cadre up`` (every actor kind in one process, the
"all-in-one") and a second ``cadre actor agent`` (an agent process; it shares the agents'
consumer with the all-in-one's agent, and its state cache follows every workflow as any
actor process's does). Then submits explicit-plan workflows (the DAG ``a, b -> c`` of
``bench.echo``, as in ``bench/pipeline.py``), at most C in flight, waits for each to complete,
and prints both processes' RSS (``VmRSS`` of ``/proc/<pid>/status``) at each checkpoint. The
bench waits a few seconds (``--settle``) at each checkpoint first, so that workflows released
after they end are counted as released. One JSON object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import bench_server, note
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from cadre.bus import Subjects
from cadre.bus.connection import ConnectOptions, barrier, connect

DAG = {
    "nodes": [
        {"id": "a", "tool": "bench.echo", "inputs": {"value": "alpha"}},
        {"id": "b", "tool": "bench.echo", "inputs": {"value": "beta"}},
        {"id": "c", "tool": "bench.echo", "depends_on": ["a", "b"], "inputs": {"value": "${a.value}"}},
    ],
    "output": "c",
}
ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cadre.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )


async def wait_ready(nc: NATS, subjects: Subjects, procs: dict[str, subprocess.Popen[bytes]], log_dir: Path) -> None:
    from cadre.actors.ping import ping_all

    async with asyncio.timeout(60):
        while True:
            kinds: dict[str, int] = {}
            for a in await ping_all(nc, subjects, wait=0.3):
                for k in a["kinds"]:
                    kinds[k] = kinds.get(k, 0) + a["replicas"]
            if kinds.get("agent", 0) >= 2 and kinds.get("planner", 0) >= 1:
                return
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited: {(log_dir / f'{name}.log').read_text()[-2000:]}")


async def main(args: argparse.Namespace, url: str, data_dir: Path) -> dict[str, Any]:
    prefix = f"mem{secrets.token_hex(3)}"
    subjects = Subjects(prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")} | {
        "CADRE_NATS_URL": url,
        "CADRE_SUBJECT_PREFIX": prefix,
        "CADRE_STREAM_NAME": prefix.upper(),
        "CADRE_STREAM_STORAGE": "file",
        "CADRE_DATA_DIR": str(data_dir),
        "CADRE_TOOL_MODULES": '["_tools"]',
        "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
    }
    env |= dict(kv.split("=", 1) for kv in args.env)
    procs = {
        "up": start(["up"], env, data_dir / "up.log"),
        "agent": start(["actor", "agent"], env, data_dir / "agent.log"),
    }
    client = await connect(ConnectOptions(url=url, name="bench-memory"))
    out: dict[str, Any] = {"workflows": args.workflows, "concurrency": args.concurrency, "rss_mb": []}
    try:
        await wait_ready(client, subjects, procs, data_dir)
        done: dict[str, asyncio.Future[None]] = {}

        async def on_end(m: Msg) -> None:
            parsed = subjects.parse_event(m.subject)
            if parsed and parsed[0] in done and not done[parsed[0]].done():
                done[parsed[0]].set_result(None)

        js = client.jetstream()
        for etype in ("workflow_completed", "workflow_failed"):
            await js.subscribe(
                subjects.of_type(etype),
                stream=prefix.upper(),
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW,
                cb=on_end,
            )
        await barrier(client)
        slots = asyncio.Semaphore(args.concurrency)
        loop = asyncio.get_running_loop()

        async def one(i: int) -> None:
            try:
                body = json.dumps({"plan": DAG, "idempotency_key": f"{prefix}-{i}"}).encode()
                resp = await client.request(subjects.requests, body, timeout=10)
                wf = json.loads(resp.data)["workflow_id"]
                fut = done.setdefault(wf, loop.create_future())
                await asyncio.wait_for(fut, 60)
                del done[wf]
            finally:
                slots.release()

        async def checkpoint(n: int) -> None:
            await asyncio.sleep(args.settle)
            row = {"workflows": n, **{name: round(rss_mb(p.pid), 1) for name, p in procs.items()}}
            out["rss_mb"].append(row)
            note(f"after {n} workflows: RSS up {row['up']} MB, agent {row['agent']} MB")

        marks = sorted(set(args.at))
        started = time.perf_counter()
        await checkpoint(0)
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        for mark in marks:
            while n < mark:
                await slots.acquire()
                t = asyncio.create_task(one(n))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                n += 1
            if tasks:
                await asyncio.gather(*tasks)
            if mark:
                await checkpoint(mark)
        out["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        await client.close()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--at", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds to wait at each checkpoint")
    parser.add_argument("--env", action="append", default=[], help="CADRE_X=value for both processes")
    parser.add_argument("--nats", default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.at is None:
        args.at = [0, 1_000, 5_000, 10_000]
    args.at = [a for a in args.at if a <= args.workflows] + [args.workflows]
    with bench_server(args.nats, args.data_dir) as url, tempfile.TemporaryDirectory(prefix="cadre-memory-") as tmp:
        data_dir = args.data_dir / "cadre" if args.data_dir is not None else Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        print(json.dumps(asyncio.run(main(args, url, data_dir))), flush=True)


if __name__ == "__main__":
    cli()
