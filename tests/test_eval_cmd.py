"""``cadre eval``: dry runs of a set of requests with the current planning configuration, their
validity, agreement with a recorded plan, answers against expected ones; each run replays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cadre import eval_cmd
from cadre.bus.plan import Plan
from cadre.cli import _parser, main
from cadre.commands import UsageError
from cadre.eval_cmd import agreement, items_from_file, signature
from cadre.settings import Settings
from tests.conftest import unique
from tests.fake_llm import anthropic_api, ok
from tests.scenarios import MODEL_PLAN, NOVEL_REQUEST


def plan(*nodes: tuple[str, str, list[str]]) -> Plan:
    return msgspec.convert(
        {"nodes": [{"id": i, "tool": tool, "depends_on": deps, "inputs": {}} for i, tool, deps in nodes]}, Plan
    )


def test_agreement_is_the_same_tools_with_the_same_dependencies_whatever_the_ids() -> None:
    a = plan(("q", "sql.query", []), ("r", "text.render", ["q"]), ("w", "fs.write", ["r"]))
    b = plan(("top", "sql.query", []), ("page", "text.render", ["top"]), ("save", "fs.write", ["page"]))
    assert signature(a) == signature(b)
    assert agreement(a, b) == (True, [])
    flat = plan(("q", "sql.query", []), ("r", "text.render", []), ("w", "fs.write", ["r"]))
    same, diffs = agreement(a, flat)
    assert not same
    assert diffs == ["-text.render after sql.query", "+text.render"]
    assert agreement(a, plan(("q", "sql.query", [])))[1] == [
        "-fs.write after text.render",
        "-text.render after sql.query",
    ]


def test_a_file_of_requests_in_each_form(tmp_path: Path) -> None:
    f = tmp_path / "r.json"
    f.write_text(json.dumps(["list the customers", {"id": "x", "request": "count orders", "plan": {"nodes": []}}]))
    items = items_from_file(f)
    assert [(i.id, i.request) for i in items] == [("r1", "list the customers"), ("x", "count orders")]
    assert items[1].reference == Plan(nodes=())
    expected = items_from_file(Path("tests/eval/requests.json"))
    assert expected[0].expected is not None
    assert expected[0].expected.sql.startswith("SELECT")
    for bad, why in ((json.dumps([]), "non-empty list"), (json.dumps([3]), r"requests\[0\]"), ("{", "not JSON")):
        f.write_text(bad)
        with pytest.raises(UsageError, match=why):
            items_from_file(f)


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch, nats_url: str, tmp_path: Path) -> Path:
    prefix = unique("v")
    monkeypatch.setenv("CADRE_NATS_URL", nats_url)
    monkeypatch.setenv("CADRE_SUBJECT_PREFIX", prefix)
    monkeypatch.setenv("CADRE_STREAM_NAME", prefix.upper())
    monkeypatch.setenv("CADRE_LEDGER_STREAM_NAME", prefix.upper() + "_LEDGER")
    monkeypatch.setenv("CADRE_INFERENCE_CACHE_BUCKET", prefix.upper() + "_INFERENCE")
    monkeypatch.setenv("CADRE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CADRE_LLM_PROVIDER", "none")
    return tmp_path


def json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return out


def test_the_librarys_requests_plan_as_their_plans_and_each_run_replays(
    deployment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "--library", "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["id", "valid", "agrees", "answer"]
    assert "total: 4 request(s): 4 valid, 0 invalid, 0 without a plan; agreement with the recorded plan 4/4" in out
    assert main(["eval", "--library", "--limit", "2", "--json"]) == 0
    report = json_out(capsys)
    assert [r["valid"] for r in report["requests"]] == ["yes", "yes"]
    assert [r["agreement"] for r in report["requests"]] == ["same", "same"]
    assert report["totals"]["consultations"] == 2  # the plan consultation of each (no model: none asked)
    assert report["totals"]["latency_max_s"] is not None
    wf = report["requests"][0]["workflow_id"]
    assert main(["replay", wf]) == 0
    assert "reproduced" in capsys.readouterr().out


def test_an_invalid_plan_fails_the_evaluation(
    deployment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = deployment / "requests.json"
    report = "find the three customers who spent most in 2024 and write a report"
    requests.write_text(json.dumps([report, "how many customers are there"]))
    monkeypatch.setenv("CADRE_PROHIBITED_TOOLS", "fs.write")  # the report's plan writes with it
    assert main(["eval", str(requests)]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert lines["r1"].split()[1] == "no"
    assert "plan_rejected" in lines["r1"]
    assert lines["r2"].split()[1] == "yes"
    assert "total: 2 request(s): 1 valid, 1 invalid, 0 without a plan" in out


def test_expected_answers_tell_the_plans_that_would_answer_another_question(
    deployment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = deployment / "expected.json"
    entries = [
        {"id": "right", "request": "how many customers are there", "sql": "SELECT COUNT(*) FROM customers"},
        {"id": "other", "request": "how many customers are there", "sql": "SELECT COUNT(*) FROM products"},
        {"id": "cannot", "request": "which moon is the largest", "sql": "SELECT 1"},
    ]
    requests.write_text(json.dumps({"requests": entries}))
    assert main(["eval", str(requests), "--json"]) == 1
    report = json_out(capsys)
    assert [(r["id"], r["valid"], r["answer"]) for r in report["requests"]] == [
        ("right", "yes", "expected"),
        ("other", "yes", "other"),
        ("cannot", "no_plan", "unknown"),
    ]
    assert report["totals"]["other_answer"] == 1
    assert report["totals"]["answers_checked"] == 2


def test_past_workflows_are_evaluated_against_the_plans_they_ran_with(
    deployment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "how many customers are there", "--json"]) == 0
    explicit = deployment / "plan.json"
    explicit.write_text(json.dumps({"nodes": [{"id": "s", "tool": "sql.schema", "inputs": {}}]}))
    assert main(["run", "list the customers", "--plan", str(explicit), "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", "--from-log", "--json"]) == 0
    report = json_out(capsys)
    assert [(r["request"], r["agreement"]) for r in report["requests"]] == [
        ("how many customers are there", "same"),
        ("list the customers", "differs"),
    ]
    assert report["requests"][1]["differences"][0] == "-sql.schema"
    assert report["totals"]["agree"] == 1
    assert report["totals"]["compared"] == 2
    # the evaluation's own dry runs are not past workflows to evaluate
    assert main(["eval", "--from-log", "--json"]) == 0
    assert json_out(capsys)["totals"]["requests"] == 2


async def test_with_a_model_the_consultations_tokens_and_cost_are_reported(
    deployment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = deployment / "novel.json"
    requests.write_text(json.dumps([{"id": "novel", "request": NOVEL_REQUEST, "plan": MODEL_PLAN}]))
    async with anthropic_api(ok(MODEL_PLAN, input=1200, output=300)) as api:
        monkeypatch.setenv("CADRE_LLM_PROVIDER", "anthropic")
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
        monkeypatch.setenv("CADRE_LLM_MAX_RETRIES", "0")
        args = _parser().parse_args(["eval", str(requests), "--json"])
        assert await eval_cmd.run(args, Settings.load()) == 0
        assert len(api.requests) == 1
    [row] = json_out(capsys)["requests"]
    assert (row["valid"], row["agreement"], row["plan_source"]) == ("yes", "same", "model")
    assert (row["consultations"], row["input_tokens"], row["output_tokens"]) == (1, 1200, 300)
    assert row["cost_usd"] == pytest.approx((1200 * 3.0 + 300 * 15.0) / 1e6)
