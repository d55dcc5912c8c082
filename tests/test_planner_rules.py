"""The planner's pure rules: references, plan and step validation, scheduling, decomposition, the library.

Pure and fast: no NATS, no event loop. The catalog is built here from tiny models, so these
tests do not depend on the built-in tools.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from cadre.bus.plan import Check, Plan, StepIntent, Task
from cadre.planner.catalog import Catalog, Safety, ToolSpec
from cadre.planner.decompose import DecompositionError, decompose, step_id
from cadre.planner.library import (
    LibraryEntry,
    LibraryError,
    Match,
    entry_from_workflow,
    load_entries,
    rank,
    search,
    tokens,
)
from cadre.planner.refs import Ref, RefError, find_refs, is_ref, lookup, parse_ref, resolve, with_step_outputs
from cadre.planner.scheduler import (
    PlanCycle,
    UnknownTask,
    blocked_by_failure,
    depth,
    find_cycle,
    is_finished,
    ready_tasks,
    topo_order,
    upstream,
)
from cadre.planner.validation import (
    Limits,
    ValidationFailed,
    failed,
    needs_approval,
    passed_all,
    validate_plan,
    validate_steps,
    warnings,
)

# -- a small catalog -------------------------------------------------------------------------


class SqlQueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str
    params: list[Any] = Field(default_factory=list)
    max_rows: int = 100


class SqlQueryOut(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]]
    row_count: int
    truncated: bool = False


class RenderIn(BaseModel):
    template: str
    values: dict[str, Any]


class RenderOut(BaseModel):
    text: str


class WriteIn(BaseModel):
    path: str
    content: str
    mode: Literal["w", "a"] = "w"


class WriteOut(BaseModel):
    path: str
    bytes_written: int


class ReadIn(BaseModel):
    path: str


class ReadOut(BaseModel):
    content: str


class HttpIn(BaseModel):
    url: str


class HttpOut(BaseModel):
    status: int
    body: str


class ExecIn(BaseModel):
    command: str


class ExecOut(BaseModel):
    stdout: str


CATALOG = Catalog(
    [
        ToolSpec("sql.query", "Run a read-only SQL query", SqlQueryIn, SqlQueryOut),
        ToolSpec("text.render", "Render a text template", RenderIn, RenderOut),
        ToolSpec("fs.read", "Read a file", ReadIn, ReadOut),
        ToolSpec("fs.write", "Write a file", WriteIn, WriteOut, safety=Safety.SIDE_EFFECT, requires_approval=True),
        ToolSpec("http.get", "Fetch a URL", HttpIn, HttpOut),
        ToolSpec("shell.exec", "Run a shell command", ExecIn, ExecOut, safety=Safety.PROHIBITED),
    ]
)
ALLOWED_TOOLS = "'fs.read', 'fs.write', 'http.get', 'sql.query', 'text.render'"  # shell.exec is prohibited


def task(task_id: str, *deps: str, tool: str | None = "sql.query", **inputs: Any) -> Task:
    if tool == "sql.query" and not inputs:
        inputs = {"sql": "select 1"}
    return Task(id=task_id, depends_on=deps, tool=tool, inputs=inputs)


def plan(*nodes: Task, output: str | None = None) -> Plan:
    return Plan(nodes=nodes, output=output)


REPORT_PLAN = plan(
    task("top", sql="select customer, sum(total) from orders group by 1 order by 2 desc limit 3"),
    task("report", "top", tool="text.render", template="{top}", values={"top": "${top.rows}"}),
    task("save", "report", tool="fs.write", path="report.md", content="${report.text}"),
    output="save",
)


def named(checks: list[Check], name: str) -> list[Check]:
    return [c for c in checks if c.name == name]


def only_failure(checks: list[Check], name: str) -> Check:
    """The single failed check of ``name`` (and it must be the only failing error overall)."""
    bad = failed(checks)
    assert [c.name for c in bad] == [name], bad
    return bad[0]


# -- references ------------------------------------------------------------------------------


def test_find_refs_nested_in_dicts_and_lists_in_document_order() -> None:
    value = {
        "a": "${x}",
        "b": {"c": ["${y.rows.0}", "text ${z} around", {"d": "${w.f.g}"}]},
        "my key": "${v.n}",
        "n": 3,
    }
    assert find_refs(value) == [
        Ref("x", (), "inputs.a", ("a",)),
        Ref("y", ("rows", "0"), "inputs.b.c[0]", ("b", "c", 0)),
        Ref("w", ("f", "g"), "inputs.b.c[2].d", ("b", "c", 2, "d")),
        Ref("v", ("n",), 'inputs["my key"]', ("my key",)),
    ]
    assert find_refs(value, root="nodes[1].inputs")[0].where == "nodes[1].inputs.a"
    assert find_refs(value)[1].text == "${y.rows.0}"


@pytest.mark.parametrize(
    "text", ["${}", "${a..b}", "${a b}", " ${a}", "${a}.", "${a.}", "$a", "{a}", "x ${a} y", "${a.b-c$}"]
)
def test_strings_that_are_not_whole_references_are_text(text: str) -> None:
    assert parse_ref(text) is None
    assert not is_ref(text)
    assert resolve({"t": text}, {}) == {"t": text}


def test_parse_ref_accepts_ids_with_dash_and_underscore() -> None:
    assert parse_ref("${top_3-x.rows.10}") == Ref("top_3-x", ("rows", "10"))
    assert is_ref("${a}")
    assert not is_ref(3)


OUTPUTS: dict[str, dict[str, Any]] = {
    "top": {
        "columns": ["customer", "total"],
        "rows": [{"customer": "ada", "total": 30}, {"customer": "bob", "total": 20}],
        "row_count": 2,
        "truncated": False,
    },
    "empty": {"rows": []},
}


def test_resolve_replaces_whole_outputs_fields_and_list_items_anywhere() -> None:
    value = {
        "all": "${top}",
        "deep": {"first": ["${top.rows.0}", "${top.rows.1.customer}"], "n": "${top.row_count}"},
        "text": "count: ${top.row_count}",
        "tuple": ("${top.truncated}",),
        "plain": 1.5,
    }
    assert resolve(value, OUTPUTS) == {
        "all": OUTPUTS["top"],
        "deep": {"first": [{"customer": "ada", "total": 30}, "bob"], "n": 2},
        "text": "count: ${top.row_count}",
        "tuple": (False,),
        "plain": 1.5,
    }


def test_resolve_copies_so_outputs_are_never_aliased() -> None:
    resolved = resolve({"rows": "${top.rows}"}, OUTPUTS)
    resolved["rows"][0]["customer"] = "mallory"
    assert OUTPUTS["top"]["rows"][0]["customer"] == "ada"


def test_resolve_leaves_references_to_the_given_tasks() -> None:
    assert resolve({"a": "${me.s1.x}", "b": "${top.row_count}"}, OUTPUTS, leave={"me"}) == {"a": "${me.s1.x}", "b": 2}


def test_missing_field_names_the_reference_where_it_stands_and_what_exists() -> None:
    with pytest.raises(RefError, match=r"^cannot resolve \$\{top\.rowz\} at inputs\.values\.top: ") as info:
        resolve({"values": {"top": "${top.rowz}"}}, OUTPUTS)
    assert info.value.code == "unresolved_reference"
    assert info.value.reason == "task 'top' has no output field 'rowz'; it has: columns, rows, row_count, truncated"
    assert info.value.ref == Ref("top", ("rowz",), "inputs.values.top", ("values", "top"))
    assert info.value.fix == "use one of those fields, or reference the whole output as ${top}"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            "${nope.rows}",
            r"^cannot resolve \$\{nope\.rows\} at inputs\.x: there is no output of task 'nope' "
            r"\(outputs available: empty, top\); make the task depend on 'nope' or fix the task id$",
        ),
        (
            "${top.rows.0.name}",
            r"^cannot resolve \$\{top\.rows\.0\.name\} at inputs\.x: 'top\.rows\.0' has no field 'name'; "
            r"it has: customer, total; use one of those fields, or reference the whole output as \$\{top\.rows\.0\}$",
        ),
        (
            "${top.rows.7}",
            r"^cannot resolve \$\{top\.rows\.7\} at inputs\.x: 'top\.rows' has 2 items; index 7 is out of range; "
            r"use an index below 2$",
        ),
        (
            "${top.rows.first}",
            r"^cannot resolve \$\{top\.rows\.first\} at inputs\.x: 'top\.rows' is a list of 2 items and 'first' "
            r"is not an index; use a numeric index from 0 to 1$",
        ),
        (
            "${empty.rows.0}",
            r"^cannot resolve \$\{empty\.rows\.0\} at inputs\.x: 'empty\.rows' has 0 items; index 0 is out of range; "
            r"the list is empty; do not index it$",
        ),
        (
            "${top.row_count.value}",
            r"^cannot resolve \$\{top\.row_count\.value\} at inputs\.x: 'top\.row_count' is int 2, which has no field "
            r"'value'; reference 'top\.row_count' itself as \$\{top\.row_count\}$",
        ),
    ],
)
def test_unresolvable_references_say_what_is_missing(ref: str, message: str) -> None:
    with pytest.raises(RefError, match=message):
        resolve({"x": ref}, OUTPUTS)


def test_lookup_serves_one_reference() -> None:
    assert lookup(Ref("top", ("rows", "1", "total")), OUTPUTS) == 20


def test_step_outputs_nest_under_their_task_so_step_references_resolve() -> None:
    outputs = with_step_outputs(OUTPUTS, {"load.s1": {"rows": [1, 2]}, "load.a2.s1": {"rows": [3]}})
    assert resolve({"a": "${load.s1.rows.1}", "b": "${load.a2.s1.rows}", "c": "${top.row_count}"}, outputs) == {
        "a": 2,
        "b": [3],
        "c": 2,
    }
    with pytest.raises(ValueError, match=r"^step id 'load' is not of the form '<task_id>\.<step>'"):
        with_step_outputs(OUTPUTS, {"load": {}})
    with pytest.raises(ValueError, match=r"^step 'top\.s1' belongs to task 'top', which already has an output; "):
        with_step_outputs(OUTPUTS, {"top.s1": {}})


# -- plan validation -------------------------------------------------------------------------


def test_a_good_plan_passes_with_an_approval_warning() -> None:
    checks = validate_plan(REPORT_PLAN, CATALOG)
    assert passed_all(checks)
    assert failed(checks) == []
    [warning] = warnings(checks)
    assert warning.name == "approval_required"
    assert warning.path == "nodes[2].tool"
    assert re.fullmatch(
        r"task 'save' uses tool 'fs\.write', which requires approval: the workflow will pause for approval "
        r"before it runs",
        warning.message,
    )
    names = {c.name for c in checks if c.passed}
    assert {
        "plan_not_empty",
        "task_id_valid",
        "task_ids_unique",
        "dependency_known",
        "acyclic",
        "plan_size",
        "plan_depth",
        "inputs_size",
        "tool_named",
        "tool_exists",
        "tool_allowed",
        "inputs_valid",
        "reference_upstream",
        "reference_field",
        "output_known",
    } <= names


def test_an_empty_plan_is_refused() -> None:
    [check] = validate_plan(plan(), CATALOG)
    assert check == Check(
        name="plan_not_empty",
        passed=False,
        message="the plan has no tasks",
        fix='add at least one task to "nodes"',
        path="nodes",
    )


def test_task_ids_must_be_tokens() -> None:
    check = only_failure(validate_plan(plan(task("a.b"), task("ok")), CATALOG), "task_id_valid")
    assert re.fullmatch(r"task id 'a\.b' at nodes\[0\] is not a valid id", check.message)
    assert check.path == "nodes[0].id"
    assert check.fix is not None
    assert check.fix.startswith("use only letters, digits, '_' and '-'")


def test_task_ids_must_be_unique() -> None:
    check = only_failure(validate_plan(plan(task("a"), task("b"), task("a")), CATALOG), "task_ids_unique")
    assert re.fullmatch(r"task id 'a' is used by nodes\[0\] and nodes\[2\]", check.message)
    assert check.path == "nodes[2].id"


def test_unknown_dependency_suggests_the_closest_task() -> None:
    check = only_failure(validate_plan(plan(task("top"), task("b", "tpo")), CATALOG), "dependency_known")
    assert re.fullmatch(r"task 'b' depends on 'tpo', which is not a task of this plan", check.message)
    assert check.fix == "did you mean 'top'?"
    assert check.path == "nodes[1].depends_on[0]"
    far = only_failure(validate_plan(plan(task("top"), task("b", "zzz")), CATALOG), "dependency_known")
    assert far.fix == "remove it from depends_on, or add a task 'zzz'"


def test_self_dependency_is_reported_once_not_as_a_cycle() -> None:
    checks = validate_plan(plan(task("a", "a")), CATALOG)
    check = only_failure(checks, "no_self_dependency")
    assert re.fullmatch(r"task 'a' depends on itself", check.message)
    assert check.path == "nodes[0].depends_on[0]"
    assert named(checks, "acyclic")[0].passed


def test_a_cycle_is_reported_with_its_path() -> None:
    checks = validate_plan(plan(task("x"), task("a", "x", "c"), task("b", "a"), task("c", "b")), CATALOG)
    check = only_failure(checks, "acyclic")
    assert re.fullmatch(
        r"the dependencies form a cycle: a -> c -> b -> a \(each task depends on the next\)", check.message
    )
    assert check.fix == "remove one of these dependencies: 'a' on 'c', 'c' on 'b', 'b' on 'a'"
    assert check.path == "nodes[1].depends_on[1]"
    assert named(checks, "plan_depth") == []  # undefined on a cyclic graph


def test_depth_and_size_limits() -> None:
    chain = plan(task("t0"), *(task(f"t{i}", f"t{i - 1}") for i in range(1, 5)))
    assert passed_all(validate_plan(chain, CATALOG, Limits(max_depth=5, max_tasks=5)))
    deep = only_failure(validate_plan(chain, CATALOG, Limits(max_depth=4)), "plan_depth")
    assert re.fullmatch(r"the longest dependency chain has 5 tasks; the limit is 4", deep.message)
    big = only_failure(validate_plan(chain, CATALOG, Limits(max_tasks=4)), "plan_size")
    assert re.fullmatch(r"the plan has 5 tasks; the limit is 4", big.message)


def test_inputs_size_limit_counts_json_bytes() -> None:
    big = plan(task("a", sql="x" * 100))
    assert passed_all(validate_plan(big, CATALOG, Limits(max_inputs_bytes=200)))
    check = only_failure(validate_plan(big, CATALOG, Limits(max_inputs_bytes=50)), "inputs_size")
    assert re.fullmatch(r"task 'a': inputs take 110 bytes as JSON; the limit is 50", check.message)
    assert check.path == "nodes[0].inputs"


def test_inputs_that_are_not_json_are_refused() -> None:
    check = only_failure(validate_plan(plan(task("a", sql="s", params=[object()])), CATALOG), "inputs_size")
    assert re.match(r"^task 'a': inputs are not JSON \(", check.message)


def test_a_task_without_tool_or_capabilities_is_an_error_listing_the_tools() -> None:
    check = only_failure(validate_plan(plan(task("x", tool=None)), CATALOG), "tool_named")
    assert re.fullmatch(rf'task \'x\' names no tool; add "tool": one of {re.escape(ALLOWED_TOOLS)}', check.message)
    assert check.fix == f'add "tool": one of {ALLOWED_TOOLS}'
    assert check.path == "nodes[0].tool"


def test_a_task_with_only_capabilities_is_a_warning() -> None:
    checks = validate_plan(plan(Task(id="x", capabilities=("search",))), CATALOG)
    assert passed_all(checks)
    [warning] = warnings(checks)
    assert warning.name == "tool_named"
    assert re.match(r"^task 'x' names no tool, only capabilities \(search\); an LLM decomposer", warning.message)


def test_unknown_tool_suggests_close_names() -> None:
    check = only_failure(validate_plan(plan(task("a", tool="sql.qeury", sql="s")), CATALOG), "tool_exists")
    assert re.fullmatch(r"task 'a' uses tool 'sql\.qeury', which is not in the catalog", check.message)
    assert check.fix == "did you mean 'sql.query'?"
    other = only_failure(validate_plan(plan(task("a", tool="weather.now")), CATALOG), "tool_exists")
    assert other.fix == f"use one of {ALLOWED_TOOLS}"


def test_prohibited_tool_is_refused() -> None:
    check = only_failure(validate_plan(plan(task("a", tool="shell.exec", command="ls")), CATALOG), "tool_allowed")
    assert re.fullmatch(r"task 'a' uses tool 'shell\.exec', which is prohibited", check.message)
    assert check.fix == f"choose another tool: {ALLOWED_TOOLS}"


def test_policy_can_prohibit_a_tool() -> None:
    strict = CATALOG.with_policy(prohibited=["sql.query"])
    only_failure(validate_plan(plan(task("a")), strict), "tool_allowed")


def test_fallback_tools_must_exist_and_be_allowed() -> None:
    good = Task(id="a", tool="http.get", inputs={"url": "https://x"}, fallback_tools=("fs.read",))
    assert passed_all(validate_plan(plan(good), CATALOG))
    unknown = msgspec.structs.replace(good, fallback_tools=("fs.raed",))
    check = only_failure(validate_plan(plan(unknown), CATALOG), "fallback_exists")
    assert re.fullmatch(r"task 'a' falls back to tool 'fs\.raed', which is not in the catalog", check.message)
    assert check.fix == "did you mean 'fs.read' or 'fs.write'?"
    assert check.path == "nodes[0].fallback_tools[0]"
    banned = msgspec.structs.replace(good, fallback_tools=("fs.read", "shell.exec"))
    check = only_failure(validate_plan(plan(banned), CATALOG), "fallback_allowed")
    assert check.path == "nodes[0].fallback_tools[1]"
    assert check.fix == "remove it from fallback_tools"


def test_inputs_are_validated_against_the_tool_model() -> None:
    check = only_failure(validate_plan(plan(task("a", max_rows="lots", extra=1)), CATALOG), "inputs_valid")
    assert re.fullmatch(
        r"task 'a': inputs do not match SqlQueryIn, the input model of 'sql\.query': "
        r"inputs\.sql: Field required; "
        r"inputs\.max_rows: Input should be a valid integer \(got 'lots'\); "
        r"inputs\.extra: Extra inputs are not permitted \(got 1\)",
        check.message,
    )
    assert check.fix == "give inputs of the form {sql: str, params: list[Any] (optional), max_rows: int (optional)}"
    assert check.path == "nodes[0].inputs"


def test_referenced_fields_are_not_validated_until_resolved_but_the_rest_is() -> None:
    # "${count.row_count}" is a string where an int is expected: a reference, so it is left for later.
    ok = plan(task("count"), task("a", "count", sql="s", max_rows="${count.row_count}"))
    assert passed_all(validate_plan(ok, CATALOG))
    nested = plan(task("count"), task("a", "count", sql="s", params=["${count.rows.0}", "${count}"]))
    assert passed_all(validate_plan(nested, CATALOG))
    bad = plan(task("count"), task("a", "count", sql=5, max_rows="${count.row_count}"))
    check = only_failure(validate_plan(bad, CATALOG), "inputs_valid")
    assert "inputs.sql: Input should be a valid string" in check.message
    assert "max_rows" not in check.message


def test_a_reference_must_name_a_known_task() -> None:
    checks = validate_plan(plan(task("top"), task("b", "top", sql="${tpo.rows}")), CATALOG)
    check = only_failure(checks, "reference_known")
    assert re.fullmatch(
        r"task 'b' references \$\{tpo\.rows\} at inputs\.sql, but the plan has no task 'tpo'", check.message
    )
    assert check.fix == "did you mean 'top'?"
    assert check.path == "nodes[1].inputs.sql"


def test_a_reference_must_point_upstream() -> None:
    checks = validate_plan(plan(task("top"), task("b", sql="${top.rows}")), CATALOG)
    check = only_failure(checks, "reference_upstream")
    assert re.fullmatch(
        r"task 'b' references \$\{top\.rows\} at inputs\.sql, but 'top' is not upstream of it, "
        r"so its output may not exist yet",
        check.message,
    )
    assert check.fix == "add 'top' to depends_on"
    own = only_failure(validate_plan(plan(task("a", sql="${a}")), CATALOG), "reference_upstream")
    assert re.fullmatch(r"task 'a' references \$\{a\} at inputs\.sql, its own output, .*", own.message)


def test_a_transitive_upstream_reference_is_fine() -> None:
    chain = plan(task("a"), task("b", "a"), task("c", "b", sql="select", params=["${a.rows}"]))
    assert passed_all(validate_plan(chain, CATALOG))


def test_a_reference_field_must_exist_in_the_upstream_output_model() -> None:
    checks = validate_plan(
        plan(task("top"), task("r", "top", tool="text.render", template="t", values={"top": "${top.rowz}"})), CATALOG
    )
    check = only_failure(checks, "reference_field")
    assert re.fullmatch(
        r"task 'r' references \$\{top\.rowz\} at inputs\.values\.top, but task 'top' \(tool 'sql\.query'\) "
        r"has no output field 'rowz'; it has: columns, rows, row_count, truncated",
        check.message,
    )
    assert check.fix == "did you mean 'rows'?"
    assert check.path == "nodes[1].inputs.values.top"


def test_output_must_name_a_task() -> None:
    check = only_failure(validate_plan(plan(task("top"), output="tpo"), CATALOG), "output_known")
    assert re.fullmatch(r"\"output\" names 'tpo', which is not a task of this plan", check.message)
    assert check.fix == "did you mean 'top'?"
    assert check.path == "output"
    assert named(validate_plan(plan(task("top")), CATALOG), "output_known") == []


def test_validation_failed_lists_the_failures() -> None:
    checks = validate_plan(plan(task("a", tool=None), output="b"), CATALOG)
    error = ValidationFailed("plan", checks)
    assert error.code == "validation_failed"
    assert [c.name for c in error.checks] == ["tool_named", "output_known"]
    assert re.match(r"^plan failed 2 check\(s\): \[tool_named at nodes\[0\]\.tool\] task 'a' names no tool", str(error))


# -- step validation -------------------------------------------------------------------------


def step(sid: str = "b.s1", task_id: str = "b", tool: str = "sql.query", **fields: Any) -> StepIntent:
    fields.setdefault("inputs", {"sql": "select 1"})
    return StepIntent(id=sid, task_id=task_id, tool=tool, **fields)


B = task("b", "a")


def test_good_steps_pass() -> None:
    checks = validate_steps(B, [step()], CATALOG, None)
    assert passed_all(checks)
    assert warnings(checks) == []
    assert {"steps_present", "step_count", "step_ids_unique", "step_id_form", "step_task", "inputs_valid"} <= {
        c.name for c in checks
    }


def test_no_steps_is_an_error() -> None:
    [check] = validate_steps(B, [], CATALOG, None)
    assert check.name == "steps_present"
    assert re.fullmatch(r"task 'b' was decomposed into no steps", check.message)


def test_step_count_limit() -> None:
    steps = [step(f"b.s{i}") for i in range(1, 4)]
    check = only_failure(validate_steps(B, steps, CATALOG, None, Limits(max_steps_per_task=2)), "step_count")
    assert re.fullmatch(r"task 'b' has 3 steps; the limit is 2", check.message)


def test_step_ids_unique_and_named_after_the_task() -> None:
    check = only_failure(validate_steps(B, [step(), step()], CATALOG, None), "step_ids_unique")
    assert re.fullmatch(r"step id 'b\.s1' is used by steps\[0\] and steps\[1\]", check.message)
    form = only_failure(validate_steps(B, [step("s1")], CATALOG, None), "step_id_form")
    assert re.fullmatch(r"step 's1' is not of the form 'b\.<step>'", form.message)
    assert form.fix is not None
    assert form.fix.startswith("name it like 'b.s1'")


def test_step_must_belong_to_the_task() -> None:
    check = only_failure(validate_steps(B, [step(task_id="c")], CATALOG, None), "step_task")
    assert re.fullmatch(r"step 'b\.s1' belongs to task 'c', not 'b'", check.message)
    assert check.fix == "set its task_id to 'b'"
    assert check.path == "steps[0].task_id"


def test_step_tool_must_exist_and_be_allowed() -> None:
    check = only_failure(validate_steps(B, [step(tool="sql.qery")], CATALOG, None), "tool_exists")
    assert check.fix == "did you mean 'sql.query'?"
    banned = only_failure(
        validate_steps(B, [step(tool="shell.exec", inputs={"command": "rm -rf /"})], CATALOG, None), "tool_allowed"
    )
    assert re.fullmatch(r"step 'b\.s1' uses tool 'shell\.exec', which is prohibited", banned.message)
    assert banned.fix == "remove the step or choose another tool"
    assert banned.severity == "error"


def test_approval_required_is_a_warning_and_needs_approval_says_so() -> None:
    write = step(tool="fs.write", inputs={"path": "r.md", "content": "hi"})
    checks = validate_steps(B, [write], CATALOG, None)
    assert passed_all(checks)
    assert [c.name for c in warnings(checks)] == ["approval_required"]
    assert needs_approval(write, CATALOG)
    assert not needs_approval(step(), CATALOG)
    assert needs_approval(step(requires_approval=True), CATALOG)
    assert needs_approval(step(fallback_tools=("fs.write",)), CATALOG)
    assert needs_approval(step(tool="no.such"), CATALOG) is False


def test_step_inputs_are_validated_after_resolving_upstream_outputs() -> None:
    s = step(inputs={"sql": "select", "max_rows": "${a.row_count}"})
    assert passed_all(validate_steps(B, [s], CATALOG, {"a": {"row_count": 5}}))
    check = only_failure(validate_steps(B, [s], CATALOG, {"a": {"row_count": "five"}}), "inputs_valid")
    assert re.search(r"inputs\.max_rows: Input should be a valid integer.*\(got 'five'\)", check.message)


def test_a_step_reference_that_does_not_resolve_is_an_error_naming_it() -> None:
    s = step(inputs={"sql": "select", "max_rows": "${a.rowcount}"})
    checks = validate_steps(B, [s], CATALOG, {"a": {"row_count": 5}})
    check = only_failure(checks, "reference_resolves")
    assert re.fullmatch(
        r"step 'b\.s1': cannot resolve \$\{a\.rowcount\} at inputs\.max_rows: task 'a' has no output field "
        r"'rowcount'; it has: row_count; use one of those fields, or reference the whole output as \$\{a\}",
        check.message,
    )
    assert check.path == "steps[0].inputs.max_rows"
    missing = only_failure(validate_steps(B, [s], CATALOG, {}), "reference_resolves")
    assert "there is no output of task 'a' (outputs available: none)" in missing.message


def test_without_outputs_step_references_must_point_at_the_task_dependencies() -> None:
    s = step(inputs={"sql": "select", "params": ["${z.rows}"]})
    check = only_failure(validate_steps(B, [s], CATALOG, None), "reference_upstream")
    assert re.fullmatch(
        r"step 'b\.s1' references \$\{z\.rows\} at inputs\.params\[0\], but 'z' is not upstream of task 'b'",
        check.message,
    )
    assert check.fix == "add 'z' to the depends_on of task 'b'"
    assert passed_all(validate_steps(B, [s], CATALOG, None, upstream_ids={"a", "z"}))


def test_step_references_to_earlier_steps_of_the_task() -> None:
    first = step("b.s1")
    second = step("b.s2", inputs={"sql": "select", "params": "${b.s1.rows}"})
    known: list[dict[str, dict[str, Any]] | None] = [None, {"a": {}}]
    for outputs in known:
        assert passed_all(validate_steps(B, [first, second], CATALOG, outputs))
    later = step("b.s1", inputs={"sql": "select", "params": "${b.s2.rows}"})
    check = only_failure(validate_steps(B, [later, step("b.s2")], CATALOG, None), "reference_order")
    assert re.fullmatch(
        r"step 'b\.s1' references \$\{b\.s2\.rows\} at inputs\.params, the output of the later step 'b\.s2'",
        check.message,
    )
    itself = only_failure(validate_steps(B, [step(inputs={"sql": "${b.s1}"})], CATALOG, None), "reference_order")
    assert itself.message.endswith("the output of itself")
    unknown = only_failure(validate_steps(B, [step(inputs={"sql": "${b.s9.x}"})], CATALOG, None), "reference_known")
    assert re.fullmatch(
        r"step 'b\.s1' references \$\{b\.s9\.x\} at inputs\.sql, which names no step of task 'b' \(its steps: b\.s1\)",
        unknown.message,
    )


def test_fallback_tools_on_steps_exist_and_accept_the_inputs() -> None:
    s = step(tool="http.get", inputs={"url": "https://example.com"}, fallback_tools=("fs.read",))
    checks = validate_steps(B, [s], CATALOG, None)
    assert passed_all(checks)  # only a warning
    [warning] = warnings(checks)
    assert warning.name == "fallback_inputs"
    assert warning.path == "steps[0].fallback_tools[0]"
    assert re.match(r"^step 'b\.s1' \(fallback 'fs\.read'\): inputs do not match ReadIn", warning.message)
    bad = only_failure(validate_steps(B, [step(fallback_tools=("nope",))], CATALOG, None), "fallback_exists")
    assert bad.path == "steps[0].fallback_tools[0]"


def test_decomposed_steps_validate() -> None:
    for t in REPORT_PLAN.nodes:
        checks = validate_steps(t, decompose(t, CATALOG), CATALOG, OUTPUTS | {"report": {"text": "hi"}})
        assert passed_all(checks), failed(checks)


# -- scheduler -------------------------------------------------------------------------------

DIAMOND = plan(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"))


def test_scheduler_runs_a_diamond_to_the_end() -> None:
    status: dict[str, str] = {}
    assert ready_tasks(DIAMOND, status) == ["a"]
    status["a"] = "running"
    assert ready_tasks(DIAMOND, status) == []
    status["a"] = "completed"
    assert ready_tasks(DIAMOND, status) == ["b", "c"]
    status |= {"b": "completed", "c": "running"}
    assert ready_tasks(DIAMOND, status) == []
    assert not is_finished(DIAMOND, status)
    status["c"] = "completed"
    assert ready_tasks(DIAMOND, status) == ["d"]
    status["d"] = "completed"
    assert ready_tasks(DIAMOND, status) == []
    assert is_finished(DIAMOND, status)
    assert blocked_by_failure(DIAMOND, status) == []


def test_a_failure_blocks_everything_downstream_only() -> None:
    status = {"a": "completed", "b": "failed"}
    assert ready_tasks(DIAMOND, status) == ["c"]
    assert blocked_by_failure(DIAMOND, status) == ["d"]
    assert blocked_by_failure(DIAMOND, {"a": "failed"}) == ["b", "c", "d"]
    assert blocked_by_failure(DIAMOND, {"a": "failed", "b": "running"}) == ["c", "d"]


def test_graph_questions_on_the_diamond() -> None:
    assert topo_order(DIAMOND) == ["a", "b", "c", "d"]
    assert topo_order(plan(task("d", "b", "c"), task("c", "a"), task("b", "a"), task("a"))) == ["a", "c", "b", "d"]
    assert depth(DIAMOND) == 3
    assert depth(plan()) == 0
    assert depth(plan(task("x"), task("y"))) == 1
    assert upstream(DIAMOND, "d") == {"a", "b", "c"}
    assert upstream(DIAMOND, "a") == set()
    assert find_cycle(DIAMOND) is None
    assert is_finished(plan(), {})


def test_an_unknown_dependency_never_becomes_ready() -> None:
    odd = plan(task("a"), task("b", "ghost"))
    assert ready_tasks(odd, {"a": "completed"}) == []
    assert topo_order(odd) == ["a", "b"]  # graph functions ignore unknown ids


def test_cycles_and_unknown_tasks_raise() -> None:
    cyclic = plan(task("a", "b"), task("b", "a"), task("c"))
    assert find_cycle(cyclic) == ["a", "b", "a"]
    with pytest.raises(
        PlanCycle, match=r"^the plan's dependencies form a cycle: a -> b -> a \(each task depends on the next\); "
    ) as info:
        topo_order(cyclic)
    assert info.value.code == "plan_cycle"
    with pytest.raises(PlanCycle, match=r"cycle: a -> b -> a"):
        depth(cyclic)
    with pytest.raises(UnknownTask, match=r"^the plan has no task 'z'; its tasks are: a, b, c, d$"):
        upstream(DIAMOND, "z")


@st.composite
def dags(draw: st.DrawFn) -> Plan:
    """Random acyclic plans: task i depends only on tasks before it, then the node order is shuffled."""
    n = draw(st.integers(min_value=1, max_value=14))
    nodes = []
    for i in range(n):
        deps = draw(st.lists(st.integers(min_value=0, max_value=i - 1), unique=True, max_size=4)) if i else []
        nodes.append(task(f"t{i}", *(f"t{d}" for d in deps)))
    return Plan(nodes=tuple(draw(st.permutations(nodes))))


@settings(max_examples=150, deadline=None)
@given(dags())
def test_random_dags_order_and_run_to_completion(dag: Plan) -> None:
    order = topo_order(dag)
    assert sorted(order) == sorted(t.id for t in dag.nodes)
    position = {task_id: i for i, task_id in enumerate(order)}
    for t in dag.nodes:
        assert all(position[d] < position[t.id] for d in t.depends_on)
        assert upstream(dag, t.id) >= set(t.depends_on)
    assert passed_all(validate_plan(dag, CATALOG))
    status: dict[str, str] = {}
    rounds = 0
    while not is_finished(dag, status):
        ready = ready_tasks(dag, status)
        assert ready, f"stuck with {status}"
        status |= dict.fromkeys(ready, "completed")
        rounds += 1
    # Completing every ready task at once takes exactly one round per level of the DAG.
    assert rounds == depth(dag)


# -- decomposition ---------------------------------------------------------------------------


def test_decompose_a_read_only_task() -> None:
    report = REPORT_PLAN.nodes[1]
    [s] = decompose(report, CATALOG)
    assert s == StepIntent(
        id="report.s1",
        task_id="report",
        tool="text.render",
        operation="Render a text template",
        inputs={"template": "{top}", "values": {"top": "${top.rows}"}},
        expected_outputs=("text",),
        preconditions=("upstream tasks completed: top", "inputs validate against RenderIn"),
        postconditions=("output validates against RenderOut",),
        rollback=None,
        fallback_tools=(),
        requires_approval=False,
    )
    assert s.inputs is not report.inputs


def test_decompose_a_side_effect_task() -> None:
    t = msgspec.structs.replace(REPORT_PLAN.nodes[2], description="save the report")
    [s] = decompose(t, CATALOG, attempt=3)
    assert s.id == "save.a3.s1"
    assert s.operation == "save the report"
    assert s.requires_approval
    assert s.expected_outputs == ("path", "bytes_written")
    assert s.rollback is not None
    assert re.fullmatch(r"fs\.write changed something outside cadre \(idempotency key 'save\.a3\.s1'\); .*", s.rollback)


def test_decompose_expected_outputs_are_the_required_fields() -> None:
    [s] = decompose(task("top"), CATALOG)
    assert s.expected_outputs == ("columns", "rows", "row_count")
    assert s.preconditions == ("inputs validate against SqlQueryIn",)
    assert s.id == "top.s1"


def test_step_ids_are_unique_per_attempt() -> None:
    ids = {step_id("top", attempt=a) for a in range(1, 6)}
    assert ids == {"top.s1", "top.a2.s1", "top.a3.s1", "top.a4.s1", "top.a5.s1"}
    assert step_id("top", attempt=2, index=3) == "top.a2.s3"
    with pytest.raises(ValueError, match=r"^attempt and index count from 1; got attempt=0, index=1$"):
        step_id("top", attempt=0)


def test_a_task_without_tool_cannot_be_decomposed() -> None:
    with pytest.raises(
        DecompositionError,
        match=r"^cannot decompose task 'x': it names no tool \(it asks for capabilities: search\) and the "
        r"rule-based decomposer only runs named tools; re-plan it with \"tool\": one of fs\.read, ",
    ) as info:
        decompose(Task(id="x", capabilities=("search",)), CATALOG)
    assert info.value.code == "cannot_decompose"
    assert info.value.task_id == "x"
    with pytest.raises(
        DecompositionError, match=r"^cannot decompose task 'x': its tool 'nope' is not in the catalog; "
    ):
        decompose(task("x", tool="nope"), CATALOG)


# -- library ---------------------------------------------------------------------------------


def entry(name: str, request: str) -> LibraryEntry:
    return LibraryEntry(name=name, request=request, plan=REPORT_PLAN, source=f"examples/plans/{name}.json")


LIBRARY = [
    entry("top-customers", "find the three customers who spent most in 2024 and write a report"),
    entry("schema", "list the tables and columns of the database"),
    entry("fetch-page", "download a web page and summarise it"),
    entry("monthly", "total sales per month in 2023"),
]


def test_tokens_normalise_numbers_stop_words_and_endings() -> None:
    assert tokens("Find the THREE customers who spent most in 2024!") == [
        "find",
        "3",
        "customer",
        "spent",
        "most",
        "2024",
    ]
    assert tokens("writing write written") == ["writ", "writ", "written"]
    assert tokens("queries tables, reports; ten") == ["query", "tabl", "report", "10"]
    assert tokens("the of and") == []


def test_search_finds_the_similar_request_well_above_threshold() -> None:
    match = search("find the 3 customers who spent the most in 2024", LIBRARY)
    assert match is not None
    assert match.entry.name == "top-customers"
    assert match.score > 0.6


def test_search_finds_nothing_for_an_unrelated_request() -> None:
    assert search("what's the weather in Paris", LIBRARY) is None
    assert all(m.score == 0.0 for m in rank("what's the weather in Paris", LIBRARY))
    assert search("the of and", LIBRARY) is None
    assert search("anything", []) is None


def test_scores_are_in_unit_range_and_deterministic() -> None:
    first = rank("list tables of the database", LIBRARY)
    assert first == rank("list tables of the database", LIBRARY)
    assert first[0].entry.name == "schema"
    assert all(0.0 <= m.score <= 1.0 for m in first)
    [exact] = [m for m in rank(LIBRARY[1].request, LIBRARY) if m.entry.name == "schema"]
    assert exact.score == 1.0


def test_threshold_decides() -> None:
    best = rank("customers in 2024", LIBRARY)[0]
    assert best.entry.name == "top-customers"
    assert search("customers in 2024", LIBRARY, threshold=best.score) == best
    assert search("customers in 2024", LIBRARY, threshold=best.score + 0.01) is None


def test_ties_go_to_the_first_name() -> None:
    twins = [entry("zeta", "list the tables"), entry("alpha", "list the tables"), *LIBRARY]
    match = search("list tables", twins)
    assert match == Match(entry=twins[1], score=match.score if match else 0.0)
    assert [m.entry.name for m in rank("list tables", twins)][:2] == ["alpha", "zeta"]


def write_entry(directory: Path, name: str, body: object) -> Path:
    path = directory / f"{name}.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


GOOD_PLAN = {"nodes": [{"id": "top", "tool": "sql.query", "inputs": {"sql": "select 1"}}], "output": "top"}


def test_load_entries_reads_the_json_files_sorted(tmp_path: Path) -> None:
    write_entry(tmp_path, "b", {"name": "second", "request": "list tables", "plan": GOOD_PLAN})
    write_entry(tmp_path, "a", {"name": "first", "request": "top customers", "plan": GOOD_PLAN})
    (tmp_path / "notes.txt").write_text("not an entry")
    entries = load_entries(tmp_path)
    assert [e.name for e in entries] == ["first", "second"]
    assert entries[0].source == (tmp_path / "a.json").as_posix()
    assert entries[0].plan == Plan(nodes=(Task(id="top", tool="sql.query", inputs={"sql": "select 1"}),), output="top")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"name": "x", "request": "r", "plan": {"nodes": [{"id": 1}]}},
            r"is not a valid entry at \$\.plan\.nodes\[0\]\.id: Expected `str`, got `int`; fix or remove the file$",
        ),
        ({"name": "x", "request": "r"}, r"is not a valid entry at \$: Object missing required field `plan`; "),
        (
            {"name": "x", "request": "r", "plan": GOOD_PLAN, "nmae": 1},
            r"is not a valid entry at \$: Object contains unknown field `nmae`; ",
        ),
        (
            {"name": "", "request": "r", "plan": GOOD_PLAN},
            r"is not a valid entry at \$\.name: Expected `str` of length >= 1; ",
        ),
        ("{nope", r"is not a valid entry at \$: JSON is malformed: "),
    ],
)
def test_load_entries_names_the_file_and_json_path_of_a_problem(tmp_path: Path, body: object, message: str) -> None:
    write_entry(tmp_path, "bad", body)
    with pytest.raises(
        LibraryError, match=rf"^plan library file {re.escape((tmp_path / 'bad.json').as_posix())} {message}"
    ) as info:
        load_entries(tmp_path)
    assert info.value.code == "plan_library_error"


def test_load_entries_refuses_a_missing_directory_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match=r"the plan library directory does not exist; "):
        load_entries(tmp_path / "missing")
    write_entry(tmp_path, "a", {"name": "same", "request": "r", "plan": GOOD_PLAN})
    write_entry(tmp_path, "b", {"name": "same", "request": "r", "plan": GOOD_PLAN})
    with pytest.raises(
        LibraryError, match=r"b\.json is not a valid entry at \$\.name: the name 'same' is already used by .*a\.json; "
    ) as info:
        load_entries(tmp_path)
    assert info.value.path == "$.name"


def test_entry_from_workflow() -> None:
    e = entry_from_workflow("wf-1", "top customers", REPORT_PLAN)
    assert e == LibraryEntry(
        name="wf-1",
        request="top customers",
        plan=REPORT_PLAN,
        source="workflow:wf-1",
        requires=(("top",), ("customers",)),
        origin="model",
    )
    match = search("top customers please", [e])
    assert match is not None
    assert match.entry is e
