"""The ``cadre`` command line.

Every command that talks to NATS takes ``--nats URL`` and ``--data-dir DIR``; given neither,
it uses the embedded server of ``./.cadre/`` (starting it when none runs). Exit codes:
0 success, 1 failure (a cadre error, said on stderr or as ``{"error": …}`` with ``--json``),
2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pydantic

from bus.errors import CadreError, InvalidName
from bus.events import TERMINAL_TYPES
from bus.subjects import check_token
from cadre import __version__
from cadre.render import json_line, record_json, record_line
from cadre.settings import Settings
from cadre.wiring import open_bus
from store.filelog import FileLog, export
from store.records import Malformed, Record, StoredEvent
from store.source import EventSource

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(CadreError):
    """The command line asks for something that cannot be done as asked."""

    code = "usage_error"


def _parser() -> argparse.ArgumentParser:
    bus = argparse.ArgumentParser(add_help=False)
    bus.add_argument("--nats", metavar="URL", help="NATS server URL (env CADRE_NATS_URL); default: embedded")
    bus.add_argument("--data-dir", metavar="DIR", type=Path, help="embedded server data (env CADRE_DATA_DIR)")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print JSON (one object per line)")

    p = argparse.ArgumentParser(prog="cadre", description="Validated, recorded agent workflows over NATS.")
    p.add_argument("--version", action="version", version=f"cadre {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[bus], help="run cadre (the embedded NATS server unless --nats)")
    up.add_argument("--port", type=int, help="port of the embedded server (default: a free one)")

    events = sub.add_parser("events", parents=[bus, out], help="list a workflow's events")
    events.add_argument("workflow_id")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the end")
    events.add_argument("--from-file", type=Path, metavar="FILE", help="read an exported file instead of NATS")

    exp = sub.add_parser("export", parents=[bus], help="export workflows' events to JSON Lines")
    exp.add_argument("workflow_ids", nargs="*", metavar="WF")
    exp.add_argument("--all", action="store_true", help="export every workflow")
    exp.add_argument("-o", "--output", type=Path, metavar="FILE", help="file to write (default: stdout)")

    sub.add_parser("workflows", parents=[bus, out], help="list the workflow ids in the log")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(
            nats_url=getattr(args, "nats", None),
            data_dir=getattr(args, "data_dir", None),
            embedded_port=getattr(args, "port", None),
        )
    except pydantic.ValidationError as exc:
        print(f"cadre: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    try:
        return asyncio.run(_run(args, settings))
    except CadreError as exc:
        if as_json:
            print(json_line({"error": exc.to_wire()}))
        print(f"cadre: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError | InvalidName) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`cadre events WF | head`): not an error. Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "up":
            return await _up(settings)
        case "events":
            return await _events(args, settings)
        case "export":
            return await _export(args, settings)
        case "workflows":
            return await _workflows(args, settings)
    raise AssertionError(f"unhandled command {args.command!r}")


async def _up(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_bus(settings, name="cadre-up") as bus:
        where = "embedded server" if bus.server is not None else "NATS"
        if bus.server is not None and not bus.server.owned:
            where = f"embedded server already running (pid {bus.server.pid})"
        print(f"cadre {__version__} up: {where} at {bus.url}", flush=True)
        print(f"  events stream {settings.stream_name} on {settings.subjects.events}", flush=True)
        print(f"  try: cadre events WF --nats {bus.url}    (Ctrl-C to stop)", flush=True)
        await stop.wait()
        print("cadre: stopping", file=sys.stderr, flush=True)
    return EXIT_OK


def _print(r: Record, as_json: bool) -> None:
    print(json_line(record_json(r)) if as_json else record_line(r), flush=True)


def _report_malformed(records: Sequence[Record]) -> None:
    bad = [r.seq for r in records if isinstance(r, Malformed)]
    if bad:
        seqs = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        print(f"cadre: {len(bad)} malformed message(s) at stream sequence {seqs}", file=sys.stderr)


async def _events(args: argparse.Namespace, settings: Settings) -> int:
    wf = check_token("workflow id", args.workflow_id)
    if args.from_file is not None:
        if args.follow:
            raise UsageError("--follow reads a live log; it cannot be combined with --from-file")
        records = await FileLog.load(args.from_file).read_records(wf)
        for r in records:
            _print(r, args.json)
        _report_malformed(records)
        return EXIT_OK
    async with open_bus(settings, name="cadre-events") as bus:
        if not args.follow:
            records = await bus.log.read_records(wf)
            for r in records:
                _print(r, args.json)
            _report_malformed(records)
            return EXIT_OK
        async for r in bus.log.follow(wf):
            _print(r, args.json)
            if isinstance(r, StoredEvent) and r.event.type in TERMINAL_TYPES:
                break
    return EXIT_OK


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    if not args.workflow_ids and not args.all:
        raise UsageError("name the workflows to export, or pass --all")
    async with open_bus(settings, name="cadre-export") as bus:
        source: EventSource = bus.log
        ids = await source.workflows() if args.all else [check_token("workflow id", w) for w in args.workflow_ids]
        if args.output is None:
            n = await export(source, ids, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with args.output.open("wb") as out:
                n = await export(source, ids, out)
            print(f"cadre: exported {n} records of {len(ids)} workflow(s) to {args.output}", file=sys.stderr)
    return EXIT_OK


async def _workflows(args: argparse.Namespace, settings: Settings) -> int:
    async with open_bus(settings, name="cadre-workflows") as bus:
        ids = await bus.log.workflows()
    if args.json:
        print(json_line({"workflows": ids}))
    else:
        for wf in ids:
            print(wf)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
