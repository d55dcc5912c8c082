"""Riding out NATS outages (bus/retry.py): which errors are transient, the backoff, one log line per
outage; and the log and the runtime through a real server's "no responders" and a vanished consumer."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError

from cadre.actors.metrics import Metrics
from cadre.actors.runtime import consumer_name
from cadre.actors.state_cache import StateCache
from cadre.bus.pubacks import mux_for
from cadre.bus.retry import RETRIES, RetryPolicy, is_transient, retrying
from cadre.store.jetstream import JetStreamLog
from tests.conftest import requested, until
from tests.system_harness import cadre_running, settings_for

QUICK = RetryPolicy(bound_s=1.0, first_delay_s=0.01, max_delay_s=0.05)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (nats.errors.TimeoutError(), True),
        (TimeoutError(), True),
        (nats.errors.NoRespondersError(), True),
        (nats.errors.ConnectionReconnectingError(), True),
        (ServiceUnavailableError(), True),  # a 503 status message: nats-py gives it no code
        (APIError(code=503, err_code=10008, description="JetStream system temporarily unavailable"), True),
        (APIError(code=500, err_code=10118, description="stream is offline"), True),
        (BadRequestError(code=400, err_code=10071, description="wrong last sequence: 7"), False),
        (NotFoundError(code=404, err_code=10059, description="stream not found"), False),
        (nats.errors.ConnectionClosedError(), False),
        (ValueError("bad"), False),
    ],
)
def test_which_errors_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    policy = RetryPolicy(first_delay_s=0.1, max_delay_s=1.0)
    assert [policy.delay(n, rand=lambda: 0.0) for n in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert [policy.delay(n, rand=lambda: 1.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.delay(10_000, rand=lambda: 1.0) == 1.0


def _retries(op: str) -> float:
    return RETRIES.labels(op)._value.get()


async def test_an_outage_is_retried_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Ten calls meet the same outage: one line when it starts, one when it ends; every retry counted."""
    failures = {"left": 30}

    async def call() -> str:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise nats.errors.NoRespondersError
        return "ok"

    before = _retries("test outage")
    with caplog.at_level(logging.WARNING, logger="cadre.bus"):
        assert await asyncio.gather(*(retrying(call, "test outage", QUICK) for _ in range(10))) == ["ok"] * 10
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("NATS unavailable for test outage (NoRespondersError: ")
    assert lines[0].endswith("retrying with backoff for up to 1 s")
    assert lines[1].startswith("NATS back for test outage after ")
    assert _retries("test outage") - before == 30


async def test_the_bound_ends_the_retries_with_the_last_error(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise ServiceUnavailableError

    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError), caplog.at_level(logging.WARNING, logger="cadre.bus"):
        await retrying(call, "test bound", QUICK)
    assert 1.0 <= time.monotonic() - started < 1.5
    assert calls > 10
    assert caplog.records[-1].getMessage().startswith("NATS still unavailable for test bound after 1 s")


async def test_other_errors_are_raised_at_once() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise BadRequestError(code=400, err_code=10071, description="wrong last sequence: 3")

    with pytest.raises(BadRequestError):
        await retrying(call, "test other", QUICK)
    assert calls == 1


async def test_an_append_nobody_answers_while_the_stream_exists_is_sent_again(log: JetStreamLog, nc: NATS) -> None:
    """A cluster between stream leaders: "no responders" for a while, then the append lands, once."""
    quick = JetStreamLog(nc, stream=log.spec, subjects=log.subjects, retry=QUICK)
    mux = mux_for(nc)  # appends of cadre's client go through its reply mux
    assert mux is not None
    real_request = mux.request
    sends = 0

    async def electing(subject: str, payload: bytes, headers: dict[str, str], within: float) -> bytes:
        nonlocal sends
        if subject.startswith(log.subjects.prefix + ".evt."):
            sends += 1
            if sends <= 3:
                raise nats.errors.NoRespondersError
        return await real_request(subject, payload, headers, within)

    mux.request = electing  # type: ignore[method-assign]
    try:
        result = await quick.append("wf", [requested("wf")], expected_seq=0)
    finally:
        mux.request = real_request  # type: ignore[method-assign]
    assert sends == 4
    assert not result.already_stored
    assert [e.event.type for e in await log.read("wf")] == ["workflow_requested"]


async def test_an_actor_recreates_its_consumer_when_it_vanishes(nats_url: str, tmp_path: Path) -> None:
    """The validator's durable consumer is deleted under it: its fetches fail, it creates the
    consumer again, and the next workflow completes."""
    settings = settings_for(nats_url, tmp_path, actor_ack_wait_s=2.0)
    plan = {"plan": {"nodes": [{"id": "x", "tool": "test.echo", "inputs": {"value": "hi"}}]}}
    async with cadre_running(settings) as h:
        js = h.bus.nc.jetstream()
        durable = consumer_name(settings.subject_prefix, "validator")
        assert await js.delete_consumer(settings.stream_name, durable)
        state = await h.run(plan, within=20)
        assert state.status == "completed", state.failure
        assert (await js.consumer_info(settings.stream_name, durable)).name == durable


def test_retries_are_in_every_actor_process_metrics() -> None:
    RETRIES.labels("test metrics").inc(2)
    for _ in range(2):  # each Metrics has its registry; the count is the process's
        registry = Metrics.create().registry
        assert registry.get_sample_value("cadre_nats_retries_total", {"op": "test metrics"}) == 2


async def test_the_state_cache_feed_is_recreated_when_its_consumer_vanishes(log: JetStreamLog, nc: NATS) -> None:
    """The feed's ordered consumer is deleted on the server (as when its node dies): nats-py hears no
    heartbeat, creates it again from where it was, and the feed brings the next event."""
    cache = StateCache(log)
    await cache.start()
    try:
        first = await log.append("wf1", [requested("wf1")], expected_seq=0)
        # Only the feed fills ``recent`` (no log read here); polled: the cache has nothing to wait on.
        await until(lambda: cache.recent(first.last_seq) is not None, 5)
        js = nc.jetstream()
        for info in await js.consumers_info(log.stream):
            await js.delete_consumer(log.stream, info.name)
        second = await log.append("wf2", [requested("wf2")], expected_seq=0)
        # nats-py's default heartbeat (5 s) would take 10 s
        await until(lambda: cache.recent(second.last_seq) is not None, 8)
        assert [i.name for i in await js.consumers_info(log.stream)] != []
    finally:
        await cache.stop()
