"""Checked conditions (planner/conditions.py): CEL over JSON values, safe and never raising."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from cadre.actors import agent
from cadre.actors.budget import BudgetClient
from cadre.actors.context import Outside
from cadre.actors.inference import Policy
from cadre.bus.events import ProposalMade, StepCompleted, StepFailed
from cadre.bus.plan import ErrorInfo, Plan, Task
from cadre.planner import conditions
from cadre.planner.catalog import Catalog
from cadre.planner.conditions import InvalidCondition, Outcome, check, parse, problem
from cadre.planner.decompose import decompose
from cadre.planner.providers.agent_prompts import decompose_validator
from cadre.planner.providers.structured import InvalidOutput
from cadre.planner.validation import passed_all, validate_plan, validate_steps
from tests.system_harness import cadre_running, settings_for
from tests.test_dynamic_inference import CATALOG, WF, Run, answer, one_task, to_step
from tests.test_dynamic_inference import budget as budget

OUTPUT = {"row_count": 3, "status": "ok", "truncated": False, "rows": [{"v": 1}, {"v": 5}, {"v": 9}]}
VALUES = {"inputs": {"path": "reports/q1.md"}, "output": OUTPUT}


@pytest.mark.parametrize(
    ("text", "passed"),
    [
        ("has(output.rows)", True),
        ("has(output.nope)", False),
        ("size(output.rows) >= 3", True),
        ("size(output.rows) > 3", False),
        ("output.row_count > 0 && output.truncated == false", True),
        ("output.status in ['ok', 'done']", True),
        ("inputs.path.startsWith('reports/')", True),
        ("inputs.path.matches('^reports/[a-z0-9]+\\\\.md$')", True),
        ("output.rows.all(r, r.v >= 1)", True),
        ("output.rows.exists(r, r.v > 8)", True),
        ("output.row_count > 2.5", True),  # int and double compare
    ],
)
def test_conditions_users_write(text: str, passed: bool) -> None:
    assert check(text, VALUES) == Outcome(text, passed, "" if passed else "it is false")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("output.nope > 1", "it names 'nope', which is not there"),
        ("output.__class__", "it names '__class__', which is not there"),
        ("output.row_count", "it gave int 3, not true or false"),
        ("output.status > 0", "it could not be evaluated: No such overload"),
        ("1 / 0 == 1", "it could not be evaluated: division by zero in CEL expression"),
        ("9223372036854775807 + 1 > 0", "it could not be evaluated: Arithmetic overflow in 'add'"),
    ],
)
def test_a_condition_that_cannot_be_evaluated_does_not_hold_and_says_why(text: str, reason: str) -> None:
    outcome = check(text, VALUES)
    assert not outcome.passed
    assert outcome.reason.startswith(reason), outcome.reason


def test_evaluation_never_changes_the_values() -> None:
    values = {"output": {"rows": [1, 2, 3]}}
    assert check("size(output.rows.filter(r, r > 1)) == 2", values).passed
    assert values == {"output": {"rows": [1, 2, 3]}}


@pytest.mark.parametrize(
    ("text", "names", "message"),
    [
        ("output.row_count >", conditions.POST_NAMES, "is not valid CEL: Failed to parse expression"),
        ("secrets.key == 'x'", conditions.POST_NAMES, "names secrets; it may only name inputs, output"),
        ("output.row_count > 0", conditions.PRE_NAMES, "names output; it may only name inputs"),
        ("   ", conditions.POST_NAMES, "condition is empty"),
        ("x" * 1001, conditions.POST_NAMES, "condition is 1001 characters long; the limit is 1000"),
        (
            "output.rows.all(a, output.rows.all(b, output.rows.all(c, a == b && b == c)))",
            conditions.POST_NAMES,
            "uses 3 list macros",
        ),
    ],
)
def test_what_is_not_a_condition_is_refused_when_parsed(text: str, names: frozenset[str], message: str) -> None:
    found = problem(text, names)
    assert found is not None
    assert message in found, found
    with pytest.raises(InvalidCondition):
        parse(text, names)
    assert not check(text, VALUES, names).passed


def test_parse_compiles_once_and_evaluation_is_fast() -> None:
    assert parse("size(output.rows) > 0") is parse("size(output.rows) > 0")
    rows = {"output": {"rows": [{"v": i} for i in range(1000)]}}
    start = time.process_time()  # this process's CPU: a busy machine does not count against it
    for _ in range(100):
        assert check("output.rows.all(r, r.v >= 0)", rows).passed
    assert time.process_time() - start < 2.0


# == the agent evaluates and records them; the validator checks they parse ==========================


class NeverCalled:
    """A tools port that fails the test if any tool is called."""

    async def run(self, tool: str, inputs: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        raise AssertionError(f"{tool} was called although a precondition failed")


async def test_a_failing_precondition_blocks_the_step_and_never_calls_its_tool(tmp_path: Path) -> None:
    plan = one_task("test.echo", {"value": "v"}, pre=("inputs.value.startsWith('x')",))
    run = Run(tmp_path, None, model=False)
    run.outside = Outside(tools=NeverCalled(), budget=None, llm=None, policy=Policy())
    failed = await run.agent(to_step(plan, "x", level="autonomous", mode="creative"))
    assert isinstance(failed, StepFailed)
    assert failed.error == ErrorInfo(
        code="precondition_failed",
        message="precondition \"inputs.value.startsWith('x')\" does not hold (it is false); test.echo was not called",
    )
    assert failed.error.code in agent.POLICY_REFUSALS  # no recovery works around it


async def test_a_failing_postcondition_fails_the_step_naming_the_condition(tmp_path: Path) -> None:
    plan = one_task("test.echo", {"value": "v"}, post=("output.value == 'v'", "size(output.value) > 3"))
    failed = await Run(tmp_path, None, model=False).agent(to_step(plan, "x", level="basic"))
    assert isinstance(failed, StepFailed)
    assert failed.error == ErrorInfo(
        code="postcondition_failed",
        message="the output of test.echo fails the postcondition 'size(output.value) > 3': it is false",
    )


async def test_recovery_may_act_on_a_failing_postcondition_and_the_outcomes_are_recorded(
    tmp_path: Path, budget: BudgetClient
) -> None:
    plan = one_task("test.echo", {"value": "v"}, pre=("size(inputs.value) == 1",), post=("output.value == 'w'",))
    retry = {"action": "retry", "tool": "test.echo", "inputs": {"value": "w"}, "reason": "the step wants a w"}
    run = Run(tmp_path, budget, [answer(retry)])
    done = await run.agent(to_step(plan, "x", level="adaptive"))
    assert isinstance(done, StepCompleted)
    assert done.output == {"value": "w"}
    assert run.tools.keys == [f"{WF}/x.s1:test.echo", f"{WF}/x.s1:test.echo#retry"]
    assert done.deviations[0] == (
        "test.echo failed: postcondition_failed: the output of test.echo fails the postcondition "
        "\"output.value == 'w'\": it is false"
    )
    assert [(c.name, c.passed, c.path) for c in done.conditions] == [("postcondition", True, "post[0]")]
    [made] = [e for e in run.emitted if isinstance(e, ProposalMade)]
    assert made.error.code == "postcondition_failed"


async def test_a_tools_default_postconditions_are_checked_on_every_call(tmp_path: Path) -> None:
    strict = Catalog(
        [
            dataclasses.replace(spec, postconditions=("output.value != 'forbidden'",)) if name == "test.echo" else spec
            for name, spec in CATALOG.items()
        ]
    )
    assert strict["test.echo"].describe()["postconditions"] == ["output.value != 'forbidden'"]
    assert "postconditions" not in CATALOG["test.echo"].describe()  # prompts of tools without any are as before
    events = to_step(one_task("test.echo", {"value": "forbidden"}), "x", level="basic")
    failed = await Run(tmp_path, None, model=False).agent(events, catalog=strict)
    assert isinstance(failed, StepFailed)
    assert failed.error.code == "postcondition_failed"
    done = await Run(tmp_path, None, model=False).agent(events)
    assert isinstance(done, StepCompleted)
    assert done.conditions == ()


def test_the_validator_checks_that_conditions_parse() -> None:
    bad = Plan(nodes=(Task(id="x", tool="test.echo", inputs={"value": "v"}, pre=("output.value > 1",), post=("x >",)),))
    checks = validate_plan(bad, CATALOG)
    found = [(c.path, c.message) for c in checks if c.name == "condition_parses"]
    assert [path for path, _ in found] == ["nodes[0].pre[0]", "nodes[0].post[0]"]
    assert "names output; it may only name inputs" in found[0][1]
    assert "is not valid CEL" in found[1][1]
    assert not passed_all(checks)
    good = Plan(nodes=(Task(id="x", tool="test.echo", inputs={"value": "v"}, post=("has(output.value)",)),))
    assert passed_all(validate_plan(good, CATALOG))
    steps = decompose(good.nodes[0], CATALOG)
    assert steps[0].post == ("has(output.value)",)
    assert [c.passed for c in validate_steps(good.nodes[0], steps, CATALOG, {}) if c.name == "condition_parses"] == [
        True
    ]
    plain = Plan(nodes=(Task(id="x", tool="test.echo", inputs={"value": "v"}),))
    assert not [c for c in validate_plan(plain, CATALOG) if c.name == "condition_parses"]  # none: as before


def test_the_models_decomposition_carries_conditions_that_must_parse() -> None:
    task = Task(id="d", description="say it", capabilities=("echo",), post=("has(output.value)",))
    validate = decompose_validator(task, CATALOG, attempt=1, upstream_ids=())
    step = {"tool": "test.echo", "inputs": {"value": "hi"}, "operation": "echo", "post": ["output.value == 'hi'"]}
    [made] = validate({"steps": [step]})
    assert made.post == ("has(output.value)", "output.value == 'hi'")
    with pytest.raises(InvalidOutput, match=r"steps\[0\]\.pre\[0\]: step 'd\.s1': condition 'inputs\.value >' is not"):
        validate({"steps": [{**step, "pre": ["inputs.value >"]}]})


async def test_e2e_an_explicit_plans_postcondition_fails_the_workflow_naming_it(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        body = {
            "plan": {
                "nodes": [{"id": "x", "tool": "test.echo", "inputs": {"value": "v"}, "post": ["output.value == 'w'"]}]
            }
        }
        state = await h.run(body)
    assert state.failure is not None
    assert state.failure.message == (
        "task 'x' failed after 1 attempt(s): postcondition_failed: the output of test.echo fails the postcondition "
        "\"output.value == 'w'\": it is false"
    )
