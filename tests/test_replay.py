"""Deterministic replay, what-if and the audit report.

* every golden log (``tests/golden/``, recorded by ``tests/golden/record.py``) replays to
  ``N/N events reproduced`` from its file, with the network disabled, through the CLI too;
* a live run replays from the stream and from its export;
* a changed handler (a validator check, a planner rule, the agent's tool inputs) is reported
  as a divergence at the right event, with a field-level diff;
* a what-if that prohibits a tool the run used lists the plan and the step it would reject;
  one that lowers the workflow's cap lists the consultation it would deny; an empty one
  changes nothing;
* the audit report: consultations with their cost, tool calls, approvals, and a
  self-contained HTML page.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import socket
import types
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cadre import replay_cli
from cadre.actors import agent, planner_rules, validator
from cadre.actors.budget.rules import BudgetConfig
from cadre.actors.replay import FieldDiff, Replayer, ReplayResult, WhatIf, diff, redecide
from cadre.actors.runtime import ActorSpec
from cadre.audit_html import render
from cadre.audit_text import lines as audit_lines
from cadre.bus.effects import Asked, ToolCalled
from cadre.bus.events import (
    ApprovalDenied,
    ApprovalRequested,
    PlanProposed,
    StepReady,
    StepsRejected,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRequested,
)
from cadre.bus.ledger import Consultation, Decision
from cadre.bus.plan import Check
from cadre.cli import main
from cadre.planner.catalog import Catalog
from cadre.planner.pools import EVERY_POOL
from cadre.planner.providers.pricing import ModelPrice, Prices
from cadre.replay_cli import replayer_for
from cadre.settings import Settings
from cadre.store.audit import audit
from cadre.store.filelog import FileLog, export
from cadre.store.records import Record, StoredEvent
from cadre.whatif_policy import WhatIfPolicy, what_if_setup
from tests.system_harness import cadre_running, settings_for

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFEST: dict[str, dict[str, Any]] = json.loads((GOLDEN / "manifest.json").read_text())["logs"]


def golden(name: str) -> tuple[Settings, list[Record]]:
    """A golden log's deployment settings and its workflow's records."""
    entry = MANIFEST[name]
    records = asyncio.run(FileLog.load(GOLDEN / entry["file"]).read_records(entry["workflow_id"]))
    return Settings(**entry["settings"], llm_provider="none"), records


def replay_golden(name: str) -> ReplayResult:
    settings, records = golden(name)
    return replayer_for(settings).replay(records)


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails (a replay from a file needs none)."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError("the network is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("CADRE_NATS_URL", raising=False)


@pytest.fixture(name="no_network")
def _no_network_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    no_network(monkeypatch)


def cli_env(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The environment of the deployment a golden log was recorded in (the CLI reads its settings)."""
    for key, value in MANIFEST[name]["settings"].items():
        monkeypatch.setenv(f"CADRE_{key.upper()}", json.dumps(value) if isinstance(value, list) else str(value))
    monkeypatch.setenv("CADRE_LLM_PROVIDER", "none")


# -- golden logs ------------------------------------------------------------------------------------


def test_the_golden_logs_cover_every_path() -> None:
    assert set(MANIFEST) >= {
        "happy_library",
        "library_parameters",
        "library_refusal",
        "replan",
        "budget_denial",
        "fallback_tool",
        "approval_granted",
        "approval_denied",
        "llm_plan_repair",
        "dry_run",
        "grounded_plan",
        "provider_fallback",
        "proposal_approved",
        "proposal_refused",
        "conditions",
        "rate_limit_wait",
        "rate_limit_plan_wait",
        "interpret_wait",
        "decide_wait",
        "adapt_wait",
        "interpret_proposal",
        "compensated",
        "unsafe_plan",
        "output_too_large",
        "output_by_reference",
        "resolved_steps",
        "resolved_refused",
        "cancelled",
        "deadline",
        "redriven",
        "sub_workflow",
        "sub_workflow_child",
        "flow_subflow",
        "flow_subflow_child",
    }


def test_golden_logs_record_which_flow_cleared_their_steps() -> None:
    """Logs recorded before the ``resolved_steps`` marker keep their flow (no resolved inputs);
    the new ones carry the inputs the validator checked, and a refused one never reached its tool."""
    datas = {name: [r.event.data for r in golden(name)[1] if isinstance(r, StoredEvent)] for name in MANIFEST}
    old = datas["happy_library"]
    assert not any(isinstance(d, WorkflowRequested) and d.resolved_steps for d in old)
    assert all(d.resolved_inputs is None for d in old if isinstance(d, StepReady))
    ready = [(d.step.id, d.resolved_inputs) for d in datas["resolved_steps"] if isinstance(d, StepReady)]
    assert ready == [("d.s1", {"value": "../x"}), ("d.s2", {"value": "../x"})]
    _, records = golden("resolved_refused")
    called = [
        f.tool for r in records if isinstance(r, StoredEvent) for f in r.event.effects if isinstance(f, ToolCalled)
    ]
    assert called == ["test.echo"]
    [refused] = [d for d in datas["resolved_refused"] if isinstance(d, StepsRejected)]
    assert refused.step_id == "d.s2"
    assert [c.name for c in refused.checks if not c.passed] == ["inputs_safe"]
    text = "\n".join(audit_lines(audit(records)))
    assert "step d.s2 on its resolved inputs" in text
    assert [call.tool for call in audit(records).tool_calls] == ["test.echo"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
@pytest.mark.usefixtures("no_network")
def test_a_golden_log_replays_identically_without_the_network(name: str) -> None:
    result = replay_golden(name)
    assert result.ok, "\n".join(result.lines())
    assert result.reproduced == result.events == MANIFEST[name]["records"]
    assert result.summary().startswith(f"{result.events}/{result.events} events reproduced")
    assert result.rederived + len(result.inputs) == result.events


@pytest.mark.parametrize("name", ["replan", "approval_granted"])
@pytest.mark.usefixtures("no_network")
def test_cadre_replay_from_a_file_needs_no_connection(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_env(monkeypatch, name)
    wf, path = MANIFEST[name]["workflow_id"], GOLDEN / MANIFEST[name]["file"]
    assert main(["replay", wf, "--from-file", str(path)]) == 0
    out = capsys.readouterr().out
    n = MANIFEST[name]["records"]
    assert re.match(rf"^{n}/{n} events reproduced \(", out)
    assert main(["replay", wf, "--from-file", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["reproduced"] == doc["events"] == n


def test_the_inputs_are_named() -> None:
    result = replay_golden("approval_granted")
    notes = {n.type: n.note for n in result.inputs}
    assert notes["workflow_requested"] == "the request, as the intake recorded it"
    assert notes["approval_granted"] == "a person's decision (approval_granted)"
    assert result.quiet >= 1  # the agent deferred its approval_requested: an input answered with nothing


# -- live runs ------------------------------------------------------------------------------------


async def test_a_live_run_replays_from_the_stream_and_from_its_export(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(nats_url, tmp_path)
    plan = {"nodes": [{"id": "x", "tool": "test.flaky", "fallback_tools": ["test.echo"], "inputs": {"value": "v"}}]}
    async with cadre_running(settings) as h:
        state = await h.run({"plan": plan})
        wf = state.workflow_id
        live = await h.bus.log.read_records(wf)
        exported = tmp_path / "run.jsonl"
        with exported.open("wb") as f:
            await export(h.bus.log, [wf], f)
        replayer = replayer_for(settings)
        from_stream = replayer.replay(live)
        args = argparse.Namespace(workflow_id=wf, from_file=None, policy=None, json=True)
        assert await replay_cli.run(args, settings) == 0  # `cadre replay WF`: reads the stream itself
    from_file = replayer.replay(await FileLog.load(exported).read_records(wf))
    for result in (from_stream, from_file):
        assert result.ok, "\n".join(result.lines())
        assert result.reproduced == result.events == len(live)
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["events"]) == (True, len(live))


EXAMPLES = sorted(Path("examples/plans").glob("*.json"))


async def test_every_example_run_replays_from_the_stream_and_from_its_file_without_the_network(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's acceptance: each example plan, run for real, then replayed twice."""
    assert len(EXAMPLES) >= 4
    settings = settings_for(nats_url, tmp_path)
    runs: list[tuple[str, list[Record]]] = []
    exported = tmp_path / "examples.jsonl"
    async with cadre_running(settings) as h:
        for path in EXAMPLES:
            example = json.loads(path.read_text())
            state = await h.run({"request": example["request"]})  # the library binds and serves it
            assert state.status == "completed", (path.name, state.failure)
            assert state.plan_source == "library", path.name
            runs.append((state.workflow_id, await h.bus.log.read_records(state.workflow_id)))
        with exported.open("wb") as f:
            await export(h.bus.log, [wf for wf, _ in runs], f)
    replayer = replayer_for(settings)
    no_network(monkeypatch)
    file_log = FileLog.load(exported)
    for wf, live in runs:
        for result in (replayer.replay(live), replayer.replay(await file_log.read_records(wf))):
            assert result.ok, "\n".join(result.lines())
            assert result.reproduced == result.events == len(live)


# -- divergences ------------------------------------------------------------------------------------


def test_a_changed_validator_check_is_reported_at_the_plan_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    def stricter(*args: Any, **kwargs: Any) -> list[Check]:
        return [Check(name="no_writes", passed=False, message="writing is off today", fix="do not write")]

    monkeypatch.setattr(validator, "validate_plan", stricter)
    settings, records = golden("happy_library")
    result = replayer_for(settings).replay(records)
    assert not result.ok
    first = result.divergences[0]
    assert (first.index, first.type, first.actor, first.kind) == (2, "plan_validated", "validator", "changed")
    assert first.actual_types == ("plan_rejected",)
    assert FieldDiff(path="$.type", expected="plan_validated", actual="plan_rejected") in first.diffs
    assert first.message == "validator now emits plan_rejected where the record has plan_validated"
    text = "\n".join(result.lines())
    assert re.search(
        r"^\d+/16 events reproduced; \d+ divergence\(s\), the first at index 2 \(seq \d+, plan_validated", text
    )
    assert '$.type: "plan_validated" -> "plan_rejected"' in text


def test_a_changed_planner_rule_is_reported_at_the_workflows_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner_rules, "result_of", lambda state, outputs: {"changed": True})
    settings, records = golden("fallback_tool")
    result = replayer_for(settings).replay(records)
    [d] = result.divergences
    last = records[-1]
    assert isinstance(last, StoredEvent)
    assert isinstance(last.event.data, WorkflowCompleted)
    assert (d.index, d.seq, d.event_id, d.type, d.kind) == (
        len(records) - 1,
        last.seq,
        last.event.id,
        "workflow_completed",
        "changed",
    )
    assert [x.path for x in d.diffs] == ["$.data.result.value", "$.data.result.changed"]
    assert result.reproduced == result.events - 1


def test_a_handler_asking_for_something_else_is_reported_with_both(monkeypatch: pytest.MonkeyPatch) -> None:
    real = agent.resolve

    def other_inputs(inputs: Any, outputs: Any) -> Any:
        return {**real(inputs, outputs), "value": "something else"}

    monkeypatch.setattr(agent, "resolve", other_inputs)
    settings, records = golden("fallback_tool")
    result = replayer_for(settings).replay(records)
    [d] = result.divergences
    assert (d.type, d.actor, d.kind) == ("step_completed", "agent", "asked")
    assert re.fullmatch(
        r"the handler asked tool test\.flaky:[0-9a-f]{16}, the record has tool test\.flaky:[0-9a-f]{16} "
        r"\(recorded answer 1 of 2\)",
        d.message,
    )


def test_a_recorded_output_the_handler_no_longer_emits_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner_rules, "dispatch_ready", lambda state: [])
    settings, records = golden("happy_library")
    result = replayer_for(settings).replay(records)
    kinds = {(d.type, d.kind) for d in result.divergences}
    assert ("task_ready", "missing") in kinds


def test_an_input_answered_with_nothing_must_stay_unanswered() -> None:
    settings, records = golden("approval_granted")
    replayer = replayer_for(settings)
    agent_spec = next(s for s in replayer.specs if s.kind == "agent")

    async def eager(ctx: Any, rec: StoredEvent, state: Any) -> Any:
        if isinstance(rec.event.data, ApprovalRequested):  # live, the agent deferred it (a durable timer)
            return [ApprovalDenied(step_id=rec.event.data.step.id, by="timeout", reason="impatient")]
        return await agent_spec.handler(ctx, rec, state)

    specs = [dataclasses.replace(s, handler=eager) if s.kind == "agent" else s for s in replayer.specs]
    result = Replayer(specs).replay(records)
    [d] = result.divergences
    asked = next(
        i for i, r in enumerate(records) if isinstance(r, StoredEvent) and r.event.type == "approval_requested"
    )
    assert (d.index, d.type, d.kind, d.actual_types) == (asked, "approval_requested", "emitted", ("approval_denied",))
    assert d.message == (
        "agent answered this approval_requested with nothing, but on the state it saw (and on the latest one) "
        "it now emits approval_denied"
    )


# -- what-if --------------------------------------------------------------------------------------


def what_if(name: str, policy: dict[str, Any]) -> list[str]:
    settings, records = golden(name)
    setup = what_if_setup(settings, WhatIfPolicy.model_validate(policy), replayer_for(settings))
    return [c.line() for c in setup.replayer.what_if(records, setup.whatif, setup.catalog).changes]


def test_what_if_a_used_tool_is_prohibited_lists_the_plan_and_the_step_it_would_reject() -> None:
    changes = what_if("happy_library", {"prohibited_tools": ["fs.write"]})
    assert any(
        re.search(
            r"plan_validated by validator\): plan revision 1 would now be rejected: .*'fs\.write', which is prohibited",
            c,
        )
        for c in changes
    ), changes
    assert any(
        re.search(
            r"step_ready by validator\): step save\.s1 would now be rejected: .*'fs\.write', which is prohibited", c
        )
        for c in changes
    ), changes
    assert any("step save.s1 would now fail: prohibited" in c for c in changes), changes


def test_what_if_re_derives_the_verdicts_on_the_models_proposals() -> None:
    prohibited = what_if("proposal_approved", {"prohibited_tools": ["fs.write"]})
    assert any(
        "proposal_validated by validator): the model's proposal for step save.s1 would now be refused: "
        "steps[0].tool: step 'save.s1' uses tool 'fs.write', which is prohibited" in c
        for c in prohibited
    ), prohibited
    trusted = what_if("proposal_approved", {"model_side_effects_need_approval": False})
    assert trusted == [
        "index 7 (seq 8, proposal_validated by validator): the model's proposal for step save.s1 would now run "
        "without a person's approval"
    ]
    allowed = what_if("proposal_refused", {"prohibited_tools": []})
    assert any(
        "proposal_rejected by validator): the model's proposal for step save.s1 would now be cleared, and wait "
        "for approval (the model chose fs.write, which has side effects, with inputs it wrote)" in c
        for c in allowed
    ), allowed


def test_what_if_a_lower_cap_denies_the_consultation() -> None:
    changes = what_if("llm_plan_repair", {"budget_workflow_usd": 0.001})
    assert re.search(
        r"plan_proposed by planner\): consultation plan would now be denied: over_workflow_cap \(recorded: granted\)",
        changes[0],
    )
    assert "planner would now search the plan library, which the record does not hold" in changes[1]


def test_what_if_approval_and_limits() -> None:
    changes = what_if("happy_library", {"approval_tools": ["fs.write"], "limits": {"max_tasks": 2}})
    assert any(
        "plan revision 1 would now be rejected: nodes: the plan has 3 tasks; the limit is 2" in c for c in changes
    )
    assert any("step save.s1 would now need a person's approval (tool fs.write)" in c for c in changes)


def test_what_if_a_level_that_forbids_adaptation_fails_the_workflow() -> None:
    changes = what_if("replan", {"mode": "adaptive"})
    assert any("consultation adapt would now be denied: not_allowed" in c for c in changes), changes
    assert any("the workflow would now fail instead of being planned: task_failed" in c for c in changes), changes


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_an_empty_what_if_changes_no_decision(name: str) -> None:
    assert what_if(name, {}) == []


def test_cadre_replay_policy_prints_the_differences_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli_env(monkeypatch, "happy_library")
    wf, path = MANIFEST["happy_library"]["workflow_id"], GOLDEN / MANIFEST["happy_library"]["file"]
    policy = tmp_path / "policy.toml"
    policy.write_text('prohibited_tools = ["fs.write"]\n')
    assert main(["replay", wf, "--from-file", str(path), "--policy", str(policy)]) == 1
    out = capsys.readouterr().out
    assert re.match(r"^\d+ decision\(s\) would differ \(16 events re-decided\):\n", out)
    assert "step save.s1 would now be rejected" in out
    policy.write_text("intelligence = 'adaptive'\n")
    assert main(["replay", wf, "--from-file", str(path), "--policy", str(policy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == []


def test_a_policy_file_with_an_unknown_key_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli_env(monkeypatch, "happy_library")
    policy = tmp_path / "policy.json"
    policy.write_text('{"prohibited_tool": ["fs.write"]}')
    path = GOLDEN / MANIFEST["happy_library"]["file"]
    assert (
        main(["replay", MANIFEST["happy_library"]["workflow_id"], "--from-file", str(path), "--policy", str(policy)])
        == 2
    )
    assert re.search(
        r"policy file .*policy\.json: prohibited_tool: Extra inputs are not permitted", capsys.readouterr().err
    )
    assert main(["replay", "wf-nothere", "--from-file", str(path)]) == 2
    assert "no workflow 'wf-nothere' in" in capsys.readouterr().err


def test_redecide_keeps_what_the_what_if_does_not_change() -> None:
    config = BudgetConfig(
        workflow_usd=0.5,
        daily_usd=10.0,
        reservation_timeout_s=60.0,
        rate_limits={},
        prices=Prices(default=ModelPrice(input=1.0, output=5.0)),
    )
    ask = Asked(provider="p", model="m", est_input_tokens=1000, max_output_tokens=1000)
    c = Consultation(
        id="c-1",
        workflow_id="wf-1",
        kind="plan",
        provider="p",
        model="m",
        est_input_tokens=1000,
        max_output_tokens=1000,
    )
    granted = Decision(outcome="granted", reservation_id="c-1", reserved_usd=0.0065)
    over_day = Decision(outcome="denied", reason="over_global_cap", message="the day is spent")
    assert redecide(granted, ask, c, WhatIf(budget=config), 0.0) is granted
    assert redecide(over_day, ask, c, WhatIf(budget=config), 0.0) is over_day  # the day counted other workflows
    assert redecide(over_day, ask, c, WhatIf(budget=config, workflow_usd=5.0), 0.0) is over_day
    lower = redecide(granted, ask, c, WhatIf(budget=config, workflow_usd=0.005), 0.0)
    assert (lower.outcome, lower.reason) == ("denied", "over_workflow_cap")
    basic = redecide(granted, ask, c, WhatIf(budget=config, intelligence="basic"), 0.0)
    assert (basic.outcome, basic.reason) == ("denied", "not_allowed")
    refused = Decision(outcome="denied", reason="not_allowed", message="level")
    basic_ask = msgspec.structs.replace(ask, intelligence="basic")
    opened = redecide(refused, basic_ask, c, WhatIf(budget=config, intelligence="autonomous"), 0.0)
    assert opened.outcome == "granted"
    assert opened.reserved_usd == pytest.approx((1500 * 1.0 + 1000 * 5.0) / 1e6)


def test_diff_names_each_differing_leaf_by_its_path() -> None:
    expected = {"a": [1, {"b": "x"}], "c": (1, 2), "gone": True}
    actual = {"a": [1, {"b": "y"}, 3], "c": [1, 2], "new": None}
    assert diff(expected, actual) == [
        FieldDiff(path="$.a[1].b", expected="x", actual="y"),
        FieldDiff(path="$.a[2]", actual=3),
        FieldDiff(path="$.gone", expected=True),
        FieldDiff(path="$.new", actual=None),
    ]
    assert FieldDiff(path="$.x", expected=1).describe() == "$.x: 1 -> (absent)"


# -- the audit report -------------------------------------------------------------------------------


def test_audit_json_lists_the_consultations_with_their_cost() -> None:
    _, records = golden("llm_plan_repair")
    doc = msgspec.json.decode(msgspec.json.encode(audit(records).to_json()))
    first, second = doc["consultations"]
    assert (first["kind"], first["outcome"], first["round"], first["repaired"]) == ("plan", "granted", 1, True)
    assert (second["round"], second["repaired"], second["fallback"]) == (2, False, False)
    for c in (first, second):
        assert c["provider"] == "anthropic"
        assert c["model"].startswith("claude-")
        assert c["cost_usd"] > 0
        assert c["input_tokens"] > 0
        assert c["output_tokens"] > 0
        assert c["latency_ms"] is not None
    assert doc["totals"]["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])
    assert doc["totals"]["cost_by_scope"] == {"workflow": doc["totals"]["cost_usd"]}
    [plan] = doc["plans"]
    assert (plan["source"], plan["verdict"]) == ("model", "validated")
    assert "after one repair round" in plan["reason"]


def test_audit_shows_denials_tools_approvals_and_deviations() -> None:
    _, denied = golden("budget_denial")
    [c] = audit(denied).consultations
    assert (c.outcome, c.reason, c.fallback, c.cost_usd) == ("denied", "over_workflow_cap", True, 0.0)
    _, granted = golden("approval_granted")
    report = audit(granted)
    [a] = report.approvals
    assert (a.step_id, a.decision, a.by, a.decision_reason) == ("save.s1", "granted", "tester", "looks fine")
    [call] = report.tool_calls
    assert (call.tool, call.scope, call.ok) == ("fs.write", "step:save.s1", True)
    assert re.fullmatch(r"[0-9a-f]{16}", call.input_digest)
    assert re.fullmatch(r"[0-9a-f]{16}", call.output_digest or "")
    _, fallback = golden("fallback_tool")
    report = audit(fallback)
    assert [d.text for d in report.deviations][-1] == "used fallback tool test.echo instead of test.flaky"
    assert [c.ok for c in report.tool_calls] == [False, True]
    _, replanned = golden("replan")
    report = audit(replanned)
    assert [p.revision for p in report.plans] == [1, 2]
    assert report.deviations[0].text.startswith("re-planned: re-planned after task 'second' failed")
    text = "\n".join(audit_lines(report))
    assert "revision 2 from model: validated" in text


def test_the_html_report_is_one_self_contained_page(tmp_path: Path) -> None:
    _, records = golden("replan")
    report = audit(records)
    report.request = "<script>alert('x')</script>"  # whatever the log holds is escaped
    page = render(report)
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    assert "<style>" in page
    for external in ("<script", "<link", "src=", "href=", "@import", "url(", "http://", "https://"):
        assert external not in page, external
    assert "&lt;script&gt;" in page
    assert report.workflow_id in page
    for heading in ("Plans", "Validation verdicts", "Model consultations", "Tool calls", "Cost", "Timeline"):
        assert f"<h2>{heading}</h2>" in page


def test_cadre_audit_prints_the_report_as_text_json_or_html(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, no_network: None
) -> None:
    cli_env(monkeypatch, "approval_denied")
    wf, path = MANIFEST["approval_denied"]["workflow_id"], str(GOLDEN / MANIFEST["approval_denied"]["file"])
    assert main(["audit", wf, "--from-file", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"workflow {wf}: failed\n")
    assert "save.s1 (fs.write): denied by tester" in out
    assert main(["audit", wf, "--from-file", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "failed"
    assert doc["approvals"][0]["decision"] == "denied"
    page = tmp_path / "audit.html"
    assert main(["audit", wf, "--from-file", path, "--html", str(page)]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert main(["audit", wf, "--from-file", path, "--verify"]) == 0
    assert capsys.readouterr().out.startswith("chain intact")


def _spec_shape(spec: ActorSpec) -> tuple[Any, ...]:
    """What makes a handler what it is: its kind, types, code and what its closure holds (a
    catalog by its tools and their policies, a timeout, limits, pools; a function by its code
    and closure). The agent pool served is left out: a replay's agent serves every pool
    (``EVERY_POOL``), a live agent its own."""

    def held(value: Any) -> Any:
        if isinstance(value, Catalog):
            return value.describe()
        if isinstance(value, types.FunctionType):
            return value.__code__, tuple(held(c.cell_contents) for c in value.__closure__ or ())
        return None if value == EVERY_POOL else value

    cells = tuple(held(c.cell_contents) for c in spec.handler.__closure__ or ())
    return spec.kind, spec.handles, spec.consistent, spec.handler.__code__, cells


async def test_the_replayer_runs_the_handlers_the_system_runs(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The specs a running system hands its runtime are those ``cadre replay`` re-runs, for a
    deployment whose catalog policy and approval timeout differ from the defaults."""
    import cadre.system

    ran: list[ActorSpec] = []
    real = cadre.system.run_actors

    def spy(log: Any, specs: Any, **kwargs: Any) -> Any:
        ran.extend(spec for spec, _ in specs)
        return real(log, specs, **kwargs)

    monkeypatch.setattr(cadre.system, "run_actors", spy)
    settings = settings_for(
        nats_url, tmp_path, approval_tools=["fs.write"], prohibited_tools=["http.get"], approval_timeout_s=7
    )
    async with cadre_running(settings):
        pass
    replayed = replayer_for(settings).specs
    # The children relay (actors.children) delivers between workflows; what it writes is an input there.
    assert [(s.kind, s.pool) for s in ran if s.pool == "children"] == [("planner", "children")]
    ran = [s for s in ran if s.pool != "children"]
    assert [s.kind for s in ran] == ["planner", "validator", "decomposer", "agent"]
    assert [_spec_shape(s) for s in ran] == [_spec_shape(s) for s in replayed]
    other = replayer_for(settings.model_copy(update={"approval_timeout_s": 8})).specs
    assert [_spec_shape(s) for s in ran] != [_spec_shape(s) for s in other]  # the comparison sees a difference


def test_the_parameterised_reuse_log_binds_the_request_values_into_the_plan() -> None:
    _, records = golden("library_parameters")
    [proposed] = [
        r.event.data for r in records if isinstance(r, StoredEvent) and isinstance(r.event.data, PlanProposed)
    ]
    assert (proposed.source, proposed.library_match) == ("library", "top-customers-report")
    assert proposed.reason.endswith("with n=5, order=most, year=2023")
    top = next(t for t in proposed.plan.nodes if t.id == "top")
    assert top.inputs["params"] == [2023, 5]
    assert "ORDER BY spent_eur DESC" in top.inputs["sql"]


def test_the_library_refusal_log_names_what_did_not_fit() -> None:
    _, records = golden("library_refusal")
    [failed] = [
        r.event.data for r in records if isinstance(r, StoredEvent) and isinstance(r.event.data, WorkflowFailed)
    ]
    assert failed.reason == "no_plan"
    assert "the month 'march' (no parameter of the plan takes it)" in failed.message
    assert "`cadre tools`" in failed.message
    assert "`cadre schema request`" in failed.message
    assert "examples/plans" in failed.message


@pytest.mark.parametrize(("name", "by"), [("cancelled", "approver"), ("deadline", "deadline")])
def test_the_audit_of_a_cancelled_workflow_says_who_cancelled_it(name: str, by: str) -> None:
    _, records = golden(name)
    report = audit(records)
    assert report.status == "cancelled"
    assert report.failure is not None
    assert report.failure.startswith(f"cancelled by {by}")
    text = "\n".join(audit_lines(report))
    assert f"cancel asked by {by}" in text
    if name == "cancelled":
        assert report.failure.endswith("; undid w.s1")


def test_the_audit_of_a_redriven_workflow_shows_the_dead_letter_and_the_redrive() -> None:
    _, records = golden("redriven")
    report = audit(records)
    assert report.status == "completed"
    assert report.failure is None
    assert report.totals.dead_letters == 1
    text = "\n".join(audit_lines(report))
    assert "gave up on step_ready" in text
    assert "re-delivered to the agent by approver" in text
