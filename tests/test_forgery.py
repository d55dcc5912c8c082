"""The five forgeries of issue 10, appended by a writer that may publish anything (as an admin
can), against a running system that signs what it writes: each is stored, and changes nothing.

The plan: ``draft`` renders a text, ``save`` writes it with ``fs.write``, which needs approval.
While ``save`` waits, the forger appends (chained correctly, so the integrity chain holds):

1. ``workflow_completed`` with its own result;
2. ``approval_granted`` for ``save``;
3. ``step_completed`` for ``draft`` with its own output (which ``save`` would write);
4. ``step_ready`` for a step never proposed nor validated, writing ``out/evil.txt``;
5. ``step_ready`` signed with the validator's real key, for a new ``fs.write`` step that says
   ``requires_approval: false`` (the agent must take approval from its own catalog).

Then a person approves for real. The workflow must end as it would have, the file must hold
the real draft, every forged event must be recorded as refused, and the audit must fail naming
each one, online and from an export (whose events, re-signed by another role, also fail).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import pytest

from cadre import commands
from cadre.actors.clock import utc_now
from cadre.bus.events import (
    ApprovalGranted,
    ApprovalRequested,
    ForgedEvent,
    StepCompleted,
    StepReady,
    WorkflowCompleted,
    make_event,
)
from cadre.bus.plan import StepIntent
from cadre.bus.signing import Signer, load_keyring
from cadre.cli import main
from cadre.replay_cli import replayer_for
from cadre.store.audit import audit
from cadre.store.authenticity import authorship, verdict
from cadre.store.filelog import write_export
from cadre.store.records import StoredEvent
from tests.system_harness import Harness, cadre_running, settings_for

PLAN = {
    "plan": {
        "nodes": [
            {"id": "draft", "tool": "text.render", "inputs": {"template": "the real report", "values": {}}},
            {
                "id": "save",
                "tool": "fs.write",
                "depends_on": ["draft"],
                "inputs": {"path": "out/report.txt", "content": "${draft.text}"},
            },
        ],
        "output": "save",
    }
}


def audit_args(wf: str, export: Path, keys: Path) -> list[str]:
    return ["audit", wf, "--verify", "--from-file", str(export), "--keys", str(keys)]


async def forge(h: Harness, wf: str, data: object, *, signer: Signer | None = None, i: int = 0) -> StoredEvent:
    """Append ``data`` at the workflow's end, chained correctly, unsigned (or signed by ``signer``)."""
    event = make_event(data, workflow_id=wf, actor="forger", at=utc_now(), causation_id=f"forged-{i}", index=i)  # type: ignore[arg-type]
    result = await h.bus.log.signed_by(signer).append(wf, [event])
    records = await h.bus.log.read_records(wf, after_seq=result.last_seq - 1)
    stored = records[0]
    assert isinstance(stored, StoredEvent)
    return stored


@pytest.mark.slow
async def test_five_forgeries_change_nothing(nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    out = settings.workspace_dir / "out"
    async with cadre_running(settings) as h:
        wf = (await h.submit(PLAN))["workflow_id"]
        paused = await h.wait(wf, until=ApprovalRequested.TYPE)
        assert paused.steps["save.s1"].status == "awaiting_approval"
        real_draft = paused.tasks["draft"].output
        validator = Signer.from_creds(settings.auth_dir / "validator.creds", "validator")
        evil = StepIntent(
            id="evil.s1", task_id="evil", tool="fs.write", inputs={"path": "out/evil.txt", "content": "x"}
        )
        sneaky = StepIntent(
            id="sneaky.s1",
            task_id="sneaky",
            tool="fs.write",
            inputs={"path": "out/sneaky.txt", "content": "x"},
            requires_approval=False,
        )
        forged = [
            await forge(h, wf, WorkflowCompleted(result={"forged": True}), i=1),
            await forge(h, wf, ApprovalGranted(step_id="save.s1", by="mallory"), i=2),
            await forge(
                h,
                wf,
                StepCompleted(
                    task_id="draft",
                    step_id="draft.s1",
                    tool="text.render",
                    planned_tool="text.render",
                    output={"text": "FORGED"},
                ),
                i=3,
            ),
            await forge(h, wf, StepReady(step=evil), i=4),
        ]
        signed_forgery = await forge(h, wf, StepReady(step=sneaky), signer=validator, i=5)
        # Every forged input that reaches an actor is refused and recorded (the agent takes
        # approval_granted and step_ready; the planner step_completed and workflow_completed is
        # nobody's input: the folds skip it).
        async with asyncio.timeout(15):
            while True:
                records = await h.bus.log.read_records(wf)
                refused = {
                    r.event.data.input_id
                    for r in records
                    if isinstance(r, StoredEvent) and isinstance(r.event.data, ForgedEvent)
                }
                if {f.event.id for f in forged[1:]} <= refused:
                    break
                await asyncio.sleep(0.05)
        # The validator-signed step is trusted, but its tool needs approval by the agent's catalog.
        await h.wait(wf, until=ApprovalRequested.TYPE)
        # cadre status does not take the forged end for the workflow's.
        capsys.readouterr()
        assert await commands.status(settings, as_json=True) == 0
        assert json.loads(capsys.readouterr().out)["workflows"] == {"awaiting_approval": 1}
        assert await commands.approve(settings, wf, "save.s1", deny=False, reason="looks right") == 0
        state = await h.wait(wf)
        records = await h.bus.log.read_records(wf)

    assert state.status == "completed"
    assert state.result != {"forged": True}
    assert state.tasks["draft"].output == real_draft
    assert state.steps["save.s1"].approved_by == "approver"
    assert (out / "report.txt").read_text() == "the real report"
    assert not (out / "evil.txt").exists()
    assert not (out / "sneaky.txt").exists()
    assert state.steps["sneaky.s1"].status == "awaiting_approval"
    assert state.forged >= 3

    keyring = load_keyring(settings.auth_dir / "keyring.json")
    assert verdict(signed_forgery, keyring).trusted  # a real key: trusted, and still gated
    untrusted = authorship(records, keyring)
    assert [u.seq for u in untrusted] == [f.seq for f in forged]
    assert {u.status for u in untrusted} == {"unsigned"}

    # The audit report shows them flagged, and they count for nothing in it.
    report = audit(records, keyring)
    assert report.totals.untrusted == len(forged)
    assert report.status == "completed"
    assert report.result == state.result
    flagged = [e for e in report.timeline if e.trust is not None]
    assert [(e.seq, e.trust) for e in flagged] == [(f.seq, "unsigned") for f in forged]

    # Replay skips them as the actors did, and re-derives the rest.
    replayer = dataclasses.replace(replayer_for(settings), keyring=keyring)
    result = await asyncio.to_thread(replayer.replay, records)
    assert result.ok, result.lines()
    assert result.forged == len(forged)
    assert result.reproduced == result.events - len(forged)

    # The audit fails naming each forged event, from an export audited offline with the keyring.
    export = tmp_path / "run.jsonl"
    buf = io.BytesIO()
    write_export(buf, records, stream=settings.stream_name, subjects=settings.subjects, keyring=keyring)
    export.write_bytes(buf.getvalue())
    keys = settings.auth_dir / "keyring.json"
    assert await asyncio.to_thread(main, [*audit_args(wf, export, keys), "--json"]) == 1


async def test_an_export_with_an_event_re_signed_by_another_role_fails_the_audit(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        state = await h.run(
            {"plan": {"nodes": [{"id": "x", "tool": "text.render", "inputs": {"template": "hi", "values": {}}}]}}
        )
        wf = state.workflow_id
        records = await h.bus.log.read_records(wf)
    keys = settings.auth_dir / "keyring.json"
    keyring = load_keyring(keys)
    assert authorship(records, keyring) == []
    export = tmp_path / "run.jsonl"
    buf = io.BytesIO()
    write_export(buf, records, stream=settings.stream_name, subjects=settings.subjects, keyring=keyring)
    export.write_bytes(buf.getvalue())
    capsys.readouterr()
    assert await asyncio.to_thread(main, audit_args(wf, export, keys)) == 0
    assert "every event signed by a role allowed to emit it" in capsys.readouterr().out

    # Re-sign the step_completed with the planner's real key: same bytes, wrong role.
    planner = Signer.from_creds(settings.auth_dir / "planner.creds", "planner")
    lines = export.read_text().splitlines()
    for k, line in enumerate(lines[1:], start=1):
        row = json.loads(line)
        if row["subject"].endswith(".step_completed"):
            stored = next(r for r in records if isinstance(r, StoredEvent) and r.seq == row["seq"])
            assert stored.data  # the stored bytes are what was signed
            sig = planner.sign(stored.subject, stored.event.id, stored.data)
            lines[k] = line[: line.index('"signer"')] + f'"signer":"{sig.signer}","sig":"{sig.sig}"}}'
            break
    else:
        raise AssertionError("no step_completed in the export")
    export.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert await asyncio.to_thread(main, audit_args(wf, export, keys)) == 1
    printed = capsys.readouterr().out
    assert "step_completed" in printed
    assert "planner may not emit step_completed" in printed
