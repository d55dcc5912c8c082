"""A process stops on SIGTERM within its drain timeout plus a grace, whatever its handlers do
(issue 12: a validator pinned on a large plan ignored SIGTERM for more than 8 s)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from cadre.store import JetStreamLog
from cadre.store.records import StoredEvent
from tests.test_processes import Cluster

DRAIN_S = 1.0
GRACE_S = 2.0


@pytest.fixture
def cluster(nats_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(nats_url, tmp_path)
    c.env |= {
        "CADRE_ACTOR_DRAIN_TIMEOUT_S": str(DRAIN_S),
        "CADRE_STOP_GRACE_S": str(GRACE_S),
        "CADRE_TOOL_MODULES": '["tests.plugin_tools", "tests.stop_tools"]',
    }
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("tool", ["test.sleep", "test.block_thread", "test.block_loop"])
async def test_an_agent_busy_past_the_drain_timeout_stops_on_sigterm(nc: NATS, cluster: Cluster, tool: str) -> None:
    for kind in ("planner", "validator", "decomposer", "budget", "agent"):
        cluster.start(kind, kind)
    await cluster.wait_alive(nc, {"planner": 1, "validator": 1, "decomposer": 1, "budget": 1, "agent": 1})
    body = {"plan": {"nodes": [{"id": "z", "tool": tool, "inputs": {"seconds": 60}}]}}
    resp = await nc.request(cluster.subjects.requests, json.dumps(body).encode(), timeout=10)
    wf = json.loads(resp.data)["workflow_id"]
    log = JetStreamLog(nc, stream=cluster.spec, subjects=cluster.subjects)
    async with asyncio.timeout(20):
        async for r in log.follow(wf):
            if isinstance(r, StoredEvent) and r.event.type == "step_ready":
                break
    await asyncio.sleep(1.0)  # the agent has taken the step and is in the tool
    agent = cluster.procs["agent"]
    assert agent.poll() is None
    agent.send_signal(signal.SIGTERM)
    started = time.monotonic()
    limit = DRAIN_S + GRACE_S + 3.0  # the margin: interpreter exit, a loaded machine
    # Poll the process (nothing to await on it here).
    while agent.poll() is None and time.monotonic() - started < limit + 5:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    output = (cluster.data_dir / "agent.log").read_text()[-2000:]
    assert agent.poll() is not None, f"the agent still runs {took:.1f}s after SIGTERM: {output}"
    assert took < limit, f"the agent took {took:.1f}s to stop (limit {limit}s): {output}"
