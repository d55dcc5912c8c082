"""Subjects, connecting and the stream, against a real nats-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client as NATS

from cadre.bus import ConnectOptions, StreamSpec, Subjects, check_token, connect, ensure_stream
from cadre.bus.errors import InvalidName, NatsUnavailable, StreamConfigError
from cadre.bus.subjects import partition_transform, transform_partitions
from tests.conftest import unique


def test_subjects_of_a_workflow() -> None:
    s = Subjects("acme.cadre")
    assert s.requests == "acme.cadre.requests"
    assert s.event("wf-1", "plan_proposed") == "acme.cadre.evt.wf-1.plan_proposed"
    assert s.workflow("wf-1") == "acme.cadre.evt.wf-1.>"
    assert s.of_type("plan_proposed") == "acme.cadre.evt.*.plan_proposed"
    assert s.parse_event("acme.cadre.evt.wf-1.plan_proposed") == ("wf-1", "plan_proposed")
    assert s.parse_event("acme.cadre.evt.wf-1") is None
    assert s.parse_event("cadre.evt.wf-1.x") is None


def test_a_stored_subject_may_end_in_its_partition() -> None:
    s = Subjects("acme.cadre")
    # As a partitioned stream stores it (the server's subject transform adds the partition).
    assert s.parse_event("acme.cadre.evt.wf-1.plan_proposed.3") == ("wf-1", "plan_proposed")
    assert s.published("acme.cadre.evt.wf-1.plan_proposed.3") == "acme.cadre.evt.wf-1.plan_proposed"
    assert s.published("acme.cadre.evt.wf-1.plan_proposed") == "acme.cadre.evt.wf-1.plan_proposed"
    # Only digits: any other fifth token is no event subject (nor is a sixth).
    for bad in ("acme.cadre.evt.wf-1.plan_proposed.x", "acme.cadre.evt.wf-1.plan_proposed.3.4"):
        assert s.parse_event(bad) is None
        assert s.published(bad) == bad
    assert s.of_type_in("step_ready", 2) == "acme.cadre.evt.*.step_ready.2"
    assert s.stored_of_type("step_ready") == ("acme.cadre.evt.*.step_ready", "acme.cadre.evt.*.step_ready.*")
    src, dest = partition_transform(s.events, 8)
    assert src == "acme.cadre.evt.*.*"
    assert dest == "acme.cadre.evt.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(8,1)}}"
    assert transform_partitions(dest) == 8
    assert transform_partitions(None) == transform_partitions("x.{{wildcard(1)}}") == 0


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "x" * 129])
def test_bad_tokens_are_refused(bad: str) -> None:
    with pytest.raises(InvalidName, match=r"^workflow id .* is not a valid subject token: expected 1-128"):
        check_token("workflow id", bad)


def test_bad_prefix_is_refused() -> None:
    with pytest.raises(InvalidName, match=r"^subject prefix 'a\.\.b' is not valid"):
        Subjects("a..b")


async def test_connect_fails_fast_when_nobody_answers() -> None:
    started = time.monotonic()
    with pytest.raises(
        NatsUnavailable, match=r"^no NATS server answered at nats://127\.0\.0\.1:1 \(.*\); start one with `cadre up`"
    ):
        await connect(ConnectOptions(url="nats://127.0.0.1:1"))
    assert time.monotonic() - started < 2


async def test_connected_client_reconnects_forever(nats_url: str) -> None:
    nc = await connect(ConnectOptions(url=nats_url, reconnect_wait=0.25))
    try:
        assert nc.options["max_reconnect_attempts"] == -1
        assert nc.options["reconnect_time_wait"] == 0.25
    finally:
        await nc.drain()


async def test_ensure_stream_is_idempotent_and_concurrent(nc: NATS) -> None:
    name = unique("S").upper()
    spec = StreamSpec(name=name, subjects=f"{name.lower()}.evt.>", storage="memory")
    js = nc.jetstream()
    infos = await asyncio.gather(*(ensure_stream(js, spec) for _ in range(8)))
    assert {i.config.name for i in infos} == {name}
    info = await ensure_stream(js, StreamSpec(name=name, subjects=spec.subjects, storage="memory", max_age=3600))
    assert info.config.max_age == 3600
    assert info.config.allow_atomic
    await js.delete_stream(name)


async def test_overlapping_stream_gets_a_hint(nc: NATS) -> None:
    a, b = unique("A").upper(), unique("B").upper()
    js = nc.jetstream()
    await ensure_stream(js, StreamSpec(name=a, subjects=f"{a.lower()}.evt.>", storage="memory"))
    try:
        with pytest.raises(
            StreamConfigError, match=rf"^could not create or update stream '{b}': .*another stream already captures"
        ):
            await ensure_stream(js, StreamSpec(name=b, subjects=f"{a.lower()}.evt.>", storage="memory"))
    finally:
        await js.delete_stream(a)
