"""``cadre stats``: the evaluation figures over the log (:mod:`cadre.store.stats`).

    cadre stats [--since WHEN] [--from-file FILE ...] [--json] [--nats URL] [--data-dir DIR]

Reads every workflow of the live log (or of the export files given), checks each with its
keyring (the deployment's, or the one an export carries), folds it into its facts and prints
the figures: as text, or as one JSON object (``--json``). ``--since`` takes a time (ISO 8601,
UTC when it names no zone: ``2026-11-21``, ``2026-11-21T07:00``) or an age (``90s``, ``30m``,
``24h``, ``7d``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cadre.actors.clock import utc_now
from cadre.commands import EXIT_OK, UsageError
from cadre.log_scan import read_all
from cadre.render import json_line
from cadre.safe_text import visible_lines
from cadre.settings import Settings
from cadre.store.filelog import FileLog
from cadre.store.stats import Distribution, Stats, WorkflowFacts, stats, workflow_facts
from cadre.trust import keyring_for
from cadre.wiring import open_bus

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``stats`` on the CLI's subcommands (``parents``: the bus and --json options)."""
    p = sub.add_parser("stats", parents=parents, help="evaluation figures: outcomes, plans, validation, cost")
    p.add_argument("--since", metavar="WHEN", help="only workflows started since: ISO time or an age (24h, 7d)")
    p.add_argument(
        "--from-file",
        type=Path,
        action="append",
        metavar="FILE",
        help="read exported files instead of NATS (repeat for several)",
    )


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an ISO 8601 time (UTC when it names no zone) or an age before ``now``."""
    m = _AGE.fullmatch(text.strip())
    if m is not None:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since takes an ISO time (2026-11-21, 2026-11-21T07:00Z) or an age (90s, 30m, 24h, 7d), not {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    since = parse_since(args.since, utc_now()) if args.since is not None else None
    if args.from_file:
        facts = [f for path in args.from_file for f in await _file_facts(settings, path)]
    else:
        facts = await _live_facts(settings)
    figures = stats(facts, since)
    print(json_line(figures.to_json()) if args.json else visible_lines(lines(figures)), flush=True)
    return EXIT_OK


async def _file_facts(settings: Settings, path: Path) -> list[WorkflowFacts]:
    flog = FileLog.load(path)
    keyring, _ = keyring_for(settings, export=flog)
    return [workflow_facts(await flog.read_records(wf), keyring) for wf in await flog.workflows()]


async def _live_facts(settings: Settings) -> list[WorkflowFacts]:
    keyring, _ = keyring_for(settings)
    async with open_bus(settings, name="cadre-stats") as bus:
        by_wf = await read_all(bus.log)
    return [workflow_facts(records, keyring) for _, records in sorted(by_wf.items())]


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _dist(d: Distribution, unit: str = "", digits: int = 3) -> str:
    if d.n == 0 or d.median is None or d.p95 is None or d.max is None:
        return "none"
    return f"median {unit}{d.median:.{digits}f}, p95 {unit}{d.p95:.{digits}f}, max {unit}{d.max:.{digits}f} (n={d.n})"


def lines(s: Stats) -> Iterator[str]:
    """The figures for people, one line each."""
    w = s.workflows
    yield f"workflows{' since ' + s.since.isoformat() if s.since else ''}: {w['total']}"
    yield (
        f"  completed {w['completed']}, failed {w['failed']}, cancelled {w['cancelled']}, unfinished {w['unfinished']}"
        f" ({w['dry_runs']} dry run(s))"
    )
    if w["failure_reasons"]:
        yield "  failures   " + ", ".join(f"{k} {v}" for k, v in w["failure_reasons"].items())
    yield f"  duration   {_dist(w['duration_s'], digits=2)} s"
    yield "plan success by source"
    for source, p in s.plans.items():
        yield (
            f"  {source:<9} {_pct(p['success_rate']):>6} of {p['proposed']} proposed: {p['succeeded']} succeeded,"
            f" {p['failed']} failed, {p['replaced']} replaced, {p['rejected']} rejected,"
            f" {p['cancelled']} cancelled, {p['unfinished']} unfinished"
        )
    r = s.replans
    yield (
        f"re-plans     {r['replans']}; {r['workflows_replanned']} of {r['workflows_planned']} planned workflows"
        f" ({_pct(r['rate'])})"
    )
    yield "validation rejections"
    for what, v in s.validation.items():
        yield f"  {what:<9} {_pct(v['rate']):>6} ({v['rejected']} of {v['verdicts']} verdicts)"
    a = s.adherence
    yield f"adherence    {_pct(a['rate'])} ({a['on_plan']} of {a['steps_completed']} steps with their planned tool)"
    yield f"deviations   {s.deviations['total']} ({s.deviations['per_workflow'] or 0:.2f} per workflow)"
    rc = s.recovery
    yield f"recovery     {_pct(rc['rate'])} ({rc['recovered']} of {rc['steps_in_trouble']} steps in trouble completed)"
    ap = s.approvals
    yield (
        f"approvals    {ap['requested']}: {ap['granted']} granted, {ap['denied']} denied, {ap['timed_out']} timed out,"
        f" {ap['pending']} pending; wait {_dist(ap['wait_s'])} s"
    )
    yield f"cost         per workflow {_dist(s.cost_usd['per_workflow'], '$', 6)}"
    yield f"             per task {_dist(s.cost_usd['per_task'], '$', 6)}"
    yield "latency (s) by actor"
    for actor, d in s.latency_s.items():
        yield f"  {actor:<10} {_dist(d)}"
