"""The audit page's pictures: the plan's DAG (laid out in the page by dagre, vendored in
``cadre/static/vendor/``) and the tasks' timing (bars drawn with CSS alone).

The graph travels in the page as JSON (``<script type="application/json" id="cadre-dag">``, with
``<``, ``>`` and ``&`` written as ``\\u003c``…, so no value can close the element), and a short
script lays it out with dagre and draws it as SVG, every label set as text (``textContent``), never
as markup. Without scripts, the table of the plan's tasks above says the same. Past
``MAX_DAG_NODES`` tasks the picture is left out (a note says so), so a huge plan cannot make the page
huge or slow.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from cadre.audit_details import TaskRun
from cadre.safe_text import visible

MAX_DAG_NODES = 400
MAX_TIMING_ROWS = 400

_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("cadre-dag").textContent);
  var host = document.getElementById("cadre-dag-picture");
  var NS = "http://www.w3.org/2000/svg";
  var g = new dagre.graphlib.Graph();
  g.setGraph({rankdir: "LR", nodesep: 18, ranksep: 56, marginx: 8, marginy: 8});
  g.setDefaultEdgeLabel(function () { return {}; });
  function detail(n) { return (n.tool || "(no tool)") + " \u00b7 " + n.state + " \u00b7 " + n.confidence.toFixed(2); }
  data.nodes.forEach(function (n) {
    var w = Math.max(n.id.length * 7.4, detail(n).length * 6.8) + 24;
    g.setNode(n.id, {width: Math.min(w, 360), height: 46});
  });
  data.edges.forEach(function (e) { g.setEdge(e[0], e[1]); });
  dagre.layout(g);
  var size = g.graph();
  var svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", size.width); svg.setAttribute("height", size.height);
  svg.setAttribute("viewBox", "0 0 " + size.width + " " + size.height);
  svg.setAttribute("data-layout", "dagre");
  svg.setAttribute("role", "img");
  function el(name, attrs, parent) {
    var x = document.createElementNS(NS, name);
    for (var k in attrs) { x.setAttribute(k, attrs[k]); }
    parent.appendChild(x); return x;
  }
  var defs = el("defs", {}, svg);
  var m = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7",
                        markerHeight: "7", orient: "auto-start-reverse"}, defs);
  el("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "#8c959f"}, m);
  g.edges().forEach(function (e) {
    var pts = g.edge(e).points.map(function (p) { return p.x + "," + p.y; }).join(" ");
    el("polyline", {points: pts, fill: "none", stroke: "#8c959f", "stroke-width": "1.4",
                    "marker-end": "url(#arrow)", "data-edge": e.v + "->" + e.w}, svg);
  });
  data.nodes.forEach(function (n) {
    var p = g.node(n.id);
    var box = el("g", {"class": "node " + n.state, "data-task": n.id, "data-state": n.state,
                       "data-x": Math.round(p.x), "data-y": Math.round(p.y),
                       transform: "translate(" + (p.x - p.width / 2) + "," + (p.y - p.height / 2) + ")"}, svg);
    el("rect", {width: p.width, height: p.height, rx: "6"}, box);
    var t1 = el("text", {x: "10", y: "19", "class": "id"}, box); t1.textContent = n.id;
    var t2 = el("text", {x: "10", y: "36", "class": "tool"}, box);
    t2.textContent = detail(n);
    var tip = el("title", {}, box); tip.textContent = n.description;
  });
  host.appendChild(svg);
})();
"""

CSS = """
#cadre-dag-picture svg { max-width: 100%; height: auto; }
#cadre-dag-picture .node rect { fill: #f6f8fa; stroke: #8c959f; }
#cadre-dag-picture .node.completed rect { fill: #dafbe1; stroke: #1a7f37; }
#cadre-dag-picture .node.failed rect { fill: #ffebe9; stroke: #cf222e; }
#cadre-dag-picture .node.running rect, #cadre-dag-picture .node.ready rect { fill: #fff8c5; stroke: #9a6700; }
#cadre-dag-picture text { font: 12px ui-monospace, Menlo, Consolas, monospace; fill: #1d2329; }
#cadre-dag-picture text.tool { fill: #5b6670; font-size: 11px; }
.bars td.bar { width: 55%; }
.bar div { position: relative; height: 14px; background: #f0f2f4; border-radius: 3px; }
.bar span { position: absolute; top: 0; height: 14px; border-radius: 3px; background: #8c959f; min-width: 2px; }
.bar span.completed { background: #1a7f37; } .bar span.failed { background: #cf222e; }
.bar span.running, .bar span.ready { background: #d4a72c; }
"""


_RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@cache
def dagre_source() -> str:
    """The vendored dagre, as shipped (``cadre/static/vendor/dagre.min.js``), without its source-map
    comment (the page fetches nothing), its raw control characters (``"\\x01"`` in a string literal,
    the only place minified code holds them) written as escapes: the page holds none raw."""
    text = resources.files("cadre").joinpath("static/vendor/dagre.min.js").read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("//# sourceMappingURL="))
    return _RAW_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def graph_data(tasks: Sequence[TaskRun], descriptions: dict[str, str]) -> dict[str, Any]:
    """The DAG as the page's script reads it: nodes (id, tool, state, confidence, description) and edges."""
    ids = {t.id for t in tasks}
    return {
        "nodes": [
            {
                "id": t.id,
                "tool": t.tool,
                "state": t.state,
                "confidence": t.confidence,
                "description": descriptions.get(t.id, "")[:300],
            }
            for t in tasks
        ],
        "edges": [[d, t.id] for t in tasks for d in t.depends_on if d in ids],
    }


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element (no ``<``, ``>`` or ``&``)."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def dag_section(tasks: Sequence[TaskRun], descriptions: dict[str, str]) -> list[str]:
    """The DAG picture's section (data, dagre and the drawing script)."""
    out = ["<h2>The plan as a graph</h2>"]
    if not tasks:
        return [*out, '<p class="muted">No plan.</p>']
    if len(tasks) > MAX_DAG_NODES:
        return [*out, f'<p class="muted">{len(tasks)} tasks: above {MAX_DAG_NODES}, no picture (see the table).</p>']
    return [
        *out,
        '<p class="muted">The last plan revision, each task coloured by its state (grey: never ran).</p>',
        '<div id="cadre-dag-picture"><noscript>The picture needs scripts; the plan\'s table says the same.'
        "</noscript></div>",
        f'<script type="application/json" id="cadre-dag">{script_json(graph_data(tasks, descriptions))}</script>',
        f"<script>{dagre_source()}</script>",
        f"<script>{_SCRIPT}</script>",
    ]


def timing_section(tasks: Sequence[TaskRun], start: datetime | None, end: datetime | None) -> list[str]:
    """Each task's time from ready to its end, as bars over the workflow's span."""
    out = ["<h2>Task timing</h2>"]
    timed = [t for t in tasks if t.started is not None]
    if not timed or start is None:
        return [*out, '<p class="muted">No task ran.</p>']
    last = max([end or start, *(t.ended or t.started or start for t in timed)])
    span = max((last - start).total_seconds(), 1e-6)
    rows = []
    for t in timed[:MAX_TIMING_ROWS]:
        assert t.started is not None
        begin = (t.started - start).total_seconds()
        took = ((t.ended or last) - t.started).total_seconds()
        left, width = 100 * begin / span, max(100 * took / span, 0.3)
        state = html.escape(t.state)
        rows.append(
            f"<tr><td><code>{_e(t.id)}</code></td><td>{state}</td>"
            f'<td class="num">+{begin * 1000:.1f} ms</td><td class="num">{took * 1000:.1f} ms</td>'
            f'<td class="bar"><div><span class="{state}" style="left:{left:.2f}%;width:{min(width, 100 - left):.2f}%">'
            "</span></div></td></tr>"
        )
    more = len(timed) - MAX_TIMING_ROWS
    note = f'<p class="muted">{more} more task(s) not drawn.</p>' if more > 0 else ""
    head = "<tr><th>task</th><th>state</th><th>ready at</th><th>took</th><th>over the workflow's time</th></tr>"
    return [*out, f'<table class="bars"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>{note}']


def _e(value: str) -> str:
    return html.escape(visible(value, newlines=True), quote=True)
