"""Benchmark of the web console (``cadre ui``) over a long log.

    .venv/bin/python bench/console.py [--workflows N] [--runs R] [--data-dir DIR] [--nats URL]

Appends N completed one-task workflows (6 events each, as bench/listing.py; ``--signed``: each signed,
the console given the keyring, so it checks the signatures of the events a row is made of, 4 of
the 6 here) to a fresh stream, then
starts ``cadre ui`` as its own process and measures: the time until it serves (its index built by
one pass over the stream), the first list page over HTTP (``/api/workflows``, the 100 newest) and
again warm, the list page in Debian's chromium (navigation until the rows are drawn), a new
workflow reaching an open page live, and the console process's RSS and CPU seconds. Beside them, in
the same run: the raw read of the stream (one ordered consumer, no decoding) and ``cadre workflows
--json`` over the same log. One JSON object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from _common import bench_server, note
from listing import log_of, one_run, seed
from playwright.async_api import async_playwright

from cadre.bus import ConnectOptions, connect
from cadre.bus.signing import KeyEntry, KeyringFile, Signer, new_seed
from cadre.store import JetStreamLog

PREFIX = "benchui"
CHROMIUM = "/usr/bin/chromium"
CLK = os.sysconf("SC_CLK_TCK")


def _log(nc: Any) -> JetStreamLog:
    return log_of(nc, PREFIX)


def bench_signer(keyring_path: Path) -> Signer:
    """A signer whose key the keyring written to ``keyring_path`` trusts for the six event types of a
    run (one role for all of them: the console checks each signature as it would a deployment's)."""
    signer = Signer(new_seed(), "bench")
    types = tuple(sorted({e.type for e in one_run("wf-0", 0)}))
    keyring = KeyringFile(keys=(KeyEntry(key=signer.public_key, role="bench"),), emits={"bench": types})
    keyring_path.write_bytes(msgspec.json.encode(keyring))
    return signer


async def raw_read(url: str) -> float:
    """Seconds to receive every message of the stream through one ordered consumer, decoding nothing."""
    nc = await connect(ConnectOptions(url=url))
    log = _log(nc)
    info = await log.js.stream_info(log.stream)
    done = asyncio.Event()
    started = time.perf_counter()

    async def on_msg(m: Any) -> None:
        if m.metadata.num_pending == 0:
            done.set()

    sub = await log.ordered(log.subjects.events, 0, on_msg)
    await done.wait()
    took = time.perf_counter() - started
    await sub.unsubscribe()
    await nc.drain()
    note(f"raw read of {info.state.messages} messages: {took:.2f} s")
    return took


def usage(pid: int) -> dict[str, float]:
    """RSS now and at its peak (MB), and CPU seconds so far, of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = {k: v.split()[0] for k, _, v in (line.partition(":") for line in status.splitlines()) if v.split()}
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "rss_mb": round(int(fields["VmRSS"]) / 1024, 1),
        "peak_rss_mb": round(int(fields["VmHWM"]) / 1024, 1),
        "cpu_s": round((int(stat[11]) + int(stat[12])) / CLK, 2),
    }


async def measure_console(url: str, env: dict[str, str], runs: int, signer: Signer | None) -> dict[str, Any]:
    cadre = str(Path(sys.executable).with_name("cadre"))
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(cadre, "ui", "--port", "0", env=env, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 300)).decode()
        ready_s = time.perf_counter() - started
        if "http://" not in line:
            raise RuntimeError(f"cadre ui said {line!r}")
        base = line.split()[2]
        note(f"console ready at {base} after {ready_s:.2f} s: {line.strip()}")
        out: dict[str, Any] = {"ready_s": round(ready_s, 3), "after_ready": usage(proc.pid)}
        async with aiohttp.ClientSession() as http:
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                resp = await http.get(base + "/api/workflows?limit=100")
                body = await resp.read()
                times.append(time.perf_counter() - t)
                if resp.status != 200 or not json.loads(body)["total"]:
                    raise RuntimeError(f"the list answered {resp.status}: {body[:300]!r}")
            out["list_http_first_s"] = round(times[0], 4)
            out["list_http_median_s"] = round(statistics.median(times), 4)
            out["list_http_bytes"] = len(body)
            t = time.perf_counter()
            resp = await http.get(base + "/api/workflows?limit=100&q=customer%2042")
            await resp.read()
            out["list_http_filtered_s"] = round(time.perf_counter() - t, 4)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            loads = []
            for _ in range(runs):
                page = await browser.new_page()
                t = time.perf_counter()
                await page.goto(base + "/")
                await page.locator("#wf-rows tr").nth(99).wait_for()
                loads.append(time.perf_counter() - t)
                await page.close()
            out["list_browser_first_s"] = round(loads[0], 3)
            out["list_browser_median_s"] = round(statistics.median(loads), 3)
            # A workflow appended now reaches an open page without a reload.
            page = await browser.new_page()
            await page.goto(base + "/")
            await page.locator("#wf-rows tr").nth(99).wait_for()
            await page.locator("#live.on").wait_for()
            nc = await connect(ConnectOptions(url=url))
            t = time.perf_counter()
            new = "wf-ffffffff"
            await _log(nc).signed_by(signer).append(new, one_run(new, 10**7), expected_seq=0)
            await page.locator(f'tr[data-wf="{new}"][data-state="completed"]').wait_for()
            out["live_row_s"] = round(time.perf_counter() - t, 3)
            await nc.drain()
            await browser.close()
        out["after_pages"] = usage(proc.pid)
        note(f"console: {out}")
        return out
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def cli_workflows(env: dict[str, str], runs: int) -> dict[str, Any]:
    cadre = str(Path(sys.executable).with_name("cadre"))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run([cadre, "workflows", "--json"], env=env, capture_output=True, timeout=300, check=False)
        times.append(time.perf_counter() - t)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode()[-2000:])
    note(f"cadre workflows --json: median {statistics.median(times):.2f} s")
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(x, 3) for x in times]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workflows", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--nats", metavar="URL")
    p.add_argument(
        "--signed", action="store_true", help="sign every event and give the console the keyring (it checks them)"
    )
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="cadre-bench-console-") as tmp,
        bench_server(args.nats, args.data_dir) as url,
    ):
        env = dict(os.environ, CADRE_NATS_URL=url, CADRE_SUBJECT_PREFIX=PREFIX, CADRE_STREAM_NAME=PREFIX.upper())
        env["CADRE_DATA_DIR"] = str(Path(tmp) / "cli")
        signer = None
        if args.signed:
            env["CADRE_KEYRING"] = str(Path(tmp) / "keyring.json")
            signer = bench_signer(Path(env["CADRE_KEYRING"]))
        info = asyncio.run(seed(url, args.workflows, PREFIX, signer))
        result = {
            "workflows": args.workflows,
            "signed": args.signed,
            "events": args.workflows * 6,
            **info,
            "raw_read_s": round(asyncio.run(raw_read(url)), 3),
            "cadre_workflows_json": cli_workflows(env, args.runs),
            "console": asyncio.run(measure_console(url, env, args.runs, signer)),
        }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
