"""Failover: a 3-node cluster booted from deploy/nats, the event stream R3, every actor kind in its own
process; the stream leader's nats-server is killed with -9 mid-run and started again later. Every
workflow completes, no event is stored twice, no side effect is applied twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from cadre.auth_cli import bootstrap
from cadre.bus.connection import ConnectOptions, connect
from cadre.bus.events import StepCompleted
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects
from cadre.settings import Settings
from cadre.store.jetstream import JetStreamLog
from cadre.store.records import StoredEvent
from tests.nats_cluster import NodeCluster

WORKFLOWS = 50
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeCluster]:
    cluster = NodeCluster(tmp_path / "nats")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


class Actors:
    """`cadre actor KIND` processes, each with its kind's creds, all three nodes in CADRE_NATS_URL."""

    def __init__(self, nodes: NodeCluster, data_dir: Path) -> None:
        self.nodes = nodes
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")} | {
            "CADRE_NATS_URL": nodes.url,
            "CADRE_STREAM_REPLICAS": "3",
            "CADRE_DATA_DIR": str(data_dir),
            "CADRE_LLM_PROVIDER": "none",
            "CADRE_ACTOR_ACK_WAIT_S": "5",
            "CADRE_ACTOR_DRAIN_TIMEOUT_S": "2",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, kind: str) -> None:
        with (self.data_dir / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "cadre.cli", "actor", kind],
                env=self.env | {"CADRE_NATS_CREDS": str(self.nodes.creds(kind))},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def exited(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

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

    def tail(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text()[-3000:]


def _plan(i: int) -> dict[str, object]:
    """Two side effects in a row: each file must hold its line once."""
    return {
        "nodes": [
            {"id": "a", "tool": "fs.write", "inputs": {"path": f"out/{i}-a.txt", "content": "a\n", "mode": "append"}},
            {
                "id": "b",
                "tool": "fs.write",
                "inputs": {"path": f"out/{i}-b.txt", "content": "b\n", "mode": "append"},
                "depends_on": ["a"],
            },
        ]
    }


async def _submit(nc: NATS, subjects: Subjects, i: int) -> str:
    """Submit workflow ``i`` until the intake accepts it (its idempotency key makes a retry safe)."""
    body = json.dumps({"plan": _plan(i), "idempotency_key": f"failover-{i}"}).encode()
    while True:
        try:
            reply = json.loads((await nc.request(subjects.requests, body, timeout=5)).data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.2)
            continue
        if "workflow_id" in reply:
            return str(reply["workflow_id"])
        await asyncio.sleep(0.2)


async def _ends(log: JetStreamLog) -> Counter[str]:
    """How many workflows completed and failed, from the stream's subject counts."""
    ends: Counter[str] = Counter()
    for subject, n in (await log.subject_counts()).items():
        kind = subject.rsplit(".", 1)[-1]
        if kind in ("workflow_completed", "workflow_failed"):
            ends[kind] += n
    return ends


async def _leader(log: JetStreamLog) -> str:
    while True:
        try:
            info = await log.js.stream_info(log.stream)
        except (APIError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.2)
            continue
        if info.cluster is not None and info.cluster.leader:
            return info.cluster.leader
        await asyncio.sleep(0.2)


async def test_stream_leader_killed_mid_run(nodes: NodeCluster, tmp_path: Path) -> None:
    started = time.monotonic()
    settings = Settings.load(data_dir=tmp_path / "data", stream_replicas=3)
    deadline = started + 15
    while True:  # once a meta leader is elected
        try:
            await bootstrap(settings, nodes.url, nodes.etc)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    actors = Actors(nodes, data)
    admin = await connect(ConnectOptions(url=nodes.url, name="test-admin", creds=nodes.creds("admin")))
    client = await connect(ConnectOptions(url=nodes.url, name="test-client", creds=nodes.creds("client")))
    subjects = Subjects()
    log = JetStreamLog(admin, stream=StreamSpec(subjects=subjects.events), subjects=subjects)
    try:
        for kind in ("planner", "validator", "decomposer", "budget"):
            actors.start(kind, kind)
        actors.start("agent-1", "agent")
        actors.start("agent-2", "agent")
        half = WORKFLOWS // 2
        wfs = await asyncio.gather(*(_submit(client, subjects, i) for i in range(half)))
        # Mid-run: some workflows done, most not.
        async with asyncio.timeout(30):
            # Polls the stream (other processes write it: there is nothing to wait on here).
            while (await _ends(log))["workflow_completed"] < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        leader = await _leader(log)
        nodes.kill(leader)
        killed_at = time.monotonic()
        # The other half is submitted while the stream elects a new leader; the node comes back 5 s later.
        late = asyncio.gather(*(_submit(client, subjects, i) for i in range(half, WORKFLOWS)))
        await asyncio.sleep(5)
        nodes.start(leader)
        async with asyncio.timeout(30):
            wfs += await late
        assert len(set(wfs)) == WORKFLOWS
        async with asyncio.timeout(45):
            while sum((ends := await _ends(log)).values()) < WORKFLOWS:
                assert not actors.exited(), {n: actors.tail(n) for n in actors.exited()}
                await asyncio.sleep(0.25)
        recovered = time.monotonic() - killed_at
        assert ends == {"workflow_completed": WORKFLOWS}, ends
        assert not actors.exited(), {n: actors.tail(n) for n in actors.exited()}

        ids: Counter[str] = Counter()
        for wf in wfs:
            events = await log.read(wf)
            ids.update(e.event.id for e in events)
            done = Counter(e.event.data.step_id for e in events if isinstance(e.event.data, StepCompleted))
            assert done == {"a.s1": 1, "b.s1": 1}, (wf, done)  # one step per task, completed once
            types = Counter(e.event.type for e in events if isinstance(e, StoredEvent))
            assert (types["workflow_requested"], types["workflow_completed"]) == (1, 1), (wf, types)
        assert [i for i, n in ids.items() if n > 1] == []
        out = data / "workspace" / "out"
        for i in range(WORKFLOWS):
            assert (out / f"{i}-a.txt").read_text() == "a\n"
            assert (out / f"{i}-b.txt").read_text() == "b\n"
        print(f"failover: {WORKFLOWS}/{WORKFLOWS} completed, all done {recovered:.1f} s after the kill of {leader}")
    finally:
        actors.stop()
        await client.close()
        await admin.close()
