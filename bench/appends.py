"""CPU per append and per delivery in this process: cadre's client against nats-py's own, beside raw ``js.publish``.

    .venv/bin/python bench/appends.py [--appends N] [--concurrency C] [--runs R] [--signed]
                                      [--data-dir DIR] [--nats URL]

Every side runs in this process against the same server (file storage), and the figure is
this process's CPU time (``time.process_time``) per operation, in microseconds: what the client
side costs, steady on a shared machine where wall-clock rates are noise. The server's CPU is
not in it. Each side runs once as a warm-up, then the sides alternate (order rotated each run);
figures are medians of R runs.

**Appends** (``JetStreamLog.append``, one event each, as an actor appends):

* ``log_mux``: on cadre's client (``bus.connection.connect``), whose appends go through the
  connection's reply mux (``bus/pubacks.py``);
* ``log_request``: the same log on a client made by nats-py (``nats.connect``), whose appends go
  through ``Client.request`` (what every connection did before round 8);
* ``raw_publish``: ``js.publish`` of the same stored bytes with a ``Nats-Msg-Id``, on a nats-py
  client: the floor (no chain, no expected sequence, nats-py's own PubAck parsing).

``sequential``: N appends one after the other to one workflow, each expecting the previous one.
``concurrent``: N appends over C workflows at once (each workflow's appends in order), as the
pipeline's handlers append. Events are unsigned unless ``--signed`` (signing costs the same on
every log side and would hide the difference).

**Deliveries**: the N signed events (five headers each, as cadre stores them) read by an ordered
push consumer whose callback reads the headers, on cadre's client (``deliver_cadre``: its header
parse) and on nats-py's (``deliver_nats_py``). CPU per message delivered.

By default the bundled nats-server runs in a fresh temporary data dir and is stopped at the end.
One JSON object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
from _common import environment, median, note, run_on_server
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from cadre.bus import ConnectOptions, StreamSpec, Subjects, codec, connect
from cadre.bus.events import Envelope, StepCompleted, make_event
from cadre.bus.signing import Signer, new_seed
from cadre.store import JetStreamLog

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OUTPUT = {"x": "y" * 400}  # about the size of the pipeline's events once encoded


def events(wf: str, n: int, tag: str) -> list[Envelope]:
    """``n`` step completions of ``wf`` with a small output (about a cadre event's size)."""
    return [
        make_event(
            StepCompleted(
                task_id="t", step_id=f"s{i}", tool="bench.echo", planned_tool="bench.echo", output={"x": "y" * 400}
            ),
            workflow_id=wf,
            actor="agent",
            at=T0 + timedelta(milliseconds=i),
            causation_id=f"{tag}-{wf}",
            index=i,
        )
        for i in range(n)
    ]


async def append_all(log: JetStreamLog, wf: str, evs: list[Envelope]) -> None:
    seq, head = 0, ""
    for e in evs:
        r = await log.append(wf, [e], expected_seq=seq, prev=head)
        seq, head = r.last_seq, r.last_hash


async def cpu_us(work: Callable[[], Awaitable[object]], n: int) -> float:
    gc.collect()
    started = time.process_time()
    await work()
    return (time.process_time() - started) * 1e6 / n


class Bench:
    def __init__(self, cadre_nc: NATS, plain_nc: NATS, args: argparse.Namespace) -> None:
        self.args = args
        self.cadre_nc, self.plain_nc = cadre_nc, plain_nc
        self.prefix = f"bapp{time.monotonic_ns() % 10**9}"
        self.spec = StreamSpec(name=self.prefix.upper(), subjects=f"{self.prefix}.evt.>", storage="file")
        self.subjects = Subjects(self.prefix)
        signer = Signer(new_seed(), "agent") if args.signed else None
        self.logs = {
            "log_mux": JetStreamLog(cadre_nc, stream=self.spec, subjects=self.subjects).signed_by(signer),
            "log_request": JetStreamLog(plain_nc, stream=self.spec, subjects=self.subjects).signed_by(signer),
        }
        self.runs = 0

    async def setup(self) -> None:
        await self.logs["log_mux"].ensure_stream()

    async def teardown(self) -> None:
        await self.cadre_nc.jetstream().delete_stream(self.spec.name)

    async def appends(self, side: str, mode: str) -> float:
        """CPU us per append of ``side`` in ``mode`` (sequential / concurrent)."""
        self.runs += 1
        n, c = self.args.appends, (1 if mode == "sequential" else self.args.concurrency)
        tag = f"{side}-{mode}-{self.runs}"
        wfs = {f"{tag}-w{k}": events(f"{tag}-w{k}", n // c, tag) for k in range(c)}
        if side == "raw_publish":
            js = self.plain_nc.jetstream()
            msgs = {
                wf: [(self.subjects.event(wf, e.type), e.id, self._bytes(e)) for e in evs] for wf, evs in wfs.items()
            }

            async def publish_all(batch: list[tuple[str, str, bytes]]) -> None:
                for subject, event_id, data in batch:
                    await js.publish(subject, data, stream=self.spec.name, headers={"Nats-Msg-Id": event_id})

            return await cpu_us(lambda: asyncio.gather(*(publish_all(b) for b in msgs.values())), n // c * c)
        log = self.logs[side]
        return await cpu_us(lambda: asyncio.gather(*(append_all(log, wf, evs) for wf, evs in wfs.items())), n // c * c)

    @staticmethod
    def _bytes(e: Envelope) -> bytes:
        return codec.encode(e)

    async def prepare_reads(self) -> str:
        """N signed events of one workflow, stored once for the delivery measurements."""
        wf = "reads"
        log = JetStreamLog(self.cadre_nc, stream=self.spec, subjects=self.subjects).signed_by(
            Signer(new_seed(), "agent")
        )
        await append_all(log, wf, events(wf, self.args.appends, "reads"))
        return wf

    async def deliveries(self, nc: NATS, wf: str) -> float:
        """CPU us per message of an ordered push consumer over ``wf`` whose callback reads the headers."""
        n = self.args.appends
        got = 0
        done = asyncio.Event()
        seen: list[int] = []

        async def on_msg(m: Msg) -> None:
            nonlocal got
            seen.append(len(m.headers or {}))
            got += 1
            if got == n:
                done.set()

        js = nc.jetstream()

        async def read() -> None:
            sub = await js.subscribe(
                self.subjects.workflow(wf),
                stream=self.spec.name,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.ALL,
                cb=on_msg,
            )
            await asyncio.wait_for(done.wait(), 120)
            await sub.unsubscribe()

        us = await cpu_us(read, n)
        assert min(seen) >= 5, seen[:3]
        return us


async def main(args: argparse.Namespace, url: str) -> dict[str, Any]:
    cadre_nc = await connect(ConnectOptions(url=url, name="bench-appends-cadre"))
    plain_nc = await nats.connect(url, name="bench-appends-nats-py")
    bench = Bench(cadre_nc, plain_nc, args)
    await bench.setup()
    sides = ["log_mux", "log_request", "raw_publish"]
    modes = ["sequential", "concurrent"]
    results: dict[str, dict[str, list[float]]] = {m: {s: [] for s in sides} for m in modes}
    reads: dict[str, list[float]] = {"deliver_cadre": [], "deliver_nats_py": []}
    readers = {"deliver_cadre": cadre_nc, "deliver_nats_py": plain_nc}
    try:
        note(f"appends: {args.appends} per side and mode ({args.concurrency} at once), {args.runs} runs")
        for mode in modes:  # warm-up
            for side in sides:
                await bench.appends(side, mode)
        wf = await bench.prepare_reads()
        for rnc in readers.values():
            await bench.deliveries(rnc, wf)
        for r in range(args.runs):
            order = sides[r % len(sides) :] + sides[: r % len(sides)]
            for mode in modes:
                for side in order:
                    results[mode][side].append(await bench.appends(side, mode))
            for reader in list(readers)[r % 2 :] + list(readers)[: r % 2]:
                reads[reader].append(await bench.deliveries(readers[reader], wf))
            note(
                f"  run {r + 1}/{args.runs}: "
                + ", ".join(f"{m} {s} {results[m][s][-1]:.0f} us" for m in modes for s in sides)
                + ", "
                + ", ".join(f"{k} {v[-1]:.1f} us" for k, v in reads.items())
            )
    finally:
        await bench.teardown()
        env = environment(cadre_nc)
        await cadre_nc.close()
        await plain_nc.close()
    out: dict[str, Any] = {
        **env,
        "appends": args.appends,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "signed": args.signed,
        "unit": "process CPU microseconds per operation (median of runs)",
    }
    for mode in modes:
        out[mode] = {s: round(median(v), 1) for s, v in results[mode].items()}
        out[mode]["runs"] = {s: [round(x, 1) for x in v] for s, v in results[mode].items()}
        out[mode]["mux_vs_request"] = round(out[mode]["log_mux"] / out[mode]["log_request"], 3)
    out["deliveries"] = {k: round(median(v), 2) for k, v in reads.items()}
    out["deliveries"]["runs"] = {k: [round(x, 2) for x in v] for k, v in reads.items()}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--appends", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--signed", action="store_true", help="sign every appended event (as a deployment does)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--nats", default=None, help="measure against this server instead of a bundled one")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    run_on_server(args.nats, args.data_dir, lambda url: main(args, url), limit_s=3600)
