"""Clients outside cadre, holding only the client creds file, against a real `cadre up`.

A nats.js client (tests/js/client.mjs, packages pinned by tests/js/package-lock.json) submits a
request, follows its workflow's events from the readers' mirror to workflow_completed, and is
refused when it forges an event; the README's nats-py example runs as written.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "tests" / "js"
REQUEST = "find the three customers who spent most in 2024 and write a report"
# Settings from the environment a developer may have set that would change what `cadre up` does.
FOREIGN_ENV = ("ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Cadre:
    url: str
    workdir: Path  # `cadre up` runs here, with its default data dir ./.cadre
    client_creds: Path
    admin_creds: Path


@pytest.fixture(scope="module")
def cadre_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cadre]:
    """`cadre up` as a user starts it: default data dir (./.cadre of its working directory), no model."""
    work = tmp_path_factory.mktemp("clients")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_") and k not in FOREIGN_ENV}
    env["CADRE_PLAN_LIBRARY"] = str(REPO / "examples" / "plans")
    env["CADRE_LLM_PROVIDER"] = "none"
    out_file, err_file = work / "up.out", work / "up.err"
    with out_file.open("wb") as out, err_file.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cadre.cli", "up"], cwd=work, env=env, stdout=out, stderr=err, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 40
        ready = None
        while ready is None:
            ready = re.search(r"other NATS clients: (\S+) with the credentials in (\S+)", out_file.read_text())
            assert proc.poll() is None, f"cadre up exited {proc.returncode}: {err_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"cadre up did not get ready: {out_file.read_text()}"
            time.sleep(0.1)
        client = work / ready[2]
        assert client == work / ".cadre" / "auth" / "client.creds"
        yield Cadre(ready[1], work, client, client.with_name("admin.creds"))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _node() -> str:
    """node and the pinned packages, or a failure that says how to get them (never a silent skip)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: the nats.js client check needs Node.js 20+ and npm; "
            "`make test` then installs its packages (`npm ci --prefix tests/js`)"
        )
    for package in ("@nats-io/transport-node", "@nats-io/jetstream"):
        if not (JS_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"tests/js/node_modules lacks {package}: run `make test` or `npm ci --prefix tests/js`")
    return node


async def _stored_events(cadre: Cadre, wf: str) -> list[dict[str, Any]]:
    """The workflow's messages in cadre's own stream, read as the admin (not through the mirror)."""
    nc = await nats.connect(cadre.url, user_credentials=str(cadre.admin_creds), allow_reconnect=False)
    try:
        sub = await nc.jetstream().subscribe(f"cadre.evt.{wf}.>", stream="CADRE_EVENTS", ordered_consumer=True)
        seen: list[dict[str, Any]] = []
        while True:
            msg = await sub.next_msg(timeout=5)
            seen.append({"seq": msg.metadata.sequence.stream, "subject": msg.subject, "body": json.loads(msg.data)})
            if msg.metadata.num_pending == 0:
                return seen
    finally:
        await nc.close()


@pytest.mark.timeout(150)
def test_a_natsjs_client_with_the_client_creds_submits_follows_and_cannot_forge(cadre_up: Cadre) -> None:
    node = _node()
    run = subprocess.run(
        [node, str(JS_DIR / "client.mjs"), cadre_up.url, str(cadre_up.client_creds), REQUEST],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cadre_up.workdir,
    )
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 0, (run.stdout, run.stderr)
    steps = [x["step"] for x in lines]

    # (1) The request was answered with a workflow id.
    assert steps[0] == "reply"
    wf = lines[0]["reply"]["workflow_id"]
    assert re.fullmatch(r"wf-[0-9a-f]+", wf), lines[0]

    # (2) Its events, from the mirror, in order, ending with workflow_completed: the very
    # sequences and subjects of cadre's own stream, every event up to the end.
    seen = [x for x in lines if x["step"] == "event"]
    assert steps[: 1 + len(seen)] == ["reply"] + ["event"] * len(seen)
    assert seen[0]["type"] == "workflow_requested"
    assert seen[-1]["type"] == "workflow_completed"
    assert [x["type"] for x in seen].count("workflow_completed") == 1
    stored = asyncio.run(_stored_events(cadre_up, wf))
    end = next(i for i, s in enumerate(stored) if s["body"]["type"] == "workflow_completed")
    expected = [
        {"seq": s["seq"], "subject": s["subject"], "type": s["body"]["type"], "id": s["body"]["id"]}
        for s in stored[: end + 1]
    ]
    assert [{k: x[k] for k in ("seq", "subject", "type", "id")} for x in seen] == expected
    assert {"plan_proposed", "plan_validated", "step_completed"} <= {x["type"] for x in seen}
    assert (cadre_up.workdir / ".cadre" / "workspace" / "reports" / "top_customers_2024.md").is_file()

    # (3) Forging the workflow's end: the core publish is refused with a permissions violation,
    # the JetStream publish gets no acknowledgement, and nothing is stored.
    forged = f"cadre.evt.{wf}.workflow_completed"
    forge = next(x for x in lines if x["step"] == "forge")
    assert forge["subject"] == forged
    assert [(v["name"], v["subject"]) for v in forge["violations"]] == [("PermissionViolationError", forged)]
    assert "Permissions Violation for Publish" in forge["violations"][0]["message"]
    jsforge = next(x for x in lines if x["step"] == "jsforge")
    assert jsforge["acked"] is False, jsforge
    assert "Permissions Violation for Publish" in jsforge["message"], jsforge
    done = lines[-1]
    assert done["step"] == "done"
    # The only refusals of the whole run are the two forges: reading needed nothing it may not do.
    assert [(v["name"], v["subject"]) for v in done["violations"]] == [("PermissionViolationError", forged)] * 2
    after = asyncio.run(_stored_events(cadre_up, wf))
    assert not any(done["mark"] in json.dumps(s["body"]) for s in after)
    assert [s["seq"] for s in after if s["subject"] == forged] == [seen[-1]["seq"]]


def _readme_nats_py_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### A request from any NATS client\n", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the README's section 'A request from any NATS client' has no python example"
    return block[1]


@pytest.mark.timeout(120)
def test_the_readme_nats_py_example_runs_as_written(cadre_up: Cadre) -> None:
    """The example verbatim, in the directory where `cadre up` runs, only the URL it printed put in."""
    code = _readme_nats_py_example()
    assert code.count('"nats://127.0.0.1:4222"') == 1
    code = code.replace('"nats://127.0.0.1:4222"', json.dumps(cadre_up.url))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, cwd=cadre_up.workdir)
    assert run.returncode == 0, (run.stdout, run.stderr)
    out = run.stdout.splitlines()
    assert out[0] == "workflow_requested"
    assert out[-2] == "workflow_completed"
    assert "plan_proposed" in out
    assert out[-1].startswith("{'result': ")
    assert (cadre_up.workdir / ".cadre" / "workspace" / "reports" / "monthly_revenue_2024.md").is_file()


@pytest.mark.timeout(120)
def test_the_natsjs_example_submits_and_follows(cadre_up: Cadre, tmp_path: Path) -> None:
    """examples/natsjs/submit_and_follow.mjs as a user runs it: beside a node_modules holding its
    packages (the pinned ones of tests/js, the versions its package.json names)."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH: the nats.js example needs Node.js 20+")
    node = _node()
    example = REPO / "examples" / "natsjs"
    wanted = json.loads((example / "package.json").read_text())["dependencies"]
    assert wanted == json.loads((JS_DIR / "package.json").read_text())["dependencies"]
    shutil.copy(example / "submit_and_follow.mjs", tmp_path)
    (tmp_path / "node_modules").symlink_to(JS_DIR / "node_modules", target_is_directory=True)
    run = subprocess.run(
        [node, str(tmp_path / "submit_and_follow.mjs"), cadre_up.url, str(cadre_up.client_creds), REQUEST],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cadre_up.workdir,
    )
    assert run.returncode == 0, (run.stdout, run.stderr)
    lines = run.stdout.splitlines()
    head = re.fullmatch(r"workflow (wf-[0-9a-f]+)", lines[0])
    assert head is not None, lines
    events = [re.fullmatch(r"#(\d+) (\w+)", line) for line in lines[1:-1]]
    assert all(events), lines
    types = [m[2] for m in events if m is not None]
    assert types[0] == "workflow_requested"
    assert types[-1] == "workflow_completed"
    assert {"plan_proposed", "plan_validated", "step_completed"} <= set(types)
    # The very events cadre stored for the workflow, in order, up to its end.
    stored = asyncio.run(_stored_events(cadre_up, head[1]))
    assert [(int(m[1]), m[2]) for m in events if m is not None] == [
        (s["seq"], s["body"]["type"]) for s in stored[: len(events)]
    ]
    end = json.loads(lines[-1])
    assert end["status"] == "completed"
    assert end["result"] == stored[len(events) - 1]["body"]["data"]["result"]
