"""``cadre events WF --at SEQ``: a workflow's state as of a stream sequence, live or from a file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cadre.bus import StreamSpec, Subjects
from cadre.cli import main
from tests.test_cli import isolated, seed  # noqa: F401  (isolated is a fixture)

Isolated = tuple[str, Subjects, StreamSpec]


def state_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["events", "wf1", "--json", *argv]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_the_state_at_each_sequence(isolated: Isolated, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    seed(*isolated)  # wf1: requested #1, plan_proposed #2, step_completed #3, workflow_completed #4
    statuses = [state_json(capsys, "--at", str(seq))["status"] for seq in range(5)]
    assert statuses == ["new", "requested", "planned", "planned", "completed"]
    at2 = state_json(capsys, "--at", "2")
    assert (at2["at"], at2["events"], at2["last_seq"], at2["later"]) == (2, 2, 2, 2)
    assert at2["plan_source"] == "explicit"
    assert at2["tasks"]["q"]["status"] == "pending"  # type: ignore[index]
    assert "last_data" not in at2
    end = state_json(capsys, "--at", "99")
    assert end["result"] == {"rows": [1]}
    assert end["later"] == 0


def test_the_head_at_a_sequence_is_what_the_next_event_chains_to(
    isolated: Isolated,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(*isolated)
    at2 = state_json(capsys, "--at", "2")
    assert main(["events", "wf1", "--json"]) == 0
    third = json.loads(capsys.readouterr().out.splitlines()[2])
    assert third["seq"] == 3
    assert at2["last_hash"] == third["prev"]
    assert state_json(capsys, "--at", "0")["last_hash"] == ""


def test_human_readable(isolated: Isolated, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    seed(*isolated)
    assert main(["events", "wf1", "--at", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "workflow wf1 as of stream sequence 3: planned"
    assert lines[1].startswith("  events    3, 1 later, last at #3 (chain head ")
    assert lines[2] == "  request   report the top customers"
    assert lines[3] == "  plan      revision 1 (explicit), 1 task(s), output q"
    assert lines[4] == "  task      q              pending"
    assert len(lines) == 5  # this run proposed no steps (its step_completed names none the fold knows)
    assert main(["events", "wf1", "--at", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == '  result    {"rows":[1]}'


def test_from_a_file_the_same_as_live(
    isolated: Isolated,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(*isolated, garbage=b"not an event")  # a malformed message at #5
    out_file = tmp_path / "wf1.jsonl"
    assert main(["export", "wf1", "-o", str(out_file)]) == 0
    capsys.readouterr()
    for at in ("2", "5"):
        live = state_json(capsys, "--at", at)
        assert state_json(capsys, "--at", at, "--from-file", str(out_file)) == live
    after_garbage = state_json(capsys, "--at", "5")
    assert (after_garbage["events"], after_garbage["last_seq"]) == (4, 5)  # the malformed message moved the head


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["events", "wf1", "--at", "2", "--follow"], r"^cadre: usage_error: --at shows one moment"),
        (["events", "wf1", "--at", "-1"], r"^cadre: usage_error: --at takes a stream sequence \(0 or more\), not -1"),
        (["events", "nope", "--at", "2"], r"^cadre: usage_error: no workflow 'nope' in the log"),
    ],
)
def test_usage_errors(
    isolated: Isolated,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    seed(*isolated)
    assert main(argv) == 2
    assert re.match(message, capsys.readouterr().err)


def test_tasks_and_steps_as_the_fold_saw_them() -> None:
    from cadre.state_view import state_at, state_lines
    from tests.test_integrity import chained, run_events

    records = chained(run_events("wf"), Subjects("cadre"), start=1, step=1)  # seq 1..9
    at6 = state_at("wf", records, 6)
    assert (at6.status, at6.tasks["q"].status, at6.steps["q.s1"].status) == ("running", "running", "ready")
    lines = state_lines(at6, 6, later=3)
    assert "  task      q              running    attempt 1" in lines
    assert "  step      q.s1           ready      sql.query" in lines
    done = state_lines(state_at("wf", records, 9), 9, later=0)
    assert "  step      q.s1           completed  sql.query" in done
    assert done[0] == "workflow wf as of stream sequence 9: completed"
