"""The wire format: every event type round-trips; bad bytes get errors that say where."""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cadre.bus import EVENT_TYPES, decode, derive_id, encode
from cadre.bus.errors import DecodeError
from cadre.bus.events import Envelope, StepFailed, WorkflowRequested, make_event
from cadre.bus.plan import ErrorInfo, Plan, Task
from tests.conftest import T0, ev, requested
from tests.log_contract import happy_run


def test_every_event_of_a_run_round_trips() -> None:
    for e in happy_run("wf"):
        assert decode(encode(e)) == e


def test_every_type_is_registered_under_its_tag() -> None:
    assert all(name == cls.TYPE for name, cls in EVENT_TYPES.items())
    assert len(EVENT_TYPES) == 32


def test_wire_form_is_plain_json() -> None:
    e = ev(
        StepFailed(task_id="t", step_id="s", tool="x", error=ErrorInfo(code="timeout", message="slow")), "wf", cause="c"
    )
    wire = msgspec.json.decode(encode(e))
    assert wire["type"] == "step_failed"
    assert wire["at"] == "2026-01-01T00:00:00Z"
    assert wire["data"]["error"] == {"code": "timeout", "message": "slow"}
    assert set(wire) == {
        "id",
        "type",
        "workflow_id",
        "causation_id",
        "actor",
        "at",
        "v",
        "prev",
        "basis",
        "data",
        "effects",
    }
    assert (wire["v"], wire["prev"], wire["basis"]) == (3, "", 0)


def test_ids_are_derived_deterministically() -> None:
    assert derive_id("c", "planner", 0) == derive_id("c", "planner", 0)
    assert len({derive_id("c", "planner", 0), derive_id("c", "planner", 1), derive_id("c", "agent", 0)}) == 3
    assert requested("wf").id == requested("wf").id
    assert requested("wf").id != requested("wf2").id


def test_unknown_fields_are_tolerated() -> None:
    wire = msgspec.json.decode(encode(requested("wf")))
    wire["future_field"] = 1
    wire["data"]["also_new"] = {"x": 1}
    assert decode(msgspec.json.encode(wire)) == requested("wf")


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (
            lambda w: w["data"].update(plan={"nodes": [{"id": 5}]}),
            "$.data.plan.nodes[0].id",
            r"Expected `str`, got `int`",
        ),
        (
            lambda w: w.update(type="nope"),
            "$.type",
            r"unknown event type 'nope' \(at \$\.type\); known types: approval_denied",
        ),
        (lambda w: w.pop("workflow_id"), "$", r"Object missing required field `workflow_id`"),
        (lambda w: w.update(at="yesterday"), "$.at", r"Invalid RFC3339 encoded datetime"),
    ],
)
def test_decode_errors_name_the_path(mutate, path: str, message: str) -> None:  # type: ignore[no-untyped-def]
    wire = msgspec.json.decode(encode(requested("wf")))
    mutate(wire)
    with pytest.raises(DecodeError, match=rf"^invalid event: .*{message}") as info:
        decode(msgspec.json.encode(wire))
    assert info.value.path == path


def test_not_json_at_all() -> None:
    with pytest.raises(DecodeError, match=r"^invalid event: JSON is malformed: .* \(at \$\)$"):
        decode(b"\xff not json")


def test_naive_time_is_refused() -> None:
    naive = make_event(WorkflowRequested(), workflow_id="wf", actor="a", at=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match=r"^event .* has a naive timestamp; cadre records times in UTC$"):
        encode(naive)


ids = st.text("abcdefghij-_0123456789", min_size=1, max_size=12)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
tasks = st.builds(
    Task,
    id=ids,
    description=st.text(max_size=40),
    depends_on=st.lists(ids, max_size=3).map(tuple),
    tool=st.none() | ids,
    inputs=st.dictionaries(ids, json_scalars, max_size=4),
    confidence=st.floats(0, 1),
)


@given(nodes=st.lists(tasks, min_size=1, max_size=5), request=st.text(max_size=200), wf=ids)
def test_requests_with_any_plan_round_trip(nodes: list[Task], request: str, wf: str) -> None:
    e: Envelope = make_event(
        WorkflowRequested(request=request, plan=Plan(nodes=tuple(nodes))), workflow_id=wf, actor="intake", at=T0
    )
    assert decode(encode(e)) == e
