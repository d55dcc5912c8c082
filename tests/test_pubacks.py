"""The reply mux of cadre's client (bus/pubacks.py) on a real nats-server: replies, the errors
nats-py's ``Client.request`` gives, and a server restart with requests in flight."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cadre.bus import ConnectOptions, StreamSpec, Subjects, connect
from cadre.bus.embedded import server_binary
from cadre.bus.errors import AppendError, ConcurrencyConflict
from cadre.bus.events import WorkflowCompleted
from cadre.bus.nats_client import Client
from cadre.bus.pubacks import ReplyMux, mux_for
from cadre.bus.retry import RetryPolicy
from cadre.store import JetStreamLog
from tests.conftest import _free_port, ev, requested, unique, until


def _mux(nc: NATS) -> ReplyMux:
    mux = mux_for(nc)
    assert mux is not None
    return mux


async def test_cadre_connections_have_one_mux_and_nats_py_ones_none(nc: NATS, nats_url: str) -> None:
    assert isinstance(nc, Client)
    assert mux_for(nc) is mux_for(nc)
    plain = await nats.connect(nats_url)
    try:
        assert mux_for(plain) is None
    finally:
        await plain.close()


async def test_a_reply_comes_back_with_headers_and_payload(nc: NATS) -> None:
    subject = unique("echo")
    seen: list[Msg] = []

    async def echo(m: Msg) -> None:
        seen.append(m)
        await nc.publish(m.reply, b"re:" + m.data)

    sub = await nc.subscribe(subject, cb=echo)
    mux = _mux(nc)
    answers = await asyncio.gather(*(mux.request(subject, b"%d" % i, {"K": f"v{i}"}, 2.0) for i in range(20)))
    await sub.unsubscribe()
    assert answers == [b"re:%d" % i for i in range(20)]
    assert [m.headers for m in seen] == [{"K": f"v{i}"} for i in range(20)]
    # one reply subscription, <inbox prefix>.<nuid>.<counter>
    assert len({m.reply.rsplit(".", 1)[0] for m in seen}) == 1
    assert all(m.reply.startswith("_INBOX.") and m.reply.rsplit(".", 1)[1].isdigit() for m in seen)


async def test_the_mux_uses_the_connections_inbox_prefix(nats_url: str) -> None:
    nc = Client()
    await nc.connect(nats_url, inbox_prefix="_CUSTOM.inbox")
    subject = unique("echo")
    replies: list[str] = []

    async def echo(m: Msg) -> None:
        replies.append(m.reply)
        await nc.publish(m.reply, b"ok")

    try:
        await nc.subscribe(subject, cb=echo)
        assert await _mux(nc).request(subject, b"", {}, 2.0) == b"ok"
    finally:
        await nc.close()
    assert replies[0].startswith("_CUSTOM.inbox.")
    assert len(replies[0].split(".")) == 4  # <prefix (2 tokens)>.<nuid>.<counter>


async def test_a_client_connected_again_after_close_gets_a_new_reply_subscription(nats_url: str) -> None:
    nc = Client()
    subject, silent = unique("echo"), unique("silent")

    async def echo(m: Msg) -> None:
        await nc.publish(m.reply, m.data)

    prefixes = []
    for round_ in range(2):
        await nc.connect(nats_url)
        try:
            await nc.subscribe(subject, cb=echo)
            await nc.subscribe(silent)  # takes requests, never answers
            assert await _mux(nc).request(subject, b"%d" % round_, {}, 2.0) == b"%d" % round_
            with pytest.raises(nats.errors.TimeoutError):  # the timeout sweep runs for this connection too
                await _mux(nc).request(silent, b"", {}, 0.2)
            prefixes.append(_mux(nc)._prefix)
        finally:
            await nc.close()
    assert prefixes[0] != prefixes[1]


async def test_no_responders_raises_what_nats_py_raises(nc: NATS) -> None:
    with pytest.raises(nats.errors.NoRespondersError):
        await _mux(nc).request(unique("nobody"), b"", {}, 2.0)
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(unique("nobody"), b"", timeout=2.0)


async def test_a_request_nobody_answers_times_out_as_with_nats_py(nc: NATS) -> None:
    subject = unique("silent")
    sub = await nc.subscribe(subject)  # takes the request, never answers
    try:
        started = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await _mux(nc).request(subject, b"", {}, 0.3)
        took = time.monotonic() - started
        assert 0.3 <= took < 2.0  # the deadline, seen by the next sweep (with room for a loaded machine)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(subject, b"", timeout=0.3)
    finally:
        await sub.unsubscribe()
    assert not _mux(nc)._waiting  # nothing left waiting


async def test_a_late_reply_is_dropped(nc: NATS) -> None:
    subject = unique("late")
    held: list[Msg] = []

    async def hold(m: Msg) -> None:
        held.append(m)

    sub = await nc.subscribe(subject, cb=hold)
    mux = _mux(nc)
    with pytest.raises(nats.errors.TimeoutError):
        await mux.request(subject, b"", {}, 0.1)
    await nc.publish(held[0].reply, b"too late")  # nobody waits for it any more
    await nc.flush()

    async def answer(m: Msg) -> None:
        await nc.publish(m.reply, b"on time")

    await sub.unsubscribe()
    sub = await nc.subscribe(subject, cb=answer)
    assert await mux.request(subject, b"", {}, 2.0) == b"on time"
    await sub.unsubscribe()


async def test_a_cancelled_request_leaves_nothing_waiting(nc: NATS) -> None:
    subject = unique("silent")
    sub = await nc.subscribe(subject)
    mux = _mux(nc)
    task = asyncio.create_task(mux.request(subject, b"", {}, 5.0))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sub.unsubscribe()
    assert not mux._waiting


async def test_the_log_reports_the_errors_it_did_through_nats_py(nc: NATS, log: JetStreamLog) -> None:
    """Through the mux, JetStream's error replies reach the log as before: a wrong expected
    sequence is a conflict; a stream that does not exist says how to fix it."""
    assert isinstance(nc, Client)
    await log.append("wf", [requested("wf")], expected_seq=0)
    with pytest.raises(ConcurrencyConflict, match=r"expected its last event at stream sequence 0, found 1"):
        await log.append("wf", [ev(WorkflowCompleted(result=1), "wf", cause="x")], expected_seq=0)
    prefix = unique("nostream")
    missing = JetStreamLog(
        nc, stream=StreamSpec(name=prefix.upper(), subjects=f"{prefix}.evt.>"), subjects=Subjects(prefix)
    )
    with pytest.raises(AppendError, match="create the event stream first"):
        await missing.append("wf", [requested("wf")], expected_seq=0)


class _Server:
    """One nats-server with JetStream that can be killed and started again on the same port and store."""

    def __init__(self, store: Path) -> None:
        self.port, self.store = _free_port(), store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(server_binary()), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    s = _Server(tmp_path / "js")
    s.start()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


async def test_a_server_restart_mid_request(server: _Server) -> None:
    """A request in flight when the server dies times out (its reply is lost), as with nats-py's
    ``Client.request``; after the reconnect the mux's subscription is back and the log's appends
    made while the server was down land, each once."""
    opts = ConnectOptions(url=server.url, name="restart", connect_attempts=10, wait_s=5, reconnect_wait=0.1)
    nc = await connect(opts)
    listener = await connect(opts)
    try:
        prefix = unique("r")
        spec = StreamSpec(name=prefix.upper(), subjects=f"{prefix}.evt.>")
        log = JetStreamLog(nc, stream=spec, subjects=Subjects(prefix), timeout=1.0, retry=RetryPolicy(bound_s=30))
        await log.ensure_stream()
        first = await log.append("wf1", [requested("wf1")], expected_seq=0)

        silent = unique("silent")
        await listener.subscribe(silent)  # takes the requests, never answers
        await listener.flush()
        mux = _mux(nc)
        in_flight = [
            asyncio.create_task(mux.request(silent, b"", {}, 1.5)),
            asyncio.create_task(nc.request(silent, b"", timeout=1.5)),
        ]
        await asyncio.sleep(0.2)
        server.kill()
        done = ev(WorkflowCompleted(result=1), "wf1", cause="x")
        appending = asyncio.create_task(log.append("wf1", [done], expected_seq=first.last_seq))
        other = asyncio.create_task(log.append("wf2", [requested("wf2")], expected_seq=0))
        await asyncio.sleep(0.5)
        server.start()
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        assert [type(o) for o in outcomes] == [nats.errors.TimeoutError, nats.errors.TimeoutError]
        r1, r2 = await asyncio.wait_for(asyncio.gather(appending, other), 40)
        assert r1.last_seq > first.last_seq
        assert r2.last_seq > 0
        assert [s.event.type for s in await log.read("wf1")] == ["workflow_requested", "workflow_completed"]
        assert len(await log.read("wf2")) == 1

        async def answer(m: Msg) -> None:
            await listener.publish(m.reply, json.dumps({"ok": True}).encode())

        # The listener reconnects on its own schedule: while it is still reconnecting, nats-py's
        # flush only writes to its buffer (no round trip), and the request would find no responder.
        await until(lambda: listener.is_connected, 20)
        echo = unique("echo")
        await listener.subscribe(echo, cb=answer)
        await listener.flush()
        assert json.loads(await mux.request(echo, b"", {}, 2.0)) == {"ok": True}
    finally:
        await listener.close()
        await nc.close()
