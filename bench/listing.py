"""Benchmark of ``cadre workflows`` and ``cadre stats`` over a long log.

    .venv/bin/python bench/listing.py [--workflows N] [--runs R] [--data-dir DIR] [--nats URL]

Appends N completed workflows of 6 events each (request, plan, its verdict, a task, a step, the
end: the shape of a one-task run) to a fresh stream, then runs each command R times as a user
does (``cadre workflows --limit 20``, ``cadre workflows --json``, ``cadre stats --json``: a new
process each time, so the figures include Python's start and the connection) and reports the
median seconds, beside ``cadre tools --json`` (no connection: the process's start). One JSON
object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import bench_server, environment, note

from cadre.bus import ConnectOptions, StreamSpec, Subjects, connect
from cadre.bus.events import (
    Envelope,
    Event,
    PlanProposed,
    PlanValidated,
    StepCompleted,
    TaskReady,
    WorkflowCompleted,
    WorkflowRequested,
    make_event,
)
from cadre.bus.plan import Plan, Task
from cadre.bus.signing import Signer
from cadre.store import JetStreamLog

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PREFIX = "benchlist"
# `cadre tools --json` connects to nothing: the cost of starting the process, for comparison.
COMMANDS = (["tools", "--json"], ["workflows", "--limit", "20"], ["workflows", "--json"], ["stats", "--json"])


def one_run(wf: str, n: int) -> list[Envelope]:
    start = T0 + timedelta(seconds=n)
    task = Task(id="q", tool="sql.query", inputs={"sql": "select 1"})
    datas: list[tuple[Event, str]] = [
        (WorkflowRequested(request=f"count the orders of customer {n}"), "intake"),
        (PlanProposed(plan=Plan(nodes=(task,), output="q"), source="library"), "planner"),
        (PlanValidated(revision=1), "validator"),
        (TaskReady(task=task), "planner"),
        (StepCompleted(task_id="q", step_id="q.s1", tool="sql.query", planned_tool="sql.query"), "agent"),
        (WorkflowCompleted(result={"rows": [[n]]}), "planner"),
    ]
    out: list[Envelope] = []
    for i, (data, actor) in enumerate(datas):
        cause = out[-1].id if out else None
        at = start + timedelta(milliseconds=3 * i)
        out.append(make_event(data, workflow_id=wf, actor=actor, at=at, causation_id=cause, index=i))
    return out


def log_of(nc: Any, prefix: str = PREFIX) -> JetStreamLog:
    """The bench's event log under its own ``prefix`` (its own stream), not a deployment's."""
    subjects = Subjects(prefix)
    return JetStreamLog(nc, stream=StreamSpec(name=prefix.upper(), subjects=subjects.events), subjects=subjects)


async def seed(url: str, n: int, prefix: str = PREFIX, signer: Signer | None = None) -> dict[str, Any]:
    """Append ``n`` finished workflows (:func:`one_run`) under ``prefix``, signed by ``signer`` if given."""
    nc = await connect(ConnectOptions(url=url))
    log = log_of(nc, prefix).signed_by(signer)
    await log.ensure_stream()
    started = time.perf_counter()
    for first in range(0, n, 200):
        batch = range(first, min(n, first + 200))
        await asyncio.gather(*(log.append(f"wf-{i:08x}", one_run(f"wf-{i:08x}", i), expected_seq=0) for i in batch))
    note(f"appended {n} workflows in {time.perf_counter() - started:.1f} s")
    env = environment(nc)
    await nc.drain()
    return env


def measure(url: str, data_dir: Path, runs: int) -> dict[str, Any]:
    env = dict(os.environ, CADRE_NATS_URL=url, CADRE_SUBJECT_PREFIX=PREFIX, CADRE_STREAM_NAME=PREFIX.upper())
    env["CADRE_DATA_DIR"] = str(data_dir / "cli")
    cadre = str(Path(sys.executable).with_name("cadre"))
    out: dict[str, Any] = {}
    for argv in COMMANDS:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run([cadre, *argv], env=env, capture_output=True, timeout=300, check=False)
            times.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"cadre {' '.join(argv)} failed: {done.stderr.decode()[-2000:]}")
        out[" ".join(argv)] = {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}
        note(f"cadre {' '.join(argv)}: median {statistics.median(times):.2f} s")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workflows", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--nats", metavar="URL")
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="cadre-bench-listing-") as tmp,
        bench_server(args.nats, args.data_dir) as url,
    ):
        env = asyncio.run(seed(url, args.workflows))
        result = {"workflows": args.workflows, **env, "commands": measure(url, Path(tmp), args.runs)}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
