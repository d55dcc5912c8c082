"""Benchmark of flows' pure work: the load-time check, a rule's plan, a run-time branch decision.

    .venv/bin/python bench/flows.py [--repeat N]

Each figure is the median of 5 rounds of N calls (the best round beside it), in microseconds,
with a same-run baseline for the plan: validating the same three tasks given as an explicit plan
(what any plan costs the planner's checks), so the flow's own share (the rule's match and the
path made into a plan) is the difference. One JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cadre.planner.flows.branching import decide
from cadre.planner.flows.check import check_flow
from cadre.planner.flows.choose import by_rules, plan_choice
from cadre.planner.flows.compile import compile_path
from cadre.planner.flows.model import load_flow
from cadre.planner.validation import validate_plan
from cadre.settings import Settings
from cadre.system import catalog_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "flows" / "text_to_sql.yaml"
POLLING = ROOT / "tests" / "fixtures" / "flows" / "polling.yaml"


def timed(fn: Callable[[], object], n: int) -> dict[str, float]:
    fn()
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return {"median_us": round(statistics.median(rounds), 1), "best_us": round(min(rounds), 1), "calls": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--repeat", type=int, default=200, help="calls per round (the check: a tenth of it)")
    n = ap.parse_args().repeat
    catalog = catalog_for(Settings())
    flow, polling = load_flow(EXAMPLE), load_flow(POLLING)
    text = "fix this SQL: SELECT name FROM customers"
    choice = by_rules([flow], text)
    assert choice is not None
    plan = plan_choice(choice, text, catalog)
    sql_path = [x for x in flow.names if x not in ("describe_schema", "answer_general")]
    sql_plan = compile_path(flow, sql_path, {"text": "q", "sql": "SELECT 1", "tables": "customers"})
    loop = compile_path(polling, ["poll", "report"], {})
    passes = {t: "completed" for t in ("poll", "poll-2", "poll-3", "poll-4")}
    out: dict[str, Any] = {
        "load_and_check_text_to_sql_11_nodes": timed(lambda: check_flow(load_flow(EXAMPLE), catalog), max(1, n // 10)),
        "rules_choice_and_plan_fix_sql": timed(lambda: plan_choice(by_rules([flow], text) or choice, text, catalog), n),
        "baseline_validate_the_same_explicit_plan": timed(lambda: validate_plan(plan, catalog), n),
        "branch_decision_classify_9_tasks": timed(
            lambda: decide(sql_plan, "classify", {"rows": [["data"]]}, {"classify": "completed"}, {}), n * 10
        ),
        "branch_decision_loop_at_max": timed(
            lambda: decide(
                loop, "poll-4", {"rows": [[0]]}, passes, {"poll": "poll-2", "poll-2": "poll-3", "poll-3": "poll-4"}
            ),
            n * 10,
        ),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
