"""bench/floor.py runs end to end at a tiny size: the plain raw ring, each ring variant and cadre, same run.

Each variant must really have done what it adds: its inputs checked against the keyring (signing), its
feed delivering every message a second time (feed), cadre's extra inputs fetched and acked (consumers).
"""

from __future__ import annotations

import pytest

from tests.conftest import run_bench

WORKFLOWS = 10


@pytest.mark.timeout(180)
def test_floor_bench_runs_every_variant_at_a_tiny_size() -> None:
    result, progress = run_bench(
        "floor.py", *("--workflows", str(WORKFLOWS), "--concurrency", "4", "--runs", "1"), timeout=170
    )
    shape = result["shape"]
    assert shape["hops"] == len(shape["event_types"]) - 1 >= 10
    assert shape["event_types"][0] == "workflow_requested"
    assert shape["consumers"] == len(shape["consumer_names"]) >= 4
    assert shape["inputs_per_workflow"] >= shape["hops"]
    variants = result["variants"]
    assert set(variants) == {
        "plain",
        "none",
        "a",
        "b",
        "b_verify",
        "c",
        "d",
        "e_count",
        "e",
        "pull",
        "all",
        "all_verify",
        "all_pull",
    }
    for name, f in variants.items():
        assert f["workflows_per_s"] > 0, name
        assert f["cpu_ms_per_workflow"] > 0, name
        assert f["hop_ratio"] > 0, name
        assert f["cpu_hop_ratio"] > 0, name
        assert len(f["runs_workflows_per_s"]) == 1, name
        assert f["adds"], name
    assert variants["plain"]["hop_ratio"] == 1.0
    # Every measured and warm-up workflow's inputs: (warm-up + measured) x hops, at least.
    per_run = WORKFLOWS * shape["hops"]
    for name in ("b", "b_verify", "all", "all_verify", "all_pull"):
        assert variants[name]["inputs_checked"] >= 2 * per_run, name
    for name in ("a", "c", "d", "e", "e_count", "none", "pull"):
        assert variants[name]["inputs_checked"] == 0, name
    for name in ("c", "all", "all_verify", "all_pull"):
        assert variants[name]["feed_deliveries"] >= 2 * per_run, name
    for name in ("e", "all", "all_pull"):
        assert variants[name]["actors"] == shape["consumers"]
        assert variants[name]["extra_inputs_acked"] == 2 * WORKFLOWS * shape["extra_inputs_per_workflow"], name
    assert variants["e_count"]["actors"] == shape["consumers"]
    assert variants["e_count"]["extra_inputs_acked"] == 0
    assert variants["d"]["actors"] == 4
    assert variants["d"]["extra_inputs_acked"] == 0
    assert result["cadre"]["workflows_per_s"] > 0
    assert result["idle_cpu_ms_per_s"] >= 0
    budget = result["budget_at_0_6"]
    assert budget["cpu_ms_per_workflow_allowed"] == pytest.approx(variants["plain"]["cpu_ms_per_workflow"] / 0.6, 0.01)
    for ceiling in ("all", "all_pull"):
        left = budget["cpu_ms_per_workflow_allowed"] - variants[ceiling]["cpu_ms_per_workflow"]
        assert budget[ceiling]["cpu_ms_per_workflow_left"] == pytest.approx(left, abs=0.01)
    micro = result["micro_us_per_call"]
    assert {"sign", "check_signed_here", "check_verify", "decode", "encode"} <= set(micro)
    assert all(us > 0 for us in micro.values())
    assert micro["check_verify"] > micro["check_signed_here"]
    assert "| all_verify |" in progress
