"""The ``cadre`` command line.

Every command that talks to NATS takes ``--nats URL`` and ``--data-dir DIR``; given neither,
it uses the embedded server of ``./.cadre/`` (starting it when none runs). Exit codes:
0 success, 1 failure (a cadre error, said on stderr or as ``{"error": …}`` with ``--json``),
2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cadre import (
    __version__,
    audit_cli,
    auth_cli,
    commands,
    eval_cmd,
    flows_cli,
    replay_cli,
    state_view,
    stats_cli,
    workflow_list,
)
from cadre.bus.errors import CadreError, InvalidName
from cadre.bus.events import TERMINAL_TYPES
from cadre.bus.signing import Keyring
from cadre.bus.subjects import check_token
from cadre.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from cadre.policy_file import deployment_settings
from cadre.render import json_line, record_json, record_line
from cadre.safe_text import VisibleFormatter, visible
from cadre.settings import Settings
from cadre.settings_errors import InvalidSettings
from cadre.store.authenticity import authorship, verdict
from cadre.store.filelog import FileLog, export
from cadre.store.records import Malformed, Record, StoredEvent
from cadre.store.source import EventSource
from cadre.system import KINDS
from cadre.trust import find_keyring, keyring_for
from cadre.wiring import open_bus


def _parser() -> argparse.ArgumentParser:
    bus = argparse.ArgumentParser(add_help=False)
    bus.add_argument("--nats", metavar="URL", help="NATS server URL (env CADRE_NATS_URL); default: embedded")
    bus.add_argument("--data-dir", metavar="DIR", type=Path, help="embedded server data (env CADRE_DATA_DIR)")
    bus.add_argument(
        "--creds", metavar="FILE", type=Path, help="NATS credentials (env CADRE_NATS_CREDS); default: the data dir's"
    )
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print JSON (one object per line)")

    p = argparse.ArgumentParser(prog="cadre", description="Validated, recorded agent workflows over NATS.")
    p.add_argument("--version", action="version", version=f"cadre {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    req = argparse.ArgumentParser(add_help=False)
    req.add_argument("text", nargs="?", help="the request, in words")
    req.add_argument("--plan", type=Path, metavar="FILE", help="an explicit plan (JSON), or a library entry")
    req.add_argument("--budget", type=float, metavar="USD", help="cap on LLM spend for this workflow")
    req.add_argument("--intelligence", choices=["basic", "adaptive", "intelligent", "autonomous"])
    req.add_argument("--mode", choices=["strict", "adaptive", "creative"])
    req.add_argument("--idempotency-key", metavar="KEY", help="resubmitting with the same key returns the same run")
    req.add_argument(
        "--dry-run",
        action="store_true",
        help="plan, validate and decompose, then simulate: run no tool; print the steps, approvals and cost",
    )
    metrics = argparse.ArgumentParser(add_help=False)
    metrics.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on this port")
    policy = argparse.ArgumentParser(add_help=False)
    policy.add_argument(
        "--policy",
        dest="deployment_policy",
        type=Path,
        metavar="FILE",
        help="the deployment's policy file, JSON or TOML (env CADRE_POLICY)",
    )

    up = sub.add_parser(
        "up", parents=[bus, metrics, policy], help="run cadre: every actor (and the embedded NATS server)"
    )
    up.add_argument("--port", type=int, help="port of the embedded server (default: a free one)")
    up.add_argument("--ui", action="store_true", help="serve the web console too (cadre ui)")
    up.add_argument("--ui-port", type=int, metavar="PORT", help="the console's port (env CADRE_UI_PORT; default 8470)")

    actor = sub.add_parser("actor", parents=[bus, metrics, policy], help="run one actor kind as its own process")
    actor.add_argument("kind", choices=list(KINDS))
    actor.add_argument("--replicas", type=int, default=1, help="replicas of the kind in this process")
    actor.add_argument(
        "--pool", metavar="NAME", help="agent: serve this agent pool of the policy file (env CADRE_AGENT_POOL)"
    )

    run = sub.add_parser("run", parents=[bus, out, req, policy], help="one shot: run a request to its end and stop")
    run.add_argument("--port", type=int, help=argparse.SUPPRESS)

    submit = sub.add_parser("submit", parents=[bus, out, req], help="send a request to a running cadre")
    submit.add_argument("--wait", action="store_true", help="follow the workflow to its end")

    approve = sub.add_parser("approve", parents=[bus], help="approve (or --deny) a step waiting for approval")
    approve.add_argument("workflow_id")
    approve.add_argument("step_id")
    approve.add_argument("--deny", action="store_true")
    approve.add_argument("--reason", default="")

    cancel = sub.add_parser("cancel", parents=[bus], help="stop a running workflow (an approver's key signs it)")
    cancel.add_argument("workflow_id")
    cancel.add_argument("--reason", default="")

    redrive = sub.add_parser(
        "redrive", parents=[bus], help="re-deliver the dead letter a workflow failed for, after a fix (approvers)"
    )
    redrive.add_argument("workflow_id")
    redrive.add_argument("--reason", default="")
    sub.add_parser("dead-letters", parents=[bus, out], help="list the inputs actors gave up on, across workflows")

    sub.add_parser("status", parents=[bus, out], help="workflows by state, actors alive, backlogs")
    schema = sub.add_parser("schema", help="print the JSON Schema of a request, an event or a flow file")
    schema.add_argument("what", choices=["request", "event", "flow"])
    sub.add_parser("tools", parents=[out], help="list the tools plans may use")
    sub.add_parser("flows", parents=[out], help="list the registered flows (CADRE_FLOWS)")
    plan = sub.add_parser("plan", parents=[out], help="show the flow and path a request would take; runs nothing")
    plan.add_argument("text", help="the request, in words")

    events = sub.add_parser("events", parents=[bus, out], help="list a workflow's events")
    events.add_argument("workflow_id")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the end")
    events.add_argument("--from-file", type=Path, metavar="FILE", help="read an exported file instead of NATS")
    events.add_argument("--at", type=int, metavar="SEQ", help="show the workflow's state as of stream sequence SEQ")

    exp = sub.add_parser("export", parents=[bus], help="export workflows' events to JSON Lines")
    exp.add_argument("workflow_ids", nargs="*", metavar="WF")
    exp.add_argument("--all", action="store_true", help="export every workflow")
    exp.add_argument("-o", "--output", type=Path, metavar="FILE", help="file to write (default: stdout)")

    wfs = sub.add_parser("workflows", parents=[bus, out], help="recent workflows: state, request, start, duration")
    wfs.add_argument("--state", choices=list(workflow_list.STATES), help="only workflows in this state")
    wfs.add_argument("--limit", type=int, metavar="N", help="at most N workflows, the newest")
    spend = sub.add_parser("budget", parents=[bus, out], help="LLM spend, denials and cache hits from the ledger")
    spend.add_argument("--workflow", metavar="WF", help="only this workflow (today's figures stay global)")
    audit_cli.add_parser(sub, [bus, out])
    auth_cli.add_parser(sub, [bus])
    replay_cli.add_parser(sub, [bus, out])
    eval_cmd.add_parser(sub, [bus, out, policy])
    stats_cli.add_parser(sub, [bus, out])
    ui = sub.add_parser("ui", parents=[bus], help="the web console: workflows, approvals, problems, budget, stats")
    ui.add_argument("--host", metavar="ADDR", help="listen on this address (env CADRE_UI_HOST; default 127.0.0.1)")
    ui.add_argument("--port", dest="ui_port", type=int, metavar="PORT", help="port (env CADRE_UI_PORT; default 8470)")
    return p


def _log_to_stderr() -> None:
    """Warnings and errors on stderr, as Python's last-resort handler prints them, but through
    :class:`VisibleFormatter`; left alone when the host program configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(VisibleFormatter("%(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _log_to_stderr()
    try:
        settings = Settings.load(
            nats_url=getattr(args, "nats", None),
            data_dir=getattr(args, "data_dir", None),
            nats_creds=getattr(args, "creds", None),
            embedded_port=getattr(args, "port", None),
            metrics_port=getattr(args, "metrics_port", None),
            policy=getattr(args, "deployment_policy", None),
            agent_pool=getattr(args, "pool", None),
        )
    except InvalidSettings as exc:
        print(visible(f"cadre: {exc.code}: {exc.message}"), file=sys.stderr)
        return EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    try:
        return asyncio.run(_run(args, settings))
    except CadreError as exc:
        if as_json:
            print(json_line({"error": exc.to_wire()}))
        print(visible(f"cadre: {exc.code}: {exc.message}"), file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError | InvalidName) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`cadre events WF | head`): not an error. Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _payload(args: argparse.Namespace) -> bytes:
    if not args.text and args.plan is None:
        raise UsageError('give the request in words ("...") or a plan file (--plan FILE)')
    return commands.request_payload(
        args.text,
        args.plan,
        budget=args.budget,
        intelligence=args.intelligence,
        mode=args.mode,
        idempotency_key=args.idempotency_key,
        dry_run=args.dry_run,
    )


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    settings = deployment_settings(settings)
    match args.command:
        case "up":  # the whole deployment: an agent without a pool and one for each pool
            alongside = None
            if args.ui:
                from cadre.console import cli as console_cli  # aiohttp: loaded only for the console

                alongside = console_cli.alongside(settings, args.ui_port)
            return await commands.up(
                settings, KINDS, 1, "cadre-up", agent_pools=(None, *settings.pools), alongside=alongside
            )
        case "actor":
            if args.replicas < 1:
                raise UsageError("--replicas must be at least 1")
            if args.pool is not None and args.kind != "agent":
                raise UsageError("--pool names the agent pool of `cadre actor agent`")
            return await commands.up(settings, (args.kind,), args.replicas, f"cadre-{args.kind}")
        case "run":
            return await commands.run(settings, _payload(args), args.json)
        case "submit":
            return await commands.submit_cmd(settings, _payload(args), wait=args.wait, as_json=args.json)
        case "approve":
            return await commands.approve(
                settings,
                check_token("workflow id", args.workflow_id),
                args.step_id,
                deny=args.deny,
                reason=args.reason,
            )
        case "cancel":
            return await commands.cancel(settings, check_token("workflow id", args.workflow_id), reason=args.reason)
        case "redrive":
            return await commands.redrive(settings, check_token("workflow id", args.workflow_id), reason=args.reason)
        case "dead-letters":
            return await commands.dead_letters_cmd(settings, args.json)
        case "status":
            return await commands.status(settings, args.json)
        case "schema":
            return flows_cli.schema_flow() if args.what == "flow" else commands.schema(args.what)
        case "flows":
            return flows_cli.flows_cmd(settings, args.json)
        case "plan":
            return flows_cli.plan_cmd(settings, args.text, args.json)
        case "tools":
            return commands.tools(settings, args.json)
        case "events":
            return await _events(args, settings)
        case "export":
            return await _export(args, settings)
        case "workflows":
            return await _workflows(args, settings)
        case "budget":
            return await commands.budget(settings, args.workflow, args.json)
        case "audit":
            return await audit_cli.run(args, settings)
        case "replay":
            return await replay_cli.run(args, settings)
        case "auth":
            return await auth_cli.run(args, settings)
        case "eval":
            return await eval_cmd.run(args, settings)
        case "stats":
            return await stats_cli.run(args, settings)
        case "ui":
            from cadre.console import cli as console_ui

            return await console_ui.serve(settings, args.host, args.ui_port)
    raise AssertionError(f"unhandled command {args.command!r}")


def _print(r: Record, index: int, as_json: bool, keyring: Keyring | None = None) -> None:
    trust = verdict(r, keyring) if keyring is not None and isinstance(r, StoredEvent) else None
    print(json_line(record_json(r, trust, index)) if as_json else record_line(r, index, trust=trust), flush=True)


def _report_untrusted(records: Sequence[Record], keyring: Keyring | None) -> None:
    if keyring is None:
        return
    bad = [u.seq for u in authorship(records, keyring)]
    if bad:
        seqs = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        print(
            f"cadre: {len(bad)} event(s) not written by a party allowed to, ignored by the actors, at stream "
            f"sequence {seqs} (cadre audit WF --verify)",
            file=sys.stderr,
        )


def _report_malformed(records: Sequence[Record]) -> None:
    bad = [r.seq for r in records if isinstance(r, Malformed)]
    if bad:
        seqs = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        print(f"cadre: {len(bad)} malformed message(s) at stream sequence {seqs}", file=sys.stderr)


async def _events(args: argparse.Namespace, settings: Settings) -> int:
    wf = check_token("workflow id", args.workflow_id)
    if args.at is not None:
        return await _time_travel(args, settings, wf)
    if args.from_file is not None:
        if args.follow:
            raise UsageError("--follow reads a live log; it cannot be combined with --from-file")
        flog = FileLog.load(args.from_file)
        keyring, _ = keyring_for(settings, export=flog)
        records = await flog.read_records(wf)
        for i, r in enumerate(records):
            _print(r, i, args.json, keyring)
        _report_malformed(records)
        _report_untrusted(records, keyring)
        return EXIT_OK
    keyring, _ = keyring_for(settings)
    async with open_bus(settings, name="cadre-events") as bus:
        if not args.follow:
            records = await bus.log.read_records(wf)
            for i, r in enumerate(records):
                _print(r, i, args.json, keyring)
            _report_malformed(records)
            _report_untrusted(records, keyring)
            return EXIT_OK
        async with contextlib.aclosing(bus.log.follow(wf)) as feed:
            index = 0
            async for r in feed:
                _print(r, index, args.json, keyring)
                index += 1
                if isinstance(r, StoredEvent) and r.event.type in TERMINAL_TYPES:
                    break
    return EXIT_OK


async def _time_travel(args: argparse.Namespace, settings: Settings, wf: str) -> int:
    """``events WF --at SEQ``: the workflow's state as of a stream sequence."""
    if args.follow:
        raise UsageError("--at shows one moment of the workflow; it cannot be combined with --follow")
    if args.at < 0:
        raise UsageError(f"--at takes a stream sequence (0 or more), not {args.at}")
    if args.from_file is not None:
        flog = FileLog.load(args.from_file)
        keyring, _ = keyring_for(settings, export=flog)
        records = await flog.read_records(wf)
    else:
        keyring, _ = keyring_for(settings)
        async with open_bus(settings, name="cadre-events") as bus:
            records = await bus.log.read_records(wf)
    if not records:
        raise UsageError(f"no workflow {wf!r} in the log (see `cadre workflows`)")
    state_view.show(wf, records, args.at, args.json, keyring)
    return EXIT_OK


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    if not args.workflow_ids and not args.all:
        raise UsageError("name the workflows to export, or pass --all")
    async with open_bus(settings, name="cadre-export") as bus:
        source: EventSource = bus.log
        ids = await source.workflows() if args.all else [check_token("workflow id", w) for w in args.workflow_ids]
        keyring, _ = find_keyring(settings)  # its public keys go with the export, for offline audits
        if args.output is None:
            n = await export(source, ids, sys.stdout.buffer, keyring=keyring)
            sys.stdout.buffer.flush()
        else:
            with args.output.open("wb") as out:
                n = await export(source, ids, out, keyring=keyring)
            print(f"cadre: exported {n} records of {len(ids)} workflow(s) to {args.output}", file=sys.stderr)
    return EXIT_OK


async def _workflows(args: argparse.Namespace, settings: Settings) -> int:
    return await commands.workflows(settings, state=args.state, limit=args.limit, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
