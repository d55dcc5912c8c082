"""``cadre eval``: shadow evaluation of the current planning configuration.

Runs a set of requests through the deployment as it is configured now (settings, policy file,
model, library, documentation) as **dry runs**: each is planned, validated and decomposed for
real and nothing is executed (``dry_run``: no tool runs, no execution-time consultation). Each
is an ordinary recorded workflow, so ``cadre replay`` and ``cadre audit`` work on it.

The set is one of:

- a file: ``{"requests": [...]}`` in the form of ``tests/eval/requests.json`` (each with its
  expected answer as SQL: :mod:`cadre.eval_set`), or a JSON list of requests, each a string or
  ``{"id", "request", "plan"?}`` (``plan``: a reference plan to agree with);
- ``--from-log``: the requests of past workflows (not dry runs), each with the plan it ran
  with (its first revision) as the reference;
- ``--library``: the requests of the plan library's example files, with their plans.

Per request and in total it reports: whether the plan is valid (validated and decomposed),
agreement with the reference plan (the same tools with the same dependencies between them,
task ids aside), consultations, tokens, cost and latency (request to end, from the record).
With expected answers it also reports the plans that would answer another question: the
planned ``sql.query`` statements are run read-only on the deployment's database and compared
with the expected rows (a ``sql.schema`` answer is the schema whatever the plan). Exit status:
1 when a plan is invalid (rejected by the validator, steps rejected, or the run failed for
another reason than having no plan) or would answer another question; 0 otherwise (a request
without a plan is reported, not failed: saying "I cannot" is not a wrong plan).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from cadre.actors.intake import submit
from cadre.bus.events import PlanProposed, PlanRejected, PlanValidated, StepsRejected, WorkflowRequested
from cadre.bus.plan import Plan
from cadre.commands import EXIT_FAILED, EXIT_OK, UsageError, watch
from cadre.eval_set import Request, Table, expected_tables, load_requests, served
from cadre.planner.library import load_entries
from cadre.render import json_line
from cadre.safe_text import visible
from cadre.settings import Settings
from cadre.store.audit import audit
from cadre.store.records import Record, StoredEvent
from cadre.store.state import fold
from cadre.system import run_system
from cadre.trust import trust_for
from cadre.wiring import open_bus

__all__ = ["EvalItem", "Outcome", "add_parser", "agreement", "items_from_file", "run", "signature"]


@dataclass(frozen=True)
class EvalItem:
    """One request to evaluate: its id, words, the reference plan (None: nothing to agree with)
    and the expected answer (None: none given)."""

    id: str
    request: str
    reference: Plan | None = None
    expected: Request | None = None


@dataclass
class Outcome:
    """What the dry run of one request showed."""

    id: str
    request: str
    workflow_id: str = ""
    valid: str = "error"  # yes, no (invalid), no_plan, error
    why: str = ""
    plan_source: str = ""
    agreement: str = ""  # same, differs, "" (no reference)
    differences: list[str] = field(default_factory=list)
    answer: str = ""  # expected, other, unknown, "" (no expected answer)
    consultations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float | None = None


# -- the sets -----------------------------------------------------------------------------------


def items_from_file(path: Path) -> list[EvalItem]:
    """The requests of a file (module docstring); UsageError saying what is wrong."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("requests"), list):
        if all(isinstance(e, dict) and "sql" in e for e in doc["requests"]):
            try:
                return [EvalItem(r.id, r.request, expected=r) for r in load_requests(path)]
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        doc = doc["requests"]
    if not isinstance(doc, list) or not doc:
        raise UsageError(f'{path}: expected a non-empty list of requests, or {{"requests": [...]}}')
    out: list[EvalItem] = []
    for i, e in enumerate(doc):
        if isinstance(e, str) and e.strip():
            out.append(EvalItem(f"r{i + 1}", e))
        elif isinstance(e, dict) and isinstance(e.get("request"), str) and e["request"].strip():
            plan = None
            if e.get("plan") is not None:
                try:
                    plan = msgspec.convert(e["plan"], Plan)
                except msgspec.ValidationError as exc:
                    raise UsageError(f"{path}: requests[{i}].plan is not a plan: {exc}") from None
            out.append(EvalItem(str(e.get("id") or f"r{i + 1}"), e["request"], reference=plan))
        else:
            raise UsageError(f'{path}: requests[{i}] must be a request in words or {{"request": "...", ...}}')
    return out


def items_from_library(settings: Settings) -> list[EvalItem]:
    """The requests of the plan library's example files, each with its plan."""
    folder = settings.plan_library_dir
    if folder is None or not folder.is_dir():
        raise UsageError("no plan library folder (CADRE_PLAN_LIBRARY, default ./examples/plans)")
    return [EvalItem(e.name, e.request, reference=e.plan) for e in load_entries(folder)]


def items_from_log(workflows: Sequence[tuple[str, Sequence[Record]]], limit: int | None) -> list[EvalItem]:
    """The requests of past workflows in words (not dry runs), each with its first plan, oldest
    first (``limit``: the last ones)."""
    out: list[EvalItem] = []
    for wf, records in sorted(workflows, key=lambda w: w[1][0].seq if w[1] else 0):
        events = [r for r in records if isinstance(r, StoredEvent)]
        req = next((r.event.data for r in events if isinstance(r.event.data, WorkflowRequested)), None)
        if req is None or req.dry_run or not req.request.strip():
            continue
        first = next((r.event.data for r in events if isinstance(r.event.data, PlanProposed)), None)
        out.append(EvalItem(wf, req.request, reference=first.plan if first is not None else None))
    return out[-limit:] if limit else out


# -- agreement and answers ----------------------------------------------------------------------


def signature(plan: Plan) -> list[tuple[str, tuple[str, ...]]]:
    """A plan's shape without its ids: each task's tool with the tools of its dependencies."""
    tool_of = {t.id: t.tool or "-" for t in plan.nodes}
    return sorted((tool_of[t.id], tuple(sorted(tool_of.get(d, "?") for d in t.depends_on))) for t in plan.nodes)


def agreement(reference: Plan, plan: Plan) -> tuple[bool, list[str]]:
    """Whether ``plan`` has the reference's tools and dependencies, and what differs."""
    a, b = Counter(signature(reference)), Counter(signature(plan))
    if a == b:
        return True, []

    def show(s: tuple[str, tuple[str, ...]]) -> str:
        return s[0] + (f" after {', '.join(s[1])}" if s[1] else "")

    return False, [f"-{show(s)}" for s in sorted((a - b).elements())] + [
        f"+{show(s)}" for s in sorted((b - a).elements())
    ]


def answer_of(expected: Request, plan: Plan, database: Path) -> str:
    """``expected`` when a planned step would give the expected answer, ``other`` when the
    planned statements give other rows, ``unknown`` when nothing can tell without running."""
    if expected.answer_from == "sql.schema":
        return "expected" if any(t.tool == "sql.schema" for t in plan.nodes) else "other"
    statements = [
        (t.inputs["sql"], t.inputs.get("params") or [])
        for t in plan.nodes
        if t.tool == "sql.query" and isinstance(t.inputs.get("sql"), str) and "${" not in json.dumps(t.inputs)
    ]
    if not statements:
        return "other" if not any(t.tool == "sql.query" for t in plan.nodes) else "unknown"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        wanted = expected_tables(conn, expected)
        answers: list[Table] = []
        for sql, params in statements:
            try:  # as the sql.query tool runs it, on a read-only connection
                cur = conn.execute(sql, params)
                answers.append(Table([d[0] for d in cur.description or ()], [list(r) for r in cur.fetchall()]))
            except (sqlite3.Error, ValueError):
                continue
    return "expected" if served(expected, wanted, answers) else "other"


def judge(item: EvalItem, wf: str, records: Sequence[Record], database: Path) -> Outcome:
    """The outcome of one dry run from its records."""
    state = fold(wf, [r for r in records if isinstance(r, StoredEvent)])
    report = audit(records)
    t = report.totals
    out = Outcome(
        id=item.id,
        request=item.request,
        workflow_id=wf,
        plan_source=state.plan_source or "",
        consultations=t.consultations,
        input_tokens=t.input_tokens,
        output_tokens=t.output_tokens,
        cost_usd=t.cost_usd,
        latency_s=t.duration_s,
    )
    types = [type(r.event.data) for r in records if isinstance(r, StoredEvent)]
    if state.status == "completed" and PlanValidated in types:
        out.valid = "yes"
    elif state.failure is not None and state.failure.code == "no_plan":
        out.valid, out.why = "no_plan", state.failure.message
    elif PlanRejected in types or StepsRejected in types or state.failure is not None:
        out.valid = "no"
        out.why = f"{state.failure.code}: {state.failure.message}" if state.failure is not None else state.status
    else:
        out.valid, out.why = "error", f"the run ended {state.status}"
    if state.plan is not None:
        if item.reference is not None:
            same, out.differences = agreement(item.reference, state.plan)
            out.agreement = "same" if same else "differs"
        if item.expected is not None:
            out.answer = answer_of(item.expected, state.plan, database)
    elif item.expected is not None:
        out.answer = "unknown"
    return out


# -- the command --------------------------------------------------------------------------------


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        parents=parents,
        help="dry-run a set of requests with the current planning configuration and compare",
    )
    p.add_argument("file", nargs="?", type=Path, help="requests (JSON), e.g. tests/eval/requests.json")
    p.add_argument("--from-log", action="store_true", help="the requests of past workflows, with their plans")
    p.add_argument("--library", action="store_true", help="the requests of the plan library's example files")
    p.add_argument("--limit", type=int, metavar="N", help="at most N requests (from the log: the last N)")
    p.add_argument("--budget", type=float, metavar="USD", help="cap on LLM spend for each request")
    p.add_argument("--intelligence", choices=["basic", "adaptive", "intelligent", "autonomous"])
    p.add_argument("--mode", choices=["strict", "adaptive", "creative"])


def _payload(item: EvalItem, args: argparse.Namespace) -> bytes:
    body: dict[str, Any] = {"request": item.request, "dry_run": True}
    for key, value in (("budget_usd", args.budget), ("intelligence", args.intelligence), ("mode", args.mode)):
        if value is not None:
            body[key] = value
    return json.dumps(body).encode()


async def run(args: argparse.Namespace, settings: Settings) -> int:
    sources = sum([args.file is not None, bool(args.from_log), bool(args.library)])
    if sources != 1:
        raise UsageError("give one set of requests: a FILE, --from-log or --library")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit takes a number of requests, 1 or more")
    items: list[EvalItem] = []
    if args.file is not None:
        items = items_from_file(args.file)
    elif args.library:
        items = items_from_library(settings)
    outcomes: list[Outcome] = []
    async with (
        open_bus(settings, name="cadre-eval", role="node") as bus,
        run_system(bus, settings, agent_pools=(None, *settings.pools)),
    ):
        if args.from_log:
            past = [(wf, await bus.log.read_records(wf)) for wf in await bus.log.workflows()]
            items = items_from_log(past, args.limit)
            if not items:
                raise UsageError("no past workflow with a request in words in the log")
        elif args.limit:
            items = items[: args.limit]
        trust = trust_for(settings, ("intake",))
        log = bus.log.signed_by(trust.signer("intake"))
        if not args.json:
            print(HEADER, flush=True)
        for item in items:
            reply = await submit(log, _payload(item, args))
            if "error" in reply:
                err = reply["error"]
                outcomes.append(Outcome(item.id, item.request, why=f"{err.get('code')}: {err.get('message')}"))
                continue
            wf = reply["workflow_id"]
            await watch(bus.log, wf, quiet=True, keyring=trust.keyring)
            outcomes.append(judge(item, wf, await bus.log.read_records(wf), settings.database_path))
            if not args.json:
                print(visible(line(outcomes[-1])), flush=True)
    summary = totals(outcomes)
    if args.json:
        print(json_line({"requests": [o.__dict__ for o in outcomes], "totals": summary}))
    else:
        print(visible(total_line(summary)))
    return EXIT_FAILED if summary["invalid"] or summary["errors"] or summary["other_answer"] else EXIT_OK


HEADER = f"{'id':<28} {'valid':<8} {'agrees':<7} {'answer':<9} {'calls':>5} {'tokens':>11} {'cost':>9} {'s':>6}  plan"


def line(o: Outcome) -> str:
    tokens = f"{o.input_tokens}/{o.output_tokens}"
    latency = f"{o.latency_s:.2f}" if o.latency_s is not None else "-"
    plan = o.plan_source or "-"
    if o.differences:
        plan += f" ({'; '.join(o.differences[:3])}{' …' if len(o.differences) > 3 else ''})"
    elif o.valid != "yes" and o.why:
        plan += f" ({o.why[:100]})"
    return (
        f"{o.id[:28]:<28} {o.valid:<8} {o.agreement or '-':<7} {o.answer or '-':<9} {o.consultations:>5} "
        f"{tokens:>11} {o.cost_usd:>9.5f} {latency:>6}  {plan}  {o.workflow_id}"
    )


def totals(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    latencies = [o.latency_s for o in outcomes if o.latency_s is not None]
    compared = [o for o in outcomes if o.agreement]
    checked = [o for o in outcomes if o.answer in ("expected", "other")]
    return {
        "requests": len(outcomes),
        "valid": sum(o.valid == "yes" for o in outcomes),
        "invalid": sum(o.valid == "no" for o in outcomes),
        "no_plan": sum(o.valid == "no_plan" for o in outcomes),
        "errors": sum(o.valid == "error" for o in outcomes),
        "agree": sum(o.agreement == "same" for o in compared),
        "compared": len(compared),
        "other_answer": sum(o.answer == "other" for o in checked),
        "answers_checked": len(checked),
        "answers_unknown": sum(o.answer == "unknown" for o in outcomes),
        "consultations": sum(o.consultations for o in outcomes),
        "input_tokens": sum(o.input_tokens for o in outcomes),
        "output_tokens": sum(o.output_tokens for o in outcomes),
        "cost_usd": round(sum(o.cost_usd for o in outcomes), 8),
        "latency_mean_s": round(sum(latencies) / len(latencies), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
    }


def total_line(t: dict[str, Any]) -> str:
    parts = [
        f"{t['requests']} request(s): {t['valid']} valid, {t['invalid']} invalid, {t['no_plan']} without a plan"
        + (f", {t['errors']} error(s)" if t["errors"] else ""),
    ]
    if t["compared"]:
        parts.append(f"agreement with the recorded plan {t['agree']}/{t['compared']}")
    if t["answers_checked"]:
        parts.append(f"would answer another question: {t['other_answer']} of {t['answers_checked']} planned")
    parts.append(
        f"{t['consultations']} consultation(s), {t['input_tokens']} tokens in, {t['output_tokens']} out, "
        f"${t['cost_usd']:.5f}"
    )
    if t["latency_mean_s"] is not None:
        parts.append(f"latency mean {t['latency_mean_s']:.2f} s, max {t['latency_max_s']:.2f} s")
    return "total: " + "; ".join(parts)
