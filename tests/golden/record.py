"""Record the golden logs: one real run per path, exported beside this file.

    .venv/bin/python -m tests.golden.record [--out DIR] [--only NAME ...]

Each scenario runs the whole cadre (every actor, the intake and the budget in this
process, ``tests/system_harness.py``) on a nats-server of its own (the bundled binary, in a
temporary data dir), with the test tools of ``tests/plugin_tools.py`` and, where a model
plans or re-plans, the real Anthropic SDK against the local fake of its API
(``tests/fake_llm.py``). Its workflow is exported as ``<name>.jsonl`` (``cadre export``'s
format: the exact stored bytes), and ``manifest.json`` records, per log, the workflow id,
how it ended and the settings a replay needs (the tool modules and the catalog policy the
run had: they are the deployment's, not the log's).

``tests/test_replay.py`` replays every log of the manifest from its file, with the network
disabled, and expects each to reproduce exactly. Re-record after a change that is meant to
change what the handlers emit (the replay test then says which event differs), and commit
the new files with that change; re-record also when the event schema moves. A re-recording
gets new workflow ids, times and model latencies: only the paths stay the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadre import commands
from cadre.bus.embedded import embedded_server
from cadre.bus.events import SCHEMA_VERSION
from cadre.store.filelog import stored_references, write_export
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from tests.fake_llm import Behaviour, FakeAPI, anthropic_api, ok, text
from tests.scenarios import FLAKY_PLAN, LIBRARY_REQUEST, MODEL_PLAN, NOVEL_REQUEST, REMAINING
from tests.system_harness import Harness, cadre_running, settings_for

HERE = Path(__file__).resolve().parent
APPROVAL_PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "save", "tool": "fs.write", "inputs": {"path": "out/approved.txt", "content": "ok"}},
    ]
}

TEN_THOUSAND_ROWS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) SELECT x FROM n"
# About 1.2 MB of output as JSON: above the tool_output_max_bytes the golden log was recorded with.
TEN_THOUSAND_PADDED_ROWS = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) "
    "SELECT x, printf('%0100d', x) AS pad FROM n"
)

Drive = Callable[[Harness], Awaitable[str]]
"""Runs the scenario's workflow to its end on a running cadre; returns its id."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    drive: Drive
    settings: dict[str, Any] = field(default_factory=dict)  # the deployment's: a replay needs them too
    model: tuple[Behaviour, ...] | None = None  # the fake model's script; None: no model
    routes: tuple[tuple[str, tuple[Behaviour, ...]], ...] = ()  # the fake's answers by prompt marker
    expect: str = "completed"


def submit(body: dict[str, Any]) -> Drive:
    async def drive(h: Harness) -> str:
        return (await h.run(body)).workflow_id

    return drive


# One task at confidence 0.3 (the deployment's approve_below is 0.5): its step waits for a person.
DOUBTFUL_PLAN: dict[str, Any] = {
    "nodes": [{"id": "guess", "tool": "test.echo", "inputs": {"value": "v"}, "confidence": 0.3}],
    "confidence": 0.9,
}


def approval(*, deny: bool, plan: dict[str, Any] = APPROVAL_PLAN, step: str = "save.s1") -> Drive:
    async def drive(h: Harness) -> str:
        wf = str((await h.submit({"plan": plan}))["workflow_id"])
        await h.wait(wf, until="approval_requested")
        reason = "not today" if deny else "looks fine"
        with contextlib.redirect_stdout(sys.stderr):  # its "approved …" line is progress, not output
            await commands.approve(h.settings, wf, step, deny=deny, reason=reason)
        await h.wait(wf)
        return wf

    return drive


DRY_RUN_PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "a", "tool": "test.echo", "inputs": {"value": "hello"}},
        {
            "id": "b",
            "tool": "test.tripwire",
            "depends_on": ["a"],
            "fallback_tools": ["test.flaky", "test.echo"],
            "inputs": {"value": "${a.value}"},
        },
        {
            "id": "c",
            "tool": "fs.write",
            "depends_on": ["b"],
            "inputs": {"path": "dry/out.txt", "content": "${b.value}"},
        },
    ]
}

BAD_PLAN = {**MODEL_PLAN, "nodes": [{**MODEL_PLAN["nodes"][0], "tool": "sql.nonexistent"}]}

SCENARIOS = (
    Scenario(
        "happy_library",
        "no model: the planner falls back to the plan library (top customers: query, render, write)",
        submit({"request": LIBRARY_REQUEST}),
    ),
    Scenario(
        "library_parameters",
        "no model: a library plan with parameters serves another count and year (n=5, year=2023) than its example",
        submit({"request": "find the five customers who spent most in 2023 and write a report"}),
    ),
    Scenario(
        "library_refusal",
        "no model: the closest library plan cannot take a month, so the workflow fails with no_plan saying so",
        submit({"request": "find the customers who spent most in march 2024"}),
        expect="failed",
    ),
    Scenario(
        "replan",
        "autonomous + creative: a task fails for good, the model re-plans the remaining work",
        submit({"request": "echo then flaky", "plan": FLAKY_PLAN, "intelligence": "autonomous", "mode": "creative"}),
        model=(),
        routes=(("emit_remaining_plan", (ok(REMAINING),)),),
    ),
    Scenario(
        "budget_denial",
        "a model is configured but the workflow's budget is 0: the consultation is denied, the library plans",
        submit({"request": LIBRARY_REQUEST, "budget_usd": 0}),
        model=(),
    ),
    Scenario(
        "fallback_tool",
        "the planned tool fails, the planned fallback tool completes the step",
        submit(
            {
                "plan": {
                    "nodes": [
                        {"id": "x", "tool": "test.flaky", "fallback_tools": ["test.echo"], "inputs": {"value": "v"}}
                    ]
                }
            }
        ),
    ),
    Scenario(
        "approval_granted",
        "fs.write needs approval: a person grants it and the step runs",
        approval(deny=False),
        settings={"approval_tools": ["fs.write"]},
    ),
    Scenario(
        "approval_denied",
        "fs.write needs approval: a person denies it and the workflow fails",
        approval(deny=True),
        settings={"approval_tools": ["fs.write"]},
        expect="failed",
    ),
    Scenario(
        "confidence_approval",
        "a task's confidence (0.3) is below approve_below (0.5): its step waits; a person grants it and it runs",
        approval(deny=False, plan=DOUBTFUL_PLAN, step="guess.s1"),
        settings={"approve_below": 0.5},
    ),
    Scenario(
        "llm_plan_repair",
        "the model's first plan names a tool that does not exist; the repair round fixes it",
        submit({"request": NOVEL_REQUEST}),
        model=(ok(BAD_PLAN, input=900, output=120), ok(MODEL_PLAN, input=1100, output=110)),
    ),
    Scenario(
        "dry_run",
        "a dry run (model configured, level intelligent, fs.write gated): no tool runs, no approval is waited on, "
        "the result lists the steps, the approval needed and the worst-case cost",
        submit(
            {
                "request": "echo, trip the wire, save",
                "plan": DRY_RUN_PLAN,
                "dry_run": True,
                "intelligence": "intelligent",
            }
        ),
        settings={"approval_tools": ["fs.write"], "tool_modules": ["tests.plugin_tools", "tests.dry_run_tools"]},
        model=(),
    ),
    Scenario(
        "unsafe_plan",
        "the last task of a plan writes outside the workspace: the validator's safety rule rejects the plan "
        "and none of its tasks runs",
        submit(
            {
                "request": "count customers and write the count outside the workspace",
                "plan": {
                    "nodes": [
                        {"id": "n", "tool": "sql.query", "inputs": {"sql": "SELECT COUNT(*) FROM customers"}},
                        {
                            "id": "save",
                            "tool": "fs.write",
                            "depends_on": ["n"],
                            "inputs": {"path": "../outside.txt", "content": "${n.rows}"},
                        },
                    ]
                },
            }
        ),
        expect="failed",
    ),
    Scenario(
        "output_too_large",
        "a 10 000-row query whose output is above the hard cap: the step fails once with output_too_large",
        submit(
            {
                "request": "ten thousand padded rows",
                "plan": {
                    "nodes": [
                        {
                            "id": "big",
                            "tool": "sql.query",
                            "inputs": {
                                "sql": TEN_THOUSAND_PADDED_ROWS,
                                "max_rows": 10000,
                            },
                        }
                    ]
                },
            }
        ),
        # The cap it was recorded with (the default is now 64 MiB: outputs above 256 KiB go by reference).
        settings={"tool_output_max_bytes": 786_432},
        expect="failed",
    ),
    Scenario(
        "output_by_reference",
        "a 10 000-row query above the inline limit: its output is stored by reference (the export carries the "
        "object) and a downstream step reads it",
        submit(
            {
                "request": "ten thousand rows, counted",
                "plan": {
                    "nodes": [
                        {"id": "big", "tool": "sql.query", "inputs": {"sql": TEN_THOUSAND_ROWS, "max_rows": 10000}},
                        {
                            "id": "count",
                            "tool": "text.render",
                            "depends_on": ["big"],
                            "inputs": {"template": "{n} rows", "values": {"n": "${big.row_count}"}},
                        },
                    ]
                },
            }
        ),
        # A low inline limit keeps the file small: the output (about 70 kB) goes by reference all the same.
        settings={"tool_output_inline_max_bytes": 16_384},
    ),
    Scenario(
        "malformed_answer",
        "the model answers with text twice (no JSON): no repair helps, the library plans",
        submit({"request": LIBRARY_REQUEST}),
        model=(text("here is your plan: {nodes: oops"), text("still not JSON")),
    ),
)

BASE_SETTINGS: dict[str, Any] = {"tool_modules": ["tests.plugin_tools"], "approval_timeout_s": 3600.0}
"""What every scenario's deployment has (``settings_for``'s tool modules) and a replay needs."""


@contextlib.asynccontextmanager
async def model(s: Scenario) -> AsyncIterator[FakeAPI | None]:
    if s.model is None:
        yield None
        return
    async with anthropic_api(*s.model) as api:
        for marker, answers in s.routes:
            api.when(marker, *answers)
        yield api


async def record(s: Scenario, url: str, work: Path, out: Path) -> dict[str, Any]:
    async with model(s) as api:
        extra: dict[str, Any] = {**s.settings, "approval_timeout_s": BASE_SETTINGS["approval_timeout_s"]}
        if api is not None:
            extra.update(
                anthropic_api_key="test-key",
                anthropic_base_url=api.base_url,
                llm_provider="anthropic",
                llm_max_retries=0,
            )
        settings = settings_for(url, work / s.name, **extra)
        async with cadre_running(settings) as h:
            wf = await s.drive(h)
            records = await h.bus.log.read_records(wf)
            objects = await h.bus.log.object_bytes(stored_references(records))
    path = out / f"{s.name}.jsonl"
    with path.open("wb") as f:
        write_export(f, records, stream=settings.stream_name, subjects=settings.subjects, objects=objects)
    status = fold(wf, [r for r in records if isinstance(r, StoredEvent)]).status
    if status != s.expect:
        raise RuntimeError(f"{s.name}: the workflow ended {status}, expected {s.expect}")
    print(f"[golden] {s.name}: {wf} {status}, {len(records)} records -> {path}", file=sys.stderr)
    return {
        "file": path.name,
        "workflow_id": wf,
        "status": status,
        "records": len(records),
        "description": s.description,
        "settings": {**BASE_SETTINGS, **s.settings},
    }


async def main(out: Path, only: set[str]) -> None:
    manifest_path = out / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())["logs"] if manifest_path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="cadre-golden-") as tmp, embedded_server(Path(tmp) / "nats") as server:
        for s in SCENARIOS:
            if only and s.name not in only:
                continue
            manifest[s.name] = await record(s, server.url, Path(tmp), out)
    manifest = {name: manifest[name] for name in sorted(manifest)}
    manifest_path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "logs": manifest}, indent=2) + "\n")


def run() -> None:
    ap = argparse.ArgumentParser(description="record cadre's golden logs")
    ap.add_argument("--out", type=Path, default=HERE, help="directory of the logs and manifest.json")
    ap.add_argument("--only", nargs="*", default=[], metavar="NAME", help="re-record these scenarios only")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.out, set(args.only)))


if __name__ == "__main__":
    run()
