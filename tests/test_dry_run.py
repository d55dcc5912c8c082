"""Dry runs: plan, validate and decompose for real, then simulate the steps.

* a dry run of a plan whose tool would fail (and leave a marker) if called runs no tool, asks
  the model nothing, waits for no approval, and completes with the simulated result: the
  steps with their tools and inputs, the step that would need approval, the worst case of the
  execution-time consultations priced by the budget's own rule, and what past runs say;
* its events and state mark every step simulated; it replays; the plan library does not
  learn from it (a real run of the same request text does);
* ``cadre run --dry-run`` prints the plan, steps, approvals and cost, and runs nothing;
* the request's ``dry_run`` field, the placeholder outputs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cadre.actors.dry_run import NOTE
from cadre.actors.intake import workflow_id_for
from cadre.actors.library_source import LogLibrary
from cadre.bus.events import ApprovalRequested, StepCompleted, WorkflowCompleted
from cadre.bus.request import RequestError, parse_request, request_schema
from cadre.cli import main
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.catalog import json_schema
from cadre.planner.placeholder import PLACEHOLDER, placeholder
from cadre.planner.providers.pricing import DEFAULT_PRICE, DEFAULT_PRICES, Prices, bound_usd
from cadre.replay_cli import replayer_for
from cadre.store.records import StoredEvent
from tests.dry_run_tools import MODULES, TRIPWIRE_MARKER
from tests.fake_llm import anthropic_api
from tests.system_harness import cadre_running, settings_for

PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "a", "tool": "test.echo", "inputs": {"value": "hello"}},
        {
            "id": "b",
            "tool": "test.tripwire",
            "depends_on": ["a"],
            "fallback_tools": ["test.flaky", "test.echo"],
            "inputs": {"value": "${a.value}"},
        },
        {
            "id": "c",
            "tool": "fs.write",
            "depends_on": ["b"],
            "inputs": {"path": "dry/out.txt", "content": "${b.value}"},
        },
    ]
}
_AT = datetime(2026, 12, 5, tzinfo=UTC)
REQUEST = "echo hello, trip the wire and save it"


async def test_a_dry_run_runs_nothing_and_completes_with_the_simulated_result(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api() as api:  # a model is configured, and must not be called
        settings = settings_for(
            nats_url,
            tmp_path,
            anthropic_api_key="k",
            anthropic_base_url=api.base_url,
            llm_provider="anthropic",
            llm_max_retries=0,
            inference_cache_ttl_s=0.0,
            library_learn_explicit=True,  # the real run's explicit plan joins; the dry run's must not
            intelligence="intelligent",
            approval_tools=["fs.write"],
            tool_modules=MODULES,
        )
        async with cadre_running(settings) as h:
            # A real run first: the agent then knows how long test.echo takes, and the library learns it.
            real = await h.run({"request": REQUEST, "plan": {"nodes": [PLAN["nodes"][0]]}})
            assert real.status == "completed", real.failure
            state = await h.run({"request": REQUEST, "plan": PLAN, "dry_run": True})
            events = [r.event for r in await h.events(state.workflow_id)]
            records = await h.bus.log.read_records(state.workflow_id)
            library = LogLibrary(h.bus.log, None, learn_explicit=True)
            await library.refresh()
            learned = [f"{e.name} {e.source}" for e in library.entries]
        assert api.requests == []  # no model consultation at all (the plan was explicit)
    workspace = settings.workspace_dir
    assert not (workspace / TRIPWIRE_MARKER).exists()
    assert not (workspace / "dry" / "out.txt").exists()

    assert state.status == "completed", state.failure
    assert state.request is not None
    assert state.request.dry_run
    assert not any(isinstance(e.data, ApprovalRequested) for e in events)
    done = [e.data for e in events if isinstance(e.data, StepCompleted)]
    assert [d.step_id for d in done] == ["a.s1", "b.s1", "c.s1"]
    assert all(d.simulated and d.attempts == 0 and d.estimate is not None for d in done)
    assert [d.would_need_approval for d in done] == [False, False, True]
    assert all(st.simulated for st in state.steps.values())
    assert all(t.simulated for t in state.tasks.values())
    # later tasks were decomposed and validated against the placeholders of earlier outputs
    assert done[1].output == {"value": PLACEHOLDER}
    assert [e.type for e in events].count("step_ready") == 3

    result = state.result
    assert result["dry_run"] is True
    assert result["note"] == NOTE
    assert result["plan"] == {"source": "explicit", "revision": 1, "tasks": ["a", "b", "c"]}
    assert [(s["step"], s["tool"]) for s in result["steps"]] == [
        ("a.s1", "test.echo"),
        ("b.s1", "test.tripwire"),
        ("c.s1", "fs.write"),
    ]
    assert result["steps"][1]["inputs"] == {"value": "${a.value}"}  # as planned
    assert result["steps"][1]["fallback_tools"] == ["test.flaky", "test.echo"]
    assert result["would_need_approval"] == ["c.s1"]

    # The worst case: each allowed consultation by the budget's own rule (intelligent x adaptive
    # allows recover, interpret and decide), every call with its repair round.
    quotes = {q.call: q for q in done[1].estimate.quotes}  # type: ignore[union-attr]
    assert set(quotes) == {"interpret", "decide", "recover"}
    assert all(q.allowed for q in quotes.values())
    assert (quotes["interpret"].times, quotes["decide"].times, quotes["recover"].times) == (8, 2, 2)
    prices = Prices(default=DEFAULT_PRICE, by_model=DEFAULT_PRICES)
    q = quotes["recover"]
    assert q.model is not None
    assert q.max_input_tokens is not None
    assert q.max_input_tokens > q.est_input_tokens  # priced by the input bound
    one = bound_usd(prices, q.model, q.max_input_tokens, q.max_output_tokens)
    assert q.worst_usd == pytest.approx(2 * one)
    total = sum(x.worst_usd for d in done for x in d.estimate.quotes)  # type: ignore[union-attr]
    assert result["cost"]["cap_usd"] == settings.budget_workflow_usd
    assert result["cost"]["at_most_usd"] == min(result["cost"]["worst_case_usd"], settings.budget_workflow_usd)
    assert result["cost"]["worst_case_usd"] == pytest.approx(total)
    assert total > 0
    assert result["cost"]["expected_usd"] is not None  # the real run's tool call: no consultation, $0 a call
    assert result["cost"]["expected_usd"] == 0.0

    # Duration: test.echo ran live in this process; the other tools never did.
    assert result["steps"][0]["expected_ms"] is not None
    assert result["duration"]["expected_ms"] is None
    assert result["duration"]["tools_without_past_runs"] == ["fs.write", "test.tripwire"]
    assert result["output"] == {"path": PLACEHOLDER, "bytes_written": 0, "already_done": False}

    # It replays, and the library learned the real run only.
    replay = replayer_for(settings).replay(records)
    assert replay.ok, replay.divergences
    assert replay.reproduced == replay.events == len([r for r in records if isinstance(r, StoredEvent)])
    assert len(learned) == 1, learned
    assert real.workflow_id in learned[0]
    assert not any(state.workflow_id in x for x in learned)


async def test_a_refused_plan_is_refused_in_a_dry_run_too(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, prohibited_tools=["test.tripwire"], tool_modules=MODULES)
    async with cadre_running(settings) as h:
        state = await h.run({"plan": PLAN, "dry_run": True})
    assert state.status == "failed"
    assert state.failure is not None
    assert state.failure.code == "plan_rejected"
    assert not (settings.workspace_dir / TRIPWIRE_MARKER).exists()


@pytest.fixture
def runner_env(monkeypatch: pytest.MonkeyPatch, nats_url: str, tmp_path: Path) -> Path:
    from tests.conftest import unique

    prefix = unique("d")
    monkeypatch.setenv("CADRE_NATS_URL", nats_url)
    monkeypatch.setenv("CADRE_SUBJECT_PREFIX", prefix)
    monkeypatch.setenv("CADRE_STREAM_NAME", prefix.upper())
    monkeypatch.setenv("CADRE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CADRE_TOOL_MODULES", json.dumps(MODULES))
    monkeypatch.setenv("CADRE_APPROVAL_TOOLS", '["fs.write"]')
    return tmp_path


def test_cli_dry_run_prints_the_plan_steps_approvals_and_cost(
    runner_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = runner_env / "plan.json"
    plan_file.write_text(json.dumps(PLAN))
    assert main(["run", "--dry-run", "--plan", str(plan_file)]) == 0
    out = capsys.readouterr().out
    assert "simulated b.s1 with test.tripwire: not run" in out
    assert "simulated c.s1 with fs.write: not run  (would need approval)" in out
    assert "DRY RUN   nothing was executed: no tool ran, no model was consulted for execution" in out
    assert "plan      3 task(s) (explicit): a -> b -> c" in out
    assert '- b.s1: test.tripwire {"value":"${a.value}"}' in out
    assert "- c.s1: fs.write" in out
    assert "[would need approval]" in out
    assert "approvals c.s1 would need approval" in out
    assert (
        "cost      worst case $0.0000 of execution-time consultations (the workflow's cap, $0.5000, bounds it); "
        "expected unknown (no past runs)"
    ) in out
    assert "recover: not possible (no model is configured in this process)" in out
    assert "duration  unknown: no past runs of fs.write, test.echo, test.tripwire" in out
    assert ": completed (a dry run: nothing was executed)" in out
    assert "approval  " not in out  # nothing waited for a person
    workspace = runner_env / "data" / "workspace"
    assert not (workspace / TRIPWIRE_MARKER).exists()
    assert not (workspace / "dry" / "out.txt").exists()

    assert main(["run", "--dry-run", "--plan", str(plan_file), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed"
    assert summary["result"]["dry_run"] is True
    assert summary["result"]["would_need_approval"] == ["c.s1"]
    assert not (workspace / TRIPWIRE_MARKER).exists()


def test_the_golden_dry_run_replays_as_a_dry_run() -> None:
    from tests.test_replay import golden

    settings, records = golden("dry_run")
    result = replayer_for(settings).replay(records)
    assert result.ok
    assert result.reproduced == result.events
    last = [r for r in records if isinstance(r, StoredEvent)][-1].event.data
    assert isinstance(last, WorkflowCompleted)
    assert last.result["dry_run"] is True
    assert last.result["would_need_approval"] == ["c.s1"]
    assert last.result["cost"]["worst_case_usd"] > 0


def test_the_request_carries_dry_run() -> None:
    assert parse_request(b'{"request": "x", "dry_run": true}').dry_run is True
    assert parse_request(b'{"request": "x"}').dry_run is False
    with pytest.raises(RequestError) as err:
        parse_request(b'{"request": "x", "dry_run": "maybe"}')
    assert err.value.path == "$.dry_run"
    assert "dry_run" in request_schema()["properties"]


def test_a_dry_run_and_a_real_run_with_one_key_are_two_workflows() -> None:
    assert workflow_id_for("order-42") == workflow_id_for("order-42")
    assert workflow_id_for("order-42", dry_run=True) != workflow_id_for("order-42")


def test_placeholders_follow_the_output_schemas() -> None:
    catalog = builtin_catalog()
    query = placeholder(json_schema(catalog["sql.query"].output_model))
    assert query == {"columns": [PLACEHOLDER], "rows": [[PLACEHOLDER]], "row_count": 0, "truncated": False}
    tables = placeholder(json_schema(catalog["sql.schema"].output_model))
    assert tables["tables"][0]["columns"][0] == {"name": PLACEHOLDER, "type": PLACEHOLDER}
    assert placeholder({"enum": ["a", "b"]}) == "a"
    assert placeholder({"anyOf": [{"type": "null"}, {"type": "integer"}]}) == 0
    assert placeholder({"type": "object", "properties": {"n": {"type": "number"}, "ok": {"type": "boolean"}}}) == {
        "n": 0.0,
        "ok": False,
    }


async def test_a_quote_is_recorded_and_served_back_and_nothing_else_is() -> None:
    from cadre.actors.answers import LiveAnswers, PastRuns, RecordedAnswers, RecordOnlyProvider, ReplayDivergence, quote
    from cadre.actors.context import Outside
    from cadre.actors.inference import LLM, Policy
    from cadre.bus import decode, encode
    from cadre.bus.events import EffectsRecorded, make_event
    from cadre.planner.providers.pricing import ModelPrice

    live = LiveAnswers(Outside())
    live.past.ran("test.echo", 2.0)
    live.past.ran("test.echo", 4.0)
    live.past.ran("test.flaky", None)  # a failure counts as a call, not as a duration
    asks = [("recover", 2, 300), ("interpret", 4, 200)]
    effect = await live.estimate("test.echo", asks, Policy(intelligence="intelligent"))
    assert [(q.call, q.allowed, q.why) for q in effect.quotes] == [
        ("recover", False, "no model is configured in this process"),
        ("interpret", False, "no model is configured in this process"),
    ]
    assert (effect.past_tool_runs, effect.past_tool_ms, effect.past_steps) == (2, 3.0, 3)
    assert effect.expected_usd == 0.0
    assert effect.worst_usd == 0.0
    stored = decode(
        encode(make_event(EffectsRecorded(input_id="x", effects=(effect,)), workflow_id="w", actor="a", at=_AT))
    )
    assert isinstance(stored.data, EffectsRecorded)
    recorded = RecordedAnswers(stored.data.effects)
    assert await recorded.estimate("test.echo", asks, Policy()) == effect
    with pytest.raises(ReplayDivergence, match=r"the handler asked estimate test\.echo:"):
        await RecordedAnswers(stored.data.effects).estimate("test.echo", [("recover", 2, 301)], Policy())

    # The budget's gate and worst-case rule, with the deployment's prices.
    prices = Prices(default=ModelPrice(input=1.0, output=10.0))
    llm = LLM(provider=RecordOnlyProvider("p"), models={"default": "m1"}, max_output_tokens={"default": 100})
    allowed = quote("recover", 2, 1000, Policy(), llm, prices, 1.5)
    assert allowed.allowed
    assert allowed.worst_usd == pytest.approx(2 * (1500 * 1.0 + 100 * 10.0) / 1_000_000)
    denied = quote("interpret", 2, 1000, Policy(intelligence="adaptive"), llm, prices, 1.5)
    assert not denied.allowed
    assert "does not allow 'interpret'" in denied.why
    assert PastRuns().timing("x") == (0, None)


async def test_submit_dry_run_waits_and_prints_the_simulated_result(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cadre import commands

    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"], tool_modules=MODULES)
    payload = commands.request_payload(
        None, None, budget=None, intelligence=None, mode=None, idempotency_key="k-1", dry_run=True
    )
    assert json.loads(payload) == {"idempotency_key": "k-1", "dry_run": True}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(PLAN))
    payload = commands.request_payload(
        None, plan_file, budget=None, intelligence=None, mode=None, idempotency_key=None, dry_run=True
    )
    async with cadre_running(settings):
        assert await commands.submit_cmd(settings, payload, wait=True, as_json=False) == 0
    out = capsys.readouterr().out
    assert "DRY RUN   nothing was executed" in out
    assert "approvals c.s1 would need approval" in out
    assert ": completed (a dry run: nothing was executed)" in out
    assert not (settings.workspace_dir / TRIPWIRE_MARKER).exists()
