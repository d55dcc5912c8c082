"""The hop ratio's ceiling: the raw ring of bench/pipeline.py beside rings that add, one at a time and
then together, what every cadre event needs at minimum, with no workflow logic at all.

    .venv/bin/python bench/floor.py [--workflows N] [--concurrency C] [--runs R] [--variants a,b,...]
                                    [--data-dir DIR] [--nats URL]

**plain**: ``bench/pipeline.py``'s ``RawChain`` itself (imported, not copied): 4 durable pull-consumer
actors in a ring on a file-storage stream, each republishing what it fetched to the next actor's
subject with an awaited ``js.publish`` carrying a ``Nats-Msg-Id``, then acking it; payloads of
cadre's average event size, as many hops per workflow as cadre's actors append events.

The other variants run :class:`FloorRing`, the same ring (same fetch, batch, concurrency, publish
and ack), whose stored messages are real cadre envelopes (the events of a cadre workflow recorded in
the same run, re-addressed to each ring workflow), with these added:

* **a** (``headers``): the 5 headers cadre's appends carry (``Nats-Msg-Id``, ``Cadre-Signer``,
  ``Cadre-Sig`` of a real signature's length, ``Nats-Expected-Last-Subject-Sequence`` and
  ``-Subject``), on one subject family per workflow, the expected sequence (the input's stream
  sequence) checked by the server as cadre's are;
* **b** (``signing``): an ed25519 signature of each stored message (``bus.signing.Signer``, over what
  cadre signs) and, on each input, the check the live path makes: the state cache's feed gives every
  event to ``Keyring.check`` (``store.authenticity.verdict``), which skips the ed25519 verification
  for a message this process signed itself (``JetStreamLog.signed_here``: a blake2b digest compared)
  and checks the key's role. In one process (this bench, and bench/pipeline.py) every event is signed
  here; **b_verify** verifies every signature, as a process does for events other processes wrote;
* **c** (``feed``): a second delivery of every message to the process, by an ordered push consumer
  over the stream (as ``actors.state_cache.StateCache`` follows it), each message decoded
  (``bus.codec.decode``) there; an actor waits until the feed has brought its input (cadre's
  ``state_at``: the state as of the input) and takes the decoded event from it;
* **d** (``codec``): ``bus.codec.decode`` of the input (once: the feed's when **c** is on) and
  ``bus.codec.encode`` of the output envelope, chained to the input (``prev``: ``chain_hash`` of its
  bytes) and stamped with the time, as the log's append does; without **d** the output bytes are
  encoded before the run;
* **e** (``consumers``): as many actor consumers as cadre has durable consumers on its stream
  (measured in this run) instead of 4, and the inputs that produce no event (cadre delivers more
  inputs per workflow than its actors append events: measured too), each fetched and acked;
  **e_count**: the consumer count alone;
* **pull**: the plain ring fetching with cadre's ``actors/pull.py`` (as cadre's runtime does) instead
  of nats-py's ``fetch``, nothing else;
* **all**: a to e together (one-process signing); **all_verify**: the same with every signature
  verified; **all_pull**: a to e with cadre's fetch: the ceiling of cadre's hop ratio, as cadre
  fetches, with no workflow logic at all.

**cadre**: the pipeline bench's cadre side (``CadreSide``: every kind in this process, the DAG
``a, b -> c``) on its own stream, in the same run: its warm-up gives the shape the rings copy (hops,
event bytes, consumers, inputs per workflow) and its measured runs the hop ratio cadre has today.

Every side runs R times, the order rotating every run, after a warm-up of each; figures are medians.
Printed per variant: workflows/s, hop ratio against the plain ring, this process's CPU per workflow
(``time.process_time``: every actor, the feed and the client are in this process), the CPU hop ratio
(the plain ring's CPU per workflow over the variant's: the hop ratio of a CPU-bound process, which the
load on a shared machine moves far less than workflows/s) and the nats-server's CPU per workflow (from
/proc, when this bench started it). ``idle_cpu_ms_per_s``: this process's CPU while nothing runs but
cadre's idle system (which stays up during the rings' runs, as in bench/pipeline.py).
``budget_at_0_6`` is what a CPU-bound process leaves for cadre's logic at a hop ratio of 0.6: the
plain ring's CPU per workflow / 0.6, less the ceiling's (``all``, and ``all_pull``, the ceiling with
the fetch cadre's runtime uses), per workflow and per event. ``micro_us_per_call``: each primitive
alone, µs per call on the shape's events.

One JSON object goes to stdout; progress and a table to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pipeline
from _common import (
    bench_settings,
    delete_cadre_streams,
    environment,
    idle_cpu_ms_per_s,
    median,
    note,
    percentile,
    run_in_workdir,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from cadre.actors import pull
from cadre.actors.metrics import Metrics
from cadre.bus import codec
from cadre.bus.auth import ensure_auth
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.bus.events import Envelope, chain_hash
from cadre.bus.signing import SIG_HEADER, SIGNER_HEADER, KeyEntry, Keyring, KeyringFile, Signature, Signer, new_seed
from cadre.store.jetstream import stream_seq
from cadre.system import run_system
from cadre.wiring import open_bus

FLOOR_ROLE = "floor"
SIGNED_KEPT = 5_000  # as store/jetstream.py's _SIGNED_KEPT
RECENT_KEPT = 2_000  # as the state cache's recent_events


@dataclass(frozen=True)
class Adds:
    """What a ring variant adds to the plain ring."""

    headers: bool = False  # a
    signing: bool = False  # b
    verify_all: bool = False  # b, every signature verified (not only other processes')
    feed: bool = False  # c
    codec: bool = False  # d
    consumers: bool = False  # e: cadre's consumer count
    extra_inputs: bool = False  # e: and its inputs that produce no event
    pull: bool = False  # cadre's fetch (actors/pull.py) instead of nats-py's


VARIANTS: dict[str, Adds] = {
    "none": Adds(),
    "a": Adds(headers=True),
    "b": Adds(signing=True),
    "b_verify": Adds(signing=True, verify_all=True),
    "c": Adds(feed=True),
    "d": Adds(codec=True),
    "e_count": Adds(consumers=True),
    "e": Adds(consumers=True, extra_inputs=True),
    "pull": Adds(pull=True),
    "all": Adds(headers=True, signing=True, feed=True, codec=True, consumers=True, extra_inputs=True),
    "all_verify": Adds(
        headers=True, signing=True, verify_all=True, feed=True, codec=True, consumers=True, extra_inputs=True
    ),
    "all_pull": Adds(headers=True, signing=True, feed=True, codec=True, consumers=True, extra_inputs=True, pull=True),
}
CEILINGS = ("all", "all_pull")
DESCRIBED = {
    "plain": "bench/pipeline.py's RawChain itself",
    "none": "FloorRing with nothing added (cadre envelopes as payloads; checks the harness against plain)",
    "a": "5 headers, one subject family per workflow, expected last subject sequence checked by the server",
    "b": "ed25519 signature per message; each input checked as the one-process live path does (signed here)",
    "b_verify": "b, with every input's signature verified (events signed by other processes)",
    "c": "ordered push feed over the stream in the same process, every message decoded; actors wait for it",
    "d": "codec.decode of each input, codec.encode of each output (chained, stamped)",
    "e_count": "cadre's number of durable consumers instead of the ring's 4, nothing else",
    "e": "cadre's number of durable consumers and its extra inputs per workflow (fetched, acked, no output)",
    "pull": "nothing added, but fetched with cadre's actors/pull.py (no task per message) instead of nats-py's fetch",
    "all": "a + b + c + d + e (one-process signing)",
    "all_verify": "a + b_verify + c + d + e",
    "all_pull": "a + b + c + d + e, fetched with cadre's actors/pull.py as cadre's runtime does",
}


@dataclass(frozen=True)
class Shape:
    """What the rings copy from cadre's recorded DAG workflow."""

    hops: int  # events cadre's actors append per workflow
    events: list[Envelope]  # the workflow's events in order (0: workflow_requested)
    consumers: int  # durable consumers on cadre's stream
    consumer_names: list[str]
    inputs_per_workflow: float  # deliveries to those consumers per workflow
    event_bytes: float  # the average stored event

    @property
    def extra_inputs(self) -> int:
        """Inputs per workflow that cadre delivers beyond one per appended event."""
        return max(0, round(self.inputs_per_workflow - self.hops))


def digest(subject: str, data: bytes) -> bytes:
    """What the log keeps of a message it signed, to know it again (store/jetstream.py's ``_digest``)."""
    return hashlib.blake2b(subject.encode() + b"\n" + data, digest_size=16).digest()


class Feed:
    """An ordered push consumer over the ring's stream: every message delivered a second time to this
    process, decoded (and checked, with signing), kept by stream sequence for the actors."""

    def __init__(self, ring: FloorRing) -> None:
        self.ring = ring
        self.recent: OrderedDict[int, Envelope | None] = OrderedDict()
        self.waiting: dict[int, asyncio.Future[Envelope | None]] = {}
        self.sub: Any = None
        self.delivered = 0
        self.last_seq = 0

    async def start(self) -> None:
        self.sub = await self.ring.js.subscribe(
            f"{self.ring.prefix}.evt.>",
            stream=self.ring.stream,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            config=api.ConsumerConfig(idle_heartbeat=1.0),
            cb=self._on_msg,
        )

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        for fut in self.waiting.values():
            fut.cancel()
        self.waiting.clear()

    async def _on_msg(self, m: Msg) -> None:
        self.delivered += 1
        seq = stream_seq(m.reply)
        self.last_seq = max(self.last_seq, seq)
        event = codec.decode(m.data)
        self.ring.check(m.subject, event.type, event.id, m.data, m.headers)
        self.recent[seq] = event
        if len(self.recent) > RECENT_KEPT:
            self.recent.popitem(last=False)
        fut = self.waiting.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(event)

    async def at(self, seq: int) -> Envelope | None:
        """The decoded event at ``seq``, once the feed has brought it (None: it passed and was
        dropped from the recent ones; the caller decodes the input itself)."""
        if seq in self.recent:
            return self.recent[seq]
        if seq <= self.last_seq:
            return None
        fut = self.waiting.get(seq)
        if fut is None:
            fut = self.waiting[seq] = asyncio.get_running_loop().create_future()
        return await fut


class FloorRing(pipeline.RawChain):
    """bench/pipeline.py's ring (same fetch, batch, publish, ack and client side) with what ``adds`` says."""

    def __init__(self, client: NATS, actors_nc: NATS, tag: str, adds: Adds, shape: Shape, signer: Signer) -> None:
        super().__init__(client, actors_nc, tag)
        self.adds = adds
        self.shape = shape
        self.hops = shape.hops
        self.actors = shape.consumers if adds.consumers else pipeline.RAW_ACTORS
        self.signer = signer
        types = {e.type for e in shape.events}
        self.keyring = Keyring(
            KeyringFile(
                keys=(KeyEntry(key=signer.public_key, role=FLOOR_ROLE),), emits={FLOOR_ROLE: tuple(sorted(types))}
            )
        )
        self._signed: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self.placeholder = Signature(signer.public_key, signer.sign("x", "x", b"x").sig).headers()
        self.feed: Feed | None = None
        self.payloads: dict[tuple[str, int], bytes] = {}
        self.checked = 0  # inputs whose signature was checked
        self.extra_acked = 0  # inputs acked without output (variant e)
        # Inputs that produce no event (e): the hops whose message a second actor also takes.
        self.extra: dict[int, list[int]] = {k: [] for k in range(self.actors)}
        if adds.extra_inputs and self.hops > 1 and self.actors > 1:
            for i in range(shape.extra_inputs):
                hop = 1 + i % (self.hops - 1)  # never the last (the done subject)
                k = (hop + 1 + i // (self.hops - 1)) % self.actors
                if k != hop % self.actors and hop not in self.extra[k]:
                    self.extra[k].append(hop)

    # -- subjects: {prefix}.evt.{wf or "all"}.a{actor}.h{hop} -------------------------------------

    def _wf_token(self, wf: str) -> str:
        return wf if self.adds.headers else "all"

    def subject(self, wf: str, hop: int) -> str:
        if hop == self.hops:
            return f"{self.prefix}.evt.{self._wf_token(wf)}.done.h{hop}"
        return f"{self.prefix}.evt.{self._wf_token(wf)}.a{hop % self.actors}.h{hop}"

    def filters(self, k: int) -> list[str]:
        return [f"{self.prefix}.evt.*.a{k}.*", *(f"{self.prefix}.evt.*.a{h % self.actors}.h{h}" for h in self.extra[k])]

    # -- setup and the client side ----------------------------------------------------------------

    async def setup(self) -> None:
        await self.client_js.add_stream(
            api.StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"], storage=api.StorageType.FILE)
        )
        for k in range(self.actors):
            filters = self.filters(k)
            cfg = api.ConsumerConfig(
                durable_name=self.durable(k),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_ack_pending=1000,
                deliver_policy=api.DeliverPolicy.ALL,
            )
            if len(filters) == 1:
                cfg.filter_subject = filters[0]
            else:
                cfg.filter_subjects = filters
            await self.client_js.add_consumer(self.stream, cfg)

        async def on_done(m: Msg) -> None:
            self.driver.completed((m.headers or {})["Nats-Msg-Id"].rsplit("-", 1)[0])

        self._done_sub = await self.client_js.subscribe(
            f"{self.prefix}.evt.*.done.*",
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            cb=on_done,
        )
        if self.adds.feed:
            self.feed = Feed(self)
            await self.feed.start()
        await barrier(self.actors_nc)

    async def teardown(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
        await super().teardown()

    def envelope(self, wf: str, hop: int, prev: str, at: datetime | None = None) -> Envelope:
        """The ring workflow's event at ``hop``: cadre's event of that position, re-addressed."""
        template = self.shape.events[hop % len(self.shape.events)]
        return msgspec.structs.replace(
            template,
            id=f"{wf}-{hop}",
            workflow_id=wf,
            causation_id=f"{wf}-{hop - 1}" if hop else None,
            prev=prev,
            at=at or template.at,
        )

    def prepare(self, ids: list[str]) -> None:
        """Every payload of the run, encoded before it (what the ring sends where ``codec`` is off)."""
        self.payloads = {(wf, h): codec.encode(self.envelope(wf, h, "")) for wf in ids for h in range(self.hops + 1)}

    def headers(self, wf: str, hop: int, subject: str, data: bytes, expected: int) -> dict[str, str]:
        event_id = f"{wf}-{hop}"
        headers = {"Nats-Msg-Id": event_id}
        if self.adds.signing:
            signature = self.signer.sign(subject, event_id, data)
            self._signed[event_id] = (digest(subject, data), signature.sig)
            if len(self._signed) > SIGNED_KEPT:
                self._signed.popitem(last=False)
            headers.update(signature.headers())
        elif self.adds.headers:
            headers.update(self.placeholder)
        if self.adds.headers:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected)
            headers["Nats-Expected-Last-Subject-Sequence-Subject"] = f"{self.prefix}.evt.{wf}.>"
        return headers

    def check(self, subject: str, etype: str, event_id: str, data: bytes, headers: dict[str, str] | None) -> None:
        """The keyring's check of an input, as the state cache's feed makes it (signing on)."""
        if not self.adds.signing:
            return
        h = headers or {}
        signature = Signature(h.get(SIGNER_HEADER, ""), h.get(SIG_HEADER, ""))
        mine = self._signed.get(event_id)
        here = not self.adds.verify_all and mine is not None and mine == (digest(subject, data), signature.sig)
        if not self.keyring.check(subject, etype, event_id, data, signature, verified=here).trusted:
            raise RuntimeError(f"floor ring: the input {event_id} on {subject} is not trusted")
        self.checked += 1

    async def run(self, label: str, n: int, concurrency: int) -> pipeline.Run:
        ids = [f"f{label}{i:05d}" for i in range(n)]
        self.prepare(ids)

        async def submit(i: int) -> None:
            wf = ids[i]
            subject, data = self.subject(wf, 0), self.payloads[(wf, 0)]
            await self.client_js.publish(subject, data, headers=self.headers(wf, 0, subject, data, 0))

        return await self._measured(ids, submit, n, concurrency)

    # -- the actors ---------------------------------------------------------------------------------

    async def _hop(self, k: int, m: Msg) -> None:
        """One input: what the variant adds, the next hop's append, the ack."""
        actor = m.subject.split(".")[3]
        if actor != f"a{k}":  # an input that produces no event (e): taken and acked
            self.extra_acked += 1
            await m.ack()
            return
        headers = m.headers or {}
        wf, h = headers["Nats-Msg-Id"].rsplit("-", 1)
        nxt = int(h) + 1
        seq = stream_seq(m.reply) if (self.adds.headers or self.feed is not None) else 0
        event: Envelope | None = None
        if self.feed is not None:
            event = await self.feed.at(seq)  # decoded and checked by the feed
        if event is None and self.adds.codec:
            event = codec.decode(m.data)
            self.check(m.subject, event.type, event.id, m.data, headers)
        elif self.adds.signing and event is None:
            self.check(m.subject, self.shape.events[int(h) % len(self.shape.events)].type, f"{wf}-{h}", m.data, headers)
        subject = self.subject(wf, nxt)
        if self.adds.codec:
            assert event is not None
            data = codec.encode(self.envelope(event.workflow_id, nxt, chain_hash(m.data), datetime.now(UTC)))
        else:
            data = self.payloads[(wf, nxt)]
        await self.js.publish(subject, data, headers=self.headers(wf, nxt, subject, data, seq))
        await m.ack()

    async def _actor(self, k: int, ready: asyncio.Event, stop: asyncio.Event) -> None:
        sub = await self.js.pull_subscribe_bind(durable=self.durable(k), stream=self.stream)
        ready.set()
        try:
            while not stop.is_set():
                try:
                    if self.adds.pull:
                        msgs = await pull.fetch(sub, pipeline.RAW_BATCH, 0.5)
                    else:
                        msgs = await sub.fetch(pipeline.RAW_BATCH, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                await asyncio.gather(*(self._hop(k, m) for m in msgs))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


# -- cadre's shape, and cadre itself ------------------------------------------------------------


async def cadre_shape(cadre: pipeline.CadreSide, bus: Any, warm: int, concurrency: int) -> Shape:
    """Run ``warm`` DAG workflows on cadre; what one of them stored, and the deliveries they took."""
    js = cadre.js
    stream = cadre.settings.stream_name

    async def delivered() -> tuple[list[str], int]:
        infos = [c for c in await js.consumers_info(stream) if c.config.durable_name]
        return sorted(str(c.config.durable_name) for c in infos), sum(
            int(c.delivered.consumer_seq or 0) for c in infos if c.delivered
        )

    _, before = await delivered()
    await cadre.run("dag", "warm", warm, concurrency)
    names, after = await delivered()
    records = await bus.log.read_records(cadre.ids("dag", "warm", 1)[1][0])
    events = [r.event for r in records]
    return Shape(
        hops=len(events) - 1,
        events=events,
        consumers=len(names),
        consumer_names=names,
        inputs_per_workflow=(after - before) / warm,
        event_bytes=sum(len(r.data) for r in records) / len(records),
    )


# -- the bench ----------------------------------------------------------------------------------


def micro_us(shape: Shape, signer: Signer, repeat: int = 2000) -> dict[str, float]:
    """µs per call of each primitive a variant adds, alone (``time.process_time``, the shape's events in
    turn, each at its recorded size): what the ring figures should add up to, per event."""
    ring_keyring = Keyring(
        KeyringFile(
            keys=(KeyEntry(key=signer.public_key, role=FLOOR_ROLE),),
            emits={FLOOR_ROLE: tuple(sorted({e.type for e in shape.events}))},
        )
    )
    events = [msgspec.structs.replace(e, id=f"fmicro-{i}", workflow_id="fmicro") for i, e in enumerate(shape.events)]
    datas = [codec.encode(e) for e in events]
    subjects = [f"floor.evt.fmicro.{e.type}" for e in events]
    sigs = [signer.sign(subject, e.id, d) for subject, e, d in zip(subjects, events, datas, strict=True)]
    n = len(events)
    kept = {events[i].id: (digest(subjects[i], datas[i]), sigs[i].sig) for i in range(len(events))}

    def signed_here(i: int) -> object:  # as FloorRing.check (store/jetstream.py's signed_here, then the role)
        here = kept.get(events[i].id) == (digest(subjects[i], datas[i]), sigs[i].sig)
        return ring_keyring.check(subjects[i], events[i].type, events[i].id, datas[i], sigs[i], verified=here)

    def timed_us(op: Callable[[int], object]) -> float:
        cpu = time.process_time()
        for i in range(repeat):
            op(i % n)
        return round((time.process_time() - cpu) * 1e6 / repeat, 2)

    # nats-py's parsing of a delivery's header block: cadre's 5 headers (the stream keeps the expected
    # sequence ones and delivers them to every consumer), against the raw ring's one.
    parse: Callable[[bytes], object] | None = getattr(NATS, "_parse_header_lines", None)
    blocks = [
        "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"
        for headers in (
            {"Nats-Msg-Id": events[0].id},
            {
                "Nats-Msg-Id": events[0].id,
                **sigs[0].headers(),
                "Nats-Expected-Last-Subject-Sequence": "123456",
                "Nats-Expected-Last-Subject-Sequence-Subject": "floor.evt.fmicro.>",
            },
        )
    ]
    parsing = (
        {
            "parse_headers_1": timed_us(lambda i: parse(blocks[0])),
            "parse_headers_5": timed_us(lambda i: parse(blocks[1])),
        }
        if parse is not None
        else {}
    )
    return {
        **parsing,
        "sign": timed_us(lambda i: signer.sign(subjects[i], events[i].id, datas[i])),
        "check_signed_here": timed_us(signed_here),
        "check_verify": timed_us(
            lambda i: ring_keyring.check(subjects[i], events[i].type, events[i].id, datas[i], sigs[i])
        ),
        "decode": timed_us(lambda i: codec.decode(datas[i])),
        "encode": timed_us(
            lambda i: codec.encode(msgspec.structs.replace(events[i], prev=chain_hash(datas[i]), at=datetime.now(UTC)))
        ),
    }


def figures(
    runs: list[pipeline.Run], cpu: list[float], server: list[float], plain_wps: float, plain_cpu: float
) -> dict[str, Any]:
    """Medians over runs; ``hop_ratio`` against the plain ring's workflows/s, ``cpu_hop_ratio`` against
    its CPU per workflow (the hop ratio a CPU-bound process reaches: it does not move with the load)."""
    wps = [len(lat) / s for s, lat in runs]
    return {
        "workflows_per_s": round(median(wps), 1),
        "hop_ratio": round(median(wps) / plain_wps, 3),
        "cpu_hop_ratio": round(plain_cpu / median(cpu), 3),
        "cpu_ms_per_workflow": round(median(cpu), 3),
        "server_cpu_ms_per_workflow": round(median(server), 3) if server else None,
        "p50_ms": round(median([percentile(lat, 50) * 1000 for _, lat in runs]), 1),
        "runs_workflows_per_s": [round(x, 1) for x in wps],
        "runs_cpu_ms_per_workflow": [round(x, 3) for x in cpu],
    }


async def main(args: argparse.Namespace, url: str, data_dir: Path) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    prefix = f"floor{tag}"
    settings = bench_settings(url, data_dir, prefix)
    await asyncio.to_thread(ensure_auth, settings.auth_dir, settings.auth_names())
    client = await connect(ConnectOptions(url=url, name="floor-client"), nats_py=True)  # as the raw ring's
    ring_nc = await connect(ConnectOptions(url=url, name="floor-actors"), nats_py=True)
    out: dict[str, Any] = {**environment(client), "workflows": args.workflows, "concurrency": args.concurrency}
    out["runs"] = args.runs
    signer = Signer(new_seed(), FLOOR_ROLE)
    server_cpu = pipeline.server_cpu_reader(url)
    n, c = args.workflows, args.concurrency
    runs: dict[str, list[pipeline.Run]] = {}
    rings: dict[str, pipeline.RawChain] = {}
    cadre_cpu: list[float] = []
    cadre_server: list[float] = []
    try:
        async with open_bus(settings, name="floor-cadre") as bus:
            try:
                async with run_system(bus, settings, metrics=Metrics.create()):
                    await barrier(bus.nc)
                    cadre = pipeline.CadreSide(client, settings, Metrics.create(), tag)
                    cadre.server_cpu = server_cpu
                    await cadre.start()
                    try:
                        warm = min(n, 30)
                        note(f"cadre warm-up: {warm} DAG workflows (the shape the rings copy)")
                        shape = await cadre_shape(cadre, bus, warm, c)
                        note(
                            f"cadre's shape: {shape.hops} hops, {shape.event_bytes:.0f} bytes per event, "
                            f"{shape.consumers} durable consumers, {shape.inputs_per_workflow:.2f} inputs per workflow"
                        )
                        plain = pipeline.RawChain(client, ring_nc, f"{tag}p")
                        plain.hops = shape.hops
                        plain.pad_to(round(shape.event_bytes))
                        rings["plain"] = plain
                        for name in args.variants:
                            rings[name] = FloorRing(client, ring_nc, f"{tag}{name}", VARIANTS[name], shape, signer)
                        for ring in rings.values():
                            ring.server_cpu = server_cpu
                            await ring.setup()
                        try:
                            sides: dict[str, Callable[[str], Awaitable[pipeline.Run]]] = {
                                name: (lambda label, ring=ring: ring.run(label, n, c)) for name, ring in rings.items()
                            }
                            if not args.no_cadre:
                                sides["cadre"] = lambda label: cadre.run("dag", label, n, c)
                            note(f"warm-up: {min(n, 50)} workflows of each of {len(sides)} sides")
                            for ring in rings.values():
                                await ring.run("warm", min(n, 50), c)
                            for ring in rings.values():
                                ring.cpu_ms.clear()
                                ring.server_cpu_ms.clear()
                            cadre.cpu_ms.clear()
                            cadre.server_cpu_ms.clear()
                            # cadre runs throughout, idle during the rings' runs (as in bench/pipeline.py).
                            out["idle_cpu_ms_per_s"] = await idle_cpu_ms_per_s()
                            names = list(sides)
                            note(f"measuring: {n} workflows with {c} in flight, {args.runs} runs per side")
                            for r in range(args.runs):
                                k = r % len(names)
                                for name in names[k:] + names[:k]:
                                    runs.setdefault(name, []).append(await sides[name](f"m{r}"))
                                note(
                                    f"  run {r + 1}/{args.runs}: "
                                    + ", ".join(
                                        f"{name} {len(v[-1][1]) / v[-1][0]:.0f} wf/s" for name, v in runs.items()
                                    )
                                )
                            cadre_cpu = cadre.cpu_ms.get(f"dag/{c}", [])
                            cadre_server = cadre.server_cpu_ms.get(f"dag/{c}", [])
                        finally:
                            for ring in rings.values():
                                await ring.teardown()
                    finally:
                        await cadre.stop()
            finally:
                with contextlib.suppress(Exception):
                    await delete_cadre_streams(client, settings)
    finally:
        for nc in (ring_nc, client):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 10)

    plain_wps = median([len(lat) / s for s, lat in runs["plain"]])
    plain_cpu = median(rings["plain"].cpu_ms[str(c)])
    variants: dict[str, Any] = {}
    for name, ring in rings.items():
        variants[name] = {
            "adds": DESCRIBED[name],
            **figures(runs[name], ring.cpu_ms[str(c)], ring.server_cpu_ms.get(str(c), []), plain_wps, plain_cpu),
            "actors": ring.actors if isinstance(ring, FloorRing) else pipeline.RAW_ACTORS,
        }
        if isinstance(ring, FloorRing):
            variants[name]["inputs_checked"] = ring.checked
            variants[name]["extra_inputs_acked"] = ring.extra_acked
            variants[name]["feed_deliveries"] = ring.feed.delivered if ring.feed is not None else 0
    if "cadre" in runs:
        out["cadre"] = figures(runs["cadre"], cadre_cpu, cadre_server, plain_wps, plain_cpu)
    out["shape"] = {
        "hops": shape.hops,
        "event_types": [e.type for e in shape.events],
        "event_bytes_avg": round(shape.event_bytes),
        "consumers": shape.consumers,
        "consumer_names": shape.consumer_names,
        "inputs_per_workflow": round(shape.inputs_per_workflow, 2),
        "extra_inputs_per_workflow": shape.extra_inputs,
    }
    out["variants"] = variants
    out["micro_us_per_call"] = micro_us(shape, signer)
    out["budget_at_0_6"] = {
        "model": "the process is CPU bound: workflows/s ~ 1 / its CPU per workflow",
        "cpu_ms_per_workflow_allowed": round(plain_cpu / 0.6, 3),
        **{
            ceiling: {
                "cpu_ms_per_workflow_left": round(plain_cpu / 0.6 - variants[ceiling]["cpu_ms_per_workflow"], 3),
                "cpu_us_per_event_left": round(
                    (plain_cpu / 0.6 - variants[ceiling]["cpu_ms_per_workflow"]) * 1000 / shape.hops, 1
                ),
            }
            for ceiling in CEILINGS
            if ceiling in variants
        },
    }
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | workflows/s | hop ratio | CPU ms/wf (process) | CPU hop ratio | CPU ms/wf (server) | adds |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = list(result["variants"].items())
    if "cadre" in result:
        rows.append(("cadre", {**result["cadre"], "adds": "cadre itself (DAG a, b -> c)"}))
    for name, f in rows:
        lines.append(
            f"| {name} | {f['workflows_per_s']} | {f['hop_ratio']} | {f['cpu_ms_per_workflow']} | "
            f"{f['cpu_hop_ratio']} | {f['server_cpu_ms_per_workflow']} | {f['adds']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="the raw ring beside rings adding what each cadre event needs")
    ap.add_argument("--workflows", type=int, default=300, help="workflows per run")
    ap.add_argument("--concurrency", type=int, default=32, help="workflows in flight at most")
    ap.add_argument("--runs", type=int, default=3, help="runs per side; figures are medians")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, among {', '.join(VARIANTS)} (plain always runs)",
    )
    ap.add_argument("--no-cadre", action="store_true", help="measure cadre's shape only, not its runs")
    ap.add_argument("--data-dir", type=Path, help="embedded server data dir (default: a fresh temp dir)")
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    args = ap.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.workflows < 10 or min(args.concurrency, args.runs) < 1:
        ap.error("--workflows >= 10 and --concurrency, --runs >= 1")
    return args


def run() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    total = 180 + (args.runs + 1) * (len(args.variants) + 2) * pipeline.run_timeout(args.workflows)
    run_in_workdir(args.nats, args.data_dir, lambda url, work: main(args, url, work), total, "cadre-floor-", table)


if __name__ == "__main__":
    run()
