"""``cadre stats``: the evaluation figures over the golden logs, checked against values counted by
hand from the export files (tests/golden), and the pure parts on their own."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cadre.bus import ConnectOptions, StreamSpec, Subjects, connect
from cadre.bus.signing import Keyring
from cadre.cli import main
from cadre.commands import UsageError
from cadre.stats_cli import parse_since
from cadre.store import JetStreamLog
from cadre.store.filelog import FileLog
from cadre.store.stats import distribution, stats, workflow_facts
from tests.conftest import unique
from tests.log_contract import happy_run

# The golden logs the hand counts below were taken over (a log added later is not in them).
COUNTED = (
    "approval_denied",
    "approval_granted",
    "budget_denial",
    "compensated",
    "conditions",
    "confidence_approval",
    "dry_run",
    "fallback_tool",
    "grounded_plan",
    "happy_library",
    "interpret_proposal",
    "library_parameters",
    "library_refusal",
    "llm_plan_repair",
    "malformed_answer",
    "output_by_reference",
    "output_too_large",
    "proposal_approved",
    "proposal_refused",
    "provider_fallback",
    "rate_limit_wait",
    "replan",
    "unsafe_plan",
)
GOLDEN = [Path(__file__).parent / "golden" / f"{name}.jsonl" for name in COUNTED]


def golden_stats(capsys: pytest.CaptureFixture[str], *extra: str, logs: list[Path] = GOLDEN) -> dict[str, object]:
    argv = ["stats", "--json", *extra]
    for path in logs:
        argv += ["--from-file", str(path)]
    assert main(argv) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_the_golden_logs_give_the_hand_counted_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(GOLDEN) == 23  # one workflow per file
    assert all(p.is_file() for p in GOLDEN)
    s = golden_stats(capsys)
    # Outcomes: the last line of each file is workflow_completed in 16 files and workflow_failed in 7
    # (`tail -qn1 tests/golden/*.jsonl | grep -c workflow_completed`). Their reasons (`grep -o
    # '"reason":"[a-z_]*","message"'` on those last lines): library_refusal no_plan, unsafe_plan
    # plan_rejected, and task_failed in approval_denied, compensated, conditions, output_too_large,
    # proposal_refused. One request has "dry_run":true (dry_run.jsonl).
    workflows = s["workflows"]
    assert isinstance(workflows, dict)
    assert {k: workflows[k] for k in ("total", "completed", "failed", "unfinished", "dry_runs")} == {
        "total": 23,
        "completed": 16,
        "failed": 7,
        "unfinished": 0,
        "dry_runs": 1,
    }
    assert workflows["failure_reasons"] == {"no_plan": 1, "plan_rejected": 1, "task_failed": 5}
    # rate_limit_wait.jsonl is the longest run: first event 03:05:19.440410, last 03:06:19.505397.
    assert workflows["duration_s"]["max"] == 60.064987  # type: ignore[index]
    # Plans: 23 plan_proposed lines (library_refusal has none; replan.jsonl has revisions 1 and 2).
    # By "source": library in budget_denial, happy_library, library_parameters, malformed_answer, all
    # completed; model in grounded_plan, llm_plan_repair, provider_fallback and replan's revision 2,
    # all completed; explicit in the other 15: unsafe_plan's is rejected (plan_rejected), replan's
    # revision 1 is replaced by revision 2, 5 ran in workflows that failed (the task_failed ones
    # above) and 8 in workflows that completed: success 8/15.
    assert s["plans"] == {
        "explicit": {
            "proposed": 15,
            "succeeded": 8,
            "failed": 5,
            "replaced": 1,
            "rejected": 1,
            "cancelled": 0,
            "unfinished": 0,
            "success_rate": round(8 / 15, 4),
        },
        "library": {
            "proposed": 4,
            "succeeded": 4,
            "failed": 0,
            "replaced": 0,
            "rejected": 0,
            "cancelled": 0,
            "unfinished": 0,
            "success_rate": 1.0,
        },
        "model": {
            "proposed": 4,
            "succeeded": 4,
            "failed": 0,
            "replaced": 0,
            "rejected": 0,
            "cancelled": 0,
            "unfinished": 0,
            "success_rate": 1.0,
        },
    }
    # One re-plan (replan.jsonl) among the 22 workflows with a plan.
    assert s["replans"] == {"replans": 1, "workflows_replanned": 1, "workflows_planned": 22, "rate": round(1 / 22, 4)}
    # Verdicts: 22 plan_validated + 1 plan_rejected; 39 steps_proposed and no steps_rejected; proposals:
    # 4 proposal_validated (interpret_proposal 1, proposal_approved 1, rate_limit_wait 2) + 1
    # proposal_rejected (proposal_refused).
    assert s["validation"] == {
        "plans": {"verdicts": 23, "rejected": 1, "rate": round(1 / 23, 4)},
        "steps": {"verdicts": 39, "rejected": 0, "rate": 0.0},
        "proposals": {"verdicts": 5, "rejected": 1, "rate": 0.2},
    }
    # 33 step_completed lines; "tool" differs from "planned_tool" in 4: fallback_tool (test.echo for
    # test.flaky), proposal_approved (fs.write for test.disk_full), rate_limit_wait (twice test.echo
    # for test.flaky).
    assert s["adherence"] == {"steps_completed": 33, "on_plan": 29, "rate": round(29 / 33, 4)}
    # Deviations as `cadre audit WF` lists them: compensated 3, dry_run 3 (one per simulated step),
    # fallback_tool 2, interpret_proposal 2, proposal_approved 3, proposal_refused 1, rate_limit_wait 8,
    # replan 1.
    assert s["deviations"] == {"total": 23, "per_workflow": 1.0}
    # Steps in trouble: the 5 with a proposal_made (above) and those with a failed tool call ("ok":false
    # in a tool effect) besides: fallback_tool's, output_too_large's, compensated's last and replan's
    # failed one: 9. Completed anyway: fallback_tool's, interpret_proposal's, proposal_approved's and
    # rate_limit_wait's two: 5.
    assert s["recovery"] == {"steps_in_trouble": 9, "recovered": 5, "rate": round(5 / 9, 4)}
    # approval_requested in approval_denied, approval_granted, confidence_approval, proposal_approved;
    # the first denied by "tester", the others granted. Waits (decision "at" - request "at") all under
    # 13 ms.
    approvals = s["approvals"]
    assert isinstance(approvals, dict)
    assert {k: approvals[k] for k in ("requested", "granted", "denied", "timed_out", "pending")} == {
        "requested": 4,
        "granted": 3,
        "denied": 1,
        "timed_out": 0,
        "pending": 0,
    }
    assert approvals["wait_s"]["n"] == 4
    assert approvals["wait_s"]["max"] < 0.013
    # Costs: the "cost_usd" of the settle effects per file: grounded_plan 0.00525, llm_plan_repair
    # 0.0045 + 0.00495 = 0.00945, provider_fallback 0.000592, malformed_answer 2 x 0.000105, replan
    # 0.000105 (its adapt: the workflow's planning), interpret_proposal, proposal_approved and
    # proposal_refused 0.000035 each, rate_limit_wait 2 x 0.000035; 0 in the other 14. Sorted, the
    # 12th of 23 (the median) is 0 and the 22nd (p95 rank ceil(0.95 x 23)) is 0.00525. Per task, only
    # the recoveries count (step scope): 5 of the 39 dispatched tasks at 0.000035, 34 at 0.
    assert s["cost_usd"] == {
        "per_workflow": {"n": 23, "median": 0.0, "p95": 0.00525, "max": 0.00945},
        "per_task": {"n": 39, "median": 0.0, "p95": 0.000035, "max": 0.000035},
    }
    # Latency samples per actor: every event with a cause, by its "actor" (`grep -c '"actor":"agent"'`
    # over the files: 51; planner 86, decomposer 39, validator 67, approvals 2, human 2; intake's 23
    # workflow_requested have no cause). The slowest answer: rate_limit_wait's proposal_made at
    # 03:06:19.466039, 60.008653 s after the consultation_waiting it answers (03:05:19.457386).
    latency = s["latency_s"]
    assert isinstance(latency, dict)
    assert {k: v["n"] for k, v in latency.items()} == {
        "agent": 51,
        "approvals": 2,
        "decomposer": 39,
        "human": 2,
        "planner": 86,
        "validator": 67,
    }
    assert latency["agent"]["max"] == 60.008653


def test_since_keeps_the_workflows_started_since(capsys: pytest.CaptureFixture[str]) -> None:
    # Four golden runs were recorded on 2026-11-21 (approval_denied, approval_granted, fallback_tool,
    # happy_library: the "at" of their first event), the other 19 on 2026-12-05.
    s = golden_stats(capsys, "--since", "2026-12-01")
    assert s["since"] == "2026-12-01T00:00:00Z"
    workflows = s["workflows"]
    assert isinstance(workflows, dict)
    assert (workflows["total"], workflows["completed"], workflows["failed"]) == (19, 13, 6)
    approvals = s["approvals"]
    assert isinstance(approvals, dict)
    assert (approvals["granted"], approvals["denied"]) == (2, 0)


def test_the_text_report_says_each_figure(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["stats"]
    for path in GOLDEN:
        argv += ["--from-file", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "completed 16, failed 7, cancelled 0, unfinished 0 (1 dry run(s))" in out
    assert "explicit   53.3% of 15 proposed: 8 succeeded, 5 failed, 1 replaced, 1 rejected" in out
    assert "adherence    87.9% (29 of 33 steps with their planned tool)" in out
    assert "recovery     55.6% (5 of 9 steps in trouble completed)" in out
    assert "approvals    4: 3 granted, 1 denied, 0 timed out, 0 pending" in out


def test_stats_of_the_live_log(
    monkeypatch: pytest.MonkeyPatch, nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = unique("st")
    subjects = Subjects(prefix)
    spec = StreamSpec(name=prefix.upper(), subjects=subjects.events)
    monkeypatch.setenv("CADRE_NATS_URL", nats_url)
    monkeypatch.setenv("CADRE_SUBJECT_PREFIX", prefix)
    monkeypatch.setenv("CADRE_STREAM_NAME", spec.name)

    async def seed() -> None:
        nc = await connect(ConnectOptions(url=nats_url))
        log = JetStreamLog(nc, stream=spec, subjects=subjects)
        await log.ensure_stream()
        for wf in ("wf1", "wf2"):
            await log.append(wf, happy_run(wf), expected_seq=0)
        await nc.drain()

    asyncio.run(seed())
    assert main(["stats", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["workflows"]["total"] == 2
    assert s["workflows"]["completed"] == 2
    assert s["adherence"]["steps_completed"] == 2


def test_distribution_is_median_and_nearest_rank_p95() -> None:
    assert distribution([]).n == 0
    d = distribution([5, 1, 3, 2, 4])
    # Sorted 1..5: median the 3rd; p95 rank ceil(4.75) = 5.
    assert (d.n, d.median, d.p95, d.max) == (5, 3.0, 5.0, 5.0)
    d = distribution(range(1, 21))  # 1..20: median (10 + 11) / 2; p95 rank ceil(19) = 19
    assert (d.median, d.p95, d.max) == (10.5, 19.0, 20.0)


def test_since_takes_a_time_or_an_age() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2026-11-21", now) == datetime(2026, 11, 21, tzinfo=UTC)
    assert parse_since("2026-11-21T07:00:00+01:00", now) == datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
    with pytest.raises(UsageError, match="--since takes an ISO time"):
        parse_since("yesterday", now)


def test_events_the_keyring_does_not_accept_count_for_nothing() -> None:
    # The golden logs are unsigned: checked against a keyring (even an empty one), every event is
    # "unsigned", ignored by the actors, so the workflow has no trusted start, plan or end.
    flog = FileLog.load(Path(__file__).parent / "golden" / "happy_library.jsonl")
    [wf] = asyncio.run(flog.workflows())
    records = asyncio.run(flog.read_records(wf))
    trusted = workflow_facts(records)
    assert (trusted.outcome, len(trusted.plans), trusted.steps_completed) == ("completed", 1, 3)
    checked = workflow_facts(records, Keyring.of([]))
    assert (checked.outcome, checked.plans, checked.steps_completed, checked.latencies) == ("unfinished", [], 0, [])
    assert checked.workflow_id == wf
    assert stats([checked]).workflows["unfinished"] == 1


def test_cancelled_workflows_count_as_cancelled_and_their_plans_neither_succeed_nor_fail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # cancelled.jsonl (a person's cancel) and deadline.jsonl (a passed deadline): one explicit plan
    # each (`grep -c plan_proposed`), each workflow ending workflow_cancelled.
    golden = Path(__file__).parent / "golden"
    s = golden_stats(capsys, logs=[golden / "cancelled.jsonl", golden / "deadline.jsonl"])
    workflows = s["workflows"]
    assert isinstance(workflows, dict)
    assert {k: workflows[k] for k in ("total", "completed", "failed", "cancelled", "unfinished")} == {
        "total": 2,
        "completed": 0,
        "failed": 0,
        "cancelled": 2,
        "unfinished": 0,
    }
    plans = s["plans"]
    assert isinstance(plans, dict)
    assert plans["explicit"] == {
        "proposed": 2,
        "succeeded": 0,
        "failed": 0,
        "replaced": 0,
        "rejected": 0,
        "cancelled": 2,
        "unfinished": 0,
        "success_rate": None,
    }
