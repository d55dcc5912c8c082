"""Intake burst: 10 000 requests, half with a reply subject and half published only, with the intake
process killed (SIGKILL) and started again during the burst. Nothing may be lost.

    .venv/bin/python bench/intake.py [--requests 10000] [--rate PER_S] [--nats URL] [--data-dir DIR]

The intake runs in a process of its own (this script with ``--serve``), on the event stream and the
requests stream of a fresh prefix (file storage). Requests are sent as fast as one nats-py client
sends them (or at ``--rate`` per second): even-numbered ones with ``publish``, odd-numbered ones
with ``request`` (10 s timeout), each with a payload of its own. The intake is killed when 40 %
are sent and started again when 60 % are sent. Then the bench waits until the requests stream is empty and reads every
``workflow_requested`` from the event log.

A request counts as **lost** when it is no workflow and its requester got no refusal; a requester
answered ``overloaded`` whose request is a workflow anyway counts as **untrue**; a request that is
two workflows as **duplicated**. Beside the figures: a baseline of raw nats-py on the same server
(publish only, and request/reply to an echo responder) with the same sizes.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import environment, note, run_on_server
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cadre.actors.intake import serve_intake
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.bus.events import WorkflowRequested
from cadre.bus.requests_stream import IntakeSpec, ensure_intake_streams, intake_spec
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects
from cadre.store.jetstream import JetStreamLog, stream_seq
from cadre.store.records import StoredEvent, to_record

REQUEST_TIMEOUT_S = 10.0


def parts(prefix: str) -> tuple[StreamSpec, Subjects, IntakeSpec]:
    subjects = Subjects(prefix)
    spec = StreamSpec(name=prefix.upper(), subjects=subjects.events, storage="file")
    return spec, subjects, intake_spec(spec, subjects)


def body(i: int) -> bytes:
    return json.dumps({"request": f"burst request {i}"}).encode()


# -- the intake process ------------------------------------------------------------------------------


async def serve(url: str, prefix: str) -> None:
    spec, subjects, ispec = parts(prefix)
    nc = await connect(ConnectOptions(url=url, name="bench-intake"))
    elog = JetStreamLog(nc, stream=spec, subjects=subjects)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve_intake(elog, ispec):
        await barrier(nc)
        print("ready", flush=True)
        await stop.wait()
    await nc.drain()


def start_intake(url: str, prefix: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--serve", url, prefix], stdout=subprocess.PIPE, env={**os.environ}
    )


async def ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if line.strip() != b"ready":
        raise RuntimeError(f"the intake process did not start (exit {proc.poll()})")


# -- the burst ------------------------------------------------------------------------------------------


async def burst(url: str, n: int, rate: float) -> dict[str, Any]:
    prefix = "bench" + os.urandom(4).hex()
    spec, subjects, ispec = parts(prefix)
    admin = await connect(ConnectOptions(url=url, name="bench-admin"))
    elog = JetStreamLog(admin, stream=spec, subjects=subjects)
    await elog.ensure_stream()
    await ensure_intake_streams(elog.js, ispec)
    client = await connect(ConnectOptions(url=url, name="bench-client"))
    answers: dict[int, dict[str, Any] | None] = {}

    async def ask(i: int) -> None:
        try:
            reply = await client.request(ispec.subject, body(i), timeout=REQUEST_TIMEOUT_S)
            answers[i] = json.loads(reply.data)
        except Exception:
            answers[i] = None

    first = start_intake(url, prefix)
    await ready(first)
    second: subprocess.Popen[bytes] | None = None
    asks: list[asyncio.Task[None]] = []
    t0 = time.perf_counter()
    killed_at = restarted_at = 0.0
    try:
        for i in range(n):
            if i == n * 2 // 5:
                first.send_signal(signal.SIGKILL)
                killed_at = time.perf_counter() - t0
                note(f"intake killed after {i} requests ({killed_at:.2f} s)")
            if i == n * 3 // 5:
                second = start_intake(url, prefix)
                restarted_at = time.perf_counter() - t0
                note(f"intake started again after {i} requests ({restarted_at:.2f} s)")
            if i % 2:
                asks.append(asyncio.create_task(ask(i)))
            else:
                await client.publish(ispec.subject, body(i))
            if rate > 0:
                ahead = t0 + (i + 1) / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif i % 100 == 99:
                await asyncio.sleep(0)
        await barrier(client)
        sent_s = time.perf_counter() - t0
        note(f"{n} requests sent in {sent_s:.2f} s")
        assert second is not None
        await ready(second)
        for _ in itertools.count():
            if (await elog.js.stream_info(ispec.stream)).state.messages == 0:
                break
            await asyncio.sleep(0.1)
        taken_s = time.perf_counter() - t0
        note(f"every stored request taken after {taken_s:.2f} s")
        await asyncio.gather(*asks)
    finally:
        first.wait()
        if second is not None:
            second.send_signal(signal.SIGTERM)
            await asyncio.to_thread(second.wait)
    made = await requested(elog)
    env = environment(client)
    await client.close()
    take = await take_rate(url, admin, n // 2)
    baseline = await raw_baseline(admin, n)
    await admin.close()

    lost = untrue = refused = answered = unanswered = 0
    for i in range(n):
        wfs = made.get(f"burst request {i}", [])
        answer = answers.get(i)
        if answer is not None and "error" in answer:
            refused += 1
            untrue += bool(wfs)
            continue
        if answer is not None:
            answered += 1
        elif i % 2:
            unanswered += 1
        lost += not wfs
    duplicated = sum(1 for ids in made.values() if len(set(ids)) > 1)
    return {
        "bench": "intake",
        **env,
        "requests_sent": n,
        "send_rate_per_s": rate or "as fast as the client sends",
        "with_reply": n // 2,
        "published_only": n - n // 2,
        "workflows": len(made),
        "answered_with_workflow_id": answered,
        "refusals_received": refused,
        "requesters_not_answered_but_workflow": unanswered,
        "lost": lost,
        "duplicated": duplicated,
        "untrue_refusals": untrue,
        "intake_killed_at_s": round(killed_at, 2),
        "intake_restarted_at_s": round(restarted_at, 2),
        "send_s": round(sent_s, 2),
        "all_taken_s": round(taken_s, 2),
        "intake_take_rate": take,
        "baseline": baseline,
    }


async def take_rate(url: str, nc: NATS, n: int) -> dict[str, Any]:
    """How fast one intake process makes workflows of a backlog: ``n`` requests published while none
    runs, then the time from its start (ready) until the requests stream is empty."""
    prefix = "bench" + os.urandom(4).hex()
    spec, subjects, ispec = parts(prefix)
    elog = JetStreamLog(nc, stream=spec, subjects=subjects)
    await elog.ensure_stream()
    await ensure_intake_streams(elog.js, ispec)
    for i in range(n):
        await nc.publish(ispec.subject, body(i))
        if i % 100 == 99:
            await asyncio.sleep(0)
    await barrier(nc)
    proc = start_intake(url, prefix)
    try:
        await ready(proc)
        t = time.perf_counter()
        for _ in itertools.count():
            if (await elog.js.stream_info(ispec.stream)).state.messages == 0:
                break
            await asyncio.sleep(0.05)
        took = time.perf_counter() - t
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait)
    return {"backlog": n, "taken_s": round(took, 2), "per_s": round(n / took)}


async def requested(elog: JetStreamLog) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    last = (await elog.js.stream_info(elog.stream)).state.last_seq
    if last == 0:
        return out
    done = asyncio.Event()

    async def on_msg(m: Msg) -> None:
        rec = to_record(elog.subjects, stream_seq(m.reply), m.subject, m.data, m.headers)
        if isinstance(rec, StoredEvent) and isinstance(rec.event.data, WorkflowRequested):
            out[rec.event.data.request].append(rec.event.workflow_id)
        if rec.seq >= last:
            done.set()

    sub = await elog.js.subscribe(elog.subjects.events, stream=elog.stream, ordered_consumer=True, cb=on_msg)
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await sub.unsubscribe()
    return out


async def raw_baseline(nc: NATS, n: int) -> dict[str, Any]:
    """Raw nats-py on the same server: ``n`` publishes, and ``n`` requests to an echo responder
    (all sent at once, as the burst's), of the burst's payload sizes."""
    subject = "bench.baseline." + os.urandom(4).hex()
    t = time.perf_counter()
    for i in range(n):
        await nc.publish(subject, body(i))
        if i % 100 == 99:
            await asyncio.sleep(0)
    await barrier(nc)
    publish_s = time.perf_counter() - t

    async def echo(m: Msg) -> None:
        await m.respond(m.data)

    responder = await connect(ConnectOptions(url=nc.connected_url.geturl() if nc.connected_url else "", name="echo"))
    sub = await responder.subscribe(subject + ".rr", cb=echo, pending_msgs_limit=0, pending_bytes_limit=0)
    await barrier(responder)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        with contextlib.suppress(Exception):
            await nc.request(subject + ".rr", body(i), timeout=REQUEST_TIMEOUT_S)
            ok += 1

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    request_s = time.perf_counter() - t
    await sub.unsubscribe()
    await responder.close()
    return {
        "publish_msgs": n,
        "publish_s": round(publish_s, 3),
        "publish_per_s": round(n / publish_s),
        "requests": n,
        "requests_answered": ok,
        "request_s": round(request_s, 3),
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(sys.argv[2], sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=0, help="requests per second (default 0: as fast as it can)")
    parser.add_argument("--nats", default=None, help="a server to measure against (default: a fresh one)")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    run_on_server(args.nats, args.data_dir, lambda url: burst(url, args.requests, args.rate), limit_s=600)


if __name__ == "__main__":
    main()
