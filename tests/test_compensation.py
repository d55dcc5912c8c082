"""Compensation (issue 13, item 4): fs.write records what it replaces and fs.restore puts it back;
a workflow with ``on_failure: compensate`` undoes its completed steps, last first, each once, and
ends failed and compensated; the audit says what was undone and what was not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from cadre.actors import compensation
from cadre.actors.tools import ToolCall, ToolConfig, ToolError
from cadre.actors.tools.fs import fs_restore, fs_write
from cadre.bus.events import (
    CompensationStarted,
    PlanProposed,
    StepCompensated,
    StepCompleted,
    StepsProposed,
    TaskReady,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.bus.plan import Plan, StepIntent, Task
from cadre.planner.builtin_tools import CompensationInput, FsWriteInput
from cadre.store.audit import audit
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from tests.compensation_tools import UNDO_LOG
from tests.conftest import ev, until
from tests.system_harness import cadre_running, settings_for
from tests.test_processes import Cluster, cluster  # noqa: F401  (the fixture)


async def write(ws: Path, key: str, path: str, content: str, mode: str = "overwrite") -> None:
    await fs_write(FsWriteInput(path=path, content=content, mode=mode), ToolConfig(workspace=ws), ToolCall(key))  # type: ignore[arg-type]


async def restore(ws: Path, key: str, undo_key: str) -> dict[str, Any]:
    out = await fs_restore(CompensationInput(tool="fs.write", key=key), ToolConfig(workspace=ws), ToolCall(undo_key))
    return out.model_dump()


async def test_fs_restore_puts_back_what_each_write_replaced(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")
    await write(tmp_path, "w1", "a.txt", "new a")
    await write(tmp_path, "w2", "dir/b.txt", "new b")
    await write(tmp_path, "w3", "a.txt", " and more", mode="append")
    assert (tmp_path / "a.txt").read_text() == "new a and more"
    assert await restore(tmp_path, "w3", "u3") == {"path": "a.txt", "restored": "content", "already_done": False}
    assert (tmp_path / "a.txt").read_text() == "new a"
    assert await restore(tmp_path, "w2", "u2") == {"path": "dir/b.txt", "restored": "removed", "already_done": False}
    assert not (tmp_path / "dir" / "b.txt").exists()
    assert (await restore(tmp_path, "w1", "u1"))["restored"] == "content"
    assert (tmp_path / "a.txt").read_text() == "old a"
    (tmp_path / "a.txt").write_text("changed since")
    assert await restore(tmp_path, "w1", "u1") == {"path": "a.txt", "restored": "content", "already_done": True}
    assert (tmp_path / "a.txt").read_text() == "changed since"  # once per key: nothing done again


async def test_fs_restore_of_a_write_that_never_ran_says_so(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"no record of what the write 'nope' replaced") as exc:
        await restore(tmp_path, "nope", "u")
    assert exc.value.code == "nothing_to_undo"


PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "w1", "tool": "fs.write", "inputs": {"path": "a.txt", "content": "new a"}},
        {"id": "w2", "tool": "fs.write", "depends_on": ["w1"], "inputs": {"path": "out/b.txt", "content": "new b"}},
        {"id": "e", "tool": "test.echo", "depends_on": ["w2"], "inputs": {"value": "v"}},
        {"id": "x", "tool": "test.flaky", "depends_on": ["e"], "inputs": {"value": "v"}},
    ]
}


async def test_a_failing_workflow_that_compensates_restores_both_files(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    settings.workspace_dir.mkdir(parents=True, exist_ok=True)
    a, b = settings.workspace_dir / "a.txt", settings.workspace_dir / "out" / "b.txt"
    a.write_text("old a")
    async with cadre_running(settings) as h:
        state = await h.run({"plan": PLAN, "on_failure": "compensate"})
        records = await h.bus.log.read_records(state.workflow_id)
    assert state.status == "failed"
    assert a.read_text() == "old a"
    assert not b.exists()
    events = [r.event.data for r in records if isinstance(r, StoredEvent)]
    [started] = [e for e in events if isinstance(e, CompensationStarted)]
    assert (started.steps, started.not_undone) == (("w2.s1", "w1.s1"), ("e.s1",))
    undone = [e for e in events if isinstance(e, StepCompensated)]
    assert [(e.step_id, e.tool, e.error) for e in undone] == [
        ("w2.s1", "fs.restore", None),
        ("w1.s1", "fs.restore", None),
    ]
    [failed] = [e for e in events if isinstance(e, WorkflowFailed)]
    assert (failed.reason, failed.compensated, failed.not_undone) == ("task_failed", ("w2.s1", "w1.s1"), ("e.s1",))
    assert failed.message.endswith("; compensated: undid w2.s1, w1.s1; not undone: e.s1")
    report = audit(records)
    texts = [d.text for d in report.deviations]
    assert any(t.startswith("undone by fs.restore: {'path': 'out/b.txt', 'restored': 'removed'") for t in texts), texts
    assert "not undone: e.s1" in (report.failure or "")


async def test_without_compensation_the_files_stay_written(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        state = await h.run({"plan": PLAN})
    assert state.status == "failed"
    assert (settings.workspace_dir / "a.txt").read_text() == "new a"
    assert state.compensation is None


async def test_killed_during_compensation_each_step_is_undone_once(nc: NATS, cluster: Cluster) -> None:  # noqa: F811
    cluster.env["CADRE_TOOL_MODULES"] = '["tests.plugin_tools", "tests.compensation_tools"]'
    for kind in ("planner", "validator", "decomposer", "budget"):
        cluster.start(kind, kind)
    cluster.start("agent-1", "agent")
    await cluster.wait_alive(nc, {"planner": 1, "validator": 1, "decomposer": 1, "budget": 1, "agent": 1})
    ws = cluster.data_dir / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "a.txt").write_text("old a")
    plan = {
        "nodes": [
            *PLAN["nodes"][:2],
            {"id": "n", "tool": "test.note", "depends_on": ["w2"], "inputs": {"line": "l", "sleep_s": 60}},
            {"id": "x", "tool": "test.flaky", "depends_on": ["n"], "inputs": {"value": "v"}},
        ]
    }
    body = {"plan": plan, "on_failure": "compensate"}
    resp = await nc.request(cluster.subjects.requests, json.dumps(body).encode(), timeout=10)
    wf = json.loads(resp.data)["workflow_id"]
    # The note's compensation runs first (it completed last) and sleeps: kill the agent then.
    await until((ws / UNDO_LOG).exists, 30)
    cluster.procs["agent-1"].kill()  # kill -9
    cluster.procs["agent-1"].wait()
    cluster.start("agent-2", "agent")
    events = await cluster.ended(nc, wf, 40)
    state = fold(wf, events)
    assert state.status == "failed", state.failure
    assert (ws / UNDO_LOG).read_text() == "undid test.note\n"  # once, although its compensation ran twice
    assert (ws / "a.txt").read_text() == "old a"
    assert not (ws / "out" / "b.txt").exists()
    undone = [e.event.data for e in events if isinstance(e.event.data, StepCompensated)]
    assert [(e.step_id, e.error) for e in undone] == [("n.s1", None), ("w2.s1", None), ("w1.s1", None)]
    assert undone[0].output == {"already_done": True}  # the redelivered compensation found its marker
    [failed] = [e.event.data for e in events if isinstance(e.event.data, WorkflowFailed)]
    assert failed.compensated == ("n.s1", "w2.s1", "w1.s1")


def test_a_step_that_completes_while_compensating_is_listed_as_not_undone() -> None:

    plan = Plan(nodes=(Task(id="w", tool="fs.write"), Task(id="s", tool="test.echo")))
    payloads = [
        StepCompleted(task_id="w", step_id="w.s1", tool="fs.write", planned_tool="fs.write"),
        CompensationStarted(reason="task_failed", message="x failed", steps=("w.s1",)),
        StepCompleted(task_id="s", step_id="s.s1", tool="test.echo", planned_tool="test.echo"),  # was running
        StepCompensated(step_id="w.s1", tool="fs.restore", output={}),
    ]

    setup = [
        WorkflowRequested(plan=plan, on_failure="compensate"),
        PlanProposed(plan=plan),
        TaskReady(task=plan.nodes[0]),
        TaskReady(task=plan.nodes[1]),
        StepsProposed(task_id="w", steps=(StepIntent(id="w.s1", task_id="w", tool="fs.write"),)),
        StepsProposed(task_id="s", steps=(StepIntent(id="s.s1", task_id="s", tool="test.echo"),)),
    ]
    records = []
    for seq, data in enumerate([*setup, *payloads], start=1):
        env = ev(data, "wf-c", i=seq)
        records.append(StoredEvent(seq, f"t.evt.wf-c.{env.type}", env, b""))
    state = fold("wf-c", records)
    [failed] = compensation.finished(state)
    assert isinstance(failed, WorkflowFailed)
    assert (failed.compensated, failed.not_undone) == (("w.s1",), ("s.s1",))
