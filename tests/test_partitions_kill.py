"""Two agent processes share the partitions; one is killed with -9 mid-run: its partitions move to
the other, and every workflow completes once (each side effect once, each step completed once)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, NoKeysError

from cadre.actors.partitions import bucket_name
from cadre.bus.events import StepCompleted
from cadre.store.state import fold
from tests.conftest import until
from tests.test_processes import Cluster

PARTITIONS = 8
WORKFLOWS = 16


@pytest.fixture
def cluster(nats_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(nats_url, tmp_path)
    c.env |= {"CADRE_PARTITIONS": str(PARTITIONS), "CADRE_PARTITION_LEASE_TTL_S": "1.5"}
    try:
        yield c
    finally:
        c.stop()


async def holders(nc: NATS, c: Cluster) -> Counter[str]:
    """Who holds the agents' partitions: owner id -> how many."""
    kv = await nc.jetstream().key_value(bucket_name(c.subjects.prefix))
    try:
        keys = await kv.keys()
    except NoKeysError:
        return Counter()
    out: Counter[str] = Counter()
    for k in keys:
        if k.startswith("agent.p"):
            try:
                entry = await kv.get(k)
            except KeyNotFoundError:  # let go (or expired) between the listing and this read
                continue
            out[(entry.value or b"").decode()] += 1
    return out


async def test_a_killed_agents_partitions_move_and_every_workflow_completes_once(nc: NATS, cluster: Cluster) -> None:
    for kind in ("planner", "validator", "decomposer", "budget"):
        cluster.start(kind, kind)
    cluster.start("agent-1", "agent")
    cluster.start("agent-2", "agent")
    await cluster.wait_alive(nc, {"planner": 1, "validator": 1, "decomposer": 1, "budget": 1, "agent": 2})
    async with asyncio.timeout(10):  # the second agent gets its share at the first's next tick
        while sorted((await holders(nc, cluster)).values()) != [PARTITIONS // 2, PARTITIONS // 2]:  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    wfs = []
    for i in range(WORKFLOWS):
        body = {
            "plan": {
                "nodes": [
                    {
                        "id": "w",
                        "tool": "test.slow_append",
                        "inputs": {"path": f"ledger-{i}.txt", "line": f"paid invoice {i}", "sleep_s": 1.0},
                    }
                ]
            }
        }
        wfs.append(await cluster.submit(nc, body))
    workspace = cluster.data_dir / "workspace"
    # Once both agents wrote (other processes write the files), both are mid-step.
    await until(lambda: len(list(workspace.glob("ledger-*.txt"))) >= 4, 20)
    cluster.procs["agent-1"].kill()  # kill -9
    cluster.procs["agent-1"].wait()

    async with asyncio.timeout(25):  # for them all
        ended = [await cluster.ended(nc, wf, 25) for wf in wfs]
    redone = 0
    for i, (wf, events) in enumerate(zip(wfs, ended, strict=True)):
        state = fold(wf, events)
        assert state.status == "completed", state.failure
        done = [e.event.data for e in events if isinstance(e.event.data, StepCompleted)]
        assert len(done) == 1, wf
        redone += done[0].output["already_done"] is True  # the dead agent's step, taken over
        assert (workspace / f"ledger-{i}.txt").read_text() == f"paid invoice {i}\n"  # the side effect once
        assert len({e.event.id for e in events}) == len(events)  # nothing stored twice
    assert redone >= 1  # the killed agent was mid-step: the survivor took its partitions and inputs over
    # The survivor holds every partition now.
    assert list((await holders(nc, cluster)).values()) == [PARTITIONS]
