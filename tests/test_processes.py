"""Each actor kind as its own OS process, as `cadre actor NAME` runs it; and an agent killed mid-step."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from cadre.actors.ping import ping_all
from cadre.bus import StreamSpec, Subjects
from cadre.bus.events import StepCompleted
from cadre.store import JetStreamLog
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from tests.conftest import unique, until


class Cluster:
    """cadre actor processes sharing one prefix, stream and data dir."""

    def __init__(self, nats_url: str, data_dir: Path) -> None:
        prefix = unique("p")
        self.subjects = Subjects(prefix)
        self.spec = StreamSpec(name=prefix.upper(), subjects=self.subjects.events)
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")} | {
            "CADRE_NATS_URL": nats_url,
            "CADRE_SUBJECT_PREFIX": prefix,
            "CADRE_STREAM_NAME": self.spec.name,
            "CADRE_DATA_DIR": str(data_dir),
            "CADRE_TOOL_MODULES": '["tests.plugin_tools"]',
            "CADRE_ACTOR_ACK_WAIT_S": "1.5",
            "CADRE_PLAN_LIBRARY": str(Path(__file__).resolve().parent.parent / "examples" / "plans"),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, kind: str, replicas: int = 1) -> None:
        """``cadre actor KIND`` as a process named ``name``."""
        self.launch(name, "actor", kind, "--replicas", str(replicas))

    def launch(self, name: str, *args: str) -> None:
        """``cadre ARGS...`` as a process named ``name``, its output in ``<data dir>/<name>.log``."""
        log = (self.data_dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "cadre.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
        log.close()

    async def ended(self, nc: NATS, wf: str, within: float) -> list[StoredEvent]:
        """The workflow's events once it has completed or failed (at most ``within`` seconds)."""
        log = JetStreamLog(nc, stream=self.spec, subjects=self.subjects)
        async with asyncio.timeout(within):
            async for r in log.follow(wf):
                if isinstance(r, StoredEvent) and r.event.type in ("workflow_completed", "workflow_failed"):
                    break
        return await log.read(wf)

    async def submit(self, nc: NATS, body: dict[str, Any]) -> str:
        """Send a request to the intake; the id of the workflow it started."""
        resp = await nc.request(self.subjects.requests, json.dumps(body).encode(), timeout=10)
        wf: str = json.loads(resp.data)["workflow_id"]
        return wf

    async def killed_mid_side_effect(
        self,
        nc: NATS,
        body: dict[str, Any],
        written: Path,
        victim: str,
        replace: Callable[[], None],
        *,
        written_within: float,
        ended_within: float,
    ) -> tuple[str, list[StoredEvent]]:
        """Submit ``body``, one of whose steps writes ``written`` and then sleeps; once the file exists
        (its side effect done, its result not stored), kill -9 process ``victim`` and ``replace`` it.
        The workflow's id and its events once it has ended."""
        wf = await self.submit(nc, body)
        await until(written.exists, written_within)  # another process writes it
        self.procs[victim].kill()  # kill -9
        self.procs[victim].wait()
        replace()
        return wf, await self.ended(nc, wf, ended_within)

    async def wait_alive(self, nc: NATS, kinds: dict[str, int], within: float = 20) -> None:
        async with asyncio.timeout(within):
            while True:
                alive: dict[str, int] = {}
                for a in await ping_all(nc, self.subjects, wait=0.2):
                    for k in a["kinds"]:
                        alive[k] = alive.get(k, 0) + a["replicas"]
                if all(alive.get(k, 0) >= n for k, n in kinds.items()):
                    return
                for name, p in self.procs.items():
                    if p.poll() is not None:
                        raise AssertionError(f"{name} exited: {(self.data_dir / f'{name}.log').read_text()[-3000:]}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def cluster(nats_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(nats_url, tmp_path)
    try:
        yield c
    finally:
        c.stop()


async def submit_and_wait(nc: NATS, c: Cluster, body: dict[str, Any], within: float = 30) -> str:
    wf = await c.submit(nc, body)
    await c.ended(nc, wf, within)
    return wf


async def test_each_kind_in_its_own_process(nc: NATS, cluster: Cluster) -> None:
    for kind in ("planner", "validator", "decomposer", "budget"):
        cluster.start(kind, kind)
    cluster.start("agents", "agent", replicas=2)
    await cluster.wait_alive(nc, {"planner": 1, "validator": 1, "decomposer": 1, "budget": 1, "agent": 2})
    wf = await submit_and_wait(nc, cluster, {"request": "report revenue and order counts per month for 2024"})
    state = fold(wf, await JetStreamLog(nc, stream=cluster.spec, subjects=cluster.subjects).read(wf))
    assert state.status == "completed", state.failure
    assert state.plan_source == "library"


async def test_agent_killed_mid_side_effect_step(nc: NATS, cluster: Cluster) -> None:
    for kind in ("planner", "validator", "decomposer", "budget"):
        cluster.start(kind, kind)
    cluster.start("agent-1", "agent")
    await cluster.wait_alive(nc, {"planner": 1, "validator": 1, "decomposer": 1, "budget": 1, "agent": 1})
    body = {
        "plan": {
            "nodes": [
                {
                    "id": "w",
                    "tool": "test.slow_append",
                    "inputs": {"path": "ledger.txt", "line": "paid invoice 7", "sleep_s": 60},
                }
            ]
        }
    }
    ledger = cluster.data_dir / "workspace" / "ledger.txt"
    wf, events = await cluster.killed_mid_side_effect(
        nc, body, ledger, "agent-1", lambda: cluster.start("agent-2", "agent"), written_within=20, ended_within=30
    )
    state = fold(wf, events)
    assert state.status == "completed", state.failure
    assert ledger.read_text() == "paid invoice 7\n"  # once, although the step ran twice
    done = [e.event.data for e in events if isinstance(e.event.data, StepCompleted)]
    assert len(done) == 1
    assert done[0].output["already_done"] is True
