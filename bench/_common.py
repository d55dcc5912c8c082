"""Shared helpers of the benches: a server to measure against, timing, medians, output.

Benches print one JSON object to stdout and everything else (progress, diagnostics) to
stderr, so ``bench/x.py > result.json`` keeps the result clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from cadre.bus.embedded import embedded_server
from cadre.settings import Settings


def run_on_server(
    url: str | None, data_dir: Path | None, main: Callable[[str], Awaitable[dict[str, Any]]], limit_s: float
) -> None:
    """Run ``main(server_url)`` within ``limit_s`` on :func:`bench_server`'s server; print its result."""
    with bench_server(url, data_dir) as server_url:
        result = asyncio.run(asyncio.wait_for(main(server_url), limit_s))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


def run_in_workdir(
    url: str | None,
    data_dir: Path | None,
    main: Callable[[str, Path], Awaitable[dict[str, Any]]],
    limit_s: float,
    prefix: str,
    table: Callable[[dict[str, Any]], str] | None = None,
) -> None:
    """Run ``main(server_url, work)`` within ``limit_s`` on :func:`bench_server`'s server, ``work``
    a fresh temporary directory (removed after); print its ``table`` to stderr, then its result."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with bench_server(url, data_dir) as server_url:
            result = asyncio.run(asyncio.wait_for(main(server_url, work), limit_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if table is not None:
        note("\n" + table(result))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


def bench_settings(url: str, data_dir: Path, prefix: str, **extra: Any) -> Settings:
    """A bench's cadre: a file-storage stream of its own named after ``prefix``, the bench's tools
    (``bench/_tools.py``), a short drain at the end; ``extra`` settings on top."""
    fields: dict[str, Any] = {
        "nats_url": url,
        "data_dir": data_dir,
        "subject_prefix": prefix,
        "stream_name": prefix.upper(),
        "stream_storage": "file",
        "tool_modules": ["_tools"],
        "actor_drain_timeout_s": 5.0,
    }
    return Settings(**(fields | extra))


def note(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def bench_server(url: str | None, data_dir: Path | None) -> Iterator[str]:
    """The URL of the server to measure against.

    ``url`` given: that server, left running. Otherwise the bundled nats-server (file
    storage) under ``data_dir``, or under a fresh temporary dir that is removed afterwards;
    a server this process started is stopped on exit.
    """
    if url is not None:
        yield url
        return
    tmp: str | None = None
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="cadre-bench-")
        data_dir = Path(tmp)
    try:
        with embedded_server(data_dir) as server:
            note(f"embedded nats-server at {server.url} (data dir {data_dir}, owned={server.owned})")
            yield server.url
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def environment(nc: NATS) -> dict[str, Any]:
    """Versions to print beside the figures."""
    v = nc.connected_server_version
    return {
        "server": f"nats-server v{v.major}.{v.minor}.{v.patch}",
        "python": platform.python_version(),
        "nats_py": metadata.version("nats-py"),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0,
    }


async def timed(run: Callable[[], Awaitable[object]], limit_s: float) -> float:
    """Seconds ``run()`` took; raise TimeoutError after ``limit_s`` seconds (a bench never hangs).

    A garbage collection first, so that one run does not pay for the previous one's garbage.
    """
    gc.collect()
    start = time.perf_counter()
    async with asyncio.timeout(limit_s):
        await run()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def comparison(
    events: int, cadre_s: list[float], raw_s: list[float], target: float | None, **extra: Any
) -> dict[str, Any]:
    """One result: medians of events per second for cadre and the raw baseline, their ratio.

    ``target`` None: an informational figure, and ``ok`` is None too.
    """
    cadre = [events / s for s in cadre_s]
    raw = [events / s for s in raw_s]
    ratio = median(cadre) / median(raw)
    return {
        "events": events,
        **extra,
        "cadre_per_s": round(median(cadre)),
        "raw_per_s": round(median(raw)),
        "ratio": round(ratio, 3),
        "target": target,
        "ok": None if target is None else ratio >= target,
        "cadre_runs_per_s": [round(r) for r in cadre],
        "raw_runs_per_s": [round(r) for r in raw],
    }


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def delete_cadre_streams(nc: NATS, settings: Any) -> None:
    """Remove what a bench's cadre created on a shared server: the event and ledger streams, the
    inference cache and the outputs' object store (each already gone is fine)."""
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    for name in (
        settings.stream_name,
        settings.ledger_stream_name,
        "KV_" + settings.inference_cache_bucket,
        "OBJ_" + settings.outputs_bucket,
    ):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)


async def idle_cpu_ms_per_s(seconds: float = 1.0) -> float:
    """This process's CPU ms per second while its loop only waits: what its background work (threads,
    timers, idle consumers) adds to every CPU figure measured in it, per second of a run."""
    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    return round((time.process_time() - cpu) * 1000 / (time.perf_counter() - start), 2)
