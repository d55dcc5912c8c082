"""The approvals service on a real nats-server: only an approver's signed decision is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from cadre import commands
from cadre.actors.approvals import ApprovalPolicy, serve_approvals
from cadre.actors.clock import utc_now
from cadre.bus.approvals import ApprovalReply, Decision, sign_decision
from cadre.bus.errors import CadreError
from cadre.bus.events import ApprovalGranted, ApprovalRequested, StepReady
from cadre.bus.plan import StepIntent
from cadre.bus.roles import SIGNING_ROLES
from cadre.bus.signing import Keyring, Signer, new_seed
from cadre.cli import main
from cadre.store import JetStreamLog, StoredEvent
from cadre.store.authenticity import trusted_fold
from tests.conftest import T0, ev, unique
from tests.system_harness import cadre_running, settings_for

STEP = StepIntent(id="save.s1", task_id="save", tool="fs.write", requires_approval=True)


@dataclass
class World:
    log: JetStreamLog
    signers: dict[str, Signer]
    keyring: Keyring
    wf: str
    request_id: str


@pytest_asyncio.fixture
async def world(log: JetStreamLog) -> AsyncIterator[World]:
    signers = {role: Signer(new_seed(), role) for role in SIGNING_ROLES}
    alice, bob = Signer(new_seed(), "approver"), Signer(new_seed(), "approver")
    signers |= {"alice": alice, "bob": bob}
    people = [(alice.public_key, "approver", "alice"), (bob.public_key, "approver", "bob")]
    keyring = Keyring.of([*((s.public_key, role) for role, s in signers.items() if role in SIGNING_ROLES), *people])
    wf = unique("wf")
    first = ev(StepReady(step=STEP), wf, actor="validator")
    asked = ev(ApprovalRequested(step=STEP, reason="needs approval", deadline=T0 + timedelta(hours=1)), wf, i=1)
    r = await log.signed_by(signers["validator"]).append(wf, [first], expected_seq=0)
    await log.signed_by(signers["agent"]).append(wf, [asked], expected_seq=r.last_seq)
    policy = ApprovalPolicy({"fs.write": frozenset({"alice"})})
    async with serve_approvals(log.signed_by(signers["approvals"]), lambda: keyring, policy):
        yield World(log, signers, keyring, wf, asked.id)


async def ask(w: World, body: bytes) -> ApprovalReply:
    reply = await w.log.nc.request(w.log.subjects.approvals, body, timeout=5)
    return msgspec.json.decode(reply.data, type=ApprovalReply)


def decision(w: World, *, grant: bool = True, request_id: str | None = None, **kw: object) -> Decision:
    fields = {"workflow_id": w.wf, "step_id": STEP.id, "request_id": request_id or w.request_id}
    return Decision(**fields, grant=grant, reason="looks fine", at=kw.pop("at", utc_now()))  # type: ignore[arg-type]


async def test_an_allowed_approver_grants_and_the_event_names_them(world: World) -> None:
    reply = await ask(world, sign_decision(world.signers["alice"], decision(world)))
    assert reply.error is None
    assert reply.by == "alice"
    records = await world.log.read_records(world.wf)
    last = records[-1]
    assert isinstance(last, StoredEvent)
    assert isinstance(last.event.data, ApprovalGranted)
    assert (last.event.data.by, last.event.data.key) == ("alice", world.signers["alice"].public_key)
    assert trusted_fold(world.wf, records, world.keyring).steps[STEP.id].status == "approved"
    again = await ask(world, sign_decision(world.signers["alice"], decision(world)))
    assert again.error is not None
    assert again.error["code"] == "not_awaiting_approval"


@pytest.mark.parametrize(
    ("who", "change", "code"),
    [
        ("bob", {}, "not_allowed_for_tool"),  # an approver, but not for fs.write
        ("planner", {}, "not_an_approver"),  # a real key of the deployment, not an approver's
        ("stranger", {}, "not_an_approver"),
        ("alice", {"at": T0}, "stale_decision"),
        ("alice", {"request_id": "some-other-request"}, "answers_another_request"),
    ],
)
async def test_refusals_append_nothing(world: World, who: str, change: dict[str, object], code: str) -> None:
    signer = world.signers.get(who) or Signer(new_seed(), "approver")
    before = len(await world.log.read_records(world.wf))
    reply = await ask(world, sign_decision(signer, decision(world, **change)))  # type: ignore[arg-type]
    assert reply.error is not None
    assert reply.error["code"] == code
    assert len(await world.log.read_records(world.wf)) == before


async def test_a_decision_altered_after_signing_is_refused(world: World) -> None:
    body = sign_decision(world.signers["alice"], decision(world, grant=False))
    tampered = body.replace(b'"grant":false', b'"grant":true')
    assert tampered != body
    reply = await ask(world, tampered)
    assert reply.error is not None
    assert reply.error["code"] == "bad_signature"
    garbage = await ask(world, b"{not json")
    assert garbage.error is not None
    assert garbage.error["code"] == "invalid_request"


async def test_a_forged_approval_request_opens_nothing(world: World) -> None:
    """An approval_requested written without the agent's key does not make a step approvable."""
    other = StepIntent(id="other.s1", task_id="other", tool="fs.write", requires_approval=True)
    forged = ev(ApprovalRequested(step=other, reason="x", deadline=T0), world.wf, i=7)
    await world.log.signed_by(world.signers["planner"]).append(world.wf, [forged])
    reply = await ask(
        world,
        sign_decision(
            world.signers["alice"],
            Decision(workflow_id=world.wf, step_id="other.s1", request_id=forged.id, grant=True, at=utc_now()),
        ),
    )
    assert reply.error is not None
    assert reply.error["code"] == "no_such_step"


async def test_named_approvers_and_approvers_per_tool_through_the_cli(nats_url: str, tmp_path: Path) -> None:
    """``cadre auth add-approver alice``; fs.write may be approved by alice only: the local approver
    is refused, alice's own creds file approves, and the event names her."""
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"], approvers={"fs.write": ["alice"]})
    plan = {"plan": {"nodes": [{"id": "save", "tool": "fs.write", "inputs": {"path": "out/a.txt", "content": "ok"}}]}}
    async with cadre_running(settings) as h:
        assert (
            await asyncio.to_thread(main, ["auth", "add-approver", "alice", "--auth-dir", str(settings.auth_dir)]) == 0
        )
        alice = settings.auth_dir / "approvers" / "alice.creds"
        assert alice.stat().st_mode & 0o777 == 0o600
        wf = (await h.submit(plan))["workflow_id"]
        await h.wait(wf, until=ApprovalRequested.TYPE)
        with pytest.raises(CadreError) as refused:
            await commands.approve(settings, wf, "save.s1", deny=False, reason="")
        assert refused.value.code == "not_allowed_for_tool"
        as_alice = settings.model_copy(update={"nats_creds": alice})
        assert await commands.approve(as_alice, wf, "save.s1", deny=False, reason="checked") == 0
        state = await h.wait(wf)
    assert state.status == "completed"
    assert state.steps["save.s1"].approved_by == "alice"
    assert (settings.workspace_dir / "out" / "a.txt").read_text() == "ok"
