"""Requests and plans shared by the model-driven tests and the golden-log recorder."""

from __future__ import annotations

from typing import Any

LIBRARY_REQUEST = "find the three customers who spent most in 2024 and write a report"
"""Matches a plan of examples/plans: without a model, the library plans it."""

NOVEL_REQUEST = "how many customers are in the shop database"
"""Matches no library plan: only a model plans it."""

MODEL_PLAN: dict[str, Any] = {
    "nodes": [
        {
            "id": "count",
            "description": "Count the customers",
            "tool": "sql.query",
            "inputs": {"sql": "SELECT COUNT(*) AS customers FROM customers"},
        }
    ],
    "output": "count",
    "rationale": "one query answers it",
}
"""What the fake model answers for NOVEL_REQUEST."""

FLAKY_PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "first", "tool": "test.echo", "inputs": {"value": "kept"}},
        {"id": "second", "depends_on": ["first"], "tool": "test.flaky", "inputs": {"value": "x"}},
    ],
    "output": "second",
}
"""A plan whose second task fails for good (test.flaky always fails)."""

REMAINING: dict[str, Any] = {
    "nodes": [{"id": "second_b", "depends_on": ["first"], "tool": "test.echo", "inputs": {"value": "${first.value}"}}],
    "output": "second_b",
    "rationale": "test.flaky is down; echo the first output instead",
}
"""The fake model's re-plan of FLAKY_PLAN's remaining work."""
