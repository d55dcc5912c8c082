"""``cadre audit WF``: auditing one workflow: its report, or (``--verify``) its integrity chain.

    cadre audit WF [--from-file FILE] [--json | --html FILE] [--nats URL] [--data-dir DIR]
    cadre audit WF --verify [--from-file FILE] [--json] [--nats URL] [--data-dir DIR]

Without ``--verify`` it writes the audit report (:func:`store.audit.audit`: timeline, plans,
model consultations, verdicts, tool calls, approvals, costs) as text, as one JSON object
(``--json``) or as one self-contained HTML page (``--html FILE``, ``cadre/audit_html.py``);
exit 0, or 2 for a usage error.

Reads the workflow's records from the live log (or an export file) and checks them with
:func:`store.integrity.verify`. On the live log, the stream's deleted sequences tell a
removed event from a modified one; in a file, the head recorded in the export's header
covers the last event and does the same.

Exit codes: 0 when the chain holds ("chain intact: N events"), and for a workflow written
before the chain existed ("unchained (schema v1)": nothing to verify, nothing found); 1 with
the first problem (a modified, removed, inserted or reordered event, named by its index,
stream sequence, id and type); 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from cadre import audit_details, audit_html, audit_text
from cadre.bus.signing import Keyring
from cadre.bus.subjects import check_token
from cadre.commands import EXIT_FAILED, EXIT_OK, UsageError
from cadre.render import json_line
from cadre.safe_text import visible, visible_lines
from cadre.settings import Settings
from cadre.store.audit import AuditReport, audit, with_children
from cadre.store.authenticity import Authorship, authorship
from cadre.store.filelog import FileLog
from cadre.store.integrity import Anchor, Verdict, verify
from cadre.store.records import Record
from cadre.trust import keyring_for
from cadre.wiring import open_bus
from cadre.workflow_records import read_records


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``audit`` on the CLI's subcommands (``parents``: the bus and --json options)."""
    audit = sub.add_parser(
        "audit", parents=parents, help="a workflow's audit report (--verify: check its integrity chain)"
    )
    audit.add_argument("workflow_id")
    audit.add_argument("--verify", action="store_true", help="check the workflow's integrity chain")
    audit.add_argument("--from-file", type=Path, metavar="FILE", help="read an exported file instead of NATS")
    audit.add_argument("--html", type=Path, metavar="FILE", help="write the report as one self-contained HTML page")
    audit.add_argument(
        "--keys",
        type=Path,
        metavar="FILE",
        help="the keyring to check signatures with (default: the deployment's; an export's own otherwise)",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """The ``audit`` command."""
    wf = check_token("workflow id", args.workflow_id)
    if args.html is not None and (args.json or args.verify):
        raise UsageError("--html FILE writes the report; it cannot be combined with --json or --verify")
    if not args.verify:
        return await _audit_report(args, settings, wf)
    checked = await _checked(args, settings, wf)
    untrusted = authorship(checked.records, checked.keyring) if checked.keyring is not None else None
    _report(
        wf,
        checked.verdict,
        checked.where,
        checked.anchor,
        args.from_file is not None,
        args.json,
        untrusted,
        checked.keys_from,
    )
    return EXIT_OK if checked.verdict.ok and not untrusted else EXIT_FAILED


@dataclass(frozen=True)
class _Checked:
    records: list[Record]
    verdict: Verdict
    anchor: Anchor | None
    where: str
    keyring: Keyring | None
    keys_from: str


async def _checked(args: argparse.Namespace, settings: Settings, wf: str) -> _Checked:
    """The workflow's records, checked against the chain (the export's head, or the live stream's
    deleted sequences), with the keyring to check their signatures."""
    if args.from_file is not None:
        flog = FileLog.load(args.from_file)
        records = await flog.read_records(wf)
        anchor = flog.heads.get(wf)
        where = str(args.from_file)
        _need(records, wf, where)
        keyring, keys_from = keyring_for(settings, args.keys, flog)
        return _Checked(records, verify(records, anchor=anchor), anchor, where, keyring, keys_from)
    keyring, keys_from = keyring_for(settings, args.keys)
    async with open_bus(settings, name="cadre-audit", role="admin") as bus:
        records = await bus.log.read_records(wf)
        where = f"stream {bus.log.stream}"
        _need(records, wf, where)
        deleted = await bus.log.deleted_seqs()
    return _Checked(records, verify(records, deleted=deleted), None, where, keyring, keys_from)


async def child_reports(
    settings: Settings, report: AuditReport, from_file: Path | None, keys: Path | None
) -> dict[str, AuditReport]:
    """The reports of ``report``'s child workflows and theirs, by id (a child not in the source is left out)."""
    found: dict[str, AuditReport] = {}
    pending = [c.workflow_id for c in report.children]
    while pending:
        child = pending.pop()
        if child in found:
            continue
        try:
            read = await read_records(settings, child, from_file, name="cadre-audit", keys=keys)
        except UsageError:
            continue
        found[child] = audit(read.records, read.keyring)
        pending += [c.workflow_id for c in found[child].children]
    return found


def _need(records: list[Record], wf: str, where: str) -> None:
    if not records:
        raise UsageError(f"no workflow {wf!r} in {where} (see `cadre workflows`)")


def _report(
    wf: str,
    verdict: Verdict,
    where: str,
    anchor: Anchor | None,
    from_file: bool,
    as_json: bool,
    untrusted: list[Authorship] | None,
    keys_from: str,
) -> None:
    uncovered = from_file and anchor is None and verdict.ok
    if as_json:
        out: dict[str, Any] = {"workflow_id": wf, "source": where, **msgspec.to_builtins(verdict)}
        out["head_recorded"] = anchor is not None if from_file else None
        out["signatures"] = {
            "checked": untrusted is not None,
            "keyring": keys_from or None,
            "untrusted": msgspec.to_builtins(untrusted or []),
        }
        print(json_line(out))
        return
    print(visible(verdict.summary()))
    if uncovered:
        print(visible(f"  note: {where} records no head for {wf} (an older export): its last event is not covered"))
    if untrusted is None:
        print("signatures not checked: no keyring (pass --keys FILE)")
    elif untrusted:
        print(
            visible(f"signatures: {len(untrusted)} event(s) not written by a party allowed to (keyring {keys_from}):")
        )
        for u in untrusted:
            print(visible("  " + u.line()))
    else:
        print(visible(f"signatures: every event signed by a role allowed to emit it (keyring {keys_from})"))


async def _audit_report(args: argparse.Namespace, settings: Settings, wf: str) -> int:
    """Without ``--verify``: the audit report as text, JSON or an HTML page."""
    if args.html is not None:  # the page shows the chain's verdict too: read as --verify reads
        checked = await _checked(args, settings, wf)
        report = audit(checked.records, checked.keyring)
        if report.children:  # the tree: each child's own report (their children's too), where it can be read
            with_children(report, await child_reports(settings, report, args.from_file, args.keys))
        more = audit_details.details(checked.records, checked.keyring, checked.verdict)
        args.html.write_text(audit_html.render(report, more), encoding="utf-8")
        print(f"cadre: audit report of {wf} written to {args.html}", file=sys.stderr)
        return EXIT_OK
    read = await read_records(settings, wf, args.from_file, name="cadre-audit", keys=args.keys)
    report = audit(read.records, read.keyring)
    if report.children:  # the tree: each child's own report (their children's too), where it can be read
        with_children(report, await child_reports(settings, report, args.from_file, args.keys))
    if args.json:
        print(json_line(report.to_json()))
    else:
        print(visible_lines(audit_text.lines(report)))
    return EXIT_OK
