"""Benchmark of the budget gate's latency, beside raw nats-py request/reply on the same server.

    .venv/bin/python bench/budget.py [--samples N] [--runs R] [--storage file|memory] [--callers C]
                                     [--data-dir DIR] [--nats URL] [--profile FILE]

Every figure is a latency of one request at a time (p50 and p99 over all samples of R runs;
the sides take turns, the order rotating every run, so that the noise of this shared
machine hits all alike). The budget actor (``actors.budget.serve_budget``) and its caller
(``BudgetClient``) run in this process on connections of their own, as the baseline's
responder and requester do:

* ``raw``: ``nc.request`` to a responder that answers at once (``m.respond``), with a payload
  of a consultation's size. The floor of any core NATS request/reply service.
* ``raw_js``: the same, but the responder first appends the payload to a JetStream stream
  (core request with ``Nats-Msg-Id`` and ``Nats-Expected-Last-Sequence``, as the ledger does)
  and answers after the ack: the floor of a gate that records each decision before answering.
* ``ask``: ``BudgetClient.consult`` of a fresh consultation -> ``granted`` (one ledger append).
* ``settle``: ``BudgetClient.settle`` of that grant -> ``Settled`` (answered once priced; its
  ledger append follows, and the reservation is released when the append is acknowledged).
* ``ask_settle``: the two together, as a caller pays for one LLM call (target p50 <= 1 ms).
* ``ask_cached``: ``consult`` with a ``cache_key`` the inference cache holds -> ``cached``
  (a KV get, then a ``cache_hit`` ledger append).
* ``concurrent`` (informational, one run): ``--callers`` callers at once, each doing ask+settle
  pairs one after another, in requests per second, beside the ``raw_js`` responder under the
  same load (it appends one request at a time; the budget groups what queues up into one
  ledger message: ``requests_per_ledger_append``).

At the end the bench reads the ledger back and checks that every settlement it was answered
(not ``already_settled``) is in it and closed its reservation (``settlements_recorded``), and
that the fold of the ledger agrees with the replica's state: settlements answered before their
append must all be durable once the replica is drained.

By default the bundled nats-server runs in a fresh temporary data dir and the ledger uses
**file storage**, as in production. One JSON object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import msgspec
from _common import environment, median, note, percentile, run_on_server

from cadre.actors.budget import BudgetClient, BudgetService, read_ledger, rules, serve_budget
from cadre.actors.budget.rules import BudgetConfig
from cadre.actors.metrics import Metrics
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.bus.ledger import Consultation, SettledEntry, Settlement
from cadre.bus.stream import StreamSpec, ensure_stream
from cadre.bus.subjects import Subjects
from cadre.planner.providers.pricing import ModelPrice, Prices, model_price

TOTAL_TIMEOUT = 300.0
TARGET_ASK_SETTLE_P50_MS = 1.0

Sample = Callable[[int], Awaitable[float]]


def config() -> BudgetConfig:
    """Caps and limits far above what the bench spends, so every consultation is granted."""
    return BudgetConfig(
        workflow_usd=1e9,
        daily_usd=1e9,
        reservation_timeout_s=600.0,
        rate_limits={"anthropic": (10**9, 10**12)},
        prices=Prices(default=ModelPrice(15.0, 75.0), by_model={"claude-haiku-4": model_price(1.0, 5.0)}),
    )


def consultation(i: int, tag: str, cache_key: str | None = None) -> Consultation:
    return Consultation(
        id=f"{tag}-{i:07d}-0",
        workflow_id=f"wf-{tag}-{i // 10:06d}",
        kind="plan",
        provider="anthropic",
        model="claude-haiku-4-5",
        est_input_tokens=1800,
        max_output_tokens=1024,
        intelligence="adaptive",
        mode="adaptive",
        budget_usd=0.5,
        cache_key=cache_key,
    )


def settlement(c: Consultation) -> Settlement:
    return Settlement(
        reservation_id=c.id, workflow_id=c.workflow_id, model=c.model, input_tokens=1650, output_tokens=700
    )


async def rotate(runs: int, samples: int, sides: dict[str, Sample]) -> dict[str, list[list[float]]]:
    """Seconds of every sample of every run of each side; the order rotates every run."""
    out: dict[str, list[list[float]]] = {name: [] for name in sides}
    names = list(sides)
    for run in range(runs):
        k = run % len(names)
        for name in names[k:] + names[:k]:
            seconds = [await sides[name](run * samples + i) for i in range(samples)]
            out[name].append(seconds)
        note(f"  run {run + 1}/{runs}: " + ", ".join(f"{n} p50 {median(out[n][-1]) * 1e3:.3f} ms" for n in names))
    return out


def figures(runs: list[list[float]]) -> dict[str, Any]:
    every = [s for run in runs for s in run]
    return {
        "p50_ms": round(percentile(every, 50) * 1e3, 3),
        "p99_ms": round(percentile(every, 99) * 1e3, 3),
        "runs_p50_ms": [round(median(run) * 1e3, 3) for run in runs],
    }


async def main(args: argparse.Namespace, url: str) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    subjects = Subjects(f"bench{tag}")
    ledger = StreamSpec(name=f"BENCH{tag.upper()}_LEDGER", subjects=subjects.ledger, storage=args.storage)
    raw_spec = StreamSpec(name=f"BENCH{tag.upper()}_RAW", subjects=f"bench{tag}.raw.log", storage=args.storage)
    bucket = f"BENCH{tag.upper()}_CACHE"
    caller = await connect(ConnectOptions(url=url, name="bench-caller"))
    server = await connect(ConnectOptions(url=url, name="bench-budget"))
    js = server.jetstream(timeout=5.0)
    try:
        out: dict[str, Any] = {**environment(caller), "runs": args.runs, "samples": args.samples}
        out["storage"] = args.storage
        async with AsyncExitStack() as stack:
            await ensure_stream(js, raw_spec)
            await _raw_responders(stack, server, subjects, raw_spec)
            service = await stack.enter_async_context(
                serve_budget(
                    server,
                    subjects,
                    config(),
                    ledger=ledger,
                    cache_bucket=bucket,
                    cache_ttl_s=600.0,
                    metrics=Metrics.create(),  # as in production: every decision counted and timed
                )
            )
            await barrier(server)
            client = BudgetClient(caller, subjects, timeout=5.0)
            settled: set[str] = set()  # reservations the bench was answered a settlement of
            sides = _sides(caller, client, subjects, tag, settled)
            cached_key = await _prime_cache(client, tag, settled)
            sides["ask_cached"] = lambda i: _timed(client.consult(consultation(i, tag + "c", cached_key)))
            for name, side in sides.items():  # warm-up: first requests on a connection are slower
                for i in range(200):
                    await side(10_000_000 + i)
                note(f"warmed up {name}")
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            seconds = await rotate(args.runs, args.samples, sides)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            out.update({name: figures(runs) for name, runs in seconds.items()})
            out["ledger_groups"] = service.groups
            out["ledger_conflicts"] = service.conflicts
            out["concurrent"] = await concurrent(caller, client, subjects, tag, service, args.callers, settled)
            await service.recorded()
            out.update(await _check_ledger(server, ledger.name, service, settled))
        p50 = out["ask_settle"]["p50_ms"]
        out["target_ask_settle_p50_ms"] = TARGET_ASK_SETTLE_P50_MS
        out["ok"] = p50 <= TARGET_ASK_SETTLE_P50_MS and out["settlements_recorded"] and out["ledger_agrees_with_state"]
        return out
    finally:
        for name in (ledger.name, raw_spec.name, f"KV_{bucket}"):
            try:
                await asyncio.wait_for(js.delete_stream(name), 10)
            except Exception as exc:
                note(f"could not delete stream {name}: {exc!r}")
        await asyncio.wait_for(caller.close(), 10)
        await asyncio.wait_for(server.close(), 10)


async def concurrent(
    caller: Any,
    client: BudgetClient,
    subjects: Subjects,
    tag: str,
    service: BudgetService,
    callers: int,
    settled: set[str],
) -> dict[str, Any]:
    """Informational: ``callers`` callers at once, each doing ask+settle pairs one after another,
    against the ``raw_js`` responder under the same load (which appends one request at a time)."""
    pairs = 200
    note(f"concurrent: {callers} callers x {pairs} ask+settle pairs")

    async def budget_caller(k: int) -> None:
        for i in range(pairs):
            c = consultation(k * pairs + i, f"{tag}k{k}")
            if (await client.consult(c)).outcome != "granted" or await client.settle(settlement(c)) is None:
                raise RuntimeError("a concurrent ask+settle failed")
            settled.add(c.id)

    payload = msgspec.json.encode(consultation(0, tag))

    async def raw_caller(_k: int) -> None:
        for _ in range(2 * pairs):
            await caller.request(f"{subjects.prefix}.raw.append", payload, timeout=10.0)

    groups = service.groups
    cadre_s = await _timed(asyncio.gather(*(budget_caller(k) for k in range(callers))))
    appends = service.groups - groups
    raw_s = await _timed(asyncio.gather(*(raw_caller(k) for k in range(callers))))
    requests = 2 * pairs * callers
    return {
        "callers": callers,
        "requests": requests,
        "cadre_requests_per_s": round(requests / cadre_s),
        "raw_js_requests_per_s": round(requests / raw_s),
        "requests_per_ledger_append": round(requests / max(appends, 1), 2),
    }


async def _timed(call: Awaitable[object]) -> float:
    start = time.perf_counter()
    await call
    return time.perf_counter() - start


def _sides(caller: Any, client: BudgetClient, subjects: Subjects, tag: str, settled: set[str]) -> dict[str, Sample]:
    payload = msgspec.json.encode(consultation(0, tag))
    granted: dict[int, Consultation] = {}

    async def raw(_i: int) -> float:
        return await _timed(caller.request(f"{subjects.prefix}.raw.echo", payload, timeout=5.0))

    async def raw_js(_i: int) -> float:
        return await _timed(caller.request(f"{subjects.prefix}.raw.append", payload, timeout=5.0))

    async def ask(i: int) -> float:
        c = consultation(i, tag + "a")
        start = time.perf_counter()
        d = await client.consult(c)
        seconds = time.perf_counter() - start
        if d.outcome != "granted":
            raise RuntimeError(f"expected a grant, got {d!r}")
        granted[i] = c
        return seconds

    async def settle(i: int) -> float:
        c = granted.pop(i, None)
        if c is None:  # the settle side ran before the ask side this run: grant one first (not timed)
            c = consultation(i, tag + "s")
            await client.consult(c)
        start = time.perf_counter()
        s = await client.settle(settlement(c))
        seconds = time.perf_counter() - start
        if s is None or s.already_settled:
            raise RuntimeError(f"expected a settlement, got {s!r}")
        settled.add(c.id)
        return seconds

    async def ask_settle(i: int) -> float:
        c = consultation(i, tag + "p")
        start = time.perf_counter()
        d = await client.consult(c)
        s = await client.settle(settlement(c))
        seconds = time.perf_counter() - start
        if d.outcome != "granted" or s is None or s.already_settled:
            raise RuntimeError(f"ask+settle failed: {d!r} {s!r}")
        settled.add(c.id)
        return seconds

    return {"raw": raw, "raw_js": raw_js, "ask": ask, "settle": settle, "ask_settle": ask_settle}


async def _prime_cache(client: BudgetClient, tag: str, settled: set[str]) -> str:
    """Put an answer of plan size into the inference cache through a settlement; return its key."""
    key = secrets.token_hex(16)
    c = consultation(0, tag + "prime", key)
    d = await client.consult(c)
    value = {"nodes": [{"id": f"t{i}", "tool": "sql.query", "inputs": {"sql": "select 1"}} for i in range(5)]}
    s = await client.settle(
        Settlement(
            reservation_id=c.id,
            workflow_id=c.workflow_id,
            model=c.model,
            input_tokens=1600,
            output_tokens=600,
            cache_key=key,
            cache_value=value,
        )
    )
    if d.outcome != "granted" or s is None:
        raise RuntimeError(f"could not prime the cache: {d!r} {s!r}")
    settled.add(c.id)
    return key


async def _check_ledger(nc: Any, stream: str, service: BudgetService, settled: set[str]) -> dict[str, Any]:
    """Read the ledger back: is every settlement the bench was answered in it, and does its fold
    agree with the replica's state (open reservations, settled spend)?"""
    entries = await read_ledger(nc, stream, timeout_s=30.0)
    folded = rules.fold(entries)
    in_ledger = {e.reservation_id for e in entries if isinstance(e, SettledEntry)}
    state = service.state
    agrees = folded.open.keys() == state.open.keys() and all(
        abs(spend.settled_usd - state.workflows.get(wf, rules.Spend()).settled_usd) < 1e-9
        for wf, spend in folded.workflows.items()
    )
    note(f"ledger: {len(entries)} entries; {len(settled)} settlements answered, {len(settled & in_ledger)} recorded")
    return {
        "ledger_entries": len(entries),
        "settlements_answered": len(settled),
        "settlements_recorded": settled <= in_ledger and not settled & folded.open.keys(),
        "ledger_agrees_with_state": agrees,
    }


async def _raw_responders(stack: AsyncExitStack, nc: Any, subjects: Subjects, spec: StreamSpec) -> None:
    """The baselines' responders: answer at once, or after a JetStream append of the request."""
    answer = b'{"outcome":"granted","reservation_id":"x","reserved_usd":0.0069}'
    last = 0

    async def echo(m: Any) -> None:
        await m.respond(answer)

    async def append(m: Any) -> None:
        nonlocal last
        headers = {"Nats-Msg-Id": f"{last + 1}", "Nats-Expected-Last-Sequence": str(last)}
        ack = json.loads((await nc.request(spec.subjects, m.data, timeout=5.0, headers=headers)).data)
        if "error" in ack:
            raise RuntimeError(f"raw append failed: {ack}")
        last = ack["seq"]
        await m.respond(answer)

    for name, cb in (("echo", echo), ("append", append)):
        sub = await nc.subscribe(f"{subjects.prefix}.raw.{name}", cb=cb)
        stack.push_async_callback(sub.unsubscribe)
    await barrier(nc)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="cadre budget gate latency vs raw nats-py request/reply, same run")
    ap.add_argument("--samples", type=int, default=2000, help="requests per run and side")
    ap.add_argument("--runs", type=int, default=3, help="runs per side")
    ap.add_argument("--storage", choices=["file", "memory"], default="file", help="storage of the ledger")
    ap.add_argument("--data-dir", type=Path, help="embedded server data dir (default: a fresh temp dir)")
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the measured runs here")
    ap.add_argument("--callers", type=int, default=32, help="callers at once in the concurrent measurement")
    args = ap.parse_args(argv)
    if min(args.samples, args.runs, args.callers) < 1:
        ap.error("--samples, --runs and --callers must be >= 1")
    return args


def run() -> None:
    args = parse_args()
    run_on_server(args.nats, args.data_dir, lambda url: main(args, url), TOTAL_TIMEOUT)


if __name__ == "__main__":
    run()
