"""Generate the red-team corpus: bad and good explicit plans over the built-in tools.

Each line of ``corpus.jsonl`` is ``{"id", "category", "expect": "bad"|"good", "why", "plan"}``.
A bad plan must be rejected before any tool of its workflow runs; a good plan must complete.
Most bad plans come twice: alone, and as the *last* task of a three-task plan whose earlier
tasks (a query, a render) are harmless, so that "rejected before anything ran" is measured
where it matters. URLs are written against ``{HTTP}``, which the runner replaces with the
prefix it allows (a local server of its own), e.g. ``http://127.0.0.1:8765/api/``.

    .venv/bin/python -m tests.redteam.make_corpus      # rewrites tests/redteam/corpus.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.jsonl"
HTTP = "{HTTP}"  # the allowed prefix, ends with "/"
HTTP_ORIGIN = "{ORIGIN}"  # scheme://host:port of the allowed prefix, no path

Plan = dict[str, Any]

TOP = {"id": "top", "tool": "sql.query", "inputs": {"sql": "SELECT id, name FROM customers ORDER BY id LIMIT 3"}}
REPORT = {
    "id": "report",
    "tool": "text.render",
    "depends_on": ["top"],
    "inputs": {"template": "# Customers\n\n{top!t}\n", "values": {"top": "${top}"}},
}


def alone(task: dict[str, Any]) -> Plan:
    return {"nodes": [{"id": "bad", **task}]}


def last(task: dict[str, Any]) -> Plan:
    """``task`` as the last of three tasks: a harmless query and render run first if nothing stops them."""
    return {"nodes": [TOP, REPORT, {"id": "bad", "depends_on": ["report"], **task}]}


def both(task: dict[str, Any]) -> Iterator[Plan]:
    yield alone(task)
    yield last(task)


# -- bad -------------------------------------------------------------------------------------

BAD_PATHS = [
    "../x.txt",
    "../../etc/passwd",
    "/etc/passwd",
    "/tmp/cadre-redteam.txt",
    "a/../../x.txt",
    "reports/../../../etc/hosts",
    "./../x.txt",
    "x\u0000.txt",
    ".cadre-idempotency/m.json",
    "a/../.cadre-idempotency/m.json",
    "",
    ".",
    "..",
    "/",
    "reports/./../../x.txt",
    "C:\\Windows\\win.ini",
]

BAD_SQL = [
    "INSERT INTO orders (customer_id, ordered_on, status, total) VALUES (1, '2025-01-01', 'completed', 1)",
    "UPDATE orders SET total = 0",
    "DELETE FROM orders",
    "DROP TABLE orders",
    "CREATE TABLE notes (body TEXT)",
    "CREATE TEMP TABLE notes (body TEXT)",
    "ALTER TABLE orders ADD COLUMN note TEXT",
    "REPLACE INTO customers (id, name, email, country, joined_on) VALUES (1, 'x', 'x@x', 'DE', '2020-01-01')",
    "WITH old AS (SELECT id FROM orders) DELETE FROM orders WHERE id IN old",
    "ATTACH DATABASE ':memory:' AS other",
    "ATTACH DATABASE '/tmp/cadre-redteam.db' AS other",
    "DETACH DATABASE other",
    "PRAGMA writable_schema = ON",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT load_extension('evil') FROM customers",
    "SELECT writefile('/tmp/x', name) FROM customers",
    "VACUUM",
    "VACUUM INTO '/tmp/cadre-redteam-copy.db'",
    "BEGIN IMMEDIATE",
    "REINDEX",
    "ANALYZE",
    "SELECT 1; DROP TABLE orders",
    "CREATE TRIGGER t AFTER INSERT ON orders BEGIN DELETE FROM customers; END",
    "CREATE VIEW v AS SELECT * FROM orders",
    "SAVEPOINT s1",
]

BAD_URLS = [
    "http://evil.example.com/",
    "https://evil.example.com/api/",
    HTTP_ORIGIN + "/admin",
    HTTP_ORIGIN + "/apix",
    HTTP + "..%2fadmin",
    HTTP + "..%2F..%2Fadmin",
    HTTP + "a%2fb",
    HTTP + "%2e%2e/admin",
    HTTP + ".%2e/admin",
    HTTP + "..;/admin",
    HTTP + "a%252fb",
    HTTP + "a%5c..%5cadmin",
    HTTP + "../admin",
    "http://user:pass@127.0.0.1/api/",
    "ftp://127.0.0.1/api/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/",
    "javascript:alert(1)",
    "http://127.0.0.1.evil.example.com/api/",
    "http://[::1]/api/",
    "http://127.0.0.1:99999/api/",
    "http://127.0.0.1%2f@evil.example.com/",
    HTTP + "x y",
]

BAD_HEADERS = ["Host", "host", "HOST", " Host"]

BAD_TEMPLATES = [
    "{x.__class__}",
    "{x.__class__.__mro__}",
    "{x.__init__.__globals__}",
    "{x[__class__]}",
    "{0}",
    "{}",
    "{x!z}",
    "{x:>99999999}",
    "{x:{x}}",
    "{nope}",
    "{x",
    "}",
    "{x!r:{x}}",
    "{__import__}",
]

# (inputs of a tool, why) whose types the published schema refuses as written
BAD_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("sql.query", {"sql": "SELECT 1", "max_rows": "10"}, "max_rows as a string"),
    ("sql.query", {"sql": "SELECT 1", "max_rows": True}, "max_rows as a boolean"),
    ("sql.query", {"sql": "SELECT 1", "max_rows": 10.5}, "max_rows as a float"),
    ("sql.query", {"sql": "SELECT ?", "params": [True]}, "a boolean parameter"),
    ("sql.query", {"sql": "SELECT ?", "params": [[1]]}, "a list parameter"),
    ("sql.query", {"sql": "SELECT ?", "params": {"a": 1}}, "params as an object"),
    ("sql.query", {"sql": "SELECT 1", "max_rows": 0}, "max_rows below 1"),
    ("sql.query", {"sql": "SELECT 1", "max_rows": 100000}, "max_rows above the limit"),
    ("sql.query", {"sql": 5}, "sql as a number"),
    ("fs.read", {"path": "a.md", "max_bytes": "100"}, "max_bytes as a string"),
    ("fs.write", {"path": "a.md", "content": 5}, "content as a number"),
    ("fs.write", {"path": "a.md", "content": "x", "mode": "OVERWRITE"}, "an unknown mode"),
    ("fs.write", {"path": 7, "content": "x"}, "path as a number"),
    ("http.get", {"url": HTTP + "x", "headers": {"Accept": 1}}, "a header value as a number"),
    ("text.render", {"template": "{x}", "values": "x"}, "values as a string"),
    ("fs.write", {"path": "a.md", "content": "x", "qeury": 1}, "an unknown field"),
]

UNCLOSED = [
    "${top.rows",
    "${top",
    "${ top.rows }",
    "${top.rows}}",
    "${top..rows}",
    "${}",
    "${top.rows.0",
    "  ${top.rows",
]

WRONG_PATHS = [
    "${top.rows.first}",
    "${top.nope}",
    "${top.columns.name}",
    "${top.row_count.value}",
    "${top.truncated.yes}",
    "${top.rows.0.name}",
    "${report.text.body}",
    "${report.html}",
]


def bad_plans() -> Iterator[tuple[str, str, Plan]]:
    for path in BAD_PATHS:
        for tool, extra in (("fs.read", {}), ("fs.write", {"content": "pwned"})):
            for p in both({"tool": tool, "inputs": {"path": path, **extra}}):
                yield "path_traversal", f"{tool} path {path!r}", p
    for sql in BAD_SQL:
        for p in both({"tool": "sql.query", "inputs": {"sql": sql}}):
            yield "sql_write", f"sql {sql!r}", p
    for url in BAD_URLS:
        for p in both({"tool": "http.get", "inputs": {"url": url}}):
            yield "url", f"url {url!r}", p
    for name in BAD_HEADERS:
        inputs = {"url": HTTP + "data.json", "headers": {name: "evil.example.com"}}
        for p in both({"tool": "http.get", "inputs": inputs}):
            yield "url", f"header {name!r}", p
    for template in BAD_TEMPLATES:
        for p in both({"tool": "text.render", "inputs": {"template": template, "values": {"x": "v"}}}):
            yield "template", f"template {template!r}", p
    for tool, inputs, why in BAD_TYPES:
        for p in both({"tool": tool, "inputs": inputs}):
            yield "type_coercion", why, p
    for text in UNCLOSED:
        task = {"tool": "text.render", "inputs": {"template": "{rows}", "values": {"rows": text}}}
        yield "unclosed_reference", f"value {text!r}", last(task)
        task = {"tool": "fs.write", "inputs": {"path": "out.md", "content": text}}
        yield "unclosed_reference", f"content {text!r}", last(task)
    for ref in WRONG_PATHS:
        task = {"tool": "text.render", "inputs": {"template": "{v}", "values": {"v": ref}}}
        yield "reference_path", f"reference {ref}", last(task)
        task = {"tool": "fs.write", "inputs": {"path": "out.md", "content": ref}}
        yield "reference_path", f"content {ref}", last(task)


# -- good ------------------------------------------------------------------------------------

GOOD_PATHS = [
    "reports/a.md",
    "./reports/b.md",
    "a/../c.md",
    "deep/er/still/d.md",
    "name with spaces.md",
    "..hidden-but-inside.md",
    "reports/./e.md",
    "x..y.md",
]

GOOD_SQL = [
    "SELECT id, name FROM customers ORDER BY id LIMIT 5",
    "SELECT COUNT(*) AS n FROM orders",
    "select customer_id, sum(total) from orders group by 1 order by 2 desc limit 3",
    "WITH spend AS (SELECT customer_id, SUM(total) AS s FROM orders GROUP BY customer_id) "
    "SELECT c.name, spend.s FROM spend JOIN customers c ON c.id = spend.customer_id ORDER BY spend.s DESC LIMIT 3",
    "SELECT strftime('%Y', ordered_on) AS y, COUNT(*) FROM orders GROUP BY y",
    "SELECT p.category, SUM(i.quantity * i.unit_price) FROM order_items i JOIN products p ON p.id = i.product_id "
    "GROUP BY p.category",
    "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE total > 100) LIMIT 3",
    "SELECT id FROM customers UNION SELECT id FROM products LIMIT 5",
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) SELECT x FROM n",
    "SELECT name, email FROM customers WHERE country = 'DE' ORDER BY name LIMIT 2",
    "SELECT 'DROP TABLE orders' AS text_only",
    "SELECT id FROM orders WHERE status = 'completed' AND ordered_on BETWEEN '2024-01-01' AND '2024-12-31' LIMIT 3",
    "/* comment */ SELECT 1 AS one",
    "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.country = 'FR'",
    "VALUES (1, 'a'), (2, 'b')",
    "SELECT max(price), min(price), avg(price) FROM products",
    "SELECT c.name, total FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.total > 100 LIMIT 3",
    "SELECT name, quantity FROM products JOIN order_items ON order_items.product_id = products.id LIMIT 3",
]

GOOD_PARAM_QUERIES: list[dict[str, Any]] = [
    {"sql": "SELECT name FROM customers WHERE id = ?", "params": [1]},
    {"sql": "SELECT name FROM customers WHERE country = ? LIMIT ?", "params": ["DE", 2]},
    {"sql": "SELECT ? AS a, ? AS b", "params": [1.5, None]},
    {"sql": "SELECT id FROM orders LIMIT 5", "max_rows": 2},
]

GOOD_URLS = [
    HTTP + "data.json",
    HTTP + "data.json?q=a%2Fb",
    HTTP + "./data.json",
    HTTP + "sub/../data.json",
    HTTP + "data.json#frag",
]

GOOD_TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    ("Hello {name}!", {"name": "world"}),
    ("{t!t}", {"t": {"columns": ["a"], "rows": [[1]]}}),
    ("{t!j}", {"t": {"a": [1, 2]}}),
    ("{o.a} {o[b]}", {"o": {"a": 1, "b": 2}}),
    ("{rows[0]}", {"rows": [5, 6]}),
    ("{{literal}} {x}", {"x": 1}),
    ("Price: ${price}", {"price": 3}),
    ("{x:>10}", {"x": "right"}),
    ("{n:.2f}", {"n": 3.14159}),
    ("no placeholders at all", {}),
]


def good_plans() -> Iterator[tuple[str, str, Plan]]:
    for i, path in enumerate(GOOD_PATHS):
        yield "path", f"fs.write {path!r}", alone({"tool": "fs.write", "inputs": {"path": path, "content": f"c{i}"}})
        yield (
            "path",
            f"write then read {path!r}",
            {
                "nodes": [
                    {"id": "w", "tool": "fs.write", "inputs": {"path": path, "content": "hello"}},
                    {"id": "r", "tool": "fs.read", "depends_on": ["w"], "inputs": {"path": path}},
                ]
            },
        )
    for sql in GOOD_SQL:
        yield "sql", f"sql {sql[:40]!r}", alone({"tool": "sql.query", "inputs": {"sql": sql}})
        yield "sql", f"sql {sql[:40]!r}, rendered", last({"tool": "sql.query", "inputs": {"sql": sql}})
    for inputs in GOOD_PARAM_QUERIES:
        yield "sql", f"params {inputs}", alone({"tool": "sql.query", "inputs": inputs})
    for url in GOOD_URLS:
        yield "url", f"url {url!r}", alone({"tool": "http.get", "inputs": {"url": url}})
        yield "url", f"url {url!r}, after others", last({"tool": "http.get", "inputs": {"url": url}})
    yield (
        "url",
        "an Accept header",
        alone({"tool": "http.get", "inputs": {"url": HTTP + "data.json", "headers": {"Accept": "application/json"}}}),
    )
    for template, values in GOOD_TEMPLATES:
        yield (
            "template",
            f"template {template!r}",
            alone({"tool": "text.render", "inputs": {"template": template, "values": values}}),
        )
    for ref in ("${top.rows}", "${top.rows.0}", "${top.rows.0.1}", "${top.row_count}", "${top}", "${top.columns.0}"):
        task = {"tool": "text.render", "inputs": {"template": "{v!j}", "values": {"v": ref}}}
        yield "reference", f"reference {ref}", last(task)
    save = {"tool": "fs.write", "inputs": {"path": "r.md", "content": "${report.text}"}}
    yield "reference", "content from a render", last(save)
    for n in (1, 10, "max"):
        rows = 10_000 if n == "max" else n
        yield "type", f"max_rows {rows}", alone({"tool": "sql.query", "inputs": {"sql": "SELECT 1", "max_rows": rows}})
    yield "type", "float param", alone({"tool": "sql.query", "inputs": {"sql": "SELECT ?", "params": [2.5]}})
    append = {"tool": "fs.write", "inputs": {"path": "log.txt", "content": "x", "mode": "append"}}
    yield "type", "append mode", alone(append)


def corpus() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for expect, plans in (("bad", bad_plans()), ("good", good_plans())):
        for k, (category, why, plan) in enumerate(plans):
            out.append({"id": f"{expect}-{k:03d}", "category": category, "expect": expect, "why": why, "plan": plan})
    return out


def main() -> None:
    rows = corpus()
    CORPUS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    bad = sum(r["expect"] == "bad" for r in rows)
    print(f"wrote {len(rows)} plans ({bad} bad, {len(rows) - bad} good) to {CORPUS}")


if __name__ == "__main__":
    main()
