"""Large tool outputs by reference: how long a workflow whose one step returns a large output takes.

    .venv/bin/python -m bench.large_outputs [--nats URL] [--runs N]

Runs a whole cadre (every actor in this process) on the bundled nats-server (file storage), and
submits one-step plans of a 10 000-row ``sql.query`` whose rows are padded to a given width: about
70 kB of output (inline, the baseline), 1.2 MB and 10 MB (stored by reference: over the server's
1 MiB max payload). Prints, per size, the median time from submit to ``workflow_completed`` and the
bytes of the stored events against the output's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import delete_cadre_streams, environment, median, note, run_on_server

ROWS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) SELECT x{pad} FROM n"
SIZES = {"70 kB (inline)": "", "1.2 MB": ", printf('%0100d', x) AS pad", "10 MB": ", printf('%01000d', x) AS pad"}


async def run_one(bus: Any, settings: Any, label: str, pad: str, i: int) -> tuple[float, int, int]:
    """One workflow of one 10 000-row query: seconds to its end, stored bytes, output bytes."""
    from cadre.store.records import StoredEvent

    node = {"id": "q", "tool": "sql.query", "inputs": {"sql": ROWS.format(pad=pad), "max_rows": 10000}}
    body = {"request": f"rows {label} #{i}", "plan": {"nodes": [node]}}
    start = time.perf_counter()
    resp = await bus.nc.request(settings.subjects.requests, json.dumps(body).encode(), timeout=10)
    wf = json.loads(resp.data)["workflow_id"]
    ends = ("workflow_completed", "workflow_failed")
    async with asyncio.timeout(60):
        async for r in bus.log.follow(wf):
            if isinstance(r, StoredEvent) and r.event.type in ends:
                assert r.event.type == "workflow_completed", r.event.data
                break
    seconds = time.perf_counter() - start
    records = await bus.log.read_records(wf)
    done = next(r for r in records if isinstance(r, StoredEvent) and r.event.type == "step_completed")
    output = len(json.dumps(done.event.data.output, separators=(",", ":")))  # type: ignore[union-attr]
    return seconds, sum(len(r.data) for r in records), output


async def main(url: str, runs: int, data_dir: Path) -> dict[str, Any]:
    from cadre.settings import Settings
    from cadre.system import run_system
    from cadre.wiring import open_bus

    prefix = f"big{secrets.token_hex(3)}"
    settings = Settings(
        nats_url=url,
        data_dir=data_dir,
        subject_prefix=prefix,
        stream_name=prefix.upper(),
        llm_provider="none",
        ledger_stream_name=prefix.upper() + "_LEDGER",
        inference_cache_bucket=prefix.upper() + "_INFERENCE",
        outputs_bucket=prefix.upper() + "_OUTPUTS",
    )
    out: dict[str, Any] = {}
    async with open_bus(settings, name="cadre-bench-large") as bus:
        out["environment"] = environment(bus.nc)
        try:
            async with run_system(bus, settings):
                for label, pad in SIZES.items():
                    times: list[float] = []
                    stored = output = 0
                    for i in range(runs):
                        seconds, stored, output = await run_one(bus, settings, label, pad, i)
                        times.append(seconds)
                    out[label] = {
                        "median_s": round(median(times), 3),
                        "runs": runs,
                        "output_bytes": output,
                        "stored_event_bytes": stored,
                    }
                    note(f"{label}: {out[label]}")
        finally:
            await delete_cadre_streams(bus.nc, settings)
    return out


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nats", default=None, help="a running server (default: the bundled one, in a temp dir)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cadre-bench-large-") as data:  # the sample shop, a workspace
        run_on_server(args.nats, None, lambda url: main(url, args.runs, Path(data)), 600)


if __name__ == "__main__":
    run()
