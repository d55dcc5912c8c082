"""Does planning without a model answer the question asked? The evaluation of issue 11, item 1.

Runs every request of ``tests/eval/requests.json`` through ``cadre run --json`` with no model
(``CADRE_LLM_PROVIDER=none``), each in a fresh data dir, so the plan library holds only
``examples/plans`` (nothing learned from an earlier request), and sorts each run into one of:

- **correct**: the workflow completed and its answer is the expected one;
- **failed**: the workflow failed (``no_plan`` or another stated reason), or the request was
  refused with a structured error: an honest "I cannot";
- **WRONG**: the workflow completed, reported as success, but its answer is not the expected one;
- **error**: the evaluation could not tell (``cadre run`` crashed or did not end in time).

The answer of a completed workflow is read from its events (``cadre events WF --json``): the
output of its ``sql.query`` steps (columns and rows), or for a request about the schema, what its
``sql.schema`` steps returned. The run is correct when one of those holds exactly the rows of the
request's own SQL run on the sample shop (or of another reading the request lists under
``also``): the same rows, the expected columns found among the answer's columns by their values
(names are ignored, extra columns are allowed), numbers within a tolerance (a month written
YYYY-MM equals its number), in order when the request says so (rows tied on the ranking's
measure in any order), rows with nothing to count optional when the request says so.

    .venv/bin/python bench/eval_planning.py [--only ID ...] [--jobs N] [--json]

Prints one line per request and the totals; with ``--json`` the lines go to stderr and one JSON
object to stdout. Exit status: 1 when any answer is WRONG, 2 when any run could not be
evaluated, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = ROOT / "tests" / "eval" / "requests.json"
EXAMPLES = ROOT / "examples" / "plans"
DEFAULT_TOLERANCE = 0.01
RUN_LIMIT_S = 60.0
APPROVAL_TIMEOUT_S = 10.0  # nobody approves here: an approval asked for is denied after this
VERDICTS = ("correct", "failed", "wrong", "error")

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


def load_requests(path: Path = REQUESTS) -> list[Request]:
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


# --- running one request -------------------------------------------------------------------


@dataclass
class Result:
    id: str
    request: str
    verdict: str
    status: str = ""
    workflow_id: str = ""
    plan: str = ""  # where the plan came from: "library:top-customers (0.67)", ...
    reason: str = ""
    seconds: float = 0.0
    tags: list[str] = field(default_factory=list)
    # For a WRONG answer: the expected rows and what the workflow answered (its last answers).
    expected: dict[str, Any] | None = None
    answers: list[dict[str, Any]] | None = None


def _cadre() -> list[str]:
    exe = Path(sys.executable).with_name("cadre")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("cadre")
    if found is None:
        raise SystemExit("cadre is not installed in this environment (make lint creates .venv)")
    return [found]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")}
    env.update(
        CADRE_DATA_DIR=str(data_dir),
        CADRE_LLM_PROVIDER="none",
        CADRE_PLAN_LIBRARY=str(EXAMPLES),
        CADRE_APPROVAL_TIMEOUT_S=str(APPROVAL_TIMEOUT_S),
    )
    return env


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _plan_of(events: Sequence[dict[str, Any]]) -> str:
    plans = [e.get("data") or {} for e in events if e.get("type") == "plan_proposed"]
    if not plans:
        return ""
    p = plans[-1]
    source = str(p.get("source", ""))
    if p.get("library_match"):
        score = p.get("score")
        return f"{source}:{p['library_match']}" + (f" ({score:.2f})" if isinstance(score, int | float) else "")
    return source


def _short(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _shown(t: Table, limit: int = 30) -> dict[str, Any]:
    return {"columns": t.columns, "rows": t.rows[:limit], "row_count": len(t.rows)}


def run_one(req: Request, expected: Sequence[Table], limit_s: float = RUN_LIMIT_S) -> Result:
    res = Result(id=req.id, request=req.request, verdict="error", tags=list(req.tags))
    start = time.perf_counter()
    data_dir = Path(tempfile.mkdtemp(prefix="cadre-eval-"))
    try:
        env, cadre = _env(data_dir), _cadre()
        try:
            run = subprocess.run(
                [*cadre, "run", "--json", req.request],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=limit_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            res.reason = f"cadre run did not end within {limit_s:.0f} s"
            return res
        summary = _last_json(run.stdout)
        if summary is None:
            res.reason = f"cadre run exited {run.returncode} without a result: {_short(run.stderr or run.stdout, 500)}"
            return res
        if "error" in summary:
            err = summary["error"] if isinstance(summary["error"], dict) else {}
            res.verdict, res.status = "failed", "refused"
            res.reason = f"{err.get('code', 'error')}: {_short(str(err.get('message', '')), 2000)}"
            return res
        res.status, res.workflow_id = str(summary.get("status", "")), str(summary.get("workflow_id", ""))
        events_run = subprocess.run(
            [*cadre, "events", "--json", res.workflow_id],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=limit_s,
            check=False,
        )
        events = [json.loads(line) for line in events_run.stdout.splitlines() if line.startswith("{")]
        res.plan = _plan_of(events)
        if res.status == "failed":
            failure = summary.get("failure") or {}
            res.verdict = "failed"
            res.reason = f"{failure.get('reason', '?')}: {_short(str(failure.get('message', '')), 2000)}"
            return res
        if res.status != "completed":
            res.reason = f"the workflow ended as {res.status!r}"
            return res
        if not events:
            res.reason = f"cadre events gave nothing: {_short(events_run.stderr, 500)}"
            return res
        answers = answers_of(events, req.answer_from)
        if served(req, expected, answers):
            res.verdict = "correct"
            return res
        res.verdict = "wrong"
        res.expected = _shown(expected[0])
        res.answers = [_shown(a) for a in answers[-3:]]
        got = answers[-1].shape() if answers else f"no {req.answer_from} step"
        res.reason = f"expected {expected[0].shape()}; got {got}" + (
            f" (and {len(answers) - 1} other answer(s))" if len(answers) > 1 else ""
        )
        return res
    finally:
        res.seconds = round(time.perf_counter() - start, 2)
        shutil.rmtree(data_dir, ignore_errors=True)


# --- the whole evaluation ------------------------------------------------------------------


def _line(r: Result) -> str:
    label = {"correct": "correct", "failed": "failed", "wrong": "WRONG", "error": "ERROR"}[r.verdict]
    plan = f" [{r.plan}]" if r.plan else ""
    reason = f" {_short(r.reason, 160)}" if r.reason else ""
    return f"{label:8} {r.id:26} {r.request!r}{plan}{reason}"


def totals(results: Sequence[Result]) -> dict[str, Any]:
    n = len(results)
    out: dict[str, Any] = {"requests": n}
    for v in VERDICTS:
        k = sum(r.verdict == v for r in results)
        out[v] = k
        out[f"{v}_pct"] = round(100 * k / n, 1) if n else 0.0
    issue = [r for r in results if "issue-11-wrong" in r.tags]
    out["issue_11_cases"] = len(issue)
    out["issue_11_cases_wrong"] = sum(r.verdict == "wrong" for r in issue)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--only", action="append", metavar="ID", help="run only this request (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="runs at the same time (default 2)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout; the lines on stderr")
    p.add_argument("--requests", type=Path, default=REQUESTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    reqs = load_requests(args.requests)
    if args.only:
        unknown = set(args.only) - {r.id for r in reqs}
        if unknown:
            p.error(f"no request with id {', '.join(sorted(unknown))}")
        reqs = [r for r in reqs if r.id in args.only]
    with closing(sample_database()) as conn:
        expected = {r.id: expected_tables(conn, r) for r in reqs}
    say = sys.stderr if args.json else sys.stdout
    start = time.perf_counter()
    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for res in pool.map(lambda r: run_one(r, expected[r.id]), reqs):
            results.append(res)
            print(_line(res), file=say, flush=True)
    t = totals(results)
    elapsed = round(time.perf_counter() - start, 1)
    print(
        f"\n{t['requests']} requests in {elapsed} s: served correctly {t['correct']} ({t['correct_pct']} %), "
        f"failed honestly {t['failed']} ({t['failed_pct']} %), "
        f"WRONG answer reported as success {t['wrong']} ({t['wrong_pct']} %)"
        + (f", not evaluated {t['error']}" if t["error"] else "")
        + (
            f"; issue 11's wrong cases still WRONG: {t['issue_11_cases_wrong']} of {t['issue_11_cases']}"
            if t["issue_11_cases"]
            else ""
        ),
        file=say,
        flush=True,
    )
    if args.json:
        json.dump({"totals": t, "seconds": elapsed, "results": [asdict(r) for r in results]}, sys.stdout)
        sys.stdout.write("\n")
    if t["wrong"]:
        return 1
    return 2 if t["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
