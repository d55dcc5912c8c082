"""An evaluation set: requests with their expected answers, and how an answer is compared.

The form of ``tests/eval/requests.json`` (its ``about`` says each field): every request has
its own SQL on the sample shop, whose rows are the expected answer. Read by ``cadre eval``
(a set with expected answers: which planned runs would answer another question) and by
``bench/eval_planning.py`` (which runs them for real).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TOLERANCE = 0.01

Value = str | int | float | None


# --- the requests --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    id: str
    request: str
    sql: str
    answer_from: str = "sql.query"  # or "sql.schema"
    ordered: bool = False
    columns: tuple[str, ...] | None = None  # expected columns that must be found; None = all
    tolerance: float = DEFAULT_TOLERANCE
    zero_rows_optional: bool = False  # a row whose last compared value is 0 or NULL may be left out
    also: tuple[str, ...] = ()  # other readings of the request, each as SQL, also accepted
    tags: tuple[str, ...] = ()
    note: str = ""


_FIELDS = {
    "id",
    "request",
    "sql",
    "answer_from",
    "ordered",
    "columns",
    "tolerance",
    "zero_rows_optional",
    "also",
    "tags",
    "note",
}
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def load_requests(path: Path) -> list[Request]:
    """The requests of ``path``; ValueError naming the entry and field when one is malformed."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("requests"), list):
        raise ValueError(f"{path}: expected an object with a 'requests' list")
    out: list[Request] = []
    seen: set[str] = set()
    for i, e in enumerate(doc["requests"]):
        where = f"{path.name}: requests[{i}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: not an object")
        if unknown := set(e) - _FIELDS:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
        for name in ("id", "request", "sql"):
            if not isinstance(e.get(name), str) or not e[name].strip():
                raise ValueError(f"{where}: '{name}' must be a non-empty string")
        if not _ID.match(e["id"]) or e["id"] in seen:
            raise ValueError(f"{where}: id {e['id']!r} must be unique, lower case letters, digits and '-'")
        seen.add(e["id"])
        answer_from = e.get("answer_from", "sql.query")
        if answer_from not in ("sql.query", "sql.schema"):
            raise ValueError(f"{where}: answer_from must be 'sql.query' or 'sql.schema'")
        for flag in ("ordered", "zero_rows_optional"):
            if not isinstance(e.get(flag, False), bool):
                raise ValueError(f"{where}: {flag} must be true or false")
        also = e.get("also", [])
        if not isinstance(also, list) or not all(isinstance(a, str) and a.strip() for a in also):
            raise ValueError(f"{where}: also must be a list of SQL statements")
        columns = e.get("columns")
        if columns is not None and (
            not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns)
        ):
            raise ValueError(f"{where}: columns must be a non-empty list of column names")
        tol = e.get("tolerance", DEFAULT_TOLERANCE)
        if isinstance(tol, bool) or not isinstance(tol, int | float) or tol < 0:
            raise ValueError(f"{where}: tolerance must be a number >= 0")
        tags = e.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}: tags must be a list of strings")
        out.append(
            Request(
                id=e["id"],
                request=e["request"],
                sql=e["sql"],
                answer_from=answer_from,
                ordered=e.get("ordered", False),
                columns=tuple(columns) if columns is not None else None,
                tolerance=float(tol),
                zero_rows_optional=e.get("zero_rows_optional", False),
                also=tuple(also),
                tags=tuple(tags),
                note=str(e.get("note", "")),
            )
        )
    return out


# --- tables and how they compare -----------------------------------------------------------


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Value]]

    def shape(self) -> str:
        return f"{len(self.rows)} row(s) x [{', '.join(self.columns)}]"


def sample_database() -> sqlite3.Connection:
    """The sample shop in memory, from the SQL the runs' database is built from."""
    from cadre.actors.tools.sample import sample_sql

    conn = sqlite3.connect(":memory:")
    conn.executescript(sample_sql())
    return conn


def query_table(conn: sqlite3.Connection, sql: str) -> Table:
    cur = conn.execute(sql)
    columns = [d[0] for d in cur.description or ()]
    return Table(columns, [list(r) for r in cur.fetchall()])


def expected_table(conn: sqlite3.Connection, req: Request) -> Table:
    """The answer of the request's own SQL."""
    return query_table(conn, req.sql)


def expected_tables(conn: sqlite3.Connection, req: Request) -> list[Table]:
    """Every accepted answer: the request's SQL's, then each of ``also``'s."""
    return [query_table(conn, sql) for sql in (req.sql, *req.also)]


def served(req: Request, expected: Sequence[Table], answers: Sequence[Table]) -> bool:
    """Whether one of the workflow's answers is one of the accepted answers."""
    return any(
        matches(
            exp,
            a,
            ordered=req.ordered,
            columns=req.columns,
            tol=req.tolerance,
            zero_rows_optional=req.zero_rows_optional,
        )
        for exp in expected
        for a in answers
    )


_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_MONTH = re.compile(r"^\s*\d{4}-(\d{2})\s*$")


def _number(v: Value) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str) and _NUMBER.match(v):
        return float(v)
    return None


def same_value(a: Value, b: Value, tol: float) -> bool:
    """Numbers (also numbers written as text: '03' is 3) within ``tol``; a month written YYYY-MM
    equals its number; text ignoring case and surrounding blanks; NULL only equals NULL."""
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return math.isclose(na, nb, rel_tol=0.0, abs_tol=tol + 1e-9)
    for x, n in ((a, nb), (b, na)):
        if isinstance(x, str) and n is not None and (m := _MONTH.match(x)):
            return n == int(m.group(1))
    if a is None or b is None:
        return a is None and b is None
    return str(a).strip().casefold() == str(b).strip().casefold()


def _is_zero(v: Value) -> bool:
    return v is None or _number(v) == 0.0


Row = tuple[Value, ...]


def _same_row(x: Row, y: Row, tol: float) -> bool:
    return all(same_value(a, b, tol) for a, b in zip(x, y, strict=True))


def _same_bag(exp: Sequence[Row], act: Sequence[Row], tol: float) -> bool:
    if len(exp) != len(act):
        return False
    left = list(act)
    for x in exp:
        hit = next((k for k, y in enumerate(left) if _same_row(x, y, tol)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _same_rows(exp: Sequence[Row], act: Sequence[Row], *, ordered: bool, tol: float) -> bool:
    """The same rows; ``ordered``: in the same order, except that rows tied on their last value
    (a ranking's measure) may come in any order among themselves."""
    if len(exp) != len(act):
        return False
    if not ordered:
        return _same_bag(exp, act, tol)
    start = 0
    for i in range(1, len(exp) + 1):
        if i == len(exp) or not same_value(exp[i][-1], exp[start][-1], tol):
            if not _same_bag(exp[start:i], act[start:i], tol):
                return False
            start = i
    return True


def matches(
    expected: Table,
    actual: Table,
    *,
    ordered: bool,
    columns: Sequence[str] | None,
    tol: float,
    zero_rows_optional: bool = False,
) -> bool:
    """Whether ``actual`` holds exactly ``expected``'s rows: the same rows, with the expected
    columns that matter found among the actual ones (each its own column, by values; names and
    extra columns are ignored). ``zero_rows_optional``: a row whose last compared value is 0 or
    NULL may be present or absent on either side (a month without sales)."""
    if any(len(r) != len(actual.columns) for r in actual.rows):
        return False
    if not zero_rows_optional and len(actual.rows) != len(expected.rows):
        return False
    wanted = list(range(len(expected.columns))) if columns is None else [expected.columns.index(c) for c in columns]
    exp_rows = [tuple(r[e] for e in wanted) for r in expected.rows]
    if zero_rows_optional:
        exp_rows = [r for r in exp_rows if not _is_zero(r[-1])]

    def holds(e: int, a: int) -> bool:
        return _same_bag([(r[e],) for r in expected.rows], [(r[a],) for r in actual.rows], tol)

    # Candidates of each expected column: the actual columns holding the same values (any column
    # when rows may be left out).
    every = range(len(actual.columns))
    cands = [list(every) if zero_rows_optional else [a for a in every if holds(e, a)] for e in wanted]

    def assignments(k: int, used: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        if k == len(cands):
            yield used
            return
        for a in cands[k]:
            if a not in used:
                yield from assignments(k + 1, (*used, a))

    for mapping in assignments(0, ()):
        act_rows = [tuple(r[a] for a in mapping) for r in actual.rows]
        if zero_rows_optional:
            act_rows = [r for r in act_rows if not _is_zero(r[-1])]
        if _same_rows(exp_rows, act_rows, ordered=ordered, tol=tol):
            return True
    return False


def answers_of(events: Sequence[dict[str, Any]], answer_from: str) -> list[Table]:
    """What a workflow answered: each ``sql.query`` step's output, or each ``sql.schema`` step's
    schema seen three ways (the table names; every table's columns; each table's columns)."""
    out: list[Table] = []
    for e in events:
        if e.get("type") != "step_completed":
            continue
        data = e.get("data") or {}
        output = data.get("output") or {}
        if data.get("tool") != answer_from:
            continue
        if answer_from == "sql.query":
            out.append(Table(list(output.get("columns", [])), [list(r) for r in output.get("rows", [])]))
        else:
            tables = output.get("tables", [])
            out.append(Table(["table"], [[t["name"]] for t in tables]))
            out.append(
                Table(
                    ["table", "column", "type"],
                    [[t["name"], c["name"], c["type"]] for t in tables for c in t["columns"]],
                )
            )
            out.extend(Table(["column", "type"], [[c["name"], c["type"]] for c in t["columns"]]) for t in tables)
    return out
