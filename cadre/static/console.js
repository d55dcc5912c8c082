// The cadre console. Every value from the server is put in the page as text (textContent or a text
// node), never as markup: a request holding HTML or control characters shows as what it is.
"use strict";

const S = { token: "", approver: false, view: null, stream: null };
const main = () => document.getElementById("main");

function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") n.className = v;
    else if (k === "text") n.textContent = String(v);
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    n.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return n;
}
// Replace a node's children (null, undefined and false leave nothing; strings become text nodes).
function fill(node, ...kids) {
  node.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false)
    .map((k) => k instanceof Node ? k : document.createTextNode(String(k))));
  return node;
}
const svg = (tag, attrs) => {
  const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
  return n;
};
// Recorded text shown as the CLI prints it (cadre/safe_text.py): a character that is not printable
// (Unicode's Other and Separator categories but the space: controls, bidi overrides, zero-width
// characters, unassigned and private-use code points) is shown as its escape, never passed on.
// Line breaks are kept only with `newlines` (a block meant to span lines).
const UNPRINTABLE = /(?! )[\p{C}\p{Z}]/gu;
const NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };
function escapeChar(c) {
  if (NAMED[c]) return NAMED[c];
  const n = c.codePointAt(0);
  const hex = (w) => n.toString(16).padStart(w, "0");
  return n < 0x100 ? "\\x" + hex(2) : n < 0x10000 ? "\\u" + hex(4) : "\\U" + hex(8);
}
const visible = (s, newlines) => (s === null || s === undefined) ? "" :
  String(s).replace(UNPRINTABLE, (c) => newlines && c === "\n" ? c : escapeChar(c));
const when = (iso) => iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, "") : "-";
const dur = (s) => s === null || s === undefined ? "-" : s < 60 ? s.toFixed(2) + " s" : s < 3600 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(1) + " h";
const usd = (x) => x ? "$" + Number(x).toFixed(4) : "-";
const state = (s) => el("span", { class: "state s-" + s, text: s });

async function api(path, opts) {
  const o = Object.assign({ headers: {} }, opts || {});
  if (o.body !== undefined) {
    o.method = o.method || "POST";
    o.headers["Content-Type"] = "application/json";
    o.headers["X-Cadre-Token"] = S.token;
    o.body = JSON.stringify(o.body);
  }
  const r = await fetch(path, o);
  const data = await r.json().catch(() => ({ error: { code: "bad_answer", message: "HTTP " + r.status } }));
  if (!r.ok && !data.error) data.error = { code: "http_" + r.status, message: "HTTP " + r.status };
  return data;
}
const notice = (text, error) => el("div", { class: "notice" + (error ? " error" : ""), role: error ? "alert" : "status", text: visible(text) });
const debounce = (fn, ms) => { let t = null; return () => { clearTimeout(t); t = setTimeout(fn, ms); }; };

// --- live updates ---------------------------------------------------------------------------------
function connect() {
  const live = document.getElementById("live");
  const es = new EventSource("/api/events");
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  es.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  es.addEventListener("rows", (e) => { const d = JSON.parse(e.data); if (S.view && S.view.onRows) S.view.onRows(d); });
  S.stream = es;
}

// --- Workflows ------------------------------------------------------------------------------------
const STATES = ["", "requested", "running", "awaiting_approval", "completed", "failed", "cancelled"];

function workflowsView() {
  const rows = new Map();
  const body = el("tbody", { id: "wf-rows" });
  const total = el("span", { class: "muted", id: "wf-total" });
  const stateSel = el("select", { id: "f-state", "aria-label": "state" }, STATES.map((s) => el("option", { value: s, text: s || "every state" })));
  const text = el("input", { type: "text", id: "f-text", placeholder: "filter: id or request", "aria-label": "filter" });
  const req = el("textarea", { id: "req-text", placeholder: "a request in words, e.g. find the three customers who spent most in 2024" });
  const dry = el("input", { type: "checkbox", id: "req-dry" });
  const said = el("div", { id: "req-said" });
  const matches = (r) => (!stateSel.value || r.state === stateSel.value) &&
    (!text.value.trim() || (r.workflow_id + " " + (r.request || "")).toLowerCase().includes(text.value.trim().toLowerCase()));
  const render = () => {
    const list = [...rows.values()].filter(matches).sort((a, b) =>
      (b.started_at || "").localeCompare(a.started_at || "") || a.workflow_id.localeCompare(b.workflow_id)).slice(0, limit);
    fill(body, ...list.map((r) => el("tr", { class: "row", "data-wf": r.workflow_id, "data-state": r.state,
        onclick: () => { location.hash = "#/wf/" + encodeURIComponent(r.workflow_id); } },
      el("td", { class: "state-cell" }, state(r.state)),
      el("td", {}, el("a", { href: "#/wf/" + encodeURIComponent(r.workflow_id), text: r.workflow_id })),
      el("td", { class: "request" }, r.dry_run ? el("span", { class: "muted", text: "(dry run) " }) : null, visible(r.request === null ? "(no trusted request)" : r.request)),
      el("td", { text: when(r.started_at) }),
      el("td", { class: "num", text: dur(r.duration_s) + (r.ended_at ? "" : r.duration_s === null ? "" : "+") }),
      el("td", { class: "num", text: usd(r.cost_usd) }),
      el("td", { class: "num", text: r.problems ? String(r.problems) : "" }))));
  };
  let limit = 100;
  const more = el("button", { class: "plain", id: "wf-more", text: "Show 100 more", onclick: () => { limit += 100; load(); } });
  const load = async () => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (stateSel.value) q.set("state", stateSel.value);
    if (text.value.trim()) q.set("q", text.value.trim());
    const d = await api("/api/workflows?" + q);
    rows.clear();
    for (const r of d.rows || []) rows.set(r.workflow_id, r);
    total.textContent = `${Math.min(d.total, limit)} shown of ${d.total} matching (${d.workflows} workflows)`;
    more.hidden = d.total <= limit;
    render();
  };
  const submit = async (e) => {
    e.preventDefault();
    fill(said);
    const d = await api("/api/requests", { body: { request: req.value, dry_run: dry.checked } });
    if (d.error) { said.appendChild(notice(`${d.error.code}: ${d.error.message}`, true)); return; }
    said.appendChild(el("div", { class: "notice" }, "started ", el("a", { href: "#/wf/" + encodeURIComponent(d.workflow_id), text: d.workflow_id }), dry.checked ? " (a dry run: nothing is executed)" : ""));
    req.value = "";
  };
  stateSel.addEventListener("change", () => { limit = 100; load(); });
  text.addEventListener("input", debounce(() => { limit = 100; load(); }, 250));
  fill(main(), 
    el("h1", { text: "Workflows" }),
    el("form", { class: "card", id: "req-form", onsubmit: submit },
      req, el("div", { class: "bar" }, el("label", {}, dry, " dry run (plan and simulate; run no tool)"),
        el("button", { type: "submit", id: "req-submit", text: "Submit request" })), said),
    el("div", { class: "bar" }, stateSel, text, total),
    el("table", {}, el("thead", {}, el("tr", {}, ["state", "workflow", "request", "started (UTC)", "duration", "cost", "problems"].map((h) => el("th", { text: h })))), body),
    el("div", { class: "bar" }, more));
  load();
  return {
    onRows(d) {
      if (d.reload) { load(); return; }
      for (const r of d.rows) rows.set(r.workflow_id, r);
      render();
    },
  };
}

// --- a workflow -----------------------------------------------------------------------------------
function valueBox(v, wf, eventId, effect, part) {
  if (!v) return el("span", { class: "muted", text: "-" });
  const pre = el("pre", { text: visible(v.text, true) });
  if (!v.cut) return pre;
  const more = el("button", { class: "plain", text: `show all (${v.cut} more characters)`, onclick: async () => {
    const q = new URLSearchParams({ event: eventId, effect: String(effect), part });
    const d = await api(`/api/workflows/${encodeURIComponent(wf)}/value?` + q);
    pre.textContent = visible(typeof d.value === "string" ? d.value : JSON.stringify(d.value, null, 1), true);
    more.remove();
  } });
  return el("div", {}, pre, more);
}

function dag(tasks) {
  if (!tasks.length) return el("p", { class: "muted", text: "no plan yet" });
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 24, ranksep: 48, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const t of tasks) g.setNode(t.id, { width: Math.max(120, 8 * Math.max(t.id.length, (t.status || "").length + 2)), height: 46 });
  for (const t of tasks) for (const d of t.depends_on) if (g.hasNode(d)) g.setEdge(d, t.id);
  dagre.layout(g);
  const info = g.graph();
  const root = svg("svg", { class: "dag", id: "dag", width: Math.ceil(info.width), height: Math.ceil(info.height), viewBox: `0 0 ${Math.ceil(info.width)} ${Math.ceil(info.height)}` });
  for (const e of g.edges()) {
    const pts = g.edge(e).points;
    root.appendChild(svg("path", { d: "M" + pts.map((p) => `${p.x},${p.y}`).join(" L") }));
  }
  for (const t of tasks) {
    const n = g.node(t.id);
    const grp = svg("g", { "data-task": t.id, "data-status": t.status, transform: `translate(${n.x - n.width / 2},${n.y - n.height / 2})` });
    grp.appendChild(svg("rect", { width: n.width, height: n.height, class: "t-" + t.status }));
    const title = svg("title", {}); title.textContent = visible(`${t.id} (${t.tool || "no tool"}): ${t.status}; confidence ${t.confidence}`);
    const a = svg("text", { x: 8, y: 19 }); a.textContent = visible(t.id);
    const b = svg("text", { x: 8, y: 36, class: "status" }); b.textContent = t.status.replace("_", " ") + (t.attempt > 1 ? ` (attempt ${t.attempt})` : "");
    grp.append(title, a, b);
    root.appendChild(grp);
  }
  return root;
}

function spans(list, start, end) {
  if (!list.length) return el("p", { class: "muted", text: "nothing ran yet" });
  const t0 = Date.parse(start || list[0].start), t1 = Math.max(Date.parse(end || new Date().toISOString()), ...list.map((s) => Date.parse(s.end || s.start)));
  const width = Math.max(1, t1 - t0);
  return el("div", { class: "spans" }, list.map((s) => {
    const a = Date.parse(s.start), b = s.end ? Date.parse(s.end) : t1;
    const fill = el("div", { class: "fill " + (s.kind === "task" ? "task" : s.ok === false ? "bad" : s.ok ? "ok" : "") });
    fill.style.left = (100 * (a - t0) / width) + "%";
    fill.style.width = Math.max(0.5, 100 * (b - a) / width) + "%";
    return el("div", { class: "span" }, el("span", { class: "label", text: visible((s.kind === "step" ? "  step " : "task ") + s.id) }),
      el("div", { class: "track" }, fill), el("span", { class: "muted", text: s.end ? dur((b - a) / 1000) : "…" }));
  }));
}

function table(head, rows, attrs) {
  return el("table", attrs || {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => c instanceof Node ? el("td", {}, c) : el("td", { text: visible(c) }))))));
}

function decisionForm(wf, w, after) {
  const reason = el("input", { type: "text", placeholder: "reason", "aria-label": "reason", "data-reason": w.step_id });
  const said = el("span", {});
  const send = async (grant) => {
    fill(said);
    const d = await api(`/api/workflows/${encodeURIComponent(wf)}/decide`, { body: { step_id: w.step_id, grant, reason: reason.value } });
    said.appendChild(d.error ? notice(`${d.error.code}: ${d.error.message}`, true) : notice(`${d.decision} as ${d.by}`));
    if (!d.error && after) after();
  };
  const tip = S.approver ? null : "this console holds no approver key";
  return el("div", { class: "bar decision", "data-step": w.step_id },
    el("button", { "data-action": "approve", disabled: !S.approver, title: tip, onclick: () => send(true), text: "Approve" }),
    el("button", { class: "danger", "data-action": "deny", disabled: !S.approver, title: tip, onclick: () => send(false), text: "Deny" }),
    reason, said, S.approver ? null : el("span", { class: "muted", text: "approving needs the console to run with an approver's key" }));
}

function workflowView(wf) {
  const root = el("div", {});
  fill(main(), root);
  const out = el("div", { id: "wf-actions-out" });
  const load = async () => {
    const d = await api("/api/workflows/" + encodeURIComponent(wf));
    if (d.error) { fill(root, notice(`${d.error.code}: ${d.error.message}`, true)); return; }
    const t = d.totals;
    const ended = ["completed", "failed", "cancelled"].includes(d.status);
    const replay = async () => {
      fill(out, el("span", { class: "muted", text: "replaying…" }));
      const r = await api(`/api/workflows/${encodeURIComponent(wf)}/replay`, { body: {} });
      fill(out, r.error ? notice(`${r.error.code}: ${r.error.message}`, true) :
        el("div", { class: "card", id: "replay-result" }, el("b", { class: r.ok ? "okc" : "err", text: r.ok ? "replay matches the record" : "replay differs from the record" }), el("pre", { text: visible(r.lines.join("\n"), true) })));
    };
    const cancel = async () => {
      const r = await api(`/api/workflows/${encodeURIComponent(wf)}/cancel`, { body: { reason: "cancelled from the console" } });
      fill(out, r.error ? notice(`${r.error.code}: ${r.error.message}`, true) : notice(`cancel asked as ${r.by}`));
    };
    fill(root, 
      el("h1", {}, "Workflow ", el("span", { id: "wf-id", text: wf }), " ", el("span", { id: "wf-state" }, state(d.status))),
      el("div", { class: "card" },
        el("div", { id: "wf-request" }, el("b", { text: "Request: " }), visible(d.request || "(an explicit plan)")),
        el("div", { class: "grid" },
          [["started", when(d.started_at)], ["duration", dur(t.duration_s)], ["cost", usd(t.cost_usd)], ["events", t.events],
           ["tool calls", t.tool_calls], ["model calls", t.model_calls], ["revisions", t.revisions], ["integrity", d.integrity.status]]
            .map(([k, v]) => el("div", { class: "fig" }, el("b", { text: String(v) }), el("span", { text: k })))),
        el("p", { id: "wf-integrity", class: d.integrity.ok ? "okc" : "err", text: visible(d.integrity.summary) + (t.untrusted ? ` (${t.untrusted} event(s) the keyring does not accept)` : "") }),
        d.failure ? notice("failure: " + d.failure, true) : null,
        d.result ? el("div", {}, el("b", { text: "Result" }), valueBox(d.result)) : null,
        el("div", { class: "bar" },
          el("button", { class: "plain", id: "btn-replay", onclick: replay, text: "Replay" }),
          el("a", { href: `/api/workflows/${encodeURIComponent(wf)}/export`, download: wf + ".jsonl" }, el("button", { class: "plain", text: "Export" })),
          el("button", { class: "danger", id: "btn-cancel", disabled: ended || !S.approver, title: S.approver ? null : "this console holds no approver key", onclick: cancel, text: "Cancel" })),
        out),
      d.waiting.length ? el("div", { class: "card", id: "wf-waiting" }, el("h2", { text: "Waiting for approval" }),
        d.waiting.map((w) => el("div", {}, el("div", { text: visible(`step ${w.step_id} (task ${w.task_id}) would call ${w.tool}, until ${when(w.deadline)}`) }), valueBox(w.inputs), decisionForm(wf, w, load)))) : null,
      el("h2", { text: "Plan" }), dag(d.dag),
      el("h2", { text: "Timeline" }), spans(d.spans, d.started_at, d.ended_at),
      el("h2", { text: "Tool calls" }),
      d.tool_calls.length ? table(["step", "tool", "ok", "ms", "input", "output"], d.tool_calls.map((c) => [c.step || "-", c.tool,
        c.ok ? "ok" : (c.error || "failed"), String(Math.round(c.ms)), valueBox(c.input, wf, c.event_id, c.effect, "input"), valueBox(c.output, wf, c.event_id, c.effect, "output")]), { id: "wf-tools" })
        : el("p", { class: "muted", text: "none" }),
      el("h2", { text: "Model consultations" }),
      d.consultations.length ? table(["kind", "scope", "outcome", "model", "prompt digest", "tokens in/out", "cost", "latency", "answer"], d.consultations.map((c) => [
        c.kind + (c.round > 1 ? ` (round ${c.round})` : ""), c.scope, c.outcome + (c.error ? " " + c.error : ""), [c.provider, c.model].filter(Boolean).join(" "),
        c.prompt_digest || "-", `${c.input_tokens}/${c.output_tokens}`, usd(c.cost_usd), c.latency_ms === null ? "-" : Math.round(c.latency_ms) + " ms",
        valueBox(c.answer, wf, c.event_id, c.effect, "answer")])) : el("p", { class: "muted", text: "none" }),
      el("h2", { text: "Cost per step" }),
      Object.keys(t.cost_by_scope).length ? table(["scope", "cost"], Object.entries(t.cost_by_scope).map(([k, v]) => [k, usd(v)])) : el("p", { class: "muted", text: "no model spend" }),
      el("h2", { text: "Plans and confidence" }),
      table(["revision", "source", "verdict", "confidence", "tasks (confidence)", "failed checks"], d.plans.map((p) => [String(p.revision), p.source, p.verdict, String(p.confidence),
        p.tasks.map((x) => `${x.id} (${x.confidence})`).join(", "), p.failed_checks.map((c) => `${c.name}: ${c.message}`).join("; ")])),
      el("h2", { text: "Validation verdicts" }),
      table(["at", "subject", "passed", "checks", "failed", "warnings"], d.verdicts.map((v) => [when(v.at), v.subject, v.passed ? "yes" : "no", String(v.checks),
        v.failed.map((c) => `${c.name}: ${c.message}`).join("; "), v.warnings.map((c) => `${c.name}: ${c.message}`).join("; ")])),
      el("h2", { text: "Approvals" }),
      table(["step", "tool", "reason", "decision", "by", "waited"], d.approvals.map((a) => [a.step_id, a.tool, a.reason, a.decision, a.by || "-", dur(a.waited_s)])),
      el("h2", { text: "Events" }),
      table(["#", "seq", "at", "actor", "type", "summary"], d.timeline.map((e) => [String(e.index), String(e.seq), when(e.at), e.actor,
        e.type + (e.trust ? " (" + e.trust.toUpperCase() + ")" : ""), e.summary]), { id: "wf-events" }));
  };
  load();
  const again = debounce(load, 250);
  return { onRows(d) { if (d.reload || d.rows.some((r) => r.workflow_id === wf)) again(); } };
}

// --- Approvals, Problems, Budget, Stats -----------------------------------------------------------
function approvalsView() {
  const load = async () => {
    const d = await api("/api/approvals");
    fill(main(), el("h1", { text: "Approvals" }),
      S.approver ? null : notice("This console holds no approver key: it shows what waits, and cannot decide. Run `cadre ui` with an approver's credentials to approve or deny."),
      d.waiting.length ? el("div", { id: "approvals" }, d.waiting.map((w) => el("div", { class: "card", "data-wf": w.workflow_id },
        el("div", {}, el("a", { href: "#/wf/" + encodeURIComponent(w.workflow_id), text: w.workflow_id }), " ", visible(w.request || "")),
        el("div", { text: visible(`step ${w.step_id} would call ${w.tool}: ${w.reason}; until ${when(w.deadline)}`) }),
        valueBox(w.inputs), decisionForm(w.workflow_id, w, load)))) : el("p", { class: "muted", text: "nothing waits for a decision" }));
  };
  load();
  const again = debounce(load, 400);
  return { onRows(d) { if (d.reload || d.rows.some((r) => r.state === "awaiting_approval" || r.state !== "requested")) again(); } };
}

function problemsView() {
  const load = async () => {
    const d = await api("/api/problems");
    const link = (wf) => el("a", { href: "#/wf/" + encodeURIComponent(wf), text: wf });
    fill(main(), el("h1", { text: "Problems" }),
      el("h2", { text: `Dead letters (${d.dead_letters.length})` }),
      table(["workflow", "seq", "actor", "input", "attempts", "error"], d.dead_letters.map((x) => [link(x.workflow_id), String(x.seq), x.actor, x.input_type, String(x.attempts), `${x.code}: ${x.message}`])),
      el("h2", { text: `Forged or unsigned events (${d.untrusted.length})` }),
      table(["workflow", "seq", "type", "status", "reason", "seen by"], d.untrusted.map((x) => [link(x.workflow_id), String(x.seq), x.type, x.status, x.reason, x.seen_by])),
      el("h2", { text: `Stuck: no event for more than ${dur(d.stuck_after_s)} (${d.stuck.length})` }),
      table(["workflow", "state", "idle"], d.stuck.map((x) => [link(x.workflow_id), x.state, dur(x.idle_s)])));
  };
  load();
  return { onRows: debounce(load, 1000) };
}

function budgetView() {
  (async () => {
    const d = await api("/api/budget");
    if (d.error) { fill(main(), el("h1", { text: "Budget" }), notice(`${d.error.code}: ${d.error.message}`, true)); return; }
    const r = d.report, t = r.today;
    const spend = (title, m, cap) => [el("h2", { text: title }), Object.keys(m).length
      ? table(["", "calls", "tokens in", "tokens out", "cost"].concat(cap ? ["cap"] : []), Object.entries(m).map(([k, v]) =>
        [k, String(v.calls), String(v.input_tokens), String(v.output_tokens), usd(v.cost_usd)].concat(cap ? [v.cap_usd === null ? "-" : usd(v.cap_usd)] : [])))
      : el("p", { class: "muted", text: "nothing paid" })];
    fill(main(), el("h1", { text: "Budget" }), el("p", { class: "muted", text: "from the ledger " + d.ledger }),
      el("div", { class: "grid", id: "budget-figures" }, [["spent", usd(r.spend_usd)], ["today", t ? usd(t.settled_usd) : "-"],
        ["today's cap", t && t.cap_usd !== null ? usd(t.cap_usd) : "none"], ["reserved now", t ? usd(t.reserved_usd) : "-"],
        ["cache hits", r.cache_hits], ["denials", Object.values(r.denials).reduce((a, b) => a + b, 0)], ["expired", r.expired], ["overruns", r.overruns]]
        .map(([k, v]) => el("div", { class: "fig" }, el("b", { text: String(v) }), el("span", { text: k })))),
      spend("By workflow", r.by_workflow, true), spend("By provider", r.by_provider), spend("By kind", r.by_kind),
      el("h2", { text: "Denials" }), Object.keys(r.denials).length ? table(["reason", "count"], Object.entries(r.denials).map(([k, v]) => [k, String(v)])) : el("p", { class: "muted", text: "none" }),
      el("h2", { text: "Open reservations" }), r.open_reservations.length ? table(["workflow", "kind", "provider", "model", "reserved", "expires"],
        r.open_reservations.map((o) => [o.workflow_id, o.kind, o.provider, o.model, usd(o.reserved_usd), when(o.expires_at)])) : el("p", { class: "muted", text: "none" }));
  })();
  return {};
}

function statsView() {
  const since = el("input", { type: "text", id: "stats-since", placeholder: "since: 24h, 7d, 2026-11-21 (empty: all)" });
  const out = el("div", {});
  const load = async () => {
    const d = await api("/api/stats?" + new URLSearchParams({ since: since.value }));
    if (d.error) { fill(out, notice(`${d.error.code}: ${d.error.message}`, true)); return; }
    const flat = [];
    const walk = (prefix, v) => {
      if (v && typeof v === "object" && !Array.isArray(v)) for (const [k, x] of Object.entries(v)) walk(prefix ? prefix + "." + k : k, x);
      else flat.push([prefix, Array.isArray(v) ? JSON.stringify(v) : v === null ? "-" : String(v)]);
    };
    walk("", d.stats);
    fill(out, table(["figure", "value"], flat, { id: "stats-table" }));
  };
  fill(main(), el("h1", { text: "Stats" }), el("div", { class: "bar" }, since, el("button", { onclick: load, text: "Show" })), out);
  load();
  return {};
}

// --- routing --------------------------------------------------------------------------------------
function route() {
  const h = location.hash || "#/";
  const m = h.match(/^#\/wf\/(.+)$/);
  const name = m ? "workflows" : (h.slice(2) || "workflows");
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("on", a.dataset.nav === name);
  S.view = m ? workflowView(decodeURIComponent(m[1]))
    : { approvals: approvalsView, problems: problemsView, budget: budgetView, stats: statsView }[name]?.() || workflowsView();
}

async function start() {
  const s = await api("/api/session");
  S.token = s.token; S.approver = s.approver;
  document.getElementById("who").textContent = (s.approver ? "approver" : "read-only (no approver key)") + " · " + s.stream;
  connect();
  window.addEventListener("hashchange", route);
  route();
}
start();
