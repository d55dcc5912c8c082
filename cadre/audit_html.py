"""The audit report as one self-contained HTML page (``cadre audit WF --html FILE``).

Inline CSS, no script, no external asset (fonts, images, style sheets): the file can be
mailed, archived or opened offline. Every value from the log is escaped, its control, bidi
and zero-width characters shown as escapes (``cadre/safe_text.py``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cadre.safe_text import visible
from cadre.store.audit import AuditReport, CheckNote, ChildNode

_CSS = """
:root { --fg:#1d2329; --muted:#5b6670; --line:#d9dee3; --bg:#fafbfc; --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; background: var(--bg); min-width: 120px; }
.card b { display: block; font-size: 18px; }
.card span { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.ok { color: var(--ok); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn); font-weight: 600; }
.muted { color: var(--muted); }
ul { margin: 4px 0 12px; padding-left: 20px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 8px; overflow-x: auto; font-size: 12px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def render(report: AuditReport) -> str:
    """The report as a complete HTML document."""
    r, t = report, report.totals
    status = {"completed": "ok", "failed": "bad"}.get(r.status, "warn")
    level = ", ".join(
        f"{k} {v}"
        for k, v in (("level", r.intelligence), ("mode", r.mode), ("budget $", r.budget_usd))
        if v is not None
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>cadre audit {_e(r.workflow_id)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Audit of workflow <code>{_e(r.workflow_id)}</code></h1>",
        f'<p class="sub"><span class="{status}">{_e(r.status)}</span> · {_e(r.request)}'
        + (f" · {_e(level)}" if level else "")
        + "</p>",
        '<div class="cards">',
        _card(_duration(t.duration_s), "duration"),
        _card(f"${t.cost_usd:.4f}", "model cost"),
        _card(str(t.events), "events"),
        _card(f"{t.model_calls}/{t.consultations}", "model calls / consultations"),
        _card(f"{t.input_tokens} / {t.output_tokens}", "tokens in / out"),
        _card(f"{t.tool_calls}" + (f" ({t.tool_failures} failed)" if t.tool_failures else ""), "tool calls"),
        _card(str(t.revisions), "plan revisions"),
        _card(str(t.retries), "retries"),
        _card(str(t.deviations), "deviations"),
        "</div>",
    ]
    if r.failure:
        parts.append(f'<p class="bad">Failed: {_e(r.failure)}</p>')
    if r.status == "completed":
        parts.append("<h3>Result</h3>" + f"<pre>{_e(json.dumps(r.result, indent=2, ensure_ascii=False))}</pre>")
    parts += _plans(r)
    parts += _verdicts(r)
    parts += _consultations(r)
    parts += _tools(r)
    parts += _grounding(r)
    parts += _approvals(r)
    parts += _deviations(r)
    parts += _costs(r)
    parts += _children(r)
    parts += _timeline(r)
    parts.append(
        f"<footer>Written by <code>cadre audit {_e(r.workflow_id)} --html</code> from the workflow's recorded events "
        f"({t.events} events{f', {t.malformed} malformed' if t.malformed else ''}"
        f"{f', {t.untrusted} forged or unsigned, ignored' if t.untrusted else ''}).</footer>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _plans(r: AuditReport) -> list[str]:
    out = ["<h2>Plans</h2>"]
    if not r.plans:
        return [*out, '<p class="muted">No plan was proposed.</p>']
    for p in r.plans:
        verdict = {"validated": "ok", "rejected": "bad"}.get(p.verdict, "warn")
        match = f" (library plan {_e(p.library_match)}, similarity {p.score})" if p.library_match else ""
        out.append(
            f'<h3>Revision {p.revision} · from {_e(p.source)}{match} · <span class="{verdict}">{_e(p.verdict)}</span>'
            f" · confidence {p.confidence:.2f}"
            f' <span class="muted">({_t(p.at)}, event #{p.index})</span></h3>'
        )
        out.append(f"<p>{_e(p.reason)}</p>")
        if p.caused:
            out.append("<p>Its confidence caused: " + "; ".join(_e(c) for c in p.caused) + "</p>")
        rows = [
            [
                f"<code>{_e(task.id)}</code>",
                _code(task.tool or "(none)"),
                _e(", ".join(task.depends_on)),
                _e(task.description),
                f"{task.confidence:.2f}" + ("" if task.parallelizable else " · not parallelizable"),
                _e("; ".join(task.caused)),
            ]
            for task in p.tasks
        ]
        out.append(_table(["task", "tool", "depends on", "description", "confidence", "it caused"], rows))
        if p.failed_checks:
            out.append(_checks(p.failed_checks))
    return out


def _verdicts(r: AuditReport) -> list[str]:
    rows = []
    for v in r.verdicts:
        mark = '<span class="ok">passed</span>' if v.passed else '<span class="bad">rejected</span>'
        notes = _checks(v.failed + v.warnings) if v.failed or v.warnings else '<span class="muted">—</span>'
        rows.append([f"#{v.index}", _t(v.at), _e(v.subject), mark, str(v.checks), notes])
    return [
        "<h2>Validation verdicts</h2>",
        _table(["event", "time", "subject", "verdict", "checks", "failed / warnings"], rows),
    ]


def _consultations(r: AuditReport) -> list[str]:
    rows = []
    for c in r.consultations:
        outcome = {"granted": "ok", "cached": "ok", "denied": "bad"}.get(c.outcome, "warn")
        notes = [n for n in (c.reason, c.message, c.error and f"error {c.error}") if n]
        if c.fallback:
            notes.append("fallback")
        if c.attempt:
            notes.append(f"fallback provider {c.attempt}")
        if c.repaired:
            notes.append("invalid answer: repair round follows")
        rows.append(
            [
                f"#{c.index}",
                _e(c.actor),
                _e(c.kind) + (f" (round {c.round})" if c.round > 1 else ""),
                _e(c.scope),
                _e(c.provider or "—"),
                _code(c.model or "—"),
                f'<span class="{outcome}">{_e(c.outcome)}</span>',
                _num(c.input_tokens),
                _num(c.output_tokens),
                f'<span class="num">${c.cost_usd:.5f}</span>',
                _num(round(c.latency_ms, 1) if c.latency_ms is not None else None),
                _e("; ".join(notes)),
            ]
        )
    head = ["event", "actor", "kind", "for", "provider", "model", "outcome", "in", "out", "cost", "ms", "notes"]
    return ["<h2>Model consultations</h2>", _table(head, rows) if rows else '<p class="muted">None.</p>']


def _tools(r: AuditReport) -> list[str]:
    rows = [
        [
            f"#{c.index}",
            _e(c.scope),
            _code(c.tool),
            _code(c.input_digest),
            _code(c.output_digest or "—") + (f"<br>by reference {_code(c.stored_as)}" if c.stored_as else ""),
            '<span class="ok">ok</span>' if c.ok else f'<span class="bad">{_e(c.error_code or "failed")}</span>',
            _num(round(c.ms, 2)),
            _e(c.error_message or ""),
        ]
        for c in r.tool_calls
    ]
    head = ["event", "for", "tool", "input digest", "output digest", "outcome", "ms", "error"]
    return ["<h2>Tool calls</h2>", _table(head, rows) if rows else '<p class="muted">None.</p>']


def _grounding(r: AuditReport) -> list[str]:
    """What prompts and steps were grounded in (nothing when the workflow used no grounding)."""
    if not r.groundings and not r.step_documents:
        return []
    t = r.totals
    rows = [
        [
            f"#{g.index}",
            _e(g.scope),
            _code(g.call),
            _e(", ".join(g.examples) or "—"),
            "<br>".join(_code(d) for d in g.documents) or "—",
            _e("all" if g.tools is None else f"{len(g.tools)} retrieved: {', '.join(g.tools)}"),
        ]
        for g in r.groundings
    ]
    steps = [[_code(d.step_id), _code(d.tool), "<br>".join(_code(x) for x in d.documents)] for d in r.step_documents]
    return [
        f"<h2>Grounding</h2><p>{t.steps_with_documents} of {t.steps_proposed} step(s) with documents.</p>",
        _table(["event", "for", "call", "past plans", "documents", "tools"], rows) if rows else "",
        _table(["step", "tool", "documents used"], steps) if steps else "",
    ]


def _approvals(r: AuditReport) -> list[str]:
    if not r.approvals:
        return []
    rows = []
    for a in r.approvals:
        mark = {"granted": "ok", "denied": "bad"}.get(a.decision, "warn")
        rows.append(
            [
                _code(a.step_id),
                _code(a.tool),
                _e(a.reason),
                _t(a.requested_at),
                f'<span class="{mark}">{_e(a.decision)}</span>',
                _e(a.by or "—"),
                _t(a.decided_at),
                _num(a.waited_s),
                _e(a.decision_reason),
            ]
        )
    head = ["step", "tool", "why", "asked", "decision", "by", "decided", "waited s", "reason"]
    return ["<h2>Approvals</h2>", _table(head, rows)]


def _deviations(r: AuditReport) -> list[str]:
    if not r.deviations:
        return ["<h2>Deviations from the plan</h2>", '<p class="muted">None: the run followed its plan.</p>']
    items = "".join(f"<li>#{d.index} <code>{_e(d.scope)}</code>: {_e(d.text)}</li>" for d in r.deviations)
    return ["<h2>Deviations from the plan</h2>", f"<ul>{items}</ul>"]


def _costs(r: AuditReport) -> list[str]:
    t = r.totals
    rows = [[_code(scope), f'<span class="num">${cost:.5f}</span>'] for scope, cost in sorted(t.cost_by_scope.items())]
    rows.append(["<b>total</b>", f'<b class="num">${t.cost_usd:.5f}</b>'])
    return ["<h2>Cost</h2>", _table(["spent on", "USD"], rows)]


def _timeline(r: AuditReport) -> list[str]:
    rows = [
        [
            f"#{e.index}",
            _num(e.seq),
            _t(e.at),
            _e(e.actor),
            (f"<strong>{_e(e.trust.upper())}</strong> " if e.trust else "") + _code(e.type),
            _e(e.cause_type or ("—" if e.causation_id is None else e.causation_id[:12])),
            _e(e.summary),
        ]
        for e in r.timeline
    ]
    return ["<h2>Timeline</h2>", _table(["#", "seq", "time (UTC)", "actor", "event", "caused by", "what"], rows)]


# -- helpers -------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """``value`` as HTML text: markup escaped, and control, bidi and zero-width characters shown as escapes."""
    return html.escape(visible(str(value), newlines=True), quote=True)


def _code(value: str) -> str:
    return f"<code>{_e(value)}</code>"


def _num(value: Any) -> str:
    return '<span class="muted">—</span>' if value is None else f'<span class="num">{_e(value)}</span>'


def _t(at: datetime | None) -> str:
    return '<span class="muted">—</span>' if at is None else _e(at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3])


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _checks(checks: Iterable[CheckNote]) -> str:
    items = []
    for c in checks:
        cls = "bad" if c.severity == "error" else "warn"
        fix = f" <span class='muted'>fix: {_e(c.fix)}</span>" if c.fix else ""
        where = f"<code>{_e(c.path)}</code> " if c.path else ""
        items.append(f'<li><span class="{cls}">{_e(c.name)}</span> {where}{_e(c.message)}{fix}</li>')
    return f"<ul>{''.join(items)}</ul>"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table whose cells are HTML already (escaped by the callers)."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _children(r: AuditReport) -> list[str]:
    """The child workflows its tasks ran, nested as they nest, with the tree's cost (none: nothing)."""
    if not r.children:
        return []

    def items(nodes: list[ChildNode]) -> str:
        out = []
        for c in nodes:
            cost = f"${c.cost_usd:.5f}" if c.cost_usd is not None else "cost unknown"
            why = f": {_e(c.failure)}" if c.failure else ""
            inner = f"<ul>{items(c.children)}</ul>" if c.children else ""
            out.append(f"<li>task {_code(c.task_id)} → {_code(c.workflow_id)}: {_e(c.status)}, {cost}{why}{inner}</li>")
        return "".join(out)

    tree = r.totals.tree_cost_usd
    total = f"${tree:.5f} with its children" if tree is not None else "children not read"
    return ["<h2>Child workflows</h2>", f"<p>{_e(total)}</p>", f"<ul>{items(r.children)}</ul>"]
