"""Cancel and deadlines (issue 16, item 3): an approver's signed ``cadre cancel`` or a request's
deadline stops a workflow; it ends ``cancelled``, undoing its steps where it asked to compensate."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from cadre import commands
from cadre.actors import cancel
from cadre.actors.approvals import ApprovalPolicy, serve_approvals
from cadre.actors.clock import utc_now
from cadre.audit_text import lines as audit_lines
from cadre.bus.approvals import (
    ApprovalReply,
    CancelOrder,
    Decision,
    RedriveOrder,
    sign_cancel,
    sign_decision,
    sign_redrive,
)
from cadre.bus.errors import CadreError
from cadre.bus.events import (
    ApprovalRequested,
    CancelRequested,
    CompensationStarted,
    DeadlineSet,
    Envelope,
    Redriven,
    StepReady,
    WorkflowCancelled,
    WorkflowRequested,
)
from cadre.bus.plan import StepIntent
from cadre.bus.request import RequestError, parse_request
from cadre.bus.roles import SIGNING_ROLES
from cadre.bus.signing import Keyring, Signer, new_seed
from cadre.progress import describe
from cadre.store import JetStreamLog, StoredEvent
from cadre.store.audit import audit
from cadre.store.state import WorkflowState, fold
from tests.conftest import T0, ev, unique
from tests.redrive_tools import FIX
from tests.system_harness import Harness, cadre_running, settings_for

WAITS = {"plan": {"nodes": [{"id": "save", "tool": "fs.write", "inputs": {"path": "out/a.txt", "content": "ok"}}]}}


def _types(records: list[Any]) -> list[str]:
    return [r.event.type for r in records if isinstance(r, StoredEvent)]


async def test_cancel_of_a_workflow_waiting_on_approval_ends_it_cancelled_within_a_second(
    nats_url: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        wf = (await h.submit(WAITS))["workflow_id"]
        await h.wait(wf, until=ApprovalRequested.TYPE)
        started = time.monotonic()
        assert await commands.cancel(settings, wf, reason="wrong file") == 0
        state = await h.wait(wf, within=5)
        took = time.monotonic() - started
        records = await h.bus.log.read_records(wf)
        with pytest.raises(CadreError) as late:  # nothing waits for a decision any more
            await commands.approve(settings, wf, "save.s1", deny=False, reason="")
    assert late.value.code == "workflow_ended"
    assert state.status == "cancelled"
    assert took < 1.0, f"cancelled in {took:.3f} s"
    assert state.cancelled_by == "approver"
    assert state.failure is not None
    assert state.failure.message == "wrong file"
    assert _types(records)[-2:] == ["cancel_requested", "workflow_cancelled"]
    assert not (settings.workspace_dir / "out" / "a.txt").exists()  # the step never ran
    report = audit(records)
    assert report.status == "cancelled"
    assert report.failure == "cancelled by approver: wrong file"


async def test_a_cancel_undoes_completed_steps_when_the_workflow_compensates(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["test.echo"])
    settings.workspace_dir.mkdir(parents=True, exist_ok=True)
    a = settings.workspace_dir / "a.txt"
    a.write_text("old a")
    plan = {
        "nodes": [
            {"id": "w", "tool": "fs.write", "inputs": {"path": "a.txt", "content": "new a"}},
            {"id": "e", "tool": "test.echo", "depends_on": ["w"], "inputs": {"value": "v"}},
        ]
    }
    async with cadre_running(settings) as h:
        wf = (await h.submit({"plan": plan, "on_failure": "compensate"}))["workflow_id"]
        await h.wait(wf, until=ApprovalRequested.TYPE)
        assert a.read_text() == "new a"
        assert await commands.cancel(settings, wf, reason="not today") == 0
        state = await h.wait(wf, within=5)
        records = [r for r in await h.bus.log.read_records(wf) if isinstance(r, StoredEvent)]
    assert state.status == "cancelled"
    assert a.read_text() == "old a"
    [started] = [r.event.data for r in records if isinstance(r.event.data, CompensationStarted)]
    assert (started.reason, started.steps) == (cancel.CANCELLED, ("w.s1",))
    end = records[-1].event.data
    assert isinstance(end, WorkflowCancelled)
    assert (end.by, end.reason, end.compensated) == ("approver", "not today", ("w.s1",))


async def test_a_deadline_cancels_a_waiting_workflow_by_itself(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        wf = (await h.submit({**WAITS, "deadline_s": 0.5}))["workflow_id"]
        await h.wait(wf, until=ApprovalRequested.TYPE)
        started = time.monotonic()
        state = await h.wait(wf, within=5)
        took = time.monotonic() - started
        records = [r for r in await h.bus.log.read_records(wf) if isinstance(r, StoredEvent)]
    assert state.status == "cancelled"
    assert state.cancelled_by == cancel.DEADLINE
    assert took < 1.0
    [deadline] = [r for r in records if isinstance(r.event.data, DeadlineSet)]
    request = records[0]
    assert isinstance(deadline.event.data, DeadlineSet)
    assert deadline.event.data.until == request.event.at + timedelta(seconds=0.5)
    [asked] = [r.event for r in records if isinstance(r.event.data, CancelRequested)]
    assert asked.actor == "planner"
    assert asked.at >= deadline.event.data.until


async def test_a_workflow_that_ends_before_its_deadline_is_not_cancelled(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        state = await h.run({**WAITS, "deadline_s": 60})
    assert state.status == "completed"
    assert state.deadline is not None
    assert state.cancel is None


# -- who may cancel: the approvals service on its own -----------------------------------------


@dataclass
class World:
    log: JetStreamLog
    signers: dict[str, Signer]
    keyring: Keyring
    wf: str


STEP = StepIntent(id="save.s1", task_id="save", tool="fs.write", requires_approval=True)


@pytest_asyncio.fixture
async def world(log: JetStreamLog) -> AsyncIterator[World]:
    signers = {role: Signer(new_seed(), role) for role in SIGNING_ROLES}
    signers["alice"] = Signer(new_seed(), "approver")
    signers["client"] = Signer(new_seed(), "client")
    keys = [(s.public_key, role) for role, s in signers.items() if role in SIGNING_ROLES]
    keyring = Keyring.of([*keys, (signers["alice"].public_key, "approver", "alice")])
    wf = unique("wf")
    first = ev(StepReady(step=STEP), wf, actor="validator")
    asked = ev(ApprovalRequested(step=STEP, reason="needs approval", deadline=T0 + timedelta(hours=1)), wf, i=1)
    r = await log.signed_by(signers["validator"]).append(wf, [first], expected_seq=0)
    await log.signed_by(signers["agent"]).append(wf, [asked], expected_seq=r.last_seq)
    async with serve_approvals(log.signed_by(signers["approvals"]), lambda: keyring, ApprovalPolicy()):
        yield World(log, signers, keyring, wf)


async def ask(w: World, body: bytes) -> ApprovalReply:
    reply = await w.log.nc.request(w.log.subjects.approvals, body, timeout=5)
    return msgspec.json.decode(reply.data, type=ApprovalReply)


def order(w: World, **kw: Any) -> CancelOrder:
    return CancelOrder(workflow_id=kw.get("wf", w.wf), reason="stop", at=kw.get("at", utc_now()))


@pytest.mark.parametrize(
    ("who", "change", "code"),
    [
        ("client", {}, "not_an_approver"),  # a key the keyring does not know
        ("agent", {}, "not_an_approver"),  # a role that is not a person's
        ("alice", {"at": utc_now() - timedelta(hours=1)}, "stale_decision"),
        ("alice", {"wf": "wf-none"}, "no_such_workflow"),
    ],
)
async def test_who_may_not_cancel_appends_nothing(world: World, who: str, change: dict[str, Any], code: str) -> None:
    before = len(await world.log.read_records(world.wf))
    reply = await ask(world, sign_cancel(world.signers[who], order(world, **change)))
    assert reply.error is not None
    assert reply.error["code"] == code
    assert len(await world.log.read_records(world.wf)) == before


async def test_an_approver_cancels_once_and_the_event_names_them(world: World) -> None:
    reply = await ask(world, sign_cancel(world.signers["alice"], order(world)))
    assert reply.error is None
    assert reply.by == "alice"
    records = [r for r in await world.log.read_records(world.wf) if isinstance(r, StoredEvent)]
    last = records[-1].event
    assert isinstance(last.data, CancelRequested)
    assert last.actor == "approvals"
    assert (last.data.by, last.data.key, last.data.reason) == ("alice", world.signers["alice"].public_key, "stop")
    again = await ask(world, sign_cancel(world.signers["alice"], order(world)))
    assert again.error is not None
    assert again.error["code"] == "cancel_pending"
    decision = Decision(workflow_id=world.wf, step_id=STEP.id, request_id="x", grant=True, at=utc_now())
    late = await ask(world, sign_decision(world.signers["alice"], decision))
    assert late.error is not None
    assert late.error["code"] == "workflow_ended"


async def test_an_altered_cancel_is_refused(world: World) -> None:
    body = sign_cancel(world.signers["alice"], order(world)).replace(b'"stop"', b'"go"')
    assert b'"go"' in body
    reply = await ask(world, body)
    assert reply.error is not None
    assert reply.error["code"] == "bad_signature"


# -- pure rules ---------------------------------------------------------------------------------


def test_deadlines_are_validated_when_requested() -> None:
    ok = parse_request(b'{"request": "x", "deadline": "2026-12-05T05:00:00+01:00"}')
    assert ok.deadline == datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
    assert parse_request(b'{"request": "x", "deadline_s": 2.5}').deadline_s == 2.5
    for body, path in [
        (b'{"request": "x", "deadline": "2026-12-05T05:00:00"}', "$.deadline"),  # no time zone
        (b'{"request": "x", "deadline_s": 0}', "$.deadline_s"),
        (b'{"request": "x", "deadline_s": 1e9}', "$.deadline_s"),
        (b'{"request": "x", "deadline_s": 1, "deadline": "2026-12-05T05:00:00Z"}', "$"),
    ]:
        with pytest.raises(RequestError) as exc:
            parse_request(body)
        assert exc.value.path == path


def _stored(e: Envelope, seq: int) -> StoredEvent:
    return StoredEvent(seq, f"e.wf.{e.type}", e, msgspec.json.encode(e))


def test_the_deadline_timer_waits_then_cancels_once() -> None:
    until = T0 + timedelta(seconds=5)
    state = WorkflowState(workflow_id="wf")
    fold("wf", [_stored(ev(WorkflowRequested(request="x", deadline_s=5), "wf", actor="intake"), 1)], state)
    data = DeadlineSet(until=until)
    assert cancel.deadline_of(state.request, T0) == until  # type: ignore[arg-type]
    assert cancel.on_deadline(state, data, T0).until == until  # type: ignore[union-attr]
    [asked] = cancel.on_deadline(state, data, until)  # type: ignore[misc]
    assert isinstance(asked, CancelRequested)
    assert asked.by == cancel.DEADLINE
    fold("wf", [_stored(ev(asked, "wf", actor="planner", i=1), 2)], state)
    assert state.status == "cancelling"
    assert cancel.on_deadline(state, data, until) == []  # a redelivery asks nothing twice


# -- dead letters and redrive (issue 16, item 4) -------------------------------------------------

FRAGILE = {
    "plan": {
        "nodes": [
            {"id": "a", "tool": "test.echo", "inputs": {"value": "first"}},
            {"id": "b", "tool": "test.fragile", "depends_on": ["a"], "inputs": {"value": "${a.value}"}},
        ]
    }
}


def fragile_settings(nats_url: str, tmp_path: Path) -> Any:
    return settings_for(
        nats_url,
        tmp_path,
        tool_modules=["tests.plugin_tools", "tests.redrive_tools"],
        actor_max_attempts=2,
        state_release_after_s=0.05,  # the failed workflow leaves the state cache: the redrive reloads it
    )


async def test_a_dead_letter_is_listed_and_redriven_after_the_fix(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(FIX, raising=False)
    settings = fragile_settings(nats_url, tmp_path)
    async with cadre_running(settings) as h:
        failed = await h.run(FRAGILE)
        wf = failed.workflow_id
        assert failed.status == "failed"
        assert failed.failure is not None
        assert failed.failure.code == "handler_failed"
        capsys.readouterr()
        assert await commands.dead_letters_cmd(settings, as_json=True) == 0
        [letter] = [d for d in json.loads(capsys.readouterr().out)["dead_letters"] if d["workflow_id"] == wf]
        assert (letter["actor"], letter["input_type"], letter["attempts"]) == ("agent", "step_ready", 2)
        assert letter["reason"]["exception"] == "RuntimeError"
        assert letter["input"]["step"]["tool"] == "test.fragile"
        assert letter["redriven"] is False
        monkeypatch.setenv(FIX, "fixed")  # the fix is deployed
        await asyncio.sleep(0.2)
        assert await commands.redrive(settings, wf, reason="fixed test.fragile") == 0
        state = await h.wait(wf, until="workflow_completed")  # not the failure before the redrive
        records = await h.bus.log.read_records(wf)
        capsys.readouterr()
        assert await commands.dead_letters_cmd(settings, as_json=False) == 0
        listed = capsys.readouterr().out
        with pytest.raises(CadreError) as again:
            await commands.redrive(settings, wf, reason="")
    assert state.status == "completed"
    assert state.result == {"value": "first"}
    assert state.redriven == (letter["handler_failed_id"],)
    assert f"{wf}  redriven agent gave up on step_ready" in listed
    assert again.value.code == "no_dead_letter"
    [redrive] = [r.event for r in records if isinstance(r, StoredEvent) and isinstance(r.event.data, Redriven)]
    assert isinstance(redrive.data, Redriven)
    assert (redrive.actor, redrive.data.by, redrive.data.actor) == ("approvals", "approver", "agent")
    [done] = [r.event for r in records if isinstance(r, StoredEvent) and r.event.type == "step_completed"][-1:]
    assert done.causation_id == redrive.id  # the agent handled the input again, on the redrive
    report = audit(records)
    assert report.status == "completed"
    assert re.search(r"step_ready \(seq \d+\) re-delivered to the agent by approver", "\n".join(audit_lines(report)))


async def test_a_redrive_before_the_fix_dead_letters_again_and_only_approvers_may_redrive(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FIX, raising=False)
    settings = fragile_settings(nats_url, tmp_path)

    async def failures(h: Harness, wf: str, n: int) -> list[str]:
        async with asyncio.timeout(10):
            while True:
                types = [r.event.type for r in await h.events(wf)]
                if types.count("workflow_failed") >= n:
                    return types
                await asyncio.sleep(0.05)

    async with cadre_running(settings) as h:
        wf = (await h.run(FRAGILE)).workflow_id
        ok = await h.run({"plan": {"nodes": [{"id": "x", "tool": "test.echo", "inputs": {"value": "v"}}]}})
        with pytest.raises(CadreError) as completed:  # a workflow that did not fail for a dead letter
            await commands.redrive(settings, ok.workflow_id, reason="")
        assert completed.value.code == "no_dead_letter"
        stranger = Signer(new_seed(), "client")
        body = sign_redrive(stranger, RedriveOrder(workflow_id=wf, at=utc_now()))
        reply = msgspec.json.decode(
            (await h.bus.nc.request(settings.subjects.approvals, body, timeout=5)).data, type=ApprovalReply
        )
        assert reply.error is not None
        assert reply.error["code"] == "not_an_approver"
        assert await commands.redrive(settings, wf, reason="too early") == 0
        types = await failures(h, wf, 2)
        assert types[-4:] == ["workflow_failed", "redriven", "handler_failed", "workflow_failed"]
        monkeypatch.setenv(FIX, "fixed")
        assert await commands.redrive(settings, wf, reason="fixed now") == 0  # the same input, once more
        state = await h.wait(wf, until="workflow_completed")
        last = [r.event.data for r in await h.events(wf) if isinstance(r.event.data, Redriven)][-1]
    assert state.status == "completed"
    assert len(state.redriven) == 2
    assert (last.input_type, last.actor) == ("step_ready", "agent")


def test_cadre_events_describes_the_new_events() -> None:
    until = T0 + timedelta(seconds=5)
    lines = [
        describe(ev(d, "wf", i=i))
        for i, d in enumerate(
            [
                DeadlineSet(until=until),
                CancelRequested(reason="stop", by="alice"),
                WorkflowCancelled(reason="stop", by="alice", compensated=("w.s1",)),
                Redriven(handler_failed_id="h", actor="agent", input_seq=7, input_type="step_ready", input={}, by="b"),
            ]
        )
    ]
    assert lines == [
        ["deadline  cancelled at 2026-01-01 00:00:05 UTC unless it ends before"],
        ["cancel    asked by alice: stop"],
        ["CANCELLED by alice: stop; undid w.s1"],
        ["redriven step_ready (seq 7) to the agent again, by b"],
    ]
