"""kill -9 of a whole ``cadre up`` process, whose state cache runs without its feed (``auto``): the
process that replaces it knows nothing of the workflow, loads it, and completes it once."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from cadre.bus.events import StepCompleted
from cadre.store.state import fold
from tests.test_processes import Cluster, cluster  # noqa: F401 (the fixture)


async def test_cadre_up_killed_mid_side_effect_step_is_replaced_and_completes_once(
    nc: NATS,
    cluster: Cluster,  # noqa: F811
) -> None:
    kinds = {"planner": 1, "validator": 1, "decomposer": 1, "budget": 1, "agent": 1, "approvals": 1}
    cluster.launch("up-1", "up")  # every kind, one process
    await cluster.wait_alive(nc, kinds)
    feeds = [
        i
        for i in await nc.jetstream().consumers_info(cluster.spec.name)
        if i.config.filter_subject == cluster.subjects.events
    ]
    assert feeds == []  # auto: no feed in a process that runs every kind
    body = {
        "plan": {
            "nodes": [
                {"id": "a", "tool": "test.slow_append", "inputs": {"path": "a.txt", "line": "first", "sleep_s": 0}},
                {
                    "id": "w",
                    "tool": "test.slow_append",
                    "depends_on": ["a"],
                    "inputs": {"path": "ledger.txt", "line": "paid invoice 7", "sleep_s": 60},
                },
            ]
        }
    }
    ledger = cluster.data_dir / "workspace" / "ledger.txt"
    wf, events = await cluster.killed_mid_side_effect(
        nc, body, ledger, "up-1", lambda: cluster.launch("up-2", "up"), written_within=30, ended_within=40
    )
    state = fold(wf, events)
    assert state.status == "completed", state.failure
    assert ledger.read_text() == "paid invoice 7\n"  # once, although the step ran twice
    done = [e.event.data for e in events if isinstance(e.event.data, StepCompleted)]
    assert [d.output.get("already_done") for d in done] == [False, True]
