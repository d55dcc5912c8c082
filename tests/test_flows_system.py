"""Flows on a real nats-server: the text-to-SQL example's three paths, a branch chosen by the data
(one test per branch), a loop that stops at its maximum, and a preview that runs nothing. Each
run replays from its record."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cadre import commands, flows_cli
from cadre.bus.events import BranchTaken, PlanProposed, StepCompleted
from cadre.replay_cli import replayer_for
from cadre.settings import Settings
from tests.system_harness import Harness, cadre_running, settings_for

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "flows"
SQL_PATH = [
    "classify",
    "rewrite",
    "find_tables",
    "confirm_tables",
    "trim_schema",
    "generate_sql",
    "validate_sql",
    "execute",
    "format_answer",
]


def flows_dir(tmp_path: Path) -> Path:
    """The example and the test flows in one folder, as a deployment registers them."""
    folder = tmp_path / "flows"
    folder.mkdir()
    for f in [ROOT / "examples" / "flows" / "text_to_sql.yaml", *FIXTURES.glob("*.yaml")]:
        shutil.copy(f, folder / f.name)
    return folder


def flow_settings(nats_url: str, tmp_path: Path, **kw: Any) -> Settings:
    return settings_for(nats_url, tmp_path, flows=flows_dir(tmp_path), **kw)


async def ran(h: Harness, wf: str) -> tuple[PlanProposed, list[BranchTaken], list[str]]:
    """The plan event, the ways taken, and the tasks that ran (in the order they completed)."""
    events = await h.events(wf)
    [proposed] = [e.event.data for e in events if isinstance(e.event.data, PlanProposed)]
    branches = [e.event.data for e in events if isinstance(e.event.data, BranchTaken)]
    completed = [e.event.data.task_id for e in events if isinstance(e.event.data, StepCompleted)]
    return proposed, branches, completed


def replays(settings: Settings, records: list[Any]) -> None:
    result = replayer_for(settings).replay(records)
    assert result.ok, "\n".join(result.lines())


async def test_fix_this_sql_runs_only_validate_execute_format(nats_url: str, tmp_path: Path) -> None:
    settings = flow_settings(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        state = await h.run({"request": "fix this SQL: SELECT name FROM customers WHERE country = 'NL'"})
        assert state.status == "completed", state.failure
        proposed, branches, completed = await ran(h, state.workflow_id)
        records = await h.bus.log.read_records(state.workflow_id)
    assert (proposed.source, proposed.flow, proposed.chosen_by) == ("flow", "text_to_sql", "rule")
    assert proposed.path == ("validate_sql", "execute", "format_answer")
    assert "rule 'fix_sql' of flow 'text_to_sql' matched" in proposed.reason
    assert completed == ["validate_sql", "execute", "format_answer"]
    assert [(b.task_id, b.to) for b in branches] == [("validate_sql", "execute"), ("execute", "format_answer")]
    assert state.result == {"text": "| name |\n| --- |\n| Edsger Dijkstra |"}
    replays(settings, records)


async def test_a_schema_question_takes_the_general_branch(nats_url: str, tmp_path: Path) -> None:
    settings = flow_settings(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        state = await h.run({"request": "what tables and columns does the database have?"})
        assert state.status == "completed", state.failure
        proposed, branches, completed = await ran(h, state.workflow_id)
        records = await h.bus.log.read_records(state.workflow_id)
    assert (proposed.flow, proposed.path) == ("text_to_sql", ("classify", "describe_schema", "answer_general"))
    assert completed == ["classify", "describe_schema", "answer_general"]
    assert (branches[0].task_id, branches[0].to) == ("classify", "describe_schema")
    assert "condition \"output.rows[0][0] == 'general'\" held" in branches[0].why
    assert state.result["text"].startswith("# The shop's tables")
    replays(settings, records)


async def test_with_a_model_new_sql_waits_for_the_table_confirmation(nats_url: str, tmp_path: Path) -> None:
    choice = {
        "flow": "text_to_sql",
        "path": SQL_PATH,
        "params": {"sql": "SELECT name FROM customers WHERE country = 'CH' ORDER BY name", "tables": "customers"},
        "reason": "a question about the data: new SQL over the customers",
    }
    script = tmp_path / "replies.json"
    script.write_text(json.dumps({"plan": [{"output": choice}]}))
    settings = flow_settings(nats_url, tmp_path, llm_provider="scripted", llm_script=str(script))
    async with cadre_running(settings) as h:
        wf = (await h.submit({"request": "who are our customers in Switzerland?"}))["workflow_id"]
        paused = await h.wait(wf, until="approval_requested")
        assert paused.steps["confirm_tables.s1"].status == "awaiting_approval"
        assert paused.tasks["trim_schema"].status == "pending"
        assert await commands.approve(settings, wf, "confirm_tables.s1", deny=False, reason="customers it is") == 0
        state = await h.wait(wf)
        assert state.status == "completed", state.failure
        proposed, branches, completed = await ran(h, wf)
        records = await h.bus.log.read_records(wf)
        # The same deployment, the model denied by the request's budget: the rules choose, and say why.
        denied = await h.run({"request": "fix this SQL: SELECT name FROM customers WHERE id = 9", "budget_usd": 0})
        assert denied.status == "completed", denied.failure
        fallback, _, _ = await ran(h, denied.workflow_id)
    assert (fallback.chosen_by, fallback.path) == ("rule", ("validate_sql", "execute", "format_answer"))
    assert fallback.reason.startswith("rule 'fix_sql' of flow 'text_to_sql' matched")
    assert "; no flow by the model: " in fallback.reason
    assert "denied" in fallback.reason
    assert denied.result == {"text": "| name |\n| --- |\n| Niklaus Wirth |"}
    assert (proposed.flow, proposed.chosen_by, proposed.path) == ("text_to_sql", "model", tuple(SQL_PATH))
    assert "chosen by the model: a question about the data" in proposed.reason
    assert completed == SQL_PATH
    assert "describe_schema" not in state.tasks  # the model's path leaves the general branch out
    assert (branches[0].task_id, branches[0].to, branches[0].skipped) == ("classify", "rewrite", ())
    assert state.result == {"text": "| name |\n| --- |\n| Niklaus Wirth |"}
    replays(settings, records)


@pytest.mark.parametrize(
    ("country", "taken", "text"), [("US", "several", "6 customers: several"), ("CH", "few", "1 customer(s): few")]
)
async def test_a_condition_on_an_output_chooses_the_branch(
    nats_url: str, tmp_path: Path, country: str, taken: str, text: str
) -> None:
    settings = flow_settings(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        state = await h.run({"request": f"how many customers in {country}?"})
        assert state.status == "completed", state.failure
        _, [branch], completed = await ran(h, state.workflow_id)
        records = await h.bus.log.read_records(state.workflow_id)
    other = "few" if taken == "several" else "several"
    assert (branch.to, branch.skipped, completed) == (taken, (other,), ["count", taken])
    assert state.tasks[other].status == "skipped"
    assert state.result == {"text": text}
    replays(settings, records)


async def test_a_loop_stops_at_its_maximum(nats_url: str, tmp_path: Path) -> None:
    settings = flow_settings(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        state = await h.run({"request": "poll the job"})
        assert state.status == "completed", state.failure
        _, branches, completed = await ran(h, state.workflow_id)
        records = await h.bus.log.read_records(state.workflow_id)
    assert completed == ["poll", "poll-2", "poll-3", "poll-4", "report"]
    assert [b.to for b in branches] == ["poll-2", "poll-3", "poll-4", "report"]
    assert "the loop back to 'poll' was taken 3 time(s), its maximum: it stops here" in branches[-1].why
    assert state.result == {"text": "polling stopped"}
    replays(settings, records)


async def test_a_preview_on_the_bus_runs_nothing(nats_url: str, tmp_path: Path) -> None:
    settings = flow_settings(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        before = (await h.bus.nc.jetstream().stream_info(settings.stream_name)).state.messages
        reply = await h.bus.nc.request(
            settings.subjects.plan, json.dumps({"request": "fix this SQL: SELECT 1"}).encode(), timeout=5
        )
        bad = await h.bus.nc.request(settings.subjects.plan, b"{}", timeout=5)
        after = (await h.bus.nc.jetstream().stream_info(settings.stream_name)).state.messages
    answer = json.loads(reply.data)
    assert (answer["flow"], answer["path"], answer["chosen_by"]) == (
        "text_to_sql",
        ["validate_sql", "execute", "format_answer"],
        "rule",
    )
    assert [t["id"] for t in answer["plan"]["nodes"]] == answer["path"]
    assert json.loads(bad.data)["error"]["code"] == "invalid_request"
    assert before == after  # no workflow was started


async def test_a_node_that_runs_a_sub_flow_completes_with_the_childs_result(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, flows=FIXTURES.parent / "subflows")
    async with cadre_running(settings) as h:
        state = await h.run({"request": "a report of the customers, please"})
        assert state.status == "completed", state.failure
        proposed, _, completed = await ran(h, state.workflow_id)
        records = await h.bus.log.read_records(state.workflow_id)
        child = state.tasks["count"].output["workflow_id"]
        child_state = await h.wait(child)
        child_records = await h.bus.log.read_records(child)
    assert (proposed.flow, proposed.path) == ("orders_report", ("count", "report"))
    assert completed == ["report"]  # count's task ran no step of its own: its child did the work
    assert (state.tasks["count"].status, state.tasks["count"].branch) == ("completed", "report")
    assert child_state.status == "completed"
    assert child_state.request is not None
    assert child_state.request.parent is not None
    assert state.tasks["count"].output == {"workflow_id": child, "result": child_state.result}
    assert state.result == {"text": f"the shop has {child_state.result['text']} customers (counted by {child})"}
    replays(settings, records)
    replays(settings, child_records)


async def test_a_preview_with_a_model_asks_it_through_the_budget_and_runs_nothing(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    choice = {
        "flow": "text_to_sql",
        "path": SQL_PATH,
        "params": {"sql": "SELECT name FROM customers WHERE country = 'CH'", "tables": "customers"},
        "reason": "a question about the data: new SQL over the customers",
    }
    none = {"flow": None, "path": [], "params": {}, "reason": "a request to fix SQL: the rules know it"}
    script = tmp_path / "replies.json"
    script.write_text(json.dumps({"plan": [{"output": choice}, {"output": none}]}))
    settings = flow_settings(nats_url, tmp_path, llm_provider="scripted", llm_script=str(script))
    async with cadre_running(settings) as h:
        before = await h.bus.log.workflows()
        events = (await h.bus.nc.jetstream().stream_info(settings.stream_name)).state.messages
        reply = await h.bus.nc.request(
            settings.subjects.plan, json.dumps({"request": "who are our customers in Switzerland?"}).encode(), timeout=5
        )
        assert await asyncio.to_thread(flows_cli.plan_cmd, settings, "fix this SQL: SELECT 1", False) == 0
        after = (await h.bus.nc.jetstream().stream_info(settings.stream_name)).state.messages
        assert await h.bus.log.workflows() == before == []
    answer = json.loads(reply.data)
    assert (answer["flow"], answer["path"], answer["chosen_by"]) == ("text_to_sql", SQL_PATH, "model")
    assert "chosen by the model: a question about the data" in answer["why"]
    assert [t["id"] for t in answer["plan"]["nodes"]] == SQL_PATH
    assert json.dumps(choice["params"]["sql"]) in json.dumps(answer["plan"])  # the SQL the model wrote
    model = answer["model"]
    assert (model["decisions"], model["calls"]) == (["granted"], 1)
    assert model["preview_id"].startswith("preview-")
    assert model["preview_id"] in model["charged"]
    assert events == after  # no workflow was started, nothing appended
    printed = capsys.readouterr().out
    assert "model granted; 1 call(s); charged $" in printed
    assert "flow  text_to_sql  path validate_sql -> execute -> format_answer  (chosen by rule)" in printed
    assert "the model named no flow (a request to fix SQL: the rules know it)" in printed
    assert printed.rstrip().endswith("nothing was run")


async def test_cadre_plan_with_a_model_and_no_planner_running_says_the_model_was_not_asked(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "replies.json"
    script.write_text(json.dumps({"plan": []}))
    settings = flow_settings(nats_url, tmp_path, llm_provider="scripted", llm_script=str(script))
    assert await asyncio.to_thread(flows_cli.plan_cmd, settings, "fix this SQL: SELECT 1", True) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["flow"], printed["chosen_by"]) == ("text_to_sql", "rule")
    assert f"no planner answered on {settings.subjects.plan}" in printed["model"]
    assert "so it was not asked" in printed["model"]
