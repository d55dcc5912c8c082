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
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadre import commands
from cadre.bus.embedded import embedded_server
from cadre.bus.events import SCHEMA_VERSION
from cadre.planner.children import child_id
from cadre.store.filelog import stored_references, write_export
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from tests.fake_llm import Behaviour, FakeAPI, anthropic_api, ok, openai_api, status, text
from tests.redrive_tools import FIX
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
    fallback: tuple[Behaviour, ...] | None = None  # a fake OpenAI-compatible API to fall back on; None: none


def submit(body: dict[str, Any], within: float = 20) -> Drive:
    async def drive(h: Harness) -> str:
        return (await h.run(body, within=within)).workflow_id

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


FLOW_CHOICE: dict[str, Any] = {
    "flow": "text_to_sql",
    "path": [
        "classify",
        "rewrite",
        "find_tables",
        "confirm_tables",
        "trim_schema",
        "generate_sql",
        "validate_sql",
        "execute",
        "format_answer",
    ],
    "params": {"sql": "SELECT name FROM customers WHERE country = 'CH' ORDER BY name", "tables": "customers"},
    "reason": "a question about the data: new SQL over the customers",
}


def flow_confirmed(request: str, step: str) -> Drive:
    """A request whose flow waits for a person's confirmation at ``step``: given, then the run's end."""

    async def drive(h: Harness) -> str:
        wf = str((await h.submit({"request": request}))["workflow_id"])
        await h.wait(wf, until="approval_requested")
        with contextlib.redirect_stdout(sys.stderr):
            await commands.approve(h.settings, wf, step, deny=False, reason="the tables are right")
        await h.wait(wf)
        return wf

    return drive


CANCEL_PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "w", "tool": "fs.write", "inputs": {"path": "out/cancelled.txt", "content": "soon undone"}},
        {"id": "e", "tool": "test.echo", "depends_on": ["w"], "inputs": {"value": "v"}},
    ]
}


async def cancelled(h: Harness) -> str:
    """A workflow that compensates writes a file, then waits for approval; a person cancels it."""
    wf = str((await h.submit({"plan": CANCEL_PLAN, "on_failure": "compensate"}))["workflow_id"])
    await h.wait(wf, until="approval_requested")
    with contextlib.redirect_stdout(sys.stderr):
        await commands.cancel(h.settings, wf, reason="not needed any more")
    await h.wait(wf)
    return wf


SUB_PLAN: dict[str, Any] = {
    "nodes": [
        {
            "id": "sub",
            "tool": "workflow.run",
            "inputs": {
                "plan": {
                    "nodes": [
                        {"id": "q", "tool": "sql.query", "inputs": {"sql": "SELECT COUNT(*) AS n FROM customers"}}
                    ]
                }
            },
        },
        {
            "id": "say",
            "tool": "text.render",
            "depends_on": ["sub"],
            "inputs": {"template": "{n} customers", "values": {"n": "${sub.result.rows.0.0}"}},
        },
    ]
}


def sub_workflow(*, child: bool) -> Drive:
    """A task runs a child workflow (an explicit plan); the next task renders its result. Returns the
    parent's id, or (``child``) the child's."""

    async def drive(h: Harness) -> str:
        parent = await h.run({"plan": SUB_PLAN})
        cid = child_id(parent.workflow_id, "sub")
        await h.wait(cid)
        return cid if child else parent.workflow_id

    return drive


def flow_subflow(*, child: bool) -> Drive:
    """A flow whose node runs a sub-flow as a child workflow. Returns the parent's id, or (``child``)
    the child's."""

    async def drive(h: Harness) -> str:
        parent = await h.run({"request": "a report of the customers, please"})
        cid = child_id(parent.workflow_id, "count")
        await h.wait(cid)
        return cid if child else parent.workflow_id

    return drive


FRAGILE_PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "a", "tool": "test.echo", "inputs": {"value": "first"}},
        {"id": "b", "tool": "test.fragile", "depends_on": ["a"], "inputs": {"value": "${a.value}"}},
    ]
}


async def redriven(h: Harness) -> str:
    """test.fragile raises until CADRE_TEST_FRAGILE=fixed: its step is dead-lettered and the workflow
    fails; then the fix is deployed and a person redrives the dead letter: the workflow completes."""
    os.environ.pop(FIX, None)
    wf = (await h.run({"plan": FRAGILE_PLAN})).workflow_id
    os.environ[FIX] = "fixed"
    try:
        with contextlib.redirect_stdout(sys.stderr):
            await commands.redrive(h.settings, wf, reason="test.fragile fixed")
        await h.wait(wf, until="workflow_completed")
    finally:
        os.environ.pop(FIX, None)
    return wf


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

# The planned writer fails; the model's recovery picks fs.write with inputs it made up: a proposal.
PROPOSAL_PLAN: dict[str, Any] = {
    "nodes": [{"id": "save", "tool": "test.disk_full", "inputs": {"path": "out/report.txt", "content": "report"}}]
}
PICK_FS_WRITE: dict[str, Any] = {
    "action": "alternative",
    "tool": "fs.write",
    "inputs": {"path": "out/elsewhere.txt", "content": "words the model invented"},
    "reason": "the disk of the planned writer is full; write the file with fs.write instead",
}
PROPOSAL_SETTINGS: dict[str, Any] = {"tool_modules": ["tests.plugin_tools", "tests.proposal_tools"]}

# Checked conditions: a's postcondition holds; b's precondition does not, so b's tool is never called.
CONDITIONS_PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "a", "tool": "test.echo", "inputs": {"value": "hello"}, "post": ["output.value == 'hello'"]},
        {
            "id": "b",
            "tool": "test.echo",
            "depends_on": ["a"],
            "inputs": {"value": "${a.value}"},
            "pre": ["inputs.value.startsWith('bye')"],
        },
    ]
}

# Two steps fail at once; the provider takes one call a minute, so the second recovery is denied for
# the rate limit (retry_after_s about 60 s, under the deployment's 90 s bound): it waits, asks again.
RATE_LIMITED_PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "a", "tool": "test.flaky", "inputs": {"value": "a"}},
        {"id": "b", "tool": "test.flaky", "inputs": {"value": "b"}},
    ],
    "output": "b",
}


async def rate_limited_planning(h: Harness) -> str:
    """A first workflow's plan takes the minute's one request; a second, submitted about 58 s
    later, is denied for the rate limit with a retry_after_s of 2 s or so, waits it and plans."""
    start = time.monotonic()
    await h.run({"request": NOVEL_REQUEST})
    await asyncio.sleep(max(0.0, start + 58.0 - time.monotonic()))
    # Another request: the same one would be answered from the inference cache, which no rate limit gates.
    return (await h.run({"request": "how many customers does the shop database hold"}, within=30)).workflow_id


RECOVER_WITH_ECHO: dict[str, Any] = {
    "action": "alternative",
    "tool": "test.echo",
    "inputs": {"value": "echoed"},
    "reason": "the flaky service is down; echo the value",
}

SLOPPY_PAIR: dict[str, Any] = {
    "nodes": [
        {"id": "a", "tool": "test.sloppy", "inputs": {"value": "three"}},
        {"id": "b", "tool": "test.sloppy", "inputs": {"value": "four"}},
    ],
    "output": "b",
}
FLAKY_PAIR_WITH_FALLBACKS: dict[str, Any] = {
    "nodes": [
        {"id": "a", "tool": "test.flaky", "inputs": {"value": "a"}, "fallback_tools": ["test.count", "test.echo"]},
        {"id": "b", "tool": "test.flaky", "inputs": {"value": "b"}, "fallback_tools": ["test.count", "test.echo"]},
    ],
    "output": "b",
}
PICK_ECHO = {"choice": "test.echo", "reason": "test.echo returns the value the step expects"}
FAILING_BRANCH: dict[str, Any] = {
    "nodes": [
        {"id": "x", "tool": "test.flaky", "inputs": {"value": "x"}},
        {"id": "side", "tool": "test.sleep", "inputs": {"seconds": 2}},
        {"id": "after", "tool": "test.echo", "depends_on": ["x"], "inputs": {"value": "after"}},
    ],
    "output": "after",
}
GIVE_UP = {"action": "fail", "reason": "the flaky service stays down"}
REMAINING_AFTER_X: dict[str, Any] = {
    "nodes": [{"id": "after_b", "tool": "test.echo", "depends_on": ["side"], "inputs": {"value": "instead"}}],
    "output": "after_b",
    "rationale": "test.flaky is down; finish from the side branch",
}
RATE_LIMITED_ONE_A_MINUTE: dict[str, Any] = {
    "rate_limits": {"anthropic": {"requests_per_minute": 1, "tokens_per_minute": 200_000}},
    "rate_limit_wait_max_s": 90.0,
}

BAD_PLAN = {**MODEL_PLAN, "nodes": [{**MODEL_PLAN["nodes"][0], "tool": "sql.nonexistent"}]}
DISTANCE_PLAN: dict[str, Any] = {
    "nodes": [
        {
            "id": "far",
            "description": "Distance from Lyon to Turin",
            "tool": "geo.distance",
            "inputs": {"origin": "Lyon", "destination": "Turin"},
        }
    ],
    "output": "far",
}

TWICE_PLAN: dict[str, Any] = {"nodes": [{"id": "d", "description": "say it twice", "capabilities": ["echo"]}]}
ECHO_RELATIVE = {"tool": "test.echo", "inputs": {"value": "../x"}, "operation": "echo a relative path"}
ECHO_AGAIN = {"tool": "test.echo", "inputs": {"value": "${d.s1.value}"}, "operation": "echo it again"}
WRITE_THERE = {
    "tool": "fs.write",
    "inputs": {"path": "${d.s1.value}", "content": "written where the echo said"},
    "operation": "write the file the echo named",
}

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
        "cancelled",
        "on_failure: compensate; the write completes, the echo waits for approval; a person cancels: "
        "the write is undone and the workflow ends cancelled",
        cancelled,
        settings={"approval_tools": ["test.echo"]},
        expect="cancelled",
    ),
    Scenario(
        "deadline",
        "fs.write waits for approval; the request's deadline (0.5 s) passes first: the workflow ends cancelled",
        submit({"plan": APPROVAL_PLAN, "deadline_s": 0.5}),
        settings={"approval_tools": ["fs.write"]},
        expect="cancelled",
    ),
    Scenario(
        "sub_workflow",
        "task sub runs a child workflow (workflow.run with an explicit plan): child_requested, then "
        "child_completed with its result, which the next task renders",
        sub_workflow(child=False),
    ),
    Scenario(
        "sub_workflow_child",
        "the child workflow of sub_workflow's run (its workflow_requested carries the parent link)",
        sub_workflow(child=True),
    ),
    Scenario(
        "redriven",
        "test.fragile raises until its fix: the step is dead-lettered (two attempts) and the workflow fails; "
        "after the fix a person redrives it and the workflow completes",
        redriven,
        settings={"tool_modules": ["tests.plugin_tools", "tests.redrive_tools"], "actor_max_attempts": 2},
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
        "grounded_plan",
        "a tool ships documentation: the model's planning prompt is grounded in the passage the request matches "
        "(a ground effect), and the step records its tool's documents in documentation_references",
        submit({"request": "how far is Turin from Lyon in km"}),
        settings={"tool_modules": ["tests.plugin_tools", "tests.doc_tools"]},
        model=(ok(DISTANCE_PLAN, input=1300, output=90),),
    ),
    Scenario(
        "provider_fallback",
        "the first provider (Anthropic) is overloaded; the fallback list's next (OpenAI) plans; "
        "both consultations are recorded",
        submit({"request": NOVEL_REQUEST}),
        model=(status(529),),
        fallback=(ok(MODEL_PLAN, input=1000, output=120),),
    ),
    Scenario(
        "proposal_approved",
        "the model's recovery picks fs.write with made-up inputs: the validator clears the proposal, it waits "
        "for approval (a side effect the model chose), a person grants it and it runs",
        approval(deny=False, plan=PROPOSAL_PLAN, step="save.s1"),
        settings=PROPOSAL_SETTINGS,
        model=(),
        routes=(("emit_recovery", (ok(PICK_FS_WRITE),)),),
    ),
    Scenario(
        "proposal_refused",
        "fs.write is prohibited: the model's recovery picks it anyway, the validator refuses the proposal, "
        "nothing is written and the step fails as planned",
        submit({"plan": PROPOSAL_PLAN}),
        settings={**PROPOSAL_SETTINGS, "prohibited_tools": ["fs.write"]},
        model=(),
        routes=(("emit_recovery", (ok(PICK_FS_WRITE),)),),
        expect="failed",
    ),
    Scenario(
        "conditions",
        "checked conditions: a's postcondition holds; b's precondition does not, so its tool is never called "
        "and the workflow fails naming the condition",
        submit({"plan": CONDITIONS_PLAN}),
        expect="failed",
    ),
    Scenario(
        "rate_limit_wait",
        "two recoveries at once, one call a minute: the second is denied for the rate limit, waits its "
        "retry_after_s (a durable timer, under the 90 s bound) and asks again; both complete",
        submit({"plan": RATE_LIMITED_PLAN}, within=150),
        settings={
            "rate_limits": {"anthropic": {"requests_per_minute": 1, "tokens_per_minute": 200_000}},
            "rate_limit_wait_max_s": 90.0,
        },
        model=(),
        routes=(("emit_recovery", (ok(RECOVER_WITH_ECHO), ok(RECOVER_WITH_ECHO))),),
    ),
    Scenario(
        "rate_limit_plan_wait",
        "two requests a minute apart less 2 s, one call a minute: the second's plan is denied for the rate limit, "
        "waits its retry_after_s (about 2 s, a durable timer) and asks again; the model plans it and it completes",
        rate_limited_planning,
        settings={
            "rate_limits": {"anthropic": {"requests_per_minute": 1, "tokens_per_minute": 200_000}},
            "rate_limit_wait_max_s": 10.0,
        },
        model=(ok(MODEL_PLAN, input=1000, output=110), ok(MODEL_PLAN, input=1000, output=110)),
    ),
    Scenario(
        "interpret_wait",
        "two test.sloppy outputs to interpret at once, one call a minute: the second interpret is denied for the "
        "rate limit, waits its retry_after_s and asks again about the output recorded on the wait (the tool does "
        "not run again); both proposals are cleared and complete",
        submit({"plan": SLOPPY_PAIR, "intelligence": "intelligent"}, within=150),
        settings=RATE_LIMITED_ONE_A_MINUTE,
        model=(),
        routes=(("emit_tool_output", (ok({"count": 5}), ok({"count": 4}))),),
    ),
    Scenario(
        "decide_wait",
        "two planned tools fail at once, each with two fallbacks, one call a minute: the second decide is denied "
        "for the rate limit, waits its retry_after_s and asks again; both run test.echo first and complete",
        submit({"plan": FLAKY_PAIR_WITH_FALLBACKS, "intelligence": "intelligent"}, within=150),
        settings=RATE_LIMITED_ONE_A_MINUTE,
        model=(),
        routes=(("emit_choice", (ok(PICK_ECHO), ok(PICK_ECHO))),),
    ),
    Scenario(
        "adapt_wait",
        "autonomous + creative, one call a minute: task x fails for good after its recovery took the minute's "
        "call; the re-plan is denied for the rate limit and waits while the side branch completes, then asks "
        "again on the workflow as it stands and the new revision completes",
        submit({"plan": FAILING_BRANCH, "intelligence": "autonomous", "mode": "creative"}, within=150),
        settings=RATE_LIMITED_ONE_A_MINUTE,
        model=(),
        routes=(("emit_recovery", (ok(GIVE_UP),)), ("emit_remaining_plan", (ok(REMAINING_AFTER_X),))),
    ),
    Scenario(
        "interpret_proposal",
        "test.sloppy answers in the wrong shape; the model's corrected output is a proposal the validator clears, "
        "and it completes the step",
        submit(
            {
                "plan": {"nodes": [{"id": "c", "tool": "test.sloppy", "inputs": {"value": "three"}}]},
                "intelligence": "intelligent",
            }
        ),
        model=(),
        routes=(("emit_tool_output", (ok({"count": 5}),)),),
    ),
    Scenario(
        "compensated",
        "on_failure: compensate: two fs.write steps and an echo complete, the last task fails; the writes are "
        "undone last first by fs.restore, the echo is listed as not undone, the workflow ends failed",
        submit(
            {
                "on_failure": "compensate",
                "plan": {
                    "nodes": [
                        {"id": "w1", "tool": "fs.write", "inputs": {"path": "c/a.txt", "content": "new a"}},
                        {
                            "id": "w2",
                            "tool": "fs.write",
                            "depends_on": ["w1"],
                            "inputs": {"path": "c/a.txt", "content": " and b", "mode": "append"},
                        },
                        {"id": "e", "tool": "test.echo", "depends_on": ["w2"], "inputs": {"value": "v"}},
                        {"id": "x", "tool": "test.flaky", "depends_on": ["e"], "inputs": {"value": "v"}},
                    ]
                },
            }
        ),
        expect="failed",
    ),
    Scenario(
        "resolved_steps",
        "the model decomposes a task into two steps, the second reading the first's output: the validator "
        "clears the second once the first has run, on its resolved inputs (step_ready.resolved_inputs)",
        submit({"plan": TWICE_PLAN}),
        model=(),
        routes=(("emit_steps", (ok({"steps": [ECHO_RELATIVE, ECHO_AGAIN]}),)),),
    ),
    Scenario(
        "resolved_refused",
        "the second step writes to the path the first echoed, which resolves to ../x: the validator refuses "
        "the resolved step (inputs_safe), fs.write is never called and the task fails",
        submit({"plan": TWICE_PLAN}),
        model=(),
        routes=(("emit_steps", (ok({"steps": [ECHO_RELATIVE, WRITE_THERE]}),)),),
        expect="failed",
    ),
    Scenario(
        "malformed_answer",
        "the model answers with text twice (no JSON): no repair helps, the library plans",
        submit({"request": LIBRARY_REQUEST}),
        model=(text("here is your plan: {nodes: oops"), text("still not JSON")),
    ),
    Scenario(
        "flow_fix_sql",
        "a flow without a model: the rule 'fix_sql' of examples/flows/text_to_sql.yaml runs three of its nodes "
        "(validate, execute, format) with the SQL the request gives",
        submit({"request": "fix this SQL: SELECT name, country FROM customers ORDER BY name LIMIT 3"}),
        settings={"flows": "examples/flows"},
    ),
    Scenario(
        "flow_general",
        "a flow without a model: a schema question; classify's output takes the general branch",
        submit({"request": "what tables and columns does the database have?"}),
        settings={"flows": "examples/flows"},
    ),
    Scenario(
        "flow_model_sql",
        "a flow with a model: it chooses the text-to-SQL path and writes the SQL; the run waits for a person to "
        "confirm the tables, then completes",
        flow_confirmed("who are our customers in Switzerland?", "confirm_tables.s1"),
        settings={"flows": "examples/flows"},
        model=(ok(FLOW_CHOICE, input=1500, output=120),),
    ),
    Scenario(
        "flow_loop",
        "a flow's loop: the poll node leads back to itself while the job is not done, at most 3 times; then on",
        submit({"request": "poll the job"}),
        settings={"flows": "tests/fixtures/flows"},
    ),
    Scenario(
        "flow_subflow",
        "a flow's node runs another flow (tests/fixtures/subflows: orders_report's count runs count_customers as "
        "a child workflow); its way on is chosen when the child completes, and report renders the child's result",
        flow_subflow(child=False),
        settings={"flows": "tests/fixtures/subflows"},
    ),
    Scenario(
        "flow_subflow_child",
        "the child workflow of flow_subflow's run: the count_customers flow's default path (the whole flow)",
        flow_subflow(child=True),
        settings={"flows": "tests/fixtures/subflows"},
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


@contextlib.asynccontextmanager
async def fallback(s: Scenario) -> AsyncIterator[FakeAPI | None]:
    if s.fallback is None:
        yield None
        return
    async with openai_api(*s.fallback) as api:
        yield api


async def record(s: Scenario, url: str, work: Path, out: Path) -> dict[str, Any]:
    async with model(s) as api, fallback(s) as second:
        extra: dict[str, Any] = {**s.settings, "approval_timeout_s": BASE_SETTINGS["approval_timeout_s"]}
        if api is not None:
            extra.update(
                anthropic_api_key="test-key",
                anthropic_base_url=api.base_url,
                llm_provider="anthropic",
                llm_max_retries=0,
            )
        if second is not None:
            extra.update(
                openai_api_key="test-key", openai_base_url=f"{second.base_url}/v1", llm_fallback=["openai:gpt-4.1-mini"]
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
