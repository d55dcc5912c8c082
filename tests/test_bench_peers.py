"""bench/peers.py runs end to end at a tiny size: cadre, the raw ring, LangGraph and DBOS on the same DAG.

The peers are the ``bench`` extra's (``pip install -e '.[bench]'``, which ``make bench`` does), not the
runtime's nor the dev extra's: where they are not installed (CI installs dev only) this test is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_bench

pytest.importorskip("langgraph.checkpoint.sqlite.aio", reason="the bench extra (LangGraph) is not installed")
pytest.importorskip("dbos", reason="the bench extra (DBOS) is not installed")


@pytest.mark.timeout(120)
def test_peers_bench_runs_every_side_at_a_tiny_size(tmp_path: Path) -> None:
    result, progress = run_bench(
        "peers.py",
        *("--workflows", "10", "--concurrency", "4", "--runs", "1"),
        *("--latency-workflows", "1"),
        timeout=110,
    )
    assert result["dag"].startswith("a, b -> c")
    assert result["pipeline"]["cadre"]["workflows_per_s"] > 0
    assert result["pipeline"]["raw"]["workflows_per_s"] > 0
    for side in ("cadre", "raw"):
        assert result["pipeline"][side]["cpu_ms_per_workflow"] > 0
    for peer in ("langgraph", "dbos"):
        figures = result["peers"][peer]
        assert figures["workflows_per_s"] > 0
        assert figures["p50_ms"] > 0
        assert figures["unloaded"]["p50_ms"] > 0
        assert figures["durability"]
        assert figures["cpu_ms_per_workflow"] > 0
        assert len(figures["runs_cpu_ms_per_workflow"]) == 1
    assert "durability='sync'" in result["peers"]["langgraph"]["durability"]
    assert set(result["ratios"]) == {"cadre/raw", "cadre/langgraph", "cadre/dbos", "raw/langgraph", "raw/dbos"}
    assert result["idle_cpu_ms_per_s"] >= 0
    assert "| LangGraph + SQLite checkpointer |" in progress
