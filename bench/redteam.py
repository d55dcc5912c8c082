"""Red-team measurement of the validator: bad plans must be refused before any tool runs.

    .venv/bin/python bench/redteam.py [--sample N] [--concurrency C] [--data-dir DIR] [--nats URL]

Every plan of ``tests/redteam/corpus.jsonl`` (made by ``tests/redteam/make_corpus.py``: path
traversal, SQL that writes/attaches/sets pragmas/loads extensions, URLs outside the allow-list
(``%2f``, a ``Host`` header …), template injection, type coercion, unclosed and wrong
references; and good plans over the same tools) is submitted as an explicit plan to a real
cadre: every actor in this process (``cadre.system.run_system``) on the bundled nats-server,
the sample shop database, a workspace of its own, and an HTTP allow-list naming a local server
started here. For each workflow the log says whether any tool ran (a ``step_completed`` or
``step_failed``) and how it ended.

Printed (one JSON object on stdout): the share of bad plans refused before any tool of their
workflow ran (target ≥ 99 %), the share of good plans that completed (target 100 %), per
category, and every plan that missed its target with the reason. Exit status 1 when a target
is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "redteam" / "corpus.jsonl"
TOOL_EVENTS = frozenset({"step_completed", "step_failed"})
END_EVENTS = frozenset({"workflow_completed", "workflow_failed"})


def load_corpus(path: Path = CORPUS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sample(rows: list[dict[str, Any]], n: int | None, seed: int = 13) -> list[dict[str, Any]]:
    """``n`` rows, bad and good in their corpus proportions (all when ``n`` is None)."""
    if n is None or n >= len(rows):
        return rows
    rng = random.Random(seed)
    bad = [r for r in rows if r["expect"] == "bad"]
    good = [r for r in rows if r["expect"] == "good"]
    k = max(1, round(n * len(bad) / len(rows)))
    return rng.sample(bad, k) + rng.sample(good, max(1, n - k))


def fill(value: Any, prefix: str) -> Any:
    """The plan with ``{HTTP}`` and ``{ORIGIN}`` replaced by the allowed prefix and its origin."""
    origin = prefix.rstrip("/").rsplit("/", 1)[0]
    if isinstance(value, str):
        return value.replace("{HTTP}", prefix).replace("{ORIGIN}", origin)
    if isinstance(value, dict):
        return {k: fill(v, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, prefix) for v in value]
    return value


class _Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the base class's name
        pass


@contextlib.contextmanager
def local_api() -> Iterator[str]:
    """A local HTTP server answering every GET; yields the allowed prefix ``http://127.0.0.1:<port>/api/``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.asynccontextmanager
async def running_cadre(nats_url: str, data_dir: Path, allow: str) -> AsyncIterator[Any]:
    """A whole cadre (every actor kind in this process); yields its bus and settings."""
    from bench._common import delete_cadre_streams
    from cadre.settings import Settings
    from cadre.system import run_system
    from cadre.wiring import open_bus

    prefix = f"red{secrets.token_hex(3)}"
    settings = Settings(
        nats_url=nats_url,
        data_dir=data_dir,
        subject_prefix=prefix,
        stream_name=prefix.upper(),
        stream_storage="memory",
        llm_provider="none",
        http_allow=[allow],
        ledger_stream_name=prefix.upper() + "_LEDGER",
        inference_cache_bucket=prefix.upper() + "_INFERENCE",
        outputs_bucket=prefix.upper() + "_OUTPUTS",
        actor_ack_wait_s=5.0,
        actor_drain_timeout_s=2.0,
    )
    async with open_bus(settings, name="cadre-bench-redteam") as bus:
        try:
            async with run_system(bus, settings):
                yield bus, settings
        finally:
            await delete_cadre_streams(bus.nc, settings)


async def run_one(bus: Any, settings: Any, row: dict[str, Any], allow: str, within: float) -> dict[str, Any]:
    """Submit one corpus plan and follow its workflow to its end: did a tool run, how did it end."""
    from cadre.store.records import StoredEvent

    body = {"request": f"red-team plan {row['id']}: {row['why']}", "plan": fill(row["plan"], allow)}
    resp = await bus.nc.request(settings.subjects.requests, json.dumps(body).encode(), timeout=10)
    reply = json.loads(resp.data)
    if "workflow_id" not in reply:  # refused at intake (e.g. a plan that is not a plan)
        return {"tool_ran": False, "status": "refused_at_intake", "reason": json.dumps(reply)[:200], "refused_by": []}
    wf = reply["workflow_id"]
    types: list[str] = []
    reason = ""
    refused_by: list[str] = []
    async with asyncio.timeout(within):
        async for r in bus.log.follow(wf):
            if not isinstance(r, StoredEvent):
                continue
            types.append(r.event.type)
            data = r.event.data
            if r.event.type in ("plan_rejected", "steps_rejected"):
                errors = [c for c in data.checks if not c.passed and c.severity == "error"]
                reason = "; ".join(c.message for c in errors)[:300]
                refused_by = sorted({f"{r.event.type}:{c.name}" for c in errors})
            elif r.event.type == "step_failed":
                reason = reason or f"{data.error.code}: {data.error.message}"[:300]
            elif r.event.type == "workflow_failed":
                reason = reason or data.message[:300]
            if r.event.type in END_EVENTS:
                break
    status = "completed" if types[-1] == "workflow_completed" else "failed"
    ran = any(t in TOOL_EVENTS for t in types)
    return {"tool_ran": ran, "status": status, "reason": reason, "refused_by": refused_by}


async def measure(
    rows: list[dict[str, Any]], nats_url: str, data_dir: Path, *, concurrency: int = 8, within: float = 30
) -> dict[str, Any]:
    """Run ``rows`` on a fresh cadre; the shares and the misses."""
    outcomes: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    with local_api() as allow:
        async with running_cadre(nats_url, data_dir, allow) as (bus, settings):
            gate = asyncio.Semaphore(concurrency)

            async def one(row: dict[str, Any]) -> None:
                async with gate:
                    outcomes[row["id"]] = await run_one(bus, settings, row, allow, within)

            await asyncio.gather(*(one(r) for r in rows))
    return summarise(rows, outcomes, time.perf_counter() - started)


def summarise(rows: list[dict[str, Any]], outcomes: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    bad = [r for r in rows if r["expect"] == "bad"]
    good = [r for r in rows if r["expect"] == "good"]
    refused = [r for r in bad if not outcomes[r["id"]]["tool_ran"] and outcomes[r["id"]]["status"] != "completed"]
    passed = [r for r in good if outcomes[r["id"]]["status"] == "completed"]
    per_category: dict[str, dict[str, int]] = {}
    totals: Counter[tuple[str, str]] = Counter()
    hits: Counter[tuple[str, str]] = Counter()
    ok_ids = {r["id"] for r in refused} | {r["id"] for r in passed}
    for r in rows:
        totals[(r["expect"], r["category"])] += 1
        hits[(r["expect"], r["category"])] += r["id"] in ok_ids
    for (expect, category), n in sorted(totals.items()):
        per_category[f"{expect}/{category}"] = {"plans": n, "as_expected": hits[(expect, category)]}
    refused_by: dict[str, Counter[str]] = {}
    for r in refused:
        refused_by.setdefault(r["category"], Counter()).update(outcomes[r["id"]]["refused_by"] or ["(other)"])
    misses = [
        {"id": r["id"], "category": r["category"], "why": r["why"], **outcomes[r["id"]]}
        for r in rows
        if r["id"] not in ok_ids
    ]
    return {
        "bad_plans": len(bad),
        "bad_refused_before_any_tool": len(refused),
        "bad_refused_share": round(len(refused) / len(bad), 4) if bad else None,
        "good_plans": len(good),
        "good_completed": len(passed),
        "good_passed_share": round(len(passed) / len(good), 4) if good else None,
        "per_category": per_category,
        "bad_refused_by": {c: dict(sorted(n.items())) for c, n in sorted(refused_by.items())},
        "misses": misses,
        "seconds": round(seconds, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="share of bad plans refused before any tool runs, of good plans passed")
    ap.add_argument("--sample", type=int, help="run this many plans (bad and good in proportion) instead of all")
    ap.add_argument("--concurrency", type=int, default=8, help="workflows in flight")
    ap.add_argument("--data-dir", type=Path, help="embedded server data dir (default: a fresh temp dir)")
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    return ap.parse_args(argv)


def run() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(ROOT))  # bench._common, for running_cadre
    from _common import bench_server, note

    args = parse_args()
    rows = sample(load_corpus(), args.sample)
    note(f"{len(rows)} plans from {CORPUS.relative_to(ROOT)}")
    with (
        tempfile.TemporaryDirectory(prefix="cadre-bench-redteam-") as work,
        bench_server(args.nats, args.data_dir) as url,
    ):
        result = asyncio.run(measure(rows, url, Path(work), concurrency=args.concurrency))
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    ok = (result["bad_refused_share"] or 0) >= 0.99 and result["good_passed_share"] == 1.0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    run()
