"""Flows without a server: the file and its load-time check, paths made into plans, the rules'
choice, and the run-time decisions of where a flow goes on (pure functions)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cadre.audit_text import lines as audit_lines
from cadre.bus.plan import Plan
from cadre.cli import main
from cadre.planner.flows.branching import decide, effective_status
from cadre.planner.flows.check import check_flow
from cadre.planner.flows.choose import by_rules, choice_validator, plan_choice
from cadre.planner.flows.compile import compile_path
from cadre.planner.flows.model import Flow, FlowError, load_flow, parse_flow
from cadre.planner.flows.registry import FlowsInvalid, load_folder
from cadre.planner.providers.structured import InvalidOutput
from cadre.planner.scheduler import dispatchable
from cadre.settings import Settings
from cadre.store.audit import audit
from cadre.store.filelog import FileLog
from cadre.system import catalog_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "flows" / "text_to_sql.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "flows"
CATALOG = catalog_for(Settings(tool_modules=["tests.plugin_tools"]))


def flow(**changes: Any) -> Flow:
    """The by_country fixture with ``changes`` to its top-level keys."""
    raw = yaml.safe_load((FIXTURES / "by_country.yaml").read_text())
    raw.update(changes)
    return parse_flow(json.dumps(raw), "f.json")


def problems(f: Flow) -> list[tuple[str, str | None, str]]:
    return [(p.code, p.node, p.field) for p in check_flow(f, CATALOG)]


def nodes_with(name: str, **changes: Any) -> list[dict[str, Any]]:
    raw = yaml.safe_load((FIXTURES / "by_country.yaml").read_text())
    return [{**n, **changes} if n["name"] == name else n for n in raw["nodes"]]


# -- the file and its check ------------------------------------------------------------------------


def test_the_example_and_the_fixtures_pass_their_check() -> None:
    assert check_flow(load_flow(EXAMPLE), CATALOG) == []
    assert sorted(load_folder(FIXTURES, CATALOG)) == ["by_country", "polling"]
    assert len(load_flow(EXAMPLE).nodes) == 11


def test_a_malformed_file_says_where() -> None:
    with pytest.raises(FlowError, match=r"f\.yaml: Object missing required field `description` - at `\$\.nodes\[0\]`"):
        parse_flow("name: x\ndescription: d\nnodes: [{name: a, tool: sql.query}]", "f.yaml")
    with pytest.raises(FlowError, match=r"f\.yaml: not valid YAML"):
        parse_flow("name: [", "f.yaml")
    with pytest.raises(FlowError, match=r"unknown field `colour`"):
        parse_flow('{"name": "x", "description": "d", "nodes": [], "colour": 1}', "f.json")


def test_each_problem_is_located_at_its_node() -> None:
    bad_way = nodes_with("count", next=[{"to": "nowhere"}])
    assert ("unknown_node", "count", "next[0].to") in problems(flow(nodes=bad_way))
    bad_when = nodes_with("count", next=[{"to": "several", "when": "output.rows[0][0] >>= 2"}, {"to": "few"}])
    assert ("invalid_condition", "count", "next[0].when") in problems(flow(nodes=bad_when))
    unknown_field = nodes_with("count", next=[{"to": "several", "when": "output.total > 2"}, {"to": "few"}])
    assert ("unknown_output", "count", "next[0].when") in problems(flow(nodes=unknown_field))
    early_default = nodes_with("count", next=[{"to": "few"}, {"to": "several", "when": "output.row_count > 1"}])
    assert ("unreachable_way", "count", "next[0]") in problems(flow(nodes=early_default))
    no_tool = nodes_with("several", tool="sql.drop")
    assert next(p for p in problems(flow(nodes=no_tool)) if p[1] == "several")[:2] == ("tool_exists", "several")
    bad_ref = nodes_with("several", inputs={"template": "{n}", "values": {"n": "${count.rowz}"}})
    assert ("reference_field", "several", "inputs.values.n") in problems(flow(nodes=bad_ref))
    undeclared = nodes_with("count", inputs={"sql": "SELECT ?", "params": ["${request.city}"]})
    assert ("unknown_parameter", "count", "inputs") in problems(flow(nodes=undeclared))


def test_reachability_loops_and_rules_are_checked() -> None:
    orphan = [*nodes_with("count"), {"name": "orphan", "description": "d", "tool": "sql.schema"}]
    assert ("unreachable_node", "orphan", "") in problems(flow(nodes=orphan))
    cycle = nodes_with("few", next=[{"to": "count"}])
    assert problems(flow(nodes=cycle))[0][0] == "cycle_without_max"
    too_many = nodes_with("few", next=[{"to": "count", "max": 50}])
    assert ("loop_bound", "few", "next (to 'count')") in problems(flow(nodes=too_many))
    assert problems(flow(match=[{"regex": "customers in (?P<city>x"}]))[0][0] == "invalid_regex"
    assert ("unknown_parameter", None, "match[0].regex") in problems(flow(match=[{"regex": "in (?P<city>x)"}]))
    assert ("empty_rule", None, "match[0]") in problems(flow(match=[{"name": "all"}]))
    assert ("unknown_node", None, "default_path") in problems(flow(default_path=["count", "nope"]))


def test_a_folder_with_a_bad_flow_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text((FIXTURES / "polling.yaml").read_text())
    (tmp_path / "bad.yaml").write_text((FIXTURES / "by_country.yaml").read_text().replace("sql.query", "sql.nope"))
    with pytest.raises(FlowsInvalid) as caught:
        load_folder(tmp_path, CATALOG)
    assert list(caught.value.problems) == [str(tmp_path / "bad.yaml")]
    assert "node 'count'" in str(caught.value)


def test_cadre_schema_flow_is_the_files_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "flow"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"name", "description", "nodes", "params", "match", "default_path"} <= set(
        schema["$defs"]["Flow"]["properties"]
    )
    assert schema["$defs"]["Flow"]["required"] == ["name", "description", "nodes"]


# -- paths and choices -----------------------------------------------------------------------------


def test_the_fix_rule_runs_three_nodes_with_the_given_sql() -> None:
    f = load_flow(EXAMPLE)
    text = "fix this SQL: SELECT name FROM customers"
    choice = by_rules([f], text)
    assert choice is not None
    assert (choice.path, choice.params["sql"]) == (
        ("validate_sql", "execute", "format_answer"),
        "SELECT name FROM customers",
    )
    plan = plan_choice(choice, text, CATALOG)
    assert [t.id for t in plan.nodes] == ["validate_sql", "execute", "format_answer"]
    assert plan.nodes[0].inputs["values"] == {"sql": "SELECT name FROM customers"}  # stands for generate_sql.text


def test_a_path_that_needs_a_value_the_request_lacks_is_refused() -> None:
    f = load_flow(EXAMPLE)
    with pytest.raises(FlowError, match=r"node 'validate_sql' reads the output of 'generate_sql'"):
        compile_path(f, ["validate_sql", "execute"], {"text": "x"})
    with pytest.raises(FlowError, match=r"reads \$\{request.tables\}, and the request gives no 'tables'"):
        compile_path(f, f.names, {"text": "x", "sql": "SELECT 1"})
    assert by_rules([f], "top customers by spend") is None


def test_the_models_choice_is_checked_and_the_repair_told_why() -> None:
    f = load_flow(EXAMPLE)
    validate = choice_validator({"text_to_sql": f}, "q", CATALOG)
    with pytest.raises(InvalidOutput, match=r"\$\.flow: 'sql' is not a flow"):
        validate({"flow": "sql", "path": [], "params": {}, "reason": ""})
    with pytest.raises(InvalidOutput, match=r"reads the output of 'generate_sql'"):
        validate({"flow": "text_to_sql", "path": ["validate_sql", "execute"], "params": {}, "reason": ""})
    assert validate({"flow": None, "path": [], "params": {}, "reason": "not a data question"}).choice is None
    ok = validate(
        {"flow": "text_to_sql", "path": ["execute", "validate_sql"], "params": {"sql": "SELECT 1"}, "reason": "r"}
    )
    assert ok.choice is not None
    assert ok.choice.path == ("validate_sql", "execute")


# -- run-time decisions ----------------------------------------------------------------------------


def by_country() -> Plan:
    return compile_path(load_flow(FIXTURES / "by_country.yaml"), ["count", "several", "few"], {"country": "GB"})


@pytest.mark.parametrize(("n", "taken", "skipped"), [(3, "several", ("few",)), (1, "few", ("several",))])
def test_the_output_chooses_the_branch_and_the_other_is_skipped(n: int, taken: str, skipped: tuple[str, ...]) -> None:
    ev = decide(by_country(), "count", {"rows": [[n]]}, {"count": "completed"}, {})
    assert (ev.to, ev.skipped) == (taken, skipped)
    assert [c.held for c in ev.checked] == ([True] if n >= 2 else [False, True])


def test_an_output_a_condition_cannot_read_takes_the_next_way() -> None:
    ev = decide(by_country(), "count", {"rows": []}, {"count": "completed"}, {})
    assert ev.to == "few"
    assert "could not be evaluated" in ev.checked[0].reason or "not there" in ev.checked[0].reason


def test_nothing_after_a_task_starts_before_it_chose_its_way() -> None:
    plan = by_country()
    assert effective_status(plan, {"count": "completed"}, {})["count"] == "deciding"
    assert effective_status(plan, {"count": "completed"}, {"count": "few"})["count"] == "completed"


def test_a_loop_stops_at_its_maximum() -> None:
    plan = compile_path(load_flow(FIXTURES / "polling.yaml"), ["poll", "report"], {})
    assert [t.id for t in plan.nodes] == ["poll", "poll-2", "poll-3", "poll-4", "report"]
    status = {"poll": "completed", "poll-2": "completed", "poll-3": "completed", "poll-4": "completed"}
    decided: dict[str, str | None] = {"poll": "poll-2", "poll-2": "poll-3", "poll-3": "poll-4"}
    ev = decide(plan, "poll-4", {"rows": [[0]]}, status, decided)
    assert ev.to == "report"
    assert "the loop back to 'poll' was taken 3 time(s), its maximum" in ev.why
    early = decide(plan, "poll", {"rows": [[1]]}, {"poll": "completed"}, {})
    assert (early.to, early.skipped) == ("report", ("poll-2", "poll-3", "poll-4"))


def test_cadre_plan_and_cadre_flows_print_without_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("CADRE_FLOWS", str(FIXTURES))
    monkeypatch.setenv("CADRE_DATA_DIR", str(tmp_path))  # nothing is started there: no server, no log
    monkeypatch.setenv("CADRE_LLM_PROVIDER", "none")
    assert main(["plan", "how many customers in GB?", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["flow"], printed["params"], printed["runs"]) == (
        "by_country",
        {"country": "GB"},
        "nothing: a preview",
    )
    assert [t["id"] for t in printed["plan"]["nodes"]] == ["count", "several", "few"]
    assert main(["plan", "what is the weather"]) == 0
    assert "no flow's match rule matches the request" in capsys.readouterr().out
    assert main(["flows", "--json"]) == 0
    assert [json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()] == ["by_country", "polling"]
    assert list(tmp_path.iterdir()) == []


# -- golden logs: each replays offline (tests/test_replay.py); the audit names the path and why ------

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize(
    ("name", "flow_line", "branch"),
    [
        (
            "flow_fix_sql",
            "flow   text_to_sql, path validate_sql -> execute -> format_answer (chosen by rule)",
            "execute",
        ),
        (
            "flow_general",
            "flow   text_to_sql, path classify -> describe_schema -> answer_general (chosen by rule)",
            "describe_schema",
        ),
        ("flow_model_sql", "flow   text_to_sql, path classify -> rewrite -> find_tables -> confirm_tables", "rewrite"),
        ("flow_loop", "flow   polling, path poll -> report (chosen by default)", "poll-2"),
        ("flow_subflow", "flow   orders_report, path count -> report (chosen by default)", "report"),
    ],
)
def test_the_audit_of_a_flow_run_names_the_path_and_why(name: str, flow_line: str, branch: str) -> None:
    entry = json.loads((GOLDEN / "manifest.json").read_text())["logs"][name]
    records = asyncio.run(FileLog.load(GOLDEN / entry["file"]).read_records(entry["workflow_id"]))
    text = "\n".join(audit_lines(audit(records), width=400))
    assert flow_line in text
    assert "    why    " in text.split(flow_line)[0].rsplit("revision 1", 1)[1]  # the why is the line above
    assert f": {branch} (" in text  # the first way taken, with why
    assert "flow branches" in text


def test_cadre_flows_lists_every_problem_located_at_its_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = (FIXTURES / "by_country.yaml").read_text().replace("output.rows[0][0] >= 2", "output.rows[0][0] >>= 2")
    (tmp_path / "by_country.yaml").write_text(bad.replace("tool: text.render", "tool: text.rendr", 1))
    monkeypatch.setenv("CADRE_FLOWS", str(tmp_path))
    monkeypatch.setenv("CADRE_LLM_PROVIDER", "none")
    assert main(["flows", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "invalid_flow"
    found = {(p["code"], p["node"], p["field"]) for p in error["problems"]}
    assert ("invalid_condition", "count", "next[0].when") in found
    assert any(c == "tool_exists" and n == "several" for c, n, _ in found)
    assert all(p["file"] == str(tmp_path / "by_country.yaml") and p["fix"] for p in error["problems"])
    assert main(["flows"]) == 1
    assert "node 'count' next[0].when: condition" in capsys.readouterr().err


def test_a_loop_of_two_nodes_unrolls_each_pass_reading_its_own() -> None:
    raw = {
        "name": "retry",
        "description": "fetch, check, fetch again while the check fails, then report",
        "nodes": [
            {
                "name": "start",
                "description": "d",
                "tool": "sql.query",
                "inputs": {"sql": "SELECT 1 AS n"},
                "next": [{"to": "fetch"}],
            },
            {
                "name": "fetch",
                "description": "d",
                "tool": "sql.query",
                "inputs": {"sql": "SELECT 0 AS ok"},
                "next": [{"to": "check"}],
            },
            {
                "name": "check",
                "description": "d",
                "tool": "text.render",
                "inputs": {"template": "{ok}", "values": {"ok": "${fetch.rows.0.0}", "n": "${start.row_count}"}},
                "next": [{"to": "fetch", "when": "output.text == '0'", "max": 2}, {"to": "report"}],
            },
            {"name": "report", "description": "d", "tool": "text.render", "inputs": {"template": "done"}},
        ],
    }
    f = parse_flow(json.dumps(raw), "retry.json")
    assert check_flow(f, CATALOG) == []
    plan = compile_path(f, f.names, {})
    by_id = {t.id: t for t in plan.nodes}
    assert list(by_id) == ["start", "fetch", "fetch-2", "fetch-3", "check", "check-2", "check-3", "report"]
    assert by_id["check-2"].inputs["values"] == {"ok": "${fetch-2.rows.0.0}", "n": "${start.row_count}"}
    assert by_id["fetch-2"].depends_on == ("check",)
    assert by_id["report"].depends_on == ("check", "check-2", "check-3")
    assert [(b.to, b.exhausted) for b in by_id["check-3"].branches] == [("fetch", 2), ("report", 0)]
    reads_inside = {
        **raw,
        "nodes": [
            *raw["nodes"][:3],
            {**raw["nodes"][3], "inputs": {"template": "{x}", "values": {"x": "${check.text}"}}},
        ],
    }
    assert ("reads_inside_loop", "report", "inputs.values.x") in problems(
        parse_flow(json.dumps(reads_inside), "r.json")
    )


def test_a_join_after_two_branches_runs_once_the_way_taken_is_done() -> None:
    raw = {
        "name": "join",
        "description": "count, then one of two renderings, then a common end",
        "nodes": [
            {
                "name": "count",
                "description": "d",
                "tool": "sql.query",
                "inputs": {"sql": "SELECT 3 AS n"},
                "next": [{"to": "many", "when": "output.rows[0][0] > 2"}, {"to": "few"}],
            },
            {
                "name": "many",
                "description": "d",
                "tool": "text.render",
                "inputs": {"template": "many"},
                "next": [{"to": "end"}],
            },
            {
                "name": "few",
                "description": "d",
                "tool": "text.render",
                "inputs": {"template": "few"},
                "next": [{"to": "end"}],
            },
            {"name": "end", "description": "d", "tool": "text.render", "inputs": {"template": "end"}},
        ],
    }
    f = parse_flow(json.dumps(raw), "join.json")
    assert check_flow(f, CATALOG) == []
    plan = compile_path(f, f.names, {})
    first = decide(plan, "count", {"rows": [[3]]}, {"count": "completed"}, {})
    assert (first.to, first.skipped) == ("many", ("few",))
    status = {"count": "completed", "few": "skipped", "many": "pending", "end": "pending"}
    decided: dict[str, str | None] = {"count": "many"}
    assert dispatchable(plan, effective_status(plan, status, decided)) == ["many"]  # not end: many has not run
    status["many"] = "completed"
    assert dispatchable(plan, effective_status(plan, status, decided)) == []  # many has not chosen its way yet
    second = decide(plan, "many", {"text": "many"}, status, decided)
    assert (second.to, second.skipped) == ("end", ())
    assert dispatchable(plan, effective_status(plan, status, {**decided, "many": "end"})) == ["end"]


# -- sub-flows -------------------------------------------------------------------------------------

SUBFLOWS = FIXTURES.parent / "subflows"


def test_a_sub_flow_node_compiles_to_a_child_workflow_task() -> None:
    flows = load_folder(SUBFLOWS, CATALOG)
    assert sorted(flows) == ["count_customers", "orders_report"]
    plan = plan_choice(by_rules(list(flows.values()), "a report") or pytest.fail("no rule"), "a report", CATALOG)
    assert (plan.nodes[0].tool, plan.nodes[0].inputs) == ("workflow.run", {"flow": "count_customers"})
    assert plan.nodes[1].depends_on == ("count",)


def _sub(name: str, runs: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} runs {runs}",
        "nodes": [{"name": "go", "description": f"run {runs}", "flow": runs}],
    }


def test_flows_that_run_each_other_in_a_cycle_do_not_load(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(_sub("ping", "pong")))
    (tmp_path / "b.json").write_text(json.dumps(_sub("pong", "ping")))
    with pytest.raises(FlowsInvalid) as err:
        load_folder(tmp_path, CATALOG)
    found = {(src.rsplit("/", 1)[-1], p.code, p.node) for src, ps in err.value.problems.items() for p in ps}
    assert found == {("a.json", "flow_cycle", "go"), ("b.json", "flow_cycle", "go")}
    assert "ping -> pong -> ping" in str(err.value)


def test_a_sub_flow_must_exist_and_nest_within_the_child_depth(tmp_path: Path) -> None:
    for f in SUBFLOWS.glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "top.json").write_text(json.dumps(_sub("top", "orders_report")))
    assert sorted(load_folder(tmp_path, CATALOG, max_depth=2)) == ["count_customers", "orders_report", "top"]
    with pytest.raises(FlowsInvalid) as err:
        load_folder(tmp_path, CATALOG, max_depth=1)
    [(src, [p])] = err.value.problems.items()
    assert (src.rsplit("/", 1)[-1], p.code, p.node) == ("top.json", "child_depth", "go")
    assert "top -> orders_report -> count_customers" in p.message
    (tmp_path / "top.json").write_text(json.dumps(_sub("top", "nowhere")))
    with pytest.raises(FlowsInvalid, match="runs flow 'nowhere', which is not registered here"):
        load_folder(tmp_path, CATALOG)
    both = _sub("top", "orders_report")
    both["nodes"][0]["tool"] = "text.render"
    (tmp_path / "top.json").write_text(json.dumps(both))
    with pytest.raises(FlowsInvalid, match="both a tool and a flow"):
        load_folder(tmp_path, CATALOG)
    gated = _sub("top", "orders_report")
    gated["nodes"][0]["approval"] = True
    (tmp_path / "top.json").write_text(json.dumps(gated))
    with pytest.raises(FlowsInvalid, match="which has no step of its own for a person to confirm"):
        load_folder(tmp_path, CATALOG)


def test_a_workflow_run_node_with_a_flow_input_is_a_sub_flow_too(tmp_path: Path) -> None:
    for f in SUBFLOWS.glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    loop = _sub("loop", "x")
    loop["nodes"][0] = {"name": "go", "description": "run it", "tool": "workflow.run", "inputs": {"flow": "loop"}}
    (tmp_path / "loop.json").write_text(json.dumps(loop))
    with pytest.raises(FlowsInvalid, match=r"loop -> loop"):
        load_folder(tmp_path, CATALOG)
    loop["nodes"][0]["inputs"] = {"flow": "count_customers"}
    (tmp_path / "loop.json").write_text(json.dumps(loop))
    flows = load_folder(tmp_path, CATALOG)
    plan = compile_path(flows["loop"], ["go"], {"text": "t"})
    assert (plan.nodes[0].tool, plan.nodes[0].inputs) == ("workflow.run", {"flow": "count_customers"})
