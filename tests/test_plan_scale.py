"""Plan checks stay fast on large, densely linked plans (issue 12: a 200-node plan pinned the
validator's CPU for seconds, and its process ignored SIGTERM meanwhile). The bounds are on this
process's CPU time, not the wall clock, so a busy machine (CI's other worker) does not fail them."""

from __future__ import annotations

import time

import pytest

from cadre.bus.plan import Plan, Task
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.scheduler import FAILED, blocked_by_failure, upstream
from cadre.planner.validation import Limits, failed, validate_plan

N = 200


def _dense(n: int, *, chain: bool = False) -> Plan:
    """``n`` tasks, each referencing the output of every earlier one; each depends on all earlier
    tasks (n(n-1)/2 edges), or with ``chain`` only on the one before (references reach further)."""
    nodes = []
    for i in range(n):
        deps = tuple(f"t{j}" for j in range(i)) if not chain else ((f"t{i - 1}",) if i else ())
        values = {f"v{j}": f"${{t{j}.text}}" for j in range(i)}
        nodes.append(Task(id=f"t{i}", depends_on=deps, tool="text.render", inputs={"template": "x", "values": values}))
    return Plan(nodes=tuple(nodes), output=f"t{n - 1}")


@pytest.mark.parametrize("chain", [False, True], ids=["all-earlier", "chain"])
def test_a_200_node_dense_plan_validates_in_under_a_second(chain: bool) -> None:
    plan = _dense(N, chain=chain)
    catalog = builtin_catalog()
    roomy = Limits(max_tasks=N, max_depth=N)
    started = time.process_time()
    checks = validate_plan(plan, catalog, roomy)
    took = time.process_time() - started
    assert failed(checks) == []
    assert sum(c.name == "reference_upstream" and c.passed for c in checks) == N * (N - 1) // 2
    assert took < 1.0, f"validating {N} dense tasks took {took:.2f}s"


def test_a_200_node_plan_over_the_default_limits_is_rejected_fast_by_its_size() -> None:
    plan = _dense(N)
    started = time.process_time()
    checks = validate_plan(plan, builtin_catalog())
    took = time.process_time() - started
    assert {c.name for c in failed(checks)} == {"plan_size", "plan_depth"}
    assert took < 1.0, f"rejecting {N} dense tasks took {took:.2f}s"


def test_a_reference_past_the_dependencies_is_still_refused() -> None:
    plan = _dense(4, chain=True)
    nodes = list(plan.nodes)
    nodes[1] = Task(
        id="t1", depends_on=("t0",), tool="text.render", inputs={"template": "x", "values": {"a": "${t2.text}"}}
    )
    checks = validate_plan(Plan(nodes=tuple(nodes)), builtin_catalog())
    bad = [c for c in failed(checks) if c.name == "reference_upstream"]
    assert [c.path for c in bad] == ["nodes[1].inputs.values.a"]


def test_upstream_and_blocked_tasks_of_a_dense_plan_are_quick_and_right() -> None:
    plan = _dense(N, chain=True)
    started = time.process_time()
    assert upstream(plan, f"t{N - 1}") == {f"t{j}" for j in range(N - 1)}
    blocked = blocked_by_failure(plan, {"t0": FAILED})
    assert time.process_time() - started < 1.0
    assert blocked == [f"t{j}" for j in range(1, N)]
