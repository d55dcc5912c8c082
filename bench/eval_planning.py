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
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# the requests and how answers compare live in the package, shared with `cadre eval`
from cadre.eval_set import (
    Request,
    Row,
    Table,
    Value,
    answers_of,
    expected_table,
    expected_tables,
    matches,
    query_table,
    same_value,
    sample_database,
    served,
)
from cadre.eval_set import load_requests as _load_requests

__all__ = [  # what tests/test_eval_requests.py reads here
    "Request",
    "Row",
    "Table",
    "Value",
    "answers_of",
    "expected_table",
    "expected_tables",
    "load_requests",
    "main",
    "matches",
    "query_table",
    "run_one",
    "same_value",
    "sample_database",
    "served",
]

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = ROOT / "tests" / "eval" / "requests.json"
EXAMPLES = ROOT / "examples" / "plans"
RUN_LIMIT_S = 60.0
APPROVAL_TIMEOUT_S = 10.0  # nobody approves here: an approval asked for is denied after this
VERDICTS = ("correct", "failed", "wrong", "error")

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


def load_requests(path: Path = REQUESTS) -> list[Request]:
    """The requests of ``path`` (by default the evaluation's own)."""
    return _load_requests(path)


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
