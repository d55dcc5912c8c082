"""Signed events: keys, the keyring's verdicts, signatures through a real JetStream stream and an export."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import msgspec
import pytest

from cadre.bus.events import PlanProposed, StepCompleted, WorkflowRequested
from cadre.bus.plan import Plan, Task
from cadre.bus.roles import SIGNING_ROLES
from cadre.bus.signing import (
    Keyring,
    Signature,
    Signer,
    SigningError,
    load_keyring,
    new_seed,
    signature_of,
)
from cadre.store import JetStreamLog, StoredEvent
from cadre.store.authenticity import verdict
from cadre.store.filelog import FileLog, write_export
from tests.conftest import ev, unique

SUBJECT = "cadre.evt.wf-1.plan_proposed"


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {role: Signer(new_seed(), role) for role in SIGNING_ROLES}


@pytest.fixture(scope="module")
def keyring(signers: dict[str, Signer]) -> Keyring:
    return Keyring.of((s.public_key, role) for role, s in signers.items())


def test_a_signature_verifies_only_for_the_bytes_subject_and_id_it_was_made_for(
    signers: dict[str, Signer], keyring: Keyring
) -> None:
    sig = signers["planner"].sign(SUBJECT, "id-1", b'{"a":1}')
    assert keyring.check(SUBJECT, "plan_proposed", "id-1", b'{"a":1}', sig).status == "signed"
    assert keyring.check(SUBJECT, "plan_proposed", "id-1", b'{"a":2}', sig).status == "forged"
    assert keyring.check(SUBJECT, "plan_proposed", "id-2", b'{"a":1}', sig).status == "forged"
    moved = "cadre.evt.wf-2.plan_proposed"
    assert keyring.check(moved, "plan_proposed", "id-1", b'{"a":1}', sig).status == "forged"


def test_a_role_may_sign_only_the_types_it_emits(signers: dict[str, Signer], keyring: Keyring) -> None:
    subject = "cadre.evt.wf-1.step_completed"
    by_planner = signers["planner"].sign(subject, "id", b"{}")
    got = keyring.check(subject, "step_completed", "id", b"{}", by_planner)
    assert (got.status, got.role) == ("forged", "planner")
    assert "planner may not emit step_completed" in got.reason
    by_agent = signers["agent"].sign(subject, "id", b"{}")
    assert keyring.check(subject, "step_completed", "id", b"{}", by_agent).trusted


def test_unknown_keys_garbage_and_missing_signatures(keyring: Keyring) -> None:
    stranger = Signer(new_seed(), "planner")
    sig = stranger.sign(SUBJECT, "id", b"{}")
    assert keyring.check(SUBJECT, "plan_proposed", "id", b"{}", sig).status == "forged"
    garbage = Signature(sig.signer, "not base64 at all!")
    assert keyring.check(SUBJECT, "plan_proposed", "id", b"{}", garbage).status == "forged"
    assert keyring.check(SUBJECT, "plan_proposed", "id", b"{}", None).status == "unsigned"
    assert signature_of({}) is None
    assert signature_of({"Nats-Msg-Id": "x"}) is None


def test_keyring_file_round_trip_and_errors(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "keyring.json"
    path.write_bytes(keyring.to_json())
    assert load_keyring(path).file == keyring.file
    with pytest.raises(SigningError, match="cadre auth init"):
        load_keyring(tmp_path / "missing.json")
    path.write_text('{"keys": [{"key": "UNOTAKEY", "role": "planner"}]}')
    with pytest.raises(SigningError, match="not an nkey user public key"):
        load_keyring(path)
    with pytest.raises(SigningError, match="not an nkey seed"):
        Signer(b"SUgarbage", "planner")


def _load(path: Path, data: bytes) -> FileLog:
    path.write_bytes(data)
    return FileLog.load(path)


async def test_signatures_travel_with_the_stored_event_and_its_export(
    log: JetStreamLog, signers: dict[str, Signer], keyring: Keyring, tmp_path: Path
) -> None:
    wf = unique("wf")
    first = ev(WorkflowRequested(request="do it"), wf, actor="intake")
    await log.signed_by(signers["intake"]).append(wf, [first], expected_seq=0)
    plan = PlanProposed(plan=Plan(nodes=(Task(id="a", description="a", tool="fs.read"),)), revision=1)
    await log.signed_by(signers["planner"]).append(wf, [ev(plan, wf, cause=first.id, actor="planner")])
    # A writer with no signer (what an admin connection can do) stores an unsigned event.
    forged = ev(StepCompleted(task_id="a", step_id="a.s1", tool="fs.read", planned_tool="fs.read"), wf, i=9)
    await log.append(wf, [forged])

    records = await log.read_records(wf)
    assert [r.signature is not None for r in records] == [True, True, False]
    stored = [r for r in records if isinstance(r, StoredEvent)]
    assert [verdict(r, keyring).status for r in stored] == ["signed", "signed", "unsigned"]
    assert verdict(stored[2], None).trusted  # without a keyring nothing is checked

    out = io.BytesIO()
    write_export(out, records, stream=log.stream, subjects=log.subjects, keyring=keyring)
    loaded = await asyncio.to_thread(_load, tmp_path / "export.jsonl", out.getvalue())
    assert loaded.keyring is not None
    assert loaded.keyring.file == keyring.file
    back = [r for r in await loaded.read_records(wf) if isinstance(r, StoredEvent)]
    assert [verdict(r, loaded.keyring).status for r in back] == ["signed", "signed", "unsigned"]
    assert [r.signature for r in back] == [r.signature for r in stored]


async def test_the_state_cache_does_not_fold_a_forged_event(
    log: JetStreamLog, signers: dict[str, Signer], keyring: Keyring
) -> None:
    from cadre.actors.state_cache import StateCache

    cache = StateCache(log, keyring=keyring)
    await cache.start()
    try:
        wf = unique("wf")
        first = ev(WorkflowRequested(request="do it"), wf, actor="intake")
        r1 = await log.signed_by(signers["intake"]).append(wf, [first], expected_seq=0)
        # Signed by a real key, but of a role that may not emit it: forged.
        bad = ev(PlanProposed(plan=Plan(nodes=(Task(id="a", description="a", tool="fs.read"),))), wf, i=1)
        r2 = await log.signed_by(signers["agent"]).append(wf, [bad], expected_seq=r1.last_seq)
        state = await asyncio.wait_for(cache.state_at(wf, r2.last_seq), 5)
        assert state.status == "requested"
        assert state.plan is None
        assert state.last_seq == r2.last_seq  # it keeps its place in the chain
    finally:
        await cache.stop()


async def test_a_process_skips_the_ed25519_check_only_for_exactly_what_it_signed(
    log: JetStreamLog, signers: dict[str, Signer], keyring: Keyring
) -> None:
    wf = unique("wf")
    first = ev(WorkflowRequested(request="do it"), wf, actor="intake")
    await log.signed_by(signers["intake"]).append(wf, [first], expected_seq=0)
    (stored,) = [r for r in await log.read_records(wf) if isinstance(r, StoredEvent)]
    assert log.signed_here(stored)
    assert verdict(stored, keyring, signed_here=True).trusted
    altered = msgspec.structs.replace(stored, data=stored.data.replace(b"do it", b"do XX"))
    assert not log.signed_here(altered)
    assert verdict(altered, keyring, signed_here=log.signed_here(altered)).status == "forged"
    elsewhere = JetStreamLog(log.nc, stream=log.spec, subjects=log.subjects)  # another process's view
    assert not elsewhere.signed_here(stored)
    # Skipping the signature check never skips the role check.
    wrong_role = Keyring.of([(signers["intake"].public_key, "agent")])
    assert verdict(stored, wrong_role, signed_here=True).status == "forged"
