"""The cadre command line, run as a user runs it, against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from cadre.bus import ConnectOptions, StreamSpec, Subjects, connect
from cadre.bus.errors import NatsAuthError
from cadre.cli import main
from cadre.store import JetStreamLog
from tests.conftest import unique
from tests.log_contract import happy_run

CADRE = [sys.executable, "-m", "cadre.cli"]


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, nats_url: str) -> tuple[str, Subjects, StreamSpec]:
    """CADRE_* settings that point the CLI at the test server, on a stream of this test's own."""
    prefix = unique("c")
    subjects = Subjects(prefix)
    spec = StreamSpec(name=prefix.upper(), subjects=subjects.events)
    monkeypatch.setenv("CADRE_NATS_URL", nats_url)
    monkeypatch.setenv("CADRE_SUBJECT_PREFIX", prefix)
    monkeypatch.setenv("CADRE_STREAM_NAME", spec.name)
    return nats_url, subjects, spec


def seed(url: str, subjects: Subjects, spec: StreamSpec, garbage: bytes | None = None) -> None:
    async def go() -> None:
        nc = await connect(ConnectOptions(url=url))
        log = JetStreamLog(nc, stream=spec, subjects=subjects)
        await log.ensure_stream()
        await log.append("wf1", happy_run("wf1"), expected_seq=0)
        if garbage is not None:
            await nc.jetstream().publish(subjects.event("wf1", "x"), garbage)
        await nc.drain()

    asyncio.run(go())


def test_events_json_is_one_object_per_event(
    isolated: tuple[str, Subjects, StreamSpec], capsys: pytest.CaptureFixture[str]
) -> None:
    seed(*isolated)
    assert main(["events", "wf1", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["type"] for x in lines] == ["workflow_requested", "plan_proposed", "step_completed", "workflow_completed"]
    assert [x["seq"] for x in lines] == [1, 2, 3, 4]
    assert lines[-1]["data"] == {"result": {"rows": [1]}}


def test_garbage_is_reported_with_its_sequence(
    isolated: tuple[str, Subjects, StreamSpec], capsys: pytest.CaptureFixture[str]
) -> None:
    seed(*isolated, garbage=b"not an event")
    assert main(["events", "wf1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].startswith("#4    seq 5      MALFORMED  ")
    assert "JSON is malformed" in out
    assert err == "cadre: 1 malformed message(s) at stream sequence 5\n"
    assert main(["events", "wf1", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["seq"] == 5
    assert last["malformed"].startswith("JSON is malformed")


def test_export_then_events_from_file(
    isolated: tuple[str, Subjects, StreamSpec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(*isolated, garbage=b"\x00")
    out_file = tmp_path / "wf1.jsonl"
    assert main(["export", "wf1", "-o", str(out_file)]) == 0
    assert "exported 5 records of 1 workflow(s)" in capsys.readouterr().err
    assert main(["events", "wf1", "--json"]) == 0
    live = capsys.readouterr().out
    assert main(["events", "wf1", "--json", "--from-file", str(out_file)]) == 0
    assert capsys.readouterr().out == live


def test_workflows(isolated: tuple[str, Subjects, StreamSpec], capsys: pytest.CaptureFixture[str]) -> None:
    seed(*isolated)
    assert main(["workflows", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["workflows"]
    assert (row["workflow_id"], row["state"], row["request"]) == ("wf1", "completed", "report the top customers")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["events", "bad.id"], r"^cadre: invalid_name: workflow id 'bad\.id' is not a valid subject token"),
        (["export"], r"^cadre: usage_error: name the workflows to export, or pass --all"),
    ],
)
def test_usage_errors_exit_2(
    isolated: tuple[str, Subjects, StreamSpec], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    assert re.match(message, capsys.readouterr().err)


def test_unreachable_server_fails_fast_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CADRE_NATS_URL", "nats://127.0.0.1:1")
    started = time.monotonic()
    assert main(["events", "wf1", "--json"]) == 1
    assert time.monotonic() - started < 3
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["code"] == "nats_unavailable"
    assert err.startswith("cadre: nats_unavailable: no NATS server answered at nats://127.0.0.1:1")
    assert "cadre up" in err


def test_version() -> None:
    out = subprocess.run([*CADRE, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("cadre 0.")


def test_up_runs_the_embedded_server_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")}
    proc = subprocess.Popen(
        [*CADRE, "up", "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("cadre 0.1.0 up: embedded server at nats://127.0.0.1:")
        url = line.split(" at ")[1].strip()

        async def check() -> None:
            # The embedded server runs with authorization: no credentials, no connection.
            with pytest.raises(NatsAuthError, match="requires credentials and none were given"):
                await connect(ConnectOptions(url=url))
            admin = str(tmp_path / "d" / "auth" / "admin.creds")
            nc = await nats.connect(url, max_reconnect_attempts=1, user_credentials=admin)
            info = await nc.jetstream().stream_info("CADRE_EVENTS")
            assert info.config.subjects == ["cadre.evt.>"]
            await nc.drain()

        asyncio.run(check())
        assert (tmp_path / "d" / "server.json").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not (tmp_path / "d" / "server.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def runner_env(isolated: tuple[str, Subjects, StreamSpec], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("CADRE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CADRE_TOOL_MODULES", '["tests.plugin_tools"]')
    return tmp_path


def test_run_a_plan_file_to_its_end(runner_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = runner_env / "plan.json"
    plan_file.write_text(json.dumps({"nodes": [{"id": "x", "tool": "test.echo", "inputs": {"value": "hi"}}]}))
    assert main(["run", "--plan", str(plan_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "completed"
    assert out["result"] == {"value": "hi"}
    assert out["workflow_id"].startswith("wf-")
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["workflows"] == {"completed": 1}


def test_run_with_a_policy_file_runs_each_pools_steps_on_its_agents(
    runner_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = runner_env / "policy.toml"
    policy.write_text('[pools.echo]\ntools = ["test.echo"]\n[limits]\nmax_tasks = 2\n')
    plan_file = runner_env / "plan.json"
    nodes = [
        {"id": "x", "tool": "test.echo", "inputs": {"value": "hi"}, "pool": "echo"},
        {"id": "y", "tool": "test.echo", "inputs": {"value": "${x.value}"}, "depends_on": ["x"]},
    ]
    plan_file.write_text(json.dumps({"nodes": nodes, "output": "y"}))
    assert main(["run", "--policy", str(policy), "--plan", str(plan_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "completed"
    assert out["result"] == {"value": "hi"}
    plan_file.write_text(json.dumps({"nodes": [*nodes, {"id": "z", "tool": "test.echo", "inputs": {"value": "z"}}]}))
    assert main(["run", "--policy", str(policy), "--plan", str(plan_file), "--json"]) == 1  # over the file's limit
    assert json.loads(capsys.readouterr().out)["status"] == "failed"
    monkeypatch.setenv("CADRE_POLICY", str(policy))
    assert main(["status", "--json"]) == 0
    consumers = json.loads(capsys.readouterr().out)["consumers"]
    assert consumers["agent:echo"] == {"pending": 0, "in_flight": 0, "waiting": 0}  # the pool's own durable
    monkeypatch.delenv("CADRE_POLICY")
    assert main(["run", "--policy", str(runner_env / "missing.toml"), "x"]) == 2
    assert "cannot read policy file" in capsys.readouterr().err
    assert main(["actor", "planner", "--pool", "echo", "--policy", str(policy)]) == 2
    assert "--pool names the agent pool of `cadre actor agent`" in capsys.readouterr().err
    assert main(["actor", "agent", "--pool", "web", "--policy", str(policy)]) == 2
    assert "agent pool 'web' is not declared in the deployment's policy (pools: echo)" in capsys.readouterr().err


def test_run_without_a_plan_fails_with_exit_1(runner_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "what is the weather in Paris"]) == 1
    out = capsys.readouterr().out
    assert "FAILED    no_plan: no plan for this request" in out
    assert "workflow wf-" in out


def test_run_and_submit_need_something_to_do(runner_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert "give the request in words" in capsys.readouterr().err
    assert main(["run", "--plan", str(runner_env / "missing.json")]) == 2
    assert "cannot read plan file" in capsys.readouterr().err


def test_invalid_request_is_a_usage_error(runner_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "x", "--budget", "-1", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["code"] == "invalid_request"
    assert "$.budget_usd" in out["error"]["message"]


def test_submit_without_a_running_cadre_says_what_to_start(
    runner_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CADRE_REQUEST_TIMEOUT_S", "1")
    monkeypatch.setenv("CADRE_NATS_RETRY_S", "2")  # asked again for that long (an intake may be restarting)
    started = time.monotonic()
    assert main(["submit", "hello"]) == 1
    err = capsys.readouterr().err
    # The requests stream keeps the request: it becomes a workflow when an intake runs.
    assert "no intake answered on c" in err
    assert "the request is stored" in err
    assert "send it again with idempotency_key 'cli-" in err
    assert time.monotonic() - started < 8


def test_schemas_and_tools(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "request"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert {"request", "plan", "budget_usd", "intelligence", "mode", "idempotency_key"} <= set(request["properties"])
    assert request["additionalProperties"] is False
    assert main(["schema", "event"]) == 0
    event = json.loads(capsys.readouterr().out)
    assert len(event["oneOf"]) == 32  # bus.events.EVENT_TYPES
    assert main(["tools", "--json"]) == 0
    names = [t["name"] for t in json.loads(capsys.readouterr().out)]
    assert names == ["sql.schema", "sql.query", "fs.read", "fs.write", "http.get", "text.render"]


HOSTILE = "\x1b[2J\x1b]0;pwned\x07\rFAKE\nline two\x9b31m\u202eevil\u200b"
RAW_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def test_recorded_escape_sequences_are_shown_not_sent(runner_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A request whose text, plan and tool output hold terminal escape sequences: every printer
    of recorded text shows them escaped; no raw ESC, BEL, CR, C1 or bidi character reaches the
    screen, and a line break inside a field does not start a line of its own."""
    plan_file = runner_env / "plan.json"
    plan = {"nodes": [{"id": "x", "tool": "test.echo", "description": HOSTILE, "inputs": {"value": HOSTILE}}]}
    plan_file.write_text(json.dumps(plan))
    assert main(["run", HOSTILE, "--plan", str(plan_file)]) == 0
    progress = capsys.readouterr()
    wf = re.search(r"workflow (wf-\S+)", progress.out)
    assert wf is not None
    outputs = {"run": progress.out + progress.err}
    for name, argv in {
        "events": ["events", wf[1]],
        "events --at": ["events", wf[1], "--at", "3"],
        "audit": ["audit", wf[1]],
        "audit --verify": ["audit", wf[1], "--verify"],
        "replay": ["replay", wf[1]],
        "workflows": ["workflows"],
        "stats": ["stats"],
        "status": ["status"],
    }.items():
        assert main(argv) == 0, name
        out, err = capsys.readouterr()
        outputs[name] = out + err
    for name, text in outputs.items():
        assert RAW_CONTROLS.search(text) is None, (name, RAW_CONTROLS.search(text))
    shown = "\\x1b[2J\\x1b]0;pwned\\x07\\rFAKE\\nline two\\x9b31m\\u202eevil\\u200b"
    for name in ("run", "events --at", "audit"):
        assert f"request   {shown}" in outputs[name] or f"request    {shown}" in outputs[name], name
    assert f"- x: test.echo  {shown}" in outputs["run"]  # the plan's task description
    in_json = "\\u001b[2J\\u001b]0;pwned\\u0007\\rFAKE\\nline two\\x9b31m\\u202eevil\\u200b"
    assert f'{{"request":"{in_json}"' in outputs["events"]
    # The request's line break is escaped inside its field: no line of the output starts with it.
    for name in ("run", "events", "events --at", "audit"):
        assert not any(line.startswith("line two") for line in outputs[name].splitlines()), name

    html_file = runner_env / "audit.html"
    assert main(["audit", wf[1], "--html", str(html_file)]) == 0
    capsys.readouterr()
    page = html_file.read_text()
    assert RAW_CONTROLS.search(page) is None
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in page

    # --json is still JSON and gives back the exact recorded text, its controls as \u escapes.
    assert main(["events", wf[1], "--json"]) == 0
    raw = capsys.readouterr().out
    assert RAW_CONTROLS.search(raw) is None
    events = [json.loads(line) for line in raw.splitlines()]
    assert events[0]["data"]["request"] == HOSTILE
    assert "\\u009b" in raw
    assert "\\u202e" in raw
    for argv in (["audit", wf[1]], ["replay", wf[1]], ["events", wf[1], "--at", "3"], ["status"]):
        assert main([*argv, "--json"]) == 0
        raw = capsys.readouterr().out
        assert RAW_CONTROLS.search(raw) is None, argv
        assert [json.loads(line) for line in raw.splitlines()], argv
