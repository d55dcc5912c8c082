"""The audit report as text for a terminal (``cadre audit WF``)."""

from __future__ import annotations

import json
from datetime import datetime

from cadre.render import number
from cadre.store.audit import AuditReport, CheckNote, ChildNode


def lines(r: AuditReport, width: int = 110) -> list[str]:
    """The report, section by section, one line per item."""
    t = r.totals
    out = [f"workflow {r.workflow_id}: {r.status}"]
    out.append(f"  request    {_cut(r.request, width)}")
    policy = [f"{k} {v}" for k, v in (("level", r.intelligence), ("mode", r.mode), ("budget $", r.budget_usd)) if v]
    if policy:
        out.append(f"  policy     {', '.join(policy)}")
    out.append(f"  time       {_t(r.started_at)} -> {_t(r.ended_at)} ({_duration(t.duration_s)})")
    out.append(
        f"  totals     {t.events} events, {t.revisions} plan revision(s), {t.tool_calls} tool call(s)"
        f" ({t.tool_failures} failed), {t.retries} retr{'y' if t.retries == 1 else 'ies'}, {t.deviations} deviation(s)"
        + (f", {t.dead_letters} dead letter(s)" if t.dead_letters else "")
    )
    out.append(
        f"  model      {t.consultations} consultation(s): {t.model_calls} granted, {t.denied} denied,"
        f" {t.cached} cached; {t.input_tokens} tokens in, {t.output_tokens} out; ${t.cost_usd:.5f}"
    )
    if r.failure:
        out.append(f"  failure    {_cut(r.failure, width)}")
    if r.status == "completed":
        out.append(f"  result     {_cut(json.dumps(r.result, ensure_ascii=False), width)}")

    out.append("")
    out.append("plans")
    for p in r.plans:
        match = f", library plan {p.library_match!r} ({p.score})" if p.library_match else ""
        out.append(
            f"  revision {p.revision} from {p.source}{match}: {p.verdict} (#{p.index}), confidence {p.confidence:.2f}"
        )
        out.append(f"    why    {_cut(p.reason, width)}")
        if p.flow is not None:
            out.append(f"    flow   {p.flow}, path {' -> '.join(p.path)} (chosen by {p.chosen_by})")
        out.extend(f"    caused {_cut(c, width)}" for c in p.caused)
        for task in p.tasks:
            deps = f" after {', '.join(task.depends_on)}" if task.depends_on else ""
            alone = ", not parallelizable" if not task.parallelizable else ""
            out.append(
                f"    task   {task.id}: {task.tool or '(no tool)'}{deps} (confidence {task.confidence:.2f}{alone})"
            )
            out.extend(f"      caused {_cut(c, width)}" for c in task.caused)
        out.extend(_checks(p.failed_checks, "    "))
    if not r.plans:
        out.append("  (none)")

    if r.branches:
        out.append("")
        out.append("flow branches")
        for b in r.branches:
            skipped = f"; skipped {', '.join(b.skipped)}" if b.skipped else ""
            out.append(
                f"  #{b.index:<4} after {b.task_id}: {b.to or 'the branch ends'} ({_cut(b.why, width)}){skipped}"
            )

    out.append("")
    out.append("validation verdicts")
    for v in r.verdicts:
        out.append(f"  #{v.index:<4} {v.subject}: {'passed' if v.passed else 'REJECTED'} ({v.checks} checks)")
        out.extend(_checks(v.failed + v.warnings, "        "))

    out.append("")
    out.append("model consultations")
    for c in r.consultations:
        who = f"{c.provider}/{c.model}" if c.provider else "no model"
        notes = "; ".join(n for n in (c.reason, c.error and f"error {c.error}") if n)
        flags = (" fallback" if c.fallback else "") + (" repaired" if c.repaired else "")
        out.append(
            f"  #{c.index:<4} {c.actor:<10} {c.kind}{f' (round {c.round})' if c.round > 1 else ''}"
            f"{f' (fallback provider {c.attempt})' if c.attempt else ''} for {c.scope}:"
            f" {c.outcome}{f' ({notes})' if notes else ''}{flags}; {who}; {c.input_tokens}/{c.output_tokens} tokens,"
            f" ${c.cost_usd:.5f}" + (f", {c.latency_ms:.1f} ms" if c.latency_ms is not None else "")
        )
    if not r.consultations:
        out.append("  (none)")

    out.append("")
    out.append("tool calls")
    for call in r.tool_calls:
        outcome = "ok" if call.ok else f"{call.error_code}: {_cut(call.error_message or '', 60)}"
        out.append(
            f"  #{call.index:<4} {call.scope:<18} {call.tool:<16} in {call.input_digest}"
            f" out {call.output_digest or '-'}  {outcome} ({call.ms:.1f} ms)"
            + (f"  stored by reference {call.stored_as}" if call.stored_as else "")
        )
    if not r.tool_calls:
        out.append("  (none)")

    if r.approvals:
        out.append("")
        out.append("approvals")
        for a in r.approvals:
            decided = f" by {a.by} at {_t(a.decided_at)} after {a.waited_s} s" if a.by else ""
            why = f": {a.decision_reason}" if a.decision_reason else ""
            out.append(f"  {a.step_id} ({a.tool}): {a.decision}{decided}{why}")

    out.extend(_grounding(r, width))

    out.append("")
    out.append("deviations from the plan")
    for d in r.deviations:
        out.append(f"  #{d.index:<4} {d.scope}: {_cut(d.text, width)}")
    if not r.deviations:
        out.append("  (none)")

    out.append("")
    out.append("cost")
    for scope, cost in sorted(t.cost_by_scope.items()):
        out.append(f"  {scope:<24} ${cost:.5f}")
    out.append(f"  {'total':<24} ${t.cost_usd:.5f}")
    if r.children:
        tree = f"${t.tree_cost_usd:.5f}" if t.tree_cost_usd is not None else "unknown (children not read)"
        out.append(f"  {'with child workflows':<24} {tree}")
        out.append("")
        out.append("child workflows")
        out.extend(_tree(r.children, "  ", width))

    out.append("")
    out.append("timeline")
    for e in r.timeline:
        cause = e.cause_type or ("-" if e.causation_id is None else e.causation_id[:12])
        flag = f"{e.trust.upper()} " if e.trust else ""
        head = f"  {number(e.index, e.seq)} {_t(e.at)}  {e.actor:<10} {flag}{e.type:<20}"
        out.append(f"{head} <- {cause:<20} {_cut(e.summary, 70)}")
    return out


def _grounding(r: AuditReport, width: int) -> list[str]:
    """What prompts and steps were grounded in: past plans, documents, retrieved tools (nothing
    when the workflow used none)."""
    if not r.groundings and not r.step_documents:
        return []
    t = r.totals
    out = ["", f"grounding ({t.steps_with_documents} of {t.steps_proposed} step(s) with documents)"]
    for g in r.groundings:
        parts = []
        if g.examples:
            parts.append(f"past plans {', '.join(g.examples)}")
        if g.documents:
            parts.append(f"documents {', '.join(g.documents)}")
        if g.tools is not None:
            parts.append(f"{len(g.tools)} tools retrieved")
        out.append(f"  #{g.index:<4} {g.scope} {g.call}: {_cut('; '.join(parts), width)}")
    for d in r.step_documents:
        out.append(f"  step {d.step_id} ({d.tool}) used: {_cut(', '.join(d.documents), width)}")
    return out


def _tree(children: list[ChildNode], indent: str, width: int) -> list[str]:
    """One line per child workflow, its own children indented under it."""
    out = []
    for c in children:
        cost = f"${c.cost_usd:.5f}" if c.cost_usd is not None else "cost unknown"
        tree = f" (tree ${c.tree_cost_usd:.5f})" if c.children and c.tree_cost_usd is not None else ""
        why = f": {c.failure}" if c.failure else ""
        line = f"{indent}task {c.task_id} -> {c.workflow_id}: {c.status}, {cost}{tree}{why}"
        out.append(_cut(line, width + len(indent)))
        out.extend(_tree(c.children, indent + "  ", width))
    return out


def _checks(checks: tuple[CheckNote, ...], indent: str) -> list[str]:
    out = []
    for c in checks:
        fix = f" (fix: {c.fix})" if c.fix else ""
        where = f"{c.path}: " if c.path else ""
        out.append(f"{indent}{'error' if c.severity == 'error' else c.severity} {c.name}: {where}{c.message}{fix}")
    return out


def _t(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
