"""The Grafana dashboard (deploy/grafana/) holds what Grafana needs, and every metric its PromQL names is
one cadre exports: the names are collected from the registry of a whole cadre after a real run (every
actor kind, the budget, the intake and the NATS retries on one registry), not from a hand list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from tests.system_harness import cadre_running, settings_for

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "cadre.json"

# A PromQL word that is no metric name: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "without",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "on",
    "ignoring",
    "and",
    "or",
    "unless",
}


def dashboard() -> dict[str, object]:
    data: dict[str, object] = json.loads(DASHBOARD.read_text())
    return data


def expressions() -> list[str]:
    panels = dashboard()["panels"]
    assert isinstance(panels, list)
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: identifiers outside braces, grouping lists and strings
    that are no PromQL function or keyword."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"e\d*", w)}


def test_the_dashboard_has_what_grafana_needs() -> None:
    d = dashboard()
    assert isinstance(d["schemaVersion"], int)
    assert d["schemaVersion"] >= 36
    assert d["uid"] == "cadre-overview"
    assert d["title"]
    templating = d["templating"]
    assert isinstance(templating, dict)
    assert [v["type"] for v in templating["list"]] == ["datasource"]
    panels = d["panels"]
    assert isinstance(panels, list)
    assert len(panels) > 20
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        assert g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"]
            assert t["refId"]
            assert t["datasource"] == p["datasource"]
    titles = " | ".join(str(p["title"]) for p in panels)
    for want in (
        "Workflows by outcome",
        "Step latency p95",
        "daily cap",
        "Denials",
        "Cache hits",
        "Tokens by provider",
        "Cost by provider",
        "LLM latency",
        "Intake rate",
        "Overloaded",
        "NATS retries",
        "Dead letters",
    ):
        assert want in titles


def test_the_provisioning_files_point_at_the_dashboards() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cadre.yaml").read_text())
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"


def test_the_metric_name_reader_finds_names_and_skips_promql() -> None:
    expr = 'sum by (le, kind) (rate(cadre_x_bucket{outcome="a b"}[5m])) / max(cadre_y) * 3600 + 1e3'
    assert metric_names(expr) == {"cadre_x_bucket", "cadre_y"}


@pytest.mark.timeout(60)
async def test_every_metric_the_dashboard_queries_is_exported(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run({"request": "find the 3 customers who spent the most in 2024 and write a report"})
        assert state.status == "completed"
        assert h.system is not None
        exposition = generate_latest(h.system.metrics.registry).decode()
    exported: set[str] = set()
    families: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        base = name.removesuffix("_total") if kind == "counter" else name  # the text format names a counter's samples
        if not base.endswith("_created"):  # the text format gives each created timestamp a family of its own
            families.add(base)
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
        exported |= {base + s for s in suffixes.get(kind, ("",))}
    exported |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", exposition, re.MULTILINE))
    assert "cadre_budget_cap_usd" in exported
    assert "cadre_nats_retries_total" in exported
    assert "cadre_intake_backlog" in exported
    assert "cadre_llm_usd_total" in exported
    used = {name for e in expressions() for name in metric_names(e)}
    assert used, "no metric found in the dashboard"
    assert used - exported == set()
    # and each of the families cadre exports is on the dashboard
    shown = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in used}
    assert families - shown == set()
