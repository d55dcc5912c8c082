"""Sub-workflows (issue 16, item 2): a task whose tool is ``workflow.run`` runs a child workflow,
whose result or failure is the task's; the child spends the parent's budget; cancelling the parent
cancels the child; a depth-limit breach is a validation error. Real nats-server, whole system."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadre import audit_html, commands
from cadre.actors.replay import Replayer
from cadre.audit_cli import child_reports
from cadre.audit_text import lines as audit_lines
from cadre.bus.effects import BudgetDecided
from cadre.bus.events import ApprovalRequested, ChildCompleted, ChildFailed, ChildRequested, PlanProposed
from cadre.planner.children import child_id
from cadre.store.audit import audit, with_children
from cadre.store.state import WorkflowState
from cadre.system import system_specs
from tests.fake_llm import anthropic_api
from tests.scenarios import NOVEL_REQUEST
from tests.system_harness import Harness, cadre_running, settings_for
from tests.test_llm_planning import model_settings

COUNT = {"nodes": [{"id": "q", "tool": "sql.query", "inputs": {"sql": "SELECT COUNT(*) AS customers FROM customers"}}]}
BROKEN = {"nodes": [{"id": "q", "tool": "sql.query", "inputs": {"sql": "SELECT nope FROM nowhere"}}]}


def parent(child: dict[str, Any], *, then: bool = True) -> dict[str, Any]:
    """A plan whose task ``sub`` runs ``child`` (``workflow.run`` inputs), then renders its result."""
    nodes: list[dict[str, Any]] = [{"id": "sub", "tool": "workflow.run", "inputs": child}]
    if then:
        nodes.append(
            {
                "id": "say",
                "tool": "text.render",
                "depends_on": ["sub"],
                "inputs": {"template": "{n} customers", "values": {"n": "${sub.result.rows.0.0}"}},
            }
        )
    return {"plan": {"nodes": nodes}}


async def replays(h: Harness, wf: str) -> None:
    records = await h.bus.log.read_records(wf)
    result = Replayer(system_specs(h.settings), keyring=h.keyring).replay(records)
    assert result.ok, result.lines()


async def child_of(h: Harness, state: WorkflowState, task: str = "sub") -> WorkflowState:
    cid = child_id(state.workflow_id, task)
    assert cid in state.children
    return await h.wait(cid)


async def test_a_task_that_runs_a_child_completes_with_the_childs_result(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run(parent({"plan": COUNT}))
        child = await child_of(h, state)
        assert child.status == "completed", child.failure
        assert state.status == "completed", state.failure
        assert state.tasks["sub"].output == {"workflow_id": child.workflow_id, "result": child.result}
        assert state.result["text"] == f"{child.result['rows'][0][0]} customers"
        assert child.request is not None
        assert child.request.parent is not None
        assert (child.request.parent.workflow_id, child.request.parent.task_id) == (state.workflow_id, "sub")
        types = [e.event.type for e in await h.events(state.workflow_id)]
        assert types.count(ChildRequested.TYPE) == 1
        assert types.count(ChildCompleted.TYPE) == 1
        await replays(h, state.workflow_id)
        await replays(h, child.workflow_id)


async def test_a_child_from_a_request_text_plans_on_its_own(nats_url: str, tmp_path: Path) -> None:
    """The README's example: no model here, so the child's planner takes the plan library's entry."""
    plan = parent({"request": NOVEL_REQUEST})
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run(plan)
        child = await child_of(h, state)
        assert child.status == "completed", child.failure
        assert child.plan_source == "library"
        assert state.status == "completed", state.failure
        assert state.result == {"text": f"{child.result['rows'][0][0]} customers"}
        await replays(h, state.workflow_id)
        await replays(h, child.workflow_id)


async def test_a_failing_child_fails_the_task_and_the_parent_says_why(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run(parent({"plan": BROKEN}))
        child = await child_of(h, state)
        assert child.status == "failed"
        assert state.status == "failed"
        assert state.failed_task == "sub"
        assert state.failure is not None
        assert f"child workflow {child.workflow_id} failed" in state.failure.message
        assert state.children[child.workflow_id].status == "failed"
        assert state.tasks["say"].status == "pending"  # nothing after the failed task ran
        await replays(h, state.workflow_id)
        await replays(h, child.workflow_id)


async def test_a_child_that_would_overspend_the_parents_budget_is_denied(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api() as api:  # no answer scripted: a call that reached it would fail the test
        s = model_settings("anthropic", api, nats_url, tmp_path)
        async with cadre_running(settings_for(s.pop("nats_url"), s.pop("data_dir"), **s)) as h:
            state = await h.run({**parent({"request": NOVEL_REQUEST}, then=False), "budget_usd": 0.0001})
            child = await child_of(h, state)
            events = await h.events(child.workflow_id)
    assert api.requests == []  # the model was never called
    [planned] = [e.event for e in events if isinstance(e.event.data, PlanProposed)]
    decisions = [x for x in planned.effects if isinstance(x, BudgetDecided)]
    assert [d.decision.reason for d in decisions] == ["over_workflow_cap"]
    # The child's consultation was charged to the parent's account (the tree's root), under its cap.
    assert f"workflow {state.workflow_id!r}" in (decisions[0].decision.message or "")
    assert "over the cap of $0.0001" in (decisions[0].decision.message or "")
    # Denied, the child planned as any workflow without a model (here: the plan library), and ended.
    assert isinstance(planned.data, PlanProposed)
    assert planned.data.source == "library"
    assert child.status == "completed"
    assert state.status == "completed"


async def test_cancelling_the_parent_cancels_its_running_child(nats_url: str, tmp_path: Path) -> None:
    waits = {"nodes": [{"id": "save", "tool": "fs.write", "inputs": {"path": "out/a.txt", "content": "ok"}}]}
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        wf = (await h.submit(parent({"plan": waits}, then=False)))["workflow_id"]
        cid = child_id(wf, "sub")
        await h.wait(cid, until=ApprovalRequested.TYPE)
        assert await commands.cancel(settings, wf, reason="not needed") == 0
        state = await h.wait(wf, within=5)
        child = await h.wait(cid, within=5)
        await h.wait(wf, until=ChildFailed.TYPE, within=5)
        state = await h.wait(wf, within=5)
        assert state.status == "cancelled"
        assert child.status == "cancelled"
        assert child.cancelled_by == "parent"
        assert child.failure is not None
        assert wf in child.failure.message
        assert state.children[cid].status == "cancelled"
        await replays(h, wf)
        await replays(h, cid)


async def test_a_child_deeper_than_the_limit_is_a_validation_error(nats_url: str, tmp_path: Path) -> None:
    grandchild = {"nodes": [{"id": "inner", "tool": "workflow.run", "inputs": {"plan": COUNT}}]}
    async with cadre_running(settings_for(nats_url, tmp_path, child_max_depth=1)) as h:
        state = await h.run(parent({"plan": grandchild}, then=False))
        assert state.status == "failed"
        assert state.failure is not None
        assert state.failure.code == "plan_rejected"
        [bad] = [c for c in state.rejected if c.name == "child_depth" and not c.passed]
        assert bad.path == "nodes[0].inputs.plan.nodes[0].tool"
        assert "depth 2" in bad.message
        assert "limit is 1" in bad.message
        assert state.children == {}  # nothing started
        # Within the limit, children of children run: the grandchild's result reaches the root.
        deeper = settings_for(nats_url, tmp_path / "2", child_max_depth=2)
    async with cadre_running(deeper) as h:
        state = await h.run(parent({"plan": grandchild}, then=False))
        assert state.status == "completed", state.failure
        child = await child_of(h, state)
        grand = await child_of(h, child, "inner")
        assert grand.request is not None
        assert grand.request.parent is not None
        assert (grand.request.parent.depth, grand.request.parent.root) == (2, state.workflow_id)
        assert state.result["result"]["result"] == grand.result
        # The parent's audit shows the tree: each child with its state and cost, and the tree's cost.
        report = audit(await h.bus.log.read_records(state.workflow_id), h.keyring)
        with_children(report, await child_reports(deeper, report, None, None))
    [node] = report.children
    assert (node.workflow_id, node.task_id, node.status, node.cost_usd) == (child.workflow_id, "sub", "completed", 0.0)
    [inner] = node.children
    assert (inner.workflow_id, inner.task_id, inner.status) == (grand.workflow_id, "inner", "completed")
    assert report.totals.tree_cost_usd == 0.0
    text = audit_lines(report)
    at = text.index("child workflows")
    assert text[at + 1].startswith(f"  task sub -> {child.workflow_id}: completed, $0.00000")
    assert text[at + 2].startswith(f"    task inner -> {grand.workflow_id}: completed, $0.00000")
    assert any(line.startswith("  with child workflows") and "$0.00000" in line for line in text)
    page = audit_html.render(report)
    assert "<h2>Child workflows</h2>" in page
    assert f"<code>{grand.workflow_id}</code>: completed" in page


async def test_a_dry_run_runs_its_children_dry(nats_url: str, tmp_path: Path) -> None:
    """The child of a dry run is a dry run; the task's result is the child's placeholder output."""
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run({**parent({"plan": COUNT}), "dry_run": True})
        child = await child_of(h, state)
        assert child.request is not None
        assert child.request.dry_run
        assert state.status == "completed", state.failure
        assert state.result["dry_run"] is True
        assert state.tasks["sub"].output == {"workflow_id": child.workflow_id, "result": child.result["output"]}
        await replays(h, state.workflow_id)


async def test_a_child_runs_a_registered_flow_and_one_it_cannot_run_is_refused(nats_url: str, tmp_path: Path) -> None:
    """``{"flow": NAME}``: the child runs the flow (its default path, else all of it), branches and
    loop included; a flow whose path needs parameters the child cannot give is refused before
    anything runs, and so is a flow the deployment does not have."""
    from tests.test_flows_system import flows_dir

    async with cadre_running(settings_for(nats_url, tmp_path, flows=flows_dir(tmp_path))) as h:
        state = await h.run(parent({"flow": "polling"}, then=False))
        child = await child_of(h, state)
        assert child.status == "completed", child.failure
        assert state.status == "completed", state.failure
        assert state.tasks["sub"].output == {"workflow_id": child.workflow_id, "result": child.result}
        assert child.plan is not None
        assert [t.id for t in child.plan.nodes][:2] == ["poll", "poll-2"]  # the loop, unrolled
        await replays(h, state.workflow_id)
        await replays(h, child.workflow_id)
        for name, why in (("by_country", "cannot run as a child"), ("nowhere", "not registered")):
            refused = await h.run(parent({"flow": name}, then=False))
            assert refused.status == "failed", name
            assert refused.failure is not None
            assert why in refused.failure.message, refused.failure.message
            assert not refused.children, name
