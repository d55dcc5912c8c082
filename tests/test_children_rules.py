"""The pure parts of sub-workflows: a child task's checks, its id and first event, the planner's
spawn in place of ``task_ready``, the fold, and a child's consultations charged to its tree's root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from cadre.actors import children
from cadre.actors.inference import Policy
from cadre.bus.events import (
    ChildCompleted,
    ChildFailed,
    ChildRequested,
    ParentLink,
    PlanProposed,
    PlanValidated,
    TaskReady,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.bus.plan import ErrorInfo, Plan
from cadre.planner import children as rules
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.validation import passed_all, validate_plan
from cadre.store.records import StoredEvent
from cadre.store.state import WorkflowState, fold
from tests.conftest import ev

COUNT: dict[str, Any] = {"nodes": [{"id": "q", "tool": "sql.query", "inputs": {"sql": "SELECT 1 AS one"}}]}
CATALOG = rules.with_workflow_run(builtin_catalog())


def plan_of(*nodes: dict[str, Any]) -> Plan:
    return msgspec.convert({"nodes": list(nodes)}, Plan)


def check(plan: Plan, depth: int = 0, max_depth: int = 3) -> list[Any]:
    def validate(p: Plan) -> list[Any]:
        return validate_plan(rules.for_validation(p), CATALOG)

    return [*validate(plan), *rules.check_children(plan, depth, max_depth, validate)]


def failed(checks: list[Any]) -> list[tuple[str, str | None]]:
    return [(c.name, c.path) for c in checks if not c.passed and c.severity == "error"]


def test_a_child_task_with_a_plan_or_a_request_passes() -> None:
    assert passed_all(check(plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"plan": COUNT}})))
    assert passed_all(check(plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"request": "count them"}})))


@pytest.mark.parametrize(
    ("inputs", "name"),
    [
        ({}, "child_inputs"),
        ({"request": "a", "plan": COUNT}, "child_inputs"),
        ({"flow": "text_to_sql"}, "child_inputs"),
        ({"plan": {"nodes": "no"}}, "child_inputs"),
        ({"request": "a", "budget": 1}, "inputs_valid"),
    ],
)
def test_bad_child_inputs_are_validation_errors(inputs: dict[str, Any], name: str) -> None:
    bad = failed(check(plan_of({"id": "sub", "tool": "workflow.run", "inputs": inputs})))
    assert name in [n for n, _ in bad], bad


def test_a_nested_plan_is_checked_with_its_own_references_and_paths() -> None:
    nested = {"nodes": [{"id": "a", "tool": "sql.query", "inputs": {"sql": "SELECT 1"}}, {"id": "b", "tool": "nope"}]}
    inner_refs = {
        "nodes": [
            {"id": "a", "tool": "sql.query", "inputs": {"sql": "SELECT 1"}},
            {
                "id": "b",
                "tool": "text.render",
                "depends_on": ["a"],
                "inputs": {"template": "{x}", "values": {"x": "${a.rows}"}},
            },
        ]
    }
    assert failed(check(plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"plan": nested}}))) == [
        ("tool_exists", "nodes[0].inputs.plan.nodes[1].tool")
    ]
    # The nested plan's references are to its own tasks, not the parent's.
    assert passed_all(check(plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"plan": inner_refs}})))


def test_the_depth_limit_counts_from_the_workflows_own_depth() -> None:
    sub = plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"plan": COUNT}})
    assert failed(check(sub, depth=2, max_depth=3)) == []
    assert failed(check(sub, depth=3, max_depth=3)) == [("child_depth", "nodes[0].tool")]
    assert failed(check(sub, depth=0, max_depth=0)) == [("child_depth", "nodes[0].tool")]
    nested = {"nodes": [{"id": "inner", "tool": "workflow.run", "inputs": {"plan": COUNT}}]}
    deep = plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"plan": nested}})
    assert failed(check(deep, max_depth=1)) == [("child_depth", "nodes[0].inputs.plan.nodes[0].tool")]


def test_a_childs_id_is_the_same_for_a_redelivery_and_new_for_a_retry() -> None:
    assert rules.child_id("wf-1", "sub") == rules.child_id("wf-1", "sub", 1)
    assert rules.child_id("wf-1", "sub", 2) != rules.child_id("wf-1", "sub", 1)
    assert rules.child_id("wf-1", "sub") != rules.child_id("wf-2", "sub")


def running(plan: Plan, request: WorkflowRequested | None = None) -> tuple[WorkflowState, list[StoredEvent]]:
    req = request or WorkflowRequested(plan=plan, budget_usd=0.5, mode="creative")
    envs = [ev(req, "wf-1"), ev(PlanProposed(plan=plan), "wf-1", i=1), ev(PlanValidated(revision=1), "wf-1", i=2)]
    stored = [StoredEvent(seq=i + 1, subject="s", data=b"", event=e) for i, e in enumerate(envs)]
    return fold("wf-1", stored), stored


def test_the_planner_starts_a_child_instead_of_dispatching_the_task() -> None:
    plan = plan_of(
        {"id": "a", "tool": "sql.query", "inputs": {"sql": "SELECT 1"}},
        {"id": "sub", "tool": "workflow.run", "depends_on": ["a"], "inputs": {"request": "${a.rows}"}},
    )
    state, _ = running(plan)
    a = state.tasks["a"]
    state.tasks["a"] = msgspec.structs.replace(a, status="completed", output={"rows": "count the customers"})
    ready = TaskReady(task=state.tasks["sub"].task)
    [spawn] = children.spawn_instead(state, [ready], max_depth=3)
    assert isinstance(spawn, ChildRequested)
    assert spawn.child_id == rules.child_id("wf-1", "sub")
    req = spawn.request
    assert req.request == "count the customers"  # the reference resolved from the upstream output
    assert (req.budget_usd, req.mode, req.resolved_steps) == (0.5, "creative", True)
    assert req.parent == ParentLink(workflow_id="wf-1", task_id="sub", root="wf-1", depth=1)
    # A non-child task is dispatched as before.
    assert children.spawn_instead(state, [TaskReady(task=a.task)], 3) == [TaskReady(task=a.task)]


def test_a_spawn_past_the_limit_or_with_bad_inputs_fails_the_task() -> None:
    plan = plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"plan": COUNT}})
    deep = WorkflowRequested(plan=plan, parent=ParentLink(workflow_id="wf-0", task_id="t", root="wf-0", depth=3))
    state, _ = running(plan, deep)
    [end] = children.spawn_instead(state, [TaskReady(task=state.tasks["sub"].task)], max_depth=3)
    assert isinstance(end, WorkflowFailed)
    assert "child_depth" in end.message
    state, _ = running(plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"flow": "x"}}))
    [end] = children.spawn_instead(state, [TaskReady(task=state.tasks["sub"].task)], max_depth=3)
    assert isinstance(end, WorkflowFailed)
    assert "not registered here" in end.message


def test_the_fold_and_the_planner_take_the_childs_end_as_the_tasks() -> None:
    plan = plan_of(
        {"id": "sub", "tool": "workflow.run", "inputs": {"plan": COUNT}, "retries": 1},
    )
    state, _ = running(plan)
    cid = rules.child_id("wf-1", "sub")
    child_req = rules.child_request(state.request, "wf-1", state.tasks["sub"].task, {"plan": COUNT})
    more = [ev(ChildRequested(task_id="sub", child_id=cid, request=child_req), "wf-1", i=3)]
    state = fold("wf-1", [StoredEvent(seq=4, subject="s", data=b"", event=more[0])], state)
    assert state.tasks["sub"].status == "running"
    assert state.children[cid].status == "running"
    # A failure is retried with a new child while the task's retries allow.
    failure = ChildFailed(task_id="sub", child_id=cid, error=ErrorInfo(code="task_failed", message="boom"))
    state = fold("wf-1", [StoredEvent(seq=5, subject="s", data=b"", event=ev(failure, "wf-1", i=4))], state)
    assert state.children[cid].status == "failed"
    [retry] = children.on_child_failed(state, failure)
    assert retry == TaskReady(task=state.tasks["sub"].task, attempt=2)
    [spawn] = children.spawn_instead(state, [retry], 3)
    assert isinstance(spawn, ChildRequested)
    second = rules.child_id("wf-1", "sub", 2)
    assert spawn.child_id == second
    state = fold("wf-1", [StoredEvent(seq=6, subject="s", data=b"", event=ev(spawn, "wf-1", i=5))], state)
    # The first child's late news changes nothing; the second's completes the task and the workflow.
    assert children.on_child_failed(state, failure) == []
    done = ChildCompleted(task_id="sub", child_id=second, output=rules.task_output(second, {"n": 1}))
    state = fold("wf-1", [StoredEvent(seq=7, subject="s", data=b"", event=ev(done, "wf-1", i=6))], state)
    assert state.tasks["sub"].status == "completed"
    assert children.on_child_completed(state, done) == [
        WorkflowCompleted(result={"workflow_id": second, "result": {"n": 1}})
    ]


def test_a_childs_consultations_are_charged_to_its_trees_root() -> None:
    link = ParentLink(workflow_id="wf-p", task_id="t", root="wf-root", depth=2)
    assert Policy().for_request(WorkflowRequested(request="x", parent=link)).account == "wf-root"
    assert Policy().for_request(WorkflowRequested(request="x")).account is None


def test_a_request_to_the_intake_cannot_claim_a_parent() -> None:
    from cadre.bus.request import RequestError, parse_request

    with pytest.raises(RequestError) as refused:
        parse_request(b'{"request": "x", "parent": {"workflow_id": "wf-1", "task_id": "t", "root": "wf-1"}}')
    assert refused.value.code == "unknown_field"


def test_flows_plug_in_through_the_hook() -> None:
    """Without flows a ``flow`` input is refused; a deployment's flows (the hook) give the child's plan."""

    def flows(name: str, inputs: Any) -> Plan | None:
        return msgspec.convert(COUNT, Plan) if name == "count" else None

    def validate(p: Plan) -> list[Any]:
        return validate_plan(rules.for_validation(p), CATALOG)

    sub = plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"flow": "count"}})
    assert passed_all(rules.check_children(sub, 0, 3, validate, flows=flows))
    unknown = plan_of({"id": "sub", "tool": "workflow.run", "inputs": {"flow": "other"}})
    assert failed(rules.check_children(unknown, 0, 3, validate, flows=flows)) == [
        ("child_inputs", "nodes[0].inputs.flow")
    ]
    state, _ = running(sub)
    [spawn] = children.spawn_instead(state, [TaskReady(task=state.tasks["sub"].task)], 3, flows)
    assert isinstance(spawn, ChildRequested)
    assert spawn.request.plan == msgspec.convert(COUNT, Plan)


def test_a_policy_that_prohibits_workflow_run_allows_no_children(tmp_path: Path) -> None:
    from cadre.system import child_max_depth
    from tests.system_harness import settings_for

    assert child_max_depth(settings_for("nats://127.0.0.1:1", tmp_path)) == 3
    assert child_max_depth(settings_for("nats://127.0.0.1:1", tmp_path, child_max_depth=5)) == 5
    banned = settings_for("nats://127.0.0.1:1", tmp_path, prohibited_tools=["http.get", "workflow.run"])
    assert child_max_depth(banned) == 0
