"""The audit page shows what ran (issue 15, item 3): each tool call's inputs and output, the DAG laid
out by dagre, per-task timing, the chain's verdict and the signer of every event; all escaped, one
self-contained file of bounded size.

The golden log's events are signed here, each by a key of the role that emits it (the keyring the
page is checked with), and one is re-signed by a role that may not emit its type: a forgery.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from cadre import audit_dag, audit_html
from cadre.audit_details import details
from cadre.bus import codec
from cadre.bus.effects import ToolCalled
from cadre.bus.signing import Keyring, Signer, new_seed
from cadre.store.audit import audit
from cadre.store.filelog import FileLog
from cadre.store.integrity import verify
from cadre.store.objects import resolve_record
from cadre.store.records import Malformed, Record, StoredEvent

GOLDEN = Path(__file__).parent / "golden"
ROLES = ("intake", "planner", "validator", "decomposer", "agent", "approvals")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def golden(name: str) -> tuple[str, list[Record]]:
    manifest = json.loads((GOLDEN / "manifest.json").read_text())["logs"][name]
    wf = manifest["workflow_id"]
    return wf, asyncio.run(FileLog.load(GOLDEN / manifest["file"]).read_records(wf))


def signed(records: list[Record]) -> tuple[list[Record], Keyring, dict[str, Signer]]:
    signers = {role: Signer(new_seed(), role) for role in ROLES}
    keyring = Keyring.of((s.public_key, role, f"{role}-1") for role, s in signers.items())
    out: list[Record] = []
    for r in records:
        assert isinstance(r, StoredEvent)
        sig = signers[r.event.actor].sign(r.subject, r.event.id, r.data)
        out.append(msgspec.structs.replace(r, signature=sig))
    return out, keyring, signers


def page(records: list[Record], keyring: Keyring | None) -> str:
    report = audit(records, keyring)
    return audit_html.render(report, details(records, keyring, verify(records)))


def text_of(html_page: str) -> str:
    """The page's text as a reader sees it (tags dropped, entities decoded)."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", " ", html_page))


def test_the_page_of_a_golden_log_shows_what_ran_and_who_signed_each_event() -> None:
    _, records = golden("happy_library")
    records, keyring, signers = signed(records)
    # One forgery: the agent's key re-signs the planner's workflow_completed (the agent may not emit it).
    i = len(records) - 1
    r = records[i]
    assert isinstance(r, StoredEvent)
    assert r.event.type == "workflow_completed"
    records[i] = msgspec.structs.replace(r, signature=signers["agent"].sign(r.subject, r.event.id, r.data))

    out = page(records, keyring)
    text = text_of(out)
    # what ran: the query's SQL, its rows, the report's text (as the report step's output and fs.write's input)
    assert "SELECT c.name AS customer, COUNT(o.id) AS orders" in text
    assert '"Radia Perlman",\n      4,\n      447.0' in text
    assert "# Top customers of 2024" in text
    assert "| Radia Perlman | 4 | 447.0 |" in text
    assert "(as planned: their digest is not the recorded one)" not in text  # every input found by digest
    # the DAG's data, drawn by the vendored dagre
    graph = json.loads(re.search(r'<script type="application/json" id="cadre-dag">(.*?)</script>', out).group(1))  # type: ignore[union-attr]
    assert [n["id"] for n in graph["nodes"]] == ["top", "report", "save"]
    assert graph["edges"] == [["top", "report"], ["report", "save"]]
    assert {n["state"] for n in graph["nodes"]} == {"completed"}
    assert audit_dag.dagre_source()[:200] in out
    # per-task timing
    assert "Task timing" in text
    assert re.search(r"<td><code>save</code></td><td>completed</td>", out)
    # the chain, and each event's signer; the forgery flagged
    assert "Integrity:  chain intact: 16 events" in text
    rows = re.findall(r'<a id="e(\d+)"></a>.*?</tr>', out)
    assert len(rows) == 16
    for n, row in enumerate(re.findall(r'<a id="e\d+"></a>.*?</tr>', out)):
        role = records[n].event.actor  # type: ignore[union-attr]
        if n == i:
            assert "FORGED" in row
            assert "agent may not emit workflow_completed" in row
        else:
            assert f'<span class="ok">signed</span> {role} ({role}-1)' in row
    assert "1 event(s) not written by a party allowed to" in text


def test_without_a_keyring_the_page_says_signatures_were_not_checked() -> None:
    _, records = golden("happy_library")
    text = text_of(page(records, None))
    assert "Signatures:  not checked: no keyring" in text
    assert "not checked" in text.split("Timeline", 1)[1]


HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>\x1b[2J\x1b]0;pwned\x07\u202e"


def hostile(records: list[Record]) -> list[Record]:
    """The log with hostile text in the request, a step's inputs, a task's description and a tool's output."""
    out: list[Record] = []
    for r in records:
        assert isinstance(r, StoredEvent)
        data = r.event.data
        t = r.event.type
        if t == "workflow_requested":
            data = msgspec.structs.replace(data, request=HOSTILE)  # type: ignore[arg-type]
        elif t == "plan_proposed":
            nodes = tuple(msgspec.structs.replace(n, description=HOSTILE) for n in data.plan.nodes)  # type: ignore[attr-defined]
            data = msgspec.structs.replace(data, plan=msgspec.structs.replace(data.plan, nodes=nodes))  # type: ignore[attr-defined,arg-type]
        elif t == "step_completed" and data.step_id == "top.s1":  # type: ignore[attr-defined]
            output = {"rows": [[HOSTILE, 1]]}
            effects = tuple(msgspec.structs.replace(f, output=output) for f in r.event.effects)
            data = msgspec.structs.replace(data, output=output)  # type: ignore[arg-type]
            r = msgspec.structs.replace(r, event=msgspec.structs.replace(r.event, effects=effects))
        elif t == "step_ready" and data.step.id == "top.s1":  # type: ignore[attr-defined]
            step = msgspec.structs.replace(data.step, inputs={"sql": HOSTILE})  # type: ignore[attr-defined]
            data = msgspec.structs.replace(data, step=step)  # type: ignore[arg-type]
        out.append(msgspec.structs.replace(r, event=msgspec.structs.replace(r.event, data=data)))
    return out


def test_html_and_terminal_control_characters_are_inert_text() -> None:
    _, records = golden("happy_library")
    out = page(hostile(records), None)
    assert "<script>alert" not in out
    assert "<img" not in out
    assert "onerror=alert(2)>" not in out
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\u202e" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out  # the request, the inputs, the output, as text
    assert out.count("\\x1b[2J") >= 3
    assert "\\u202e" in out
    graph = re.search(r'<script type="application/json" id="cadre-dag">(.*?)</script>', out).group(1)  # type: ignore[union-attr]
    assert "<" not in graph
    assert json.loads(graph)["nodes"][0]["description"].startswith("<script>")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
def test_a_real_browser_lays_the_dag_out_with_dagre_and_runs_nothing_from_the_log(tmp_path: Path) -> None:
    _, records = golden("happy_library")
    file = tmp_path / "audit.html"
    file.write_text(page(hostile(records), None), encoding="utf-8")
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", file.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert 'data-layout="dagre"' in dom
    nodes = {
        m.group(1): (m.group(2), int(m.group(3)))
        for m in re.finditer(r'<g class="node [a-z]+" data-task="([^"]+)" data-state="([a-z]+)" data-x="(-?\d+)"', dom)
    }
    assert set(nodes) == {"top", "report", "save"}
    assert all(state == "completed" for state, _ in nodes.values())
    assert nodes["top"][1] < nodes["report"][1] < nodes["save"][1]  # laid out left to right along the edges
    assert dom.count("<polyline") == 2
    # the hostile description is the nodes' tooltip text, not an element
    assert "<img" not in dom
    assert "&lt;img src=x onerror=alert(2)&gt;" in dom


def test_an_output_whose_object_is_not_at_hand_shows_its_reference() -> None:
    _, records = golden("output_by_reference")
    raw: list[Record] = []
    for r in records:
        assert isinstance(r, StoredEvent)
        raw.append(resolve_record(msgspec.structs.replace(r, event=codec.decode(r.data)), {}))  # no objects
    assert any(isinstance(r, Malformed) for r in raw)
    text = text_of(page(raw, None))
    assert "object not at hand" in text
    assert "SELECT" in text.split("object not at hand", 1)[1]  # its inputs, from the step the validator cleared
    assert re.search(r"stored by reference\s+sha256:[0-9a-f]{64}\s*; its object is not at hand \(\d+ bytes\)", text)
    # with the objects, the same call shows its rows, cut to the bound
    full = text_of(page(records, None))
    assert re.search(r"\(stored by reference\s+sha256:", full) is not None
    assert "more characters (cadre events --json has the whole value)" in full


def test_the_page_stays_bounded_for_a_huge_workflow() -> None:
    _, records = golden("happy_library")
    big: list[Record] = list(records[:-1])
    seq = len(records)
    calls = [r for r in records if isinstance(r, StoredEvent) and r.event.type == "step_completed"]
    for n in range(4000):  # 4 000 more tool calls, each with a 30 kB output
        r = calls[n % len(calls)]
        assert isinstance(r, StoredEvent)
        effects = tuple(
            msgspec.structs.replace(f, output={"blob": "x" * 30_000}) if isinstance(f, ToolCalled) else f
            for f in r.event.effects
        )
        seq += 1
        big.append(msgspec.structs.replace(r, seq=seq, event=msgspec.structs.replace(r.event, effects=effects)))
    big.append(records[-1])
    out = page(big, None)
    assert len(out.encode()) < 4_000_000  # 120 MB of outputs: 2.2 MB of page
    assert f"Later calls are shown by digest only (above {audit_html.MAX_CALL_VALUES})" in out
    assert "event(s) left out here" in out
    assert f'<a id="e{len(big) - 1}"></a>' in out  # the timeline keeps its last events


def test_the_vendored_dagre_is_the_npm_release_byte_for_byte() -> None:
    """@dagrejs/dagre 3.1.4 from npm (``npm pack @dagrejs/dagre@3.1.4``: package/dist/dagre.min.js and
    package/LICENSE); the console ships the same two files at the same paths."""
    import hashlib

    vendor = Path(audit_dag.__file__).parent / "static" / "vendor"
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in vendor.glob("dagre.*")}
    assert sums == {
        "dagre.min.js": "413e0ebe0fe7bfe47140ad029d7ebf9296f6867d181e1d4a12db87b99feaaf61",
        "dagre.LICENSE": "6a349742a6cb219d5a2fc8d0844f6d89a6efc62e20c664450d884fc7ff2d6015",
    }


def test_every_tool_call_of_every_golden_log_has_its_inputs_found_by_digest() -> None:
    """The inputs the page shows are the ones the call was made with: their digest is the recorded one
    (steps, resolved steps, fallbacks, proposals, compensations)."""
    logs = json.loads((GOLDEN / "manifest.json").read_text())["logs"]
    calls = 0
    for name in logs:
        _, records = golden(name)
        found = details(records, None).calls.values()
        calls += len(found)
        assert [(v.tool, v.step_id) for v in found if not v.inputs_match] == [], name
    assert calls >= 40


async def test_the_cli_page_of_a_real_signed_run_names_each_signer_and_flags_a_re_signed_event(
    nats_url: str, tmp_path: Path
) -> None:
    """End to end: a run signed by the real actors, exported with its keyring; ``cadre audit --html``
    names each event's signer, then flags the step_completed re-signed with the planner's key."""
    import io

    from cadre.bus.signing import load_keyring
    from cadre.cli import main
    from cadre.store.filelog import write_export
    from tests.system_harness import cadre_running, settings_for

    settings = settings_for(nats_url, tmp_path)
    plan = {"nodes": [{"id": "x", "tool": "text.render", "inputs": {"template": "<b>hi</b>", "values": {}}}]}
    async with cadre_running(settings) as h:
        state = await h.run({"plan": plan})
        wf = state.workflow_id
        records = await h.bus.log.read_records(wf)
    keys = settings.auth_dir / "keyring.json"
    buf = io.BytesIO()
    write_export(buf, records, stream=settings.stream_name, subjects=settings.subjects, keyring=load_keyring(keys))
    export, out = tmp_path / "run.jsonl", tmp_path / "audit.html"
    export.write_bytes(buf.getvalue())
    argv = ["audit", wf, "--from-file", str(export), "--keys", str(keys), "--html", str(out)]
    assert await asyncio.to_thread(main, argv) == 0
    page = out.read_text()
    rows = re.findall(r'<a id="e\d+"></a>.*?</tr>', page)
    assert len(rows) == len(records)
    for r, row in zip(records, rows, strict=True):
        assert isinstance(r, StoredEvent)
        assert re.search(rf'<span class="ok">signed</span> {r.event.actor}\b', row), (r.event.type, row)
    assert "every event signed by a role allowed to emit it" in page
    assert "&lt;b&gt;hi&lt;/b&gt;" in page  # the tool's input and output, as text
    assert "<b>hi</b>" not in page

    planner = Signer.from_creds(settings.auth_dir / "planner.creds", "planner")
    lines = export.read_text().splitlines()
    for k, line in enumerate(lines[1:], start=1):
        row = json.loads(line)
        if row["subject"].endswith(".step_completed"):
            stored = next(r for r in records if isinstance(r, StoredEvent) and r.seq == row["seq"])
            sig = planner.sign(stored.subject, stored.event.id, stored.data)
            lines[k] = line[: line.index('"signer"')] + f'"signer":"{sig.signer}","sig":"{sig.sig}"}}'
    export.write_text("\n".join(lines) + "\n")
    assert await asyncio.to_thread(main, argv) == 0
    page = out.read_text()
    assert "1 event(s) not written by a party allowed to" in page
    assert "planner may not emit step_completed" in page
