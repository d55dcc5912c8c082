"""Safety rules per tool (planner/safety.py): one rule, checked at plan time, at step time and by the tool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cadre.actors.tools import ToolCall, ToolConfig, ToolError, builtin_toolbox, ensure_sample_database
from cadre.bus.plan import Plan, StepIntent, Task
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.safety import SafetyContext, normalise_url, sql_problem, template_problems, workspace_path_problem
from cadre.planner.validation import check_step, failed, passed_all, schema_path_problem, validate_plan, validate_steps
from tests.system_harness import cadre_running, settings_for

CATALOG = builtin_catalog()
ALLOW = SafetyContext(http_allow=("http://127.0.0.1:8080/api/",))


def names(checks: Any) -> list[str]:
    return [c.name for c in failed(checks)]


# -- the rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("../x", "outside_workspace"),
        ("a/../../x", "outside_workspace"),
        ("/etc/passwd", "outside_workspace"),
        ("C:\\x", "outside_workspace"),
        ("x\x00y", "invalid_input"),
        (".", "not_a_file"),
        ("", "not_a_file"),
        ("a/../.cadre-idempotency/m.json", "reserved_path"),
        ("reports/q1.md", None),
        ("a/../b.md", None),
        ("..hidden.md", None),
    ],
)
def test_workspace_paths(path: str, code: str | None) -> None:
    problem = workspace_path_problem(path)
    assert (problem[0] if problem else None) == code


@pytest.mark.parametrize(
    ("sql", "verdict"),
    [
        ("SELECT name FROM customers WHERE id = ?", None),
        ("WITH s AS (SELECT a, b FROM t JOIN u USING (a)) SELECT a, b FROM s", None),
        ("select x from t1, t2 where t1.k = t2.k", None),  # stand-in tables: an ambiguous x is resolved
        ("VALUES (1)", None),
        ("SELECT c.name, total FROM c JOIN o ON o.cid = c.id WHERE o.total > 1", None),  # total: o's, found on retry
        ("INSERT INTO orders VALUES (1)", "write_refused"),
        ("WITH o AS (SELECT 1) DELETE FROM orders", "write_refused"),
        ("ATTACH ':memory:' AS x", "write_refused"),
        ("PRAGMA writable_schema = 1", "write_refused"),
        ("SELECT load_extension('evil')", "write_refused"),
        ("SELECT LOAD_EXTENSION('evil') FROM t", "write_refused"),
        ("VACUUM", "write_refused"),
        ("VACUUM INTO '/tmp/copy.db'", "write_refused"),
        ("BEGIN", "write_refused"),
        ("SELECT 1; DROP TABLE t", "sql_error"),
        ("SELEC 1", "sql_error"),
        ("SELECT * FROM other.t", "sql_error"),
    ],
)
def test_sql_is_judged_by_sqlite_without_a_database(sql: str, verdict: str | None) -> None:
    problem = sql_problem(sql)
    assert (problem[0] if problem else None) == verdict, problem


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8080/api/x", True),
        ("HTTP://127.0.0.1:8080/api/./x?q=%2f", True),
        ("http://127.0.0.1:8080/apix", False),  # a prefix ends on a segment boundary
        ("http://127.0.0.1:8080/api/..%2fadmin", False),
        ("http://127.0.0.1:8080/api/%252f", False),
        ("http://127.0.0.1:8080/api/../admin", False),
        ("http://u@127.0.0.1:8080/api/", False),
        ("http://127.0.0.1%2f@evil/", False),
        ("http://127.0.0.1:99999/api/", False),
        ("file:///etc/passwd", False),
    ],
)
def test_urls_are_normalised_before_the_allow_list(url: str, ok: bool) -> None:
    checks = check_step("http.get", {"url": url}, CATALOG, safety=ALLOW)
    assert passed_all(checks) is ok, names(checks)


def test_idna_hosts_are_normalised() -> None:
    assert normalise_url("http://BÜCHER.example/") == "http://xn--bcher-kva.example/"
    with pytest.raises(ValueError, match="percent-encoded"):
        normalise_url("http://ex%61mple.com/")


def test_a_caller_set_host_header_is_refused() -> None:
    checks = check_step(
        "http.get", {"url": "http://127.0.0.1:8080/api/x", "headers": {" HOST": "e"}}, CATALOG, safety=ALLOW
    )
    assert names(checks) == ["inputs_safe"]
    assert "Host header" in failed(checks)[0].message


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{x.__class__}", "'__' attribute"),
        ("{x[__globals__]}", "'__' attribute"),
        ("{0}", "positional"),
        ("{x!z}", "unknown conversion"),
        ("{x:{x}}", "holds a placeholder"),
        ("{x:>99999}", "wider than"),
        ("{nope}", "missing key 'nope'"),
        ("{x", "expected '}'"),
    ],
)
def test_template_safety(template: str, problem: str) -> None:
    found = template_problems(template, ["x"])
    assert any(problem in p for p in found), found
    assert template_problems("Price: ${x} {x!t} {x.a[0]} {{lit}}", ["x"]) == []


# -- strict schemas and references -----------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        {"sql": "SELECT 1", "max_rows": "10"},
        {"sql": "SELECT 1", "max_rows": True},
        {"sql": "SELECT ?", "params": [True]},
    ],
)
def test_inputs_are_not_coerced(inputs: dict[str, Any]) -> None:
    assert names(check_step("sql.query", inputs, CATALOG)) == ["inputs_valid"]


async def test_the_toolbox_validates_strictly_and_checks_the_rule(tmp_path: Path) -> None:
    box = builtin_toolbox(ToolConfig(workspace=tmp_path, database=ensure_sample_database(tmp_path / "shop.db")))
    with pytest.raises(ToolError) as err:
        await box.call("sql.query", {"sql": "SELECT 1", "max_rows": "10"}, ToolCall(idempotency_key="k"))
    assert err.value.code == "invalid_input"
    with pytest.raises(ToolError) as err:
        await box.call("sql.query", {"sql": "SELECT load_extension('x')"}, ToolCall(idempotency_key="k"))
    assert err.value.code == "write_refused"
    with pytest.raises(ToolError) as err:
        await box.call("fs.write", {"path": str(tmp_path / "abs.txt"), "content": "x"}, ToolCall(idempotency_key="k"))
    assert err.value.code == "outside_workspace"  # absolute, even inside the workspace
    assert not (tmp_path / "abs.txt").exists()


def plan(*nodes: dict[str, Any]) -> Plan:
    return Plan(nodes=tuple(Task(**n) for n in nodes))


TOP = {"id": "top", "tool": "sql.query", "inputs": {"sql": "SELECT id FROM customers"}}


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("${top.rows}", True),
        ("${top.rows.0}", True),
        ("${top.rows.0.1}", True),
        ("${top.columns.0}", True),
        ("${top.rows.first}", False),
        ("${top.row_count.x}", False),
        ("${top.rows.0.x}", False),
    ],
)
def test_references_are_checked_to_the_full_path(ref: str, ok: bool) -> None:
    checks = validate_plan(
        plan(
            TOP,
            {
                "id": "r",
                "tool": "text.render",
                "depends_on": ["top"],
                "inputs": {"template": "{v}", "values": {"v": ref}},
            },
        ),
        CATALOG,
    )
    assert passed_all(checks) is ok, names(checks)
    if not ok:
        assert names(checks) == ["reference_field"]


def test_schema_paths_through_unions_and_dicts() -> None:
    schema = {"type": "object", "properties": {"h": {"type": "object", "additionalProperties": {"type": "string"}}}}
    assert schema_path_problem(schema, ["h", "any"]) is None
    assert schema_path_problem(schema, ["h", "any", "deeper"]) == "h.any is a string, which has no field 'deeper'"


@pytest.mark.parametrize("text", ["${top.rows", "${top", "  ${top.rows", "${top.rows}}", "a ${top"])
def test_an_unclosed_reference_is_an_error(text: str) -> None:
    checks = validate_plan(
        plan(TOP, {"id": "w", "tool": "fs.write", "depends_on": ["top"], "inputs": {"path": "a", "content": text}}),
        CATALOG,
    )
    assert names(checks) == ["reference_form"]


def test_a_passing_verdict_lists_the_same_checks_as_before() -> None:
    """inputs_safe and reference_form are recorded only when they fail, so old verdicts replay."""
    checks = validate_plan(plan(TOP), CATALOG)
    assert passed_all(checks)
    assert not {"inputs_safe", "reference_form"} & {c.name for c in checks}


# -- step time ---------------------------------------------------------------------------------


def test_step_time_checks_the_resolved_inputs() -> None:
    task = Task(id="save", tool="fs.write", depends_on=("name",), inputs={"path": "${name.text}", "content": "x"})
    step = StepIntent(id="save.s1", task_id="save", tool="fs.write", inputs=dict(task.inputs))
    assert passed_all(validate_plan(plan({"id": "name", "tool": "text.render", "inputs": {"template": "x"}}, {
        "id": "save", "tool": "fs.write", "depends_on": ["name"], "inputs": dict(task.inputs)}), CATALOG))  # fmt: skip
    checks = validate_steps(task, [step], CATALOG, {"name": {"text": "../../etc/cron.d/x"}})
    assert names(checks) == ["inputs_safe"]
    assert "outside_workspace" in failed(checks)[0].message
    assert passed_all(validate_steps(task, [step], CATALOG, {"name": {"text": "reports/x.md"}}))


def test_check_step_is_one_verdict_over_a_tool_and_resolved_inputs() -> None:
    assert passed_all(check_step("fs.write", {"path": "a.md", "content": "x"}, CATALOG))
    assert names(check_step("fs.write", {"path": "${a.b}", "content": "x"}, CATALOG)) == ["reference_resolves"]
    assert names(check_step("nope.tool", {}, CATALOG)) == ["tool_exists"]
    pools = {"readers": frozenset({"fs.read"})}
    assert names(check_step("fs.write", {"path": "a.md", "content": "x"}, CATALOG, pool="readers", pools=pools)) == [
        "agent_pool"
    ]
    assert passed_all(check_step("fs.read", {"path": "a.md"}, CATALOG, pool="readers", pools=pools))
    prohibited = CATALOG.with_policy(prohibited=["fs.write"])
    assert names(check_step("fs.write", {"path": "a.md", "content": "x"}, prohibited)) == ["tool_allowed"]


# -- a whole system ----------------------------------------------------------------------------


async def test_a_plan_whose_last_task_writes_outside_runs_none_of_its_tasks(nats_url: str, tmp_path: Path) -> None:
    body = {
        "request": "write a report outside the workspace",
        "plan": {
            "nodes": [
                {"id": "top", "tool": "sql.query", "inputs": {"sql": "SELECT id, name FROM customers LIMIT 3"}},
                {
                    "id": "keep",
                    "tool": "fs.write",
                    "depends_on": ["top"],
                    "inputs": {"path": "inside.md", "content": "x"},
                },
                {
                    "id": "leak",
                    "tool": "fs.write",
                    "depends_on": ["keep"],
                    "inputs": {"path": "../leak.md", "content": "x"},
                },
            ]
        },
    }
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run(body)
        types = [r.event.type for r in await h.events(state.workflow_id)]
        workspace = h.settings.workspace_dir
    assert state.status == "failed"
    assert "plan_rejected" in types
    assert not {"step_ready", "step_completed", "step_failed"} & set(types)
    assert not (workspace / "inside.md").exists()
    assert not (tmp_path / "leak.md").exists()
    assert not (workspace.parent / "leak.md").exists()
