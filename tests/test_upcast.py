"""Schema evolution: versions per type, upcasters, and a log written by cadre v1 read today."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cadre.bus import decode, encode
from cadre.bus.effects import (
    Asked,
    BudgetDecided,
    CallSettled,
    Effect,
    LibrarySearched,
    ModelCalled,
    ProviderFailure,
    ToolCalled,
    Usage,
)
from cadre.bus.errors import DecodeError
from cadre.bus.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    VERSIONS,
    EffectsRecorded,
    HandlerFailed,
    WorkflowRequested,
    chain_hash,
)
from cadre.bus.ledger import Decision
from cadre.bus.plan import ErrorInfo
from cadre.bus.upcast import UPCASTERS, effect_v2, handler_failed_v1, upcast, upcaster
from cadre.cli import main
from cadre.store import FileLog, StoredEvent, fold, to_record, verify
from cadre.store.records import Record
from tests.conftest import ev
from tests.fixtures.make_v1_log import build

V1_LOG = Path(__file__).parent / "fixtures" / "v1_log.jsonl"


def test_every_type_has_a_version_and_writes_it() -> None:
    assert set(VERSIONS) == set(EVENT_TYPES)
    assert all(v >= SCHEMA_VERSION == 3 for v in VERSIONS.values())
    e = ev(WorkflowRequested(request="x"), "wf")
    assert e.v == VERSIONS["workflow_requested"]


def test_the_committed_v1_log_is_what_its_script_writes() -> None:
    assert V1_LOG.read_bytes() == build()


def test_a_v1_log_decodes_as_current_types() -> None:
    flog = FileLog.load(V1_LOG)
    assert all(isinstance(r, StoredEvent) for r in flog.records)
    events = [r.event for r in flog.records if isinstance(r, StoredEvent)]
    assert {e.v for e in events} == {1}  # the version each was written with
    assert {(e.prev, e.basis) for e in events} == {("", 0)}  # v1 had no chain and no basis
    dead = [e.data for e in events if isinstance(e.data, HandlerFailed)]
    assert dead == [
        HandlerFailed(
            input_id=events[11].id,
            input_type="step_ready",
            input_seq=12,
            attempts=5,
            error=ErrorInfo(code="handler_error", message="the disk went away"),
            exception="RuntimeError",
        )
    ]
    requested = events[0].data
    assert isinstance(requested, WorkflowRequested)
    assert (requested.intelligence, requested.mode) == ("adaptive", "adaptive")


async def test_a_v1_log_folds() -> None:
    flog = FileLog.load(V1_LOG)
    assert await flog.workflows() == ["wf-v1-dead", "wf-v1-done"]
    done = fold("wf-v1-done", await flog.read("wf-v1-done"))
    assert (done.status, done.result, done.events) == ("completed", {"content": "# Q1\n"}, 8)
    assert done.tasks["copy"].status == "completed"
    dead = fold("wf-v1-dead", await flog.read("wf-v1-dead"))
    assert (dead.status, dead.dead_letters, dead.failure and dead.failure.code) == ("failed", 1, "handler_failed")


async def test_a_v1_log_verifies_as_unchained() -> None:
    flog = FileLog.load(V1_LOG)
    assert flog.heads == {}  # an export from before the heads
    verdict = verify(await flog.read_records("wf-v1-done"))
    assert (verdict.status, verdict.ok, verdict.chained, verdict.unchained) == ("unchained", True, 0, 8)
    assert verdict.summary() == "unchained (schema v1): 8 events written before the chain existed; nothing to verify"


def test_audit_of_a_v1_log_exits_0_saying_it_is_unchained(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "wf-v1-dead", "--verify", "--from-file", str(V1_LOG)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "unchained (schema v1): 8 events written before the chain existed; nothing to verify"
    assert out[1].startswith("  note: ")


async def test_a_workflow_upgraded_midway_chains_from_its_last_v1_event() -> None:
    """A v2 writer chains to the stored bytes of a v1 event like any other: the links after
    the upgrade are checked, the v1 events are counted as unchained."""
    flog = FileLog.load(V1_LOG)
    v1 = await flog.read_records("wf-v1-done")
    records: list[Record] = list(v1[:6])
    prev = chain_hash(records[-1].data)
    for i, e in enumerate(r.event for r in v1[6:] if isinstance(r, StoredEvent)):
        data = encode(msgspec.structs.replace(e, v=2, prev=prev))
        records.append(to_record(flog.subjects, 100 + i, v1[6 + i].subject, data))
        prev = chain_hash(data)
    verdict = verify(records)
    assert (verdict.status, verdict.chained, verdict.unchained) == ("intact", 2, 6)
    assert verdict.summary() == "chain intact: 8 events (6 unchained (schema v1))"
    del records[5]  # a v1 event removed: the first chained event after it says so
    assert verify(records).problem is not None


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("RuntimeError", ("handler_error", "RuntimeError")),
        ("ConcurrencyConflict", ("concurrency_conflict", "ConcurrencyConflict")),  # a cadre error: its code
        ("malformed_event", ("malformed_event", None)),  # v1's one stable code stays
    ],
)
def test_handler_failed_v1_splits_its_code(code: str, expected: tuple[str, str | None]) -> None:
    v1 = {
        "input_id": "i",
        "input_type": "step_ready",
        "input_seq": 3,
        "attempts": 2,
        "error": {"code": code, "message": "m"},
    }
    v2 = handler_failed_v1(v1)
    assert (v2["error"]["code"], v2.get("exception")) == expected
    assert v2["error"]["message"] == "m"
    assert upcast("handler_failed", 1, v1) == v2
    assert upcast("handler_failed", 2, v1) == v1  # already current: untouched


def test_a_current_event_is_not_upcast() -> None:
    e = ev(
        HandlerFailed(
            input_id="i", input_type="t", input_seq=1, attempts=1, error=ErrorInfo(code="RuntimeError", message="m")
        ),
        "wf",
    )
    assert decode(encode(e)) == e  # v2 with a code that v1 would have rewritten


def test_an_old_payload_the_upcaster_cannot_read_is_a_decode_error() -> None:
    wire = msgspec.json.decode(encode(ev(WorkflowRequested(request="x"), "wf")))
    wire.update(type="handler_failed", v=1, data=["not", "an", "object"])
    with pytest.raises(DecodeError, match=re.escape("Expected `object`, got `list` (at $.data)")):
        decode(msgspec.json.encode(wire))
    wire["data"] = {"input_id": "i", "input_type": "t", "input_seq": 1, "attempts": 1, "error": "oops"}
    with pytest.raises(DecodeError, match=re.escape("(at $.data.error)")):
        decode(msgspec.json.encode(wire))


def test_the_registry_refuses_what_cannot_be_an_upcaster() -> None:
    with pytest.raises(ValueError, match=r"^no event type 'nope'"):
        upcaster("nope", 1)
    with pytest.raises(ValueError, match=r"^handler_failed is at version 3; an upcaster reads a version from 1 to 2"):
        upcaster("handler_failed", 3)
    with pytest.raises(ValueError, match=r"^an upcaster for handler_failed v1 is already registered"):
        upcaster("handler_failed", 1)(lambda d: d)
    assert ("handler_failed", 1) in UPCASTERS


# -- typed effects (v3) ------------------------------------------------------------------------


GOLDEN = Path(__file__).parent / "golden"


def _stored_effects(line: dict[str, Any]) -> list[dict[str, Any]]:
    event = line["event"]
    effects: list[dict[str, Any]] = list(event.get("effects", ()))
    if event["type"] == "effects_recorded":
        effects.extend(event["data"]["effects"])
    return effects


def _v2_logs() -> list[Path]:
    """The golden logs written as v2 (those recorded later are newer)."""
    return [p for p in sorted(GOLDEN.glob("*.jsonl")) if json.loads(p.read_bytes().splitlines()[1])["event"]["v"] == 2]


@pytest.mark.parametrize("path", _v2_logs(), ids=lambda p: p.stem)
def test_v2_effects_read_as_typed_effects_with_the_same_kind_and_key(path: Path) -> None:
    """Every effect of a golden log (written as v2 ``{kind, key, value}``) decodes as the typed
    effect of that kind, whose key is the recorded one, and re-encodes to an equal value."""
    lines = [json.loads(raw) for raw in path.read_bytes().splitlines()[1:]]
    seen = set()
    for line in lines:
        assert line["event"]["v"] == 2
        old = _stored_effects(line)
        env = decode(json.dumps(line["event"]).encode())
        new = list(env.effects) + (list(env.data.effects) if isinstance(env.data, EffectsRecorded) else [])
        assert [(e.KIND, e.key, e.ms) for e in new] == [(o["kind"], o["key"], o["ms"]) for o in old]
        for o, e in zip(old, new, strict=True):
            seen.add(e.KIND)
            assert (e.error.code if e.error is not None else None) == (o["error"] or {}).get("code")
            assert decode(encode(msgspec.structs.replace(env, v=3))) == msgspec.structs.replace(env, v=3)
            assert effect_v2(msgspec.to_builtins(e)) == msgspec.to_builtins(e)  # typed passes unchanged
    assert seen  # every log records some outside answer


def test_each_v2_effect_kind_upcasts_to_its_typed_answer() -> None:
    usage = {"input_tokens": 10, "output_tokens": 2}
    response = {
        "provider": "p",
        "model": "m",
        "output": {"a": 1},
        "text": "{}",
        "usage": usage,
        "stop_reason": "end",
        "latency_ms": 1.0,
    }
    error_info = {"code": "e", "message": "m"}
    failed_tool = {"kind": "tool", "key": "t.x:ab", "value": {"retryable": True, "output": [1]}, "error": error_info}
    assert msgspec.convert(effect_v2(failed_tool), Effect) == ToolCalled(
        tool="t.x", inputs="ab", retryable=True, refused=[1], error=ErrorInfo(code="e", message="m")
    )
    ok_tool = {"kind": "tool", "key": "t.x:ab", "value": {"n": 1}, "error": None, "ms": 2.0}
    assert msgspec.convert(effect_v2(ok_tool), Effect) == ToolCalled(tool="t.x", inputs="ab", output={"n": 1}, ms=2.0)
    asked = {"provider": "p", "model": "m", "est_input_tokens": 5, "max_output_tokens": 9}
    budget = {"kind": "budget", "key": "plan:", "value": {"outcome": "denied", "reason": "r", "consultation": asked}}
    assert msgspec.convert(effect_v2(budget), Effect) == BudgetDecided(
        call="plan", decision=Decision(outcome="denied", reason="r"), asked=Asked(**asked)
    )
    called = msgspec.convert(effect_v2({"kind": "llm", "key": "plan:d1", "value": {"response": response}}), Effect)
    assert isinstance(called, ModelCalled)
    assert (called.outcome, called.key, called.response.usage if called.response else None) == (
        "answered",
        "plan:d1",
        Usage(**usage),
    )
    error = {"code": "overloaded", "what": "busy", "status": 529, "retryable": True}
    old_failed = {"kind": "llm", "key": "plan:d1", "value": {"error": error, "usage": usage}}
    failed = msgspec.convert(effect_v2(old_failed), Effect)
    assert failed == ModelCalled(
        call="plan", ask="d1", outcome="failed", failure=ProviderFailure(**error), usage=Usage(**usage)
    )
    cached = effect_v2({"kind": "llm", "key": "plan:k", "value": {"cached": True}})
    none = effect_v2({"kind": "llm", "key": "plan:-", "value": {"outcome": "no_provider"}})
    assert [msgspec.convert(x, ModelCalled).outcome for x in (cached, none)] == ["cached", "no_provider"]
    settle = {"kind": "settle", "key": "plan:r-1", "value": {"cost_usd": 0.5, "acknowledged": True}}
    assert msgspec.convert(effect_v2(settle), Effect) == CallSettled(
        call="plan", reservation_id="r-1", cost_usd=0.5, acknowledged=True
    )
    hit = msgspec.convert(effect_v2({"kind": "library", "key": "abc", "value": None}), Effect)
    assert hit == LibrarySearched(request="abc")
