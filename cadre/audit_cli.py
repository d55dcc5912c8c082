"""``cadre audit WF``: auditing one workflow. For now, ``--verify``: check its integrity chain.

    cadre audit WF --verify [--from-file FILE] [--json] [--nats URL] [--data-dir DIR]

Reads the workflow's records from the live log (or an export file) and checks them with
:func:`store.integrity.verify`. On the live log, the stream's deleted sequences tell a
removed event from a modified one; in a file, the head recorded in the export's header
covers the last event and does the same.

Exit codes: 0 when the chain holds ("chain intact: N events"), and for a workflow written
before the chain existed ("unchained (schema v1)": nothing to verify, nothing found); 1 with
the first problem (a modified, removed, inserted or reordered event, named by its index,
stream sequence, id and type); 2 for a usage error. Without ``--verify``, the audit report
is not written yet: it says so and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from bus.subjects import check_token
from cadre.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from cadre.render import json_line
from cadre.settings import Settings
from cadre.wiring import open_bus
from store.filelog import FileLog
from store.integrity import Anchor, Verdict, verify
from store.records import Record


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``audit`` on the CLI's subcommands (``parents``: the bus and --json options)."""
    audit = sub.add_parser("audit", parents=parents, help="audit a workflow (--verify: check its integrity chain)")
    audit.add_argument("workflow_id")
    audit.add_argument("--verify", action="store_true", help="check the workflow's integrity chain")
    audit.add_argument("--from-file", type=Path, metavar="FILE", help="read an exported file instead of NATS")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """The ``audit`` command."""
    wf = check_token("workflow id", args.workflow_id)
    if not args.verify:
        print("audit report: not implemented yet", file=sys.stderr)
        return EXIT_USAGE
    if args.from_file is not None:
        flog = FileLog.load(args.from_file)
        records = await flog.read_records(wf)
        anchor = flog.heads.get(wf)
        where = str(args.from_file)
        _need(records, wf, where)
        verdict = verify(records, anchor=anchor)
    else:
        async with open_bus(settings, name="cadre-audit") as bus:
            records = await bus.log.read_records(wf)
            where = f"stream {bus.log.stream}"
            _need(records, wf, where)
            deleted = await bus.log.deleted_seqs()
        anchor = None
        verdict = verify(records, deleted=deleted)
    _report(wf, verdict, where, anchor, args.from_file is not None, args.json)
    return EXIT_OK if verdict.ok else EXIT_FAILED


def _need(records: list[Record], wf: str, where: str) -> None:
    if not records:
        raise UsageError(f"no workflow {wf!r} in {where} (see `cadre workflows`)")


def _report(wf: str, verdict: Verdict, where: str, anchor: Anchor | None, from_file: bool, as_json: bool) -> None:
    uncovered = from_file and anchor is None and verdict.ok
    if as_json:
        out: dict[str, Any] = {"workflow_id": wf, "source": where, **msgspec.to_builtins(verdict)}
        out["head_recorded"] = anchor is not None if from_file else None
        print(json_line(out))
        return
    print(verdict.summary())
    if uncovered:
        print(f"  note: {where} records no head for {wf} (an older export): its last event is not covered")
