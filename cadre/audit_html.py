"""The audit report as one self-contained HTML page (``cadre audit WF --html FILE``).

Inline CSS and scripts, no external asset (fonts, images, style sheets, scripts): the file can be
mailed, archived or opened offline. Every value from the log is escaped, its control, bidi
and zero-width characters shown as escapes (``cadre/safe_text.py``).

With the :class:`~cadre.audit_details.Details` of the records, the page also shows what ran: each
tool call's inputs and output, the plan's DAG (``cadre/audit_dag.py``), each task's timing, the
chain's verdict and the signer of every event.

Its size is bounded whatever the workflow: a value is cut at ``MAX_VALUE_CHARS`` characters, the
values of the first ``MAX_CALL_VALUES`` tool calls are shown (later ones by digest), a table keeps its
first ``MAX_ROWS`` rows (the timeline its first and last, and every forged or unsigned event), a
line of text ``MAX_TEXT_CHARS`` characters, and the DAG and timing pictures stop at 400 tasks. Measured:
70 kB for the golden happy path (50 kB of it dagre); 2.2 MB for 4 000 tool calls with 30 kB outputs
each (``tests/test_audit_html_page.py`` holds it under 4 MB).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cadre import audit_dag
from cadre.audit_details import CallValues, Details, Signer
from cadre.safe_text import visible
from cadre.store.audit import AuditReport, CheckNote, ChildNode, TimelineEntry

MAX_VALUE_CHARS = 2000
MAX_CALL_VALUES = 200
MAX_ROWS = 3000
MAX_TEXT_CHARS = 400

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
.call { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0; padding: 4px 10px; }
.call pre { max-height: 320px; overflow: auto; white-space: pre-wrap; word-break: break-word; margin: 4px 0; }
.call h4 { margin: 4px 0; font-size: 13px; }
"""


def render(report: AuditReport, more: Details | None = None) -> str:
    """The report as a complete HTML document (with ``more``: what ran, the DAG, timing, signers)."""
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
        f"<style>{_CSS}{audit_dag.CSS}</style></head><body><main>",
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
    if more is not None:
        parts += _integrity(r, more)
    if r.failure:
        parts.append(f'<p class="bad">Failed: {_e(r.failure)}</p>')
    if r.status == "completed":
        parts.append("<h3>Result</h3>" + f"<pre>{_e(json.dumps(r.result, indent=2, ensure_ascii=False))}</pre>")
    parts += _plans(r)
    if more is not None:
        descriptions = {t.id: t.description for p in r.plans for t in p.tasks}
        parts += audit_dag.dag_section(more.tasks, descriptions)
        parts += audit_dag.timing_section(more.tasks, r.started_at, r.ended_at)
    parts += _verdicts(r)
    parts += _consultations(r)
    parts += _tools(r)
    if more is not None:
        parts += _call_values(r, more)
    parts += _grounding(r)
    parts += _approvals(r)
    parts += _deviations(r)
    parts += _costs(r)
    parts += _children(r)
    parts += _timeline(r, more)
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


def _timeline(r: AuditReport, more: Details | None = None) -> list[str]:
    signers = {s.index: s for s in more.signers} if more is not None else {}
    entries = _bounded_timeline(r.timeline)
    rows = []
    for e in entries:
        if e is None:
            rows.append(
                [
                    f'<span class="muted">… {len(r.timeline) - MAX_ROWS} event(s) left out here: '
                    f"<code>cadre events {_e(r.workflow_id)}</code> lists them all</span>"
                ]
            )
            continue
        row = [
            f'<a id="e{e.index}"></a>#{e.index}',
            _num(e.seq),
            _t(e.at),
            _e(e.actor),
            (f"<strong>{_e(e.trust.upper())}</strong> " if e.trust else "") + _code(e.type),
            _e(e.cause_type or ("—" if e.causation_id is None else e.causation_id[:12])),
            _e(_cut(e.summary, MAX_TEXT_CHARS)),
        ]
        if more is not None:
            row.append(_signer(signers.get(e.index)))
        rows.append(row)
    head = ["#", "seq", "time (UTC)", "actor", "event", "caused by", "what"]
    if more is not None:
        head.append("signed by")
    return ["<h2>Timeline</h2>", _table(head, rows, limit=None)]  # bounded by _bounded_timeline


def _bounded_timeline(entries: Sequence[TimelineEntry]) -> list[TimelineEntry | None]:
    """The timeline's first and last rows when it is longer than ``MAX_ROWS`` (None marks the gap),
    keeping every forged or unsigned event."""
    if len(entries) <= MAX_ROWS:
        return list(entries)
    head, tail = MAX_ROWS * 2 // 3, MAX_ROWS // 3
    middle = [e for e in entries[head:-tail] if e.trust is not None][:MAX_ROWS]
    return [*entries[:head], None, *middle, *entries[-tail:]]


def _signer(s: Signer | None) -> str:
    if s is None:
        return '<span class="muted">—</span>'
    cls = {"signed": "ok", "forged": "bad", "unsigned": "bad", "malformed": "bad"}.get(s.status, "muted")
    who = s.role or ""
    if s.name:
        who += f" ({s.name})"
    key = f' <code title="{_e(s.key)}">{_e(s.key[:10])}…</code>' if s.key else ""
    why = f'<br><span class="muted">{_e(_cut(s.reason, MAX_TEXT_CHARS))}</span>' if s.reason else ""
    return f'<span class="{cls}">{_e(s.status)}</span> {_e(who)}{key}{why}'


def _integrity(r: AuditReport, more: Details) -> list[str]:
    """The chain's verdict and the signatures', in two lines."""
    out = []
    if more.chain is not None:
        cls = "ok" if more.chain.ok else "bad"
        out.append(f'<p>Integrity: <span class="{cls}" id="chain">{_e(more.chain.summary())}</span></p>')
    bad = [s for s in more.signers if s.status in ("forged", "unsigned")]
    if not more.keyring:
        out.append('<p>Signatures: <span class="warn" id="signatures">not checked: no keyring</span></p>')
    elif bad:
        listed = ", ".join(f'<a href="#e{s.index}">#{s.index}</a> {_e(s.status)}' for s in bad[:50])
        out.append(
            f'<p>Signatures: <span class="bad" id="signatures">{len(bad)} event(s) not written by a party '
            f"allowed to</span>: {listed}</p>"
        )
    else:
        out.append(
            '<p>Signatures: <span class="ok" id="signatures">every event signed by a role allowed to emit it</span></p>'
        )
    return out


def _call_values(r: AuditReport, more: Details) -> list[str]:
    """Each tool call's inputs and output (bounded), in the order of the tool calls' table."""
    out = ["<h2>What the tools were given and gave back</h2>"]
    seen: dict[int, int] = {}
    shown = 0
    for c in r.tool_calls:
        n = seen.get(c.index, 0)
        seen[c.index] = n + 1
        v = more.calls.get((c.index, n))
        if v is None:
            continue
        if shown == MAX_CALL_VALUES:
            out.append(f'<p class="muted">Later calls are shown by digest only (above {MAX_CALL_VALUES}).</p>')
            break
        shown += 1
        head = f"#{c.index} {_code(c.tool)} for {_e(c.scope)}"
        out.append(_call_block(head, v, c.stored_as))
    for v in more.unresolved[:MAX_CALL_VALUES]:
        head = f'#{v.index} {_code(v.tool)} for {_e(v.step_id or "?")} <span class="warn">object not at hand</span>'
        out.append(_call_block(head, v, v.reference))
    if len(out) == 1:
        out.append('<p class="muted">None.</p>')
    return out


def _call_block(head: str, v: CallValues, stored_as: str | None) -> str:
    if v.inputs is None:
        inputs = (
            '<p class="muted">not recoverable from the log (what they read is missing); '
            f"digest <code>{_e(v.input_digest)}</code></p>"
        )
    else:
        note = "" if v.inputs_match else ' <span class="warn">(as planned: their digest is not the recorded one)</span>'
        inputs = f"<h4>inputs{note}</h4>{_value(v.inputs)}"
    if v.reference is not None:
        output = (
            f"<h4>output</h4><p>stored by reference <code>{_e(v.reference)}</code>; its object is not at hand "
            f"({_e(_ref_bytes(v.output))})</p>"
        )
    else:
        by_ref = f' <span class="muted">(stored by reference {_code(stored_as)})</span>' if stored_as else ""
        output = f"<h4>output{by_ref}</h4>{_value(v.output)}"
    return f'<div class="call"><h4>{head}</h4>{inputs}{output}</div>'


def _ref_bytes(output: Any) -> str:
    size = output.get("bytes") if isinstance(output, dict) else None
    return f"{size} bytes" if isinstance(size, int) else "size unknown"


def _value(value: Any) -> str:
    """A JSON value as an escaped block, cut at ``MAX_VALUE_CHARS`` characters."""
    if value is None:
        return '<p class="muted">none</p>'
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_VALUE_CHARS:
        more = len(text) - MAX_VALUE_CHARS
        text = text[:MAX_VALUE_CHARS] + f"\n… {more} more characters (cadre events --json has the whole value)"
    return f"<pre>{_e(text)}</pre>"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


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


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], limit: int | None = MAX_ROWS) -> str:
    """A table whose cells are HTML already (escaped by the callers), of ``limit`` rows at most."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    if limit is not None and len(rows) > limit + 1:
        left = [f'<span class="muted">… {len(rows) - limit} more row(s) left out</span>']
        rows = [*rows[:limit], left]
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
