"""The CLI's listings against a real nats-server: ``cadre workflows`` (recent workflows, newest
first, with state, request, start and duration; a request's control characters shown, never sent)
and the numbering ``cadre events`` and ``cadre audit`` share."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

import msgspec
import pytest

from cadre.bus import ConnectOptions, StreamSpec, Subjects, connect
from cadre.bus.events import Envelope, PlanProposed, WorkflowFailed, WorkflowRequested
from cadre.bus.plan import Plan, Task
from cadre.cli import main
from cadre.store import JetStreamLog
from tests.conftest import T0, ev, unique
from tests.log_contract import happy_run

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\rFAKE\nline two\x9b31m\u202eevil"
RAW_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def shifted(events: list[Envelope], by: timedelta) -> list[Envelope]:
    return [msgspec.structs.replace(e, at=e.at + by) for e in events]


def failed_run(wf: str, request: str) -> list[Envelope]:
    root = ev(WorkflowRequested(request=request), wf, actor="intake")
    plan = Plan(nodes=(Task(id="q", tool="sql.query", inputs={"sql": "select 1"}),), output="q")
    proposed = ev(PlanProposed(plan=plan, source="explicit"), wf, cause=root.id, actor="planner", i=1)
    end = ev(WorkflowFailed(reason="task_failed", message="no"), wf, cause=proposed.id, actor="planner", i=2500)
    return [root, proposed, end]


def running_run(wf: str) -> list[Envelope]:
    root = ev(WorkflowRequested(request="still going"), wf, actor="intake")
    plan = Plan(nodes=(Task(id="q", tool="sql.query", inputs={"sql": "select 1"}),), output="q")
    return [root, ev(PlanProposed(plan=plan, source="library"), wf, cause=root.id, actor="planner", i=1)]


@pytest.fixture
def seeded(monkeypatch: pytest.MonkeyPatch, nats_url: str) -> None:
    """Three workflows on a stream of this test's own: wf-old completed at T0, wf-mid failed
    (its request full of control characters) half an hour later, wf-new running an hour later."""
    prefix = unique("wl")
    subjects = Subjects(prefix)
    spec = StreamSpec(name=prefix.upper(), subjects=subjects.events)
    monkeypatch.setenv("CADRE_NATS_URL", nats_url)
    monkeypatch.setenv("CADRE_SUBJECT_PREFIX", prefix)
    monkeypatch.setenv("CADRE_STREAM_NAME", spec.name)

    async def go() -> None:
        nc = await connect(ConnectOptions(url=nats_url))
        log = JetStreamLog(nc, stream=spec, subjects=subjects)
        await log.ensure_stream()
        await log.append("wf-old", happy_run("wf-old"), expected_seq=0)
        await log.append("wf-new", shifted(running_run("wf-new"), timedelta(hours=1)), expected_seq=0)
        await log.append("wf-mid", shifted(failed_run("wf-mid", HOSTILE), timedelta(minutes=30)), expected_seq=0)
        await nc.drain()

    asyncio.run(go())


def listing(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    assert main(["workflows", "--json", *argv]) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)["workflows"]
    return rows


def test_newest_first_with_state_request_start_and_duration(seeded: None, capsys: pytest.CaptureFixture[str]) -> None:
    rows = listing(capsys)
    assert [(r["workflow_id"], r["state"]) for r in rows] == [
        ("wf-new", "running"),
        ("wf-mid", "failed"),
        ("wf-old", "completed"),
    ]
    new, mid, old = rows
    assert mid["request"] == HOSTILE  # --json gives the exact text (escaped in the JSON)
    assert mid["started_at"] == msgspec.to_builtins(T0 + timedelta(minutes=30))
    assert mid["ended_at"] == msgspec.to_builtins(T0 + timedelta(minutes=30, seconds=2.5))
    assert mid["duration_s"] == 2.5  # its end is 2 500 ms after its request
    assert old["request"] == "report the top customers"
    assert old["events"] == 4
    assert new["ended_at"] is None
    assert isinstance(new["duration_s"], float)
    assert new["duration_s"] > 0


def test_state_and_limit_filter(seeded: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert [r["workflow_id"] for r in listing(capsys, "--state", "failed")] == ["wf-mid"]
    assert [r["workflow_id"] for r in listing(capsys, "--limit", "2")] == ["wf-new", "wf-mid"]
    assert [r["workflow_id"] for r in listing(capsys, "--state", "completed", "--limit", "1")] == ["wf-old"]
    assert listing(capsys, "--state", "awaiting_approval") == []
    assert main(["workflows", "--limit", "0"]) == 2
    assert "--limit takes a count of 1 or more" in capsys.readouterr().err


def test_the_text_listing_shows_control_characters_inert(seeded: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows"]) == 0
    out, err = capsys.readouterr()
    assert RAW_CONTROLS.search(out + err) is None
    lines = out.splitlines()
    assert lines[0].split() == ["STARTED", "(UTC)", "DURATION", "STATE", "WORKFLOW", "REQUEST"]
    assert [line.split()[3] for line in lines[1:]] == ["running", "failed", "completed"]
    assert "2.50s" in lines[2]
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\rFAKE\\nline two\\x9b31m\\u202eevil" in lines[2]
    assert lines[1].split()[2].endswith("+")  # still running: the duration so far


def test_events_and_audit_number_events_the_same_way(seeded: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "wf-mid"]) == 0
    events = re.findall(r"^#(\d+) +seq (\d+) .*?(workflow_\w+|plan_\w+)", capsys.readouterr().out, re.M)
    assert main(["audit", "wf-mid"]) == 0
    audit = re.findall(r"^  #(\d+) +seq (\d+) .*?(workflow_\w+|plan_\w+)", capsys.readouterr().out, re.M)
    assert events == audit
    assert [(int(i), t) for i, _, t in events] == [
        (0, "workflow_requested"),
        (1, "plan_proposed"),
        (2, "workflow_failed"),
    ]
    assert main(["events", "wf-mid", "--json"]) == 0
    as_json = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(str(x["index"]), str(x["seq"])) for x in as_json] == [(i, s) for i, s, _ in events]
