"""A child workflow survives its planner: the planner process (which hosts the children relay) is
killed with SIGKILL while the child's step runs; a new planner process finishes the child, reports
its end to the parent, and the parent completes, each event once."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from cadre.bus.events import ChildCompleted, ChildRequested, WorkflowCompleted, WorkflowRequested
from cadre.planner.children import child_id
from cadre.store import JetStreamLog
from cadre.store.state import fold
from tests.test_processes import Cluster, cluster  # noqa: F401  (the fixture)


async def test_planner_killed_during_a_childs_run_completes_the_parent_once(nc: NATS, cluster: Cluster) -> None:  # noqa: F811
    for kind in ("planner", "validator", "decomposer", "agent", "budget"):
        cluster.start(kind, kind)
    await cluster.wait_alive(nc, {"planner": 1, "validator": 1, "decomposer": 1, "agent": 1, "budget": 1})
    slow = {"id": "w", "tool": "test.slow_append", "inputs": {"path": "child.txt", "line": "once", "sleep_s": 2}}
    body = {"plan": {"nodes": [{"id": "sub", "tool": "workflow.run", "inputs": {"plan": {"nodes": [slow]}}}]}}
    written = cluster.data_dir / "workspace" / "child.txt"
    # kill -9 of the planner while the child's step sleeps
    wf, parent = await cluster.killed_mid_side_effect(
        nc, body, written, "planner", lambda: cluster.start("planner-2", "planner"), written_within=20, ended_within=30
    )
    child = await JetStreamLog(nc, stream=cluster.spec, subjects=cluster.subjects).read(child_id(wf, "sub"))
    state = fold(wf, parent)
    assert state.status == "completed", state.failure
    assert state.result["result"]["path"] == "child.txt"
    assert [type(e.event.data) for e in parent].count(ChildRequested) == 1
    assert [type(e.event.data) for e in parent].count(ChildCompleted) == 1
    assert [type(e.event.data) for e in child].count(WorkflowRequested) == 1
    assert [type(e.event.data) for e in child].count(WorkflowCompleted) == 1
    assert written.read_text() == "once\n"
