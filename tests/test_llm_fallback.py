"""Provider fallback: an ordered list of providers per role, asked in turn when one is
overloaded, rate-limited or down after its retries; each attempt its own budget decision
and recorded call, and a replay serves them all. Real SDK clients against local fakes, the
whole cadre on the test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadre.actors.inference import Inferred, falls_back
from cadre.audit_text import lines
from cadre.bus.effects import BudgetDecided, CallSettled, ModelCalled
from cadre.commands import UsageError
from cadre.llm import build_llm, fallback_lists
from cadre.policy_file import apply_policy, load_policy
from cadre.replay_cli import replayer_for
from cadre.settings import Settings
from cadre.settings_errors import InvalidSettings
from cadre.store.audit import audit
from tests.fake_llm import anthropic_api, ok, openai_api, status
from tests.scenarios import LIBRARY_REQUEST, MODEL_PLAN, NOVEL_REQUEST
from tests.system_harness import cadre_running, settings_for
from tests.test_llm_planning import effects_of, plan_event


async def test_the_first_provider_always_overloaded_the_second_answers(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api(*[status(529)] * 4) as first, openai_api(ok(MODEL_PLAN, input=1000, output=200)) as second:
        settings = settings_for(
            nats_url,
            tmp_path,
            llm_provider="anthropic",
            anthropic_api_key="test-key",
            anthropic_base_url=first.base_url,
            openai_api_key="test-key",
            openai_base_url=f"{second.base_url}/v1",
            llm_fallback=["openai:gpt-4.1-mini"],
            llm_max_retries=1,
            llm_timeout_s=5.0,
        )
        async with cadre_running(settings) as cadre:
            state = await cadre.run({"request": NOVEL_REQUEST})
            assert state.status == "completed", state.failure
            assert (len(first.requests), len(second.requests)) == (2, 1)  # the first try + 1 retry, then the next
            proposed, effects = await plan_event(cadre, state.workflow_id)
            assert proposed.source == "model"
            assert "answered by openai/gpt-4.1-mini in 2 call(s), after 1 fallback(s) between providers" in (
                proposed.reason
            )
            decided = effects_of(effects, BudgetDecided)
            assert [(d.asked.provider, d.asked.model, d.asked.attempt) for d in decided if d.asked] == [
                ("anthropic", "claude-sonnet-4-6", 0),
                ("openai", "gpt-4.1-mini", 1),
            ]
            assert [d.decision.outcome for d in decided] == ["granted", "granted"]  # each its own decision
            calls = effects_of(effects, ModelCalled)
            assert [(c.outcome, c.error.code if c.error else None) for c in calls] == [
                ("failed", "overloaded"),
                ("answered", None),
            ]
            settled = effects_of(effects, CallSettled)
            assert len(settled) == 2
            assert settled[1].cost_usd == pytest.approx((1000 * 0.40 + 200 * 1.60) / 1e6)

            report = audit(await cadre.bus.log.read_records(state.workflow_id))
            plans = [c for c in report.consultations if c.kind == "plan"]
            assert [(c.provider, c.model, c.attempt, c.error, c.round) for c in plans] == [
                ("anthropic", "claude-sonnet-4-6", 0, "overloaded", 1),
                ("openai", "gpt-4.1-mini", 1, None, 1),
            ]
            assert (plans[1].input_tokens, plans[1].output_tokens) == (1000, 200)
            text = "\n".join(lines(report))
            assert "plan (fallback provider 1) for workflow: granted; openai/gpt-4.1-mini; 1000/200 tokens" in text

            assert cadre.system is not None
            sample = cadre.system.metrics.registry.get_sample_value
            assert (
                sample(
                    "cadre_llm_fallbacks_total", {"kind": "plan", "from_provider": "anthropic", "provider": "openai"}
                )
                == 1
            )
            for provider, model in (("anthropic", "claude-sonnet-4-6"), ("openai", "gpt-4.1-mini")):
                labels = {"kind": "plan", "provider": provider, "model": model}
                assert sample("cadre_llm_seconds_count", labels) == 1
                assert (sample("cadre_llm_seconds_sum", labels) or 0) > 0

            records = await cadre.bus.log.read_records(state.workflow_id)
        result = replayer_for(settings).replay(records)  # the fakes are gone: a replay calls nothing
        assert result.ok, "\n".join(result.lines())
        assert result.reproduced == result.events


async def test_a_fallback_list_that_runs_out_ends_in_the_rules(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api(*[status(529)] * 2) as first, openai_api(*[status(503)] * 2) as second:
        settings = settings_for(
            nats_url,
            tmp_path,
            llm_provider="anthropic",
            anthropic_api_key="test-key",
            anthropic_base_url=first.base_url,
            openai_base_url=f"{second.base_url}/v1",
            llm_fallback_planner=["openai:gpt-4.1-mini"],
            llm_max_retries=1,
        )
        async with cadre_running(settings) as cadre:
            state = await cadre.run({"request": LIBRARY_REQUEST})
            assert state.status == "completed", state.failure
            assert (len(first.requests), len(second.requests)) == (2, 2)
            proposed, effects = await plan_event(cadre, state.workflow_id)
            assert proposed.source == "library"
            assert "provider_error: overloaded" in proposed.reason
            assert len(effects_of(effects, BudgetDecided)) == 2
            records = await cadre.bus.log.read_records(state.workflow_id)
        result = replayer_for(settings).replay(records)
        assert result.ok, "\n".join(result.lines())


async def test_an_answer_that_is_not_a_provider_failure_does_not_fall_back(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api(status(400)) as first, openai_api() as second:
        settings = settings_for(
            nats_url,
            tmp_path,
            llm_provider="anthropic",
            anthropic_api_key="test-key",
            anthropic_base_url=first.base_url,
            openai_base_url=f"{second.base_url}/v1",
            llm_fallback=["openai"],
            llm_max_retries=0,
        )
        async with cadre_running(settings) as cadre:
            state = await cadre.run({"request": LIBRARY_REQUEST})
            assert state.status == "completed", state.failure
            assert (len(first.requests), second.requests) == (1, [])  # a bad request would fail anywhere
            proposed, _ = await plan_event(cadre, state.workflow_id)
            assert "provider_error: bad_request" in proposed.reason


@pytest.mark.parametrize(
    ("reason", "value", "moves_on"),
    [
        ("provider_error: overloaded", None, True),
        ("provider_error: rate_limited", None, True),
        ("provider_error: server_error", None, True),
        ("provider_error: timeout", None, True),
        ("provider_error: connection", None, True),
        ("denied: rate_limited: 50 requests in the last minute", None, True),  # the budget's limit of the provider
        ("provider_error: bad_request", None, False),
        ("provider_error: auth", None, False),
        ("provider_error: refused", None, False),
        ("invalid_output_after_repair", None, False),
        ("denied: over_workflow_cap: the cap is 0", None, False),
        ("", {"nodes": []}, False),
    ],
)
def test_which_ends_fall_back(reason: str, value: object, moves_on: bool) -> None:
    assert falls_back(Inferred(value, "model" if value else "fallback", reason)) is moves_on


def test_fallback_lists_per_role(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CADRE_LLM_FALLBACK", "CADRE_LLM_FALLBACK_PLANNER", "OPENAI_API_KEY", "CADRE_LLM_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CADRE_LLM_FALLBACK", "gemini, ollama:llama3.2:1b")
    monkeypatch.setenv("CADRE_LLM_FALLBACK_PLANNER", '["openai:gpt-4.1-mini"]')
    settings = Settings(anthropic_api_key="a", gemini_api_key="g", openai_api_key="o")
    assert fallback_lists(settings) == {
        "planner": [("openai", "gpt-4.1-mini")],
        "decomposer": [("gemini", "gemini-2.5-flash"), ("ollama", "llama3.2:1b")],
        "agent": [("gemini", "gemini-2.5-flash"), ("ollama", "llama3.2:1b")],
    }
    llm = build_llm(settings)
    assert llm is not None
    first = llm.fallback_for("plan", 1)
    assert first is not None
    assert (first.provider.name, first.model_for("plan"), llm.fallback_for("plan", 2)) == (
        "openai",
        "gpt-4.1-mini",
        None,
    )
    decide = [llm.fallback_for("decide", n) for n in (1, 2)]
    assert [(f.provider.name, f.model_for("decide")) for f in decide if f] == [
        ("gemini", "gemini-2.5-flash"),
        ("ollama", "llama3.2:1b"),
    ]
    assert sorted(p.name for p in llm.providers()) == ["anthropic", "gemini", "ollama", "openai"]  # one client each


def test_a_fallback_entry_must_name_a_provider() -> None:
    with pytest.raises(InvalidSettings, match=r"fallback entry 'mistral:large' names provider 'mistral'"):
        Settings.load(llm_fallback="mistral:large")


def test_the_policy_file_sets_the_fallback_list(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('llm_fallback = ["gemini"]\nllm_fallback_agent = ["ollama:llama3.1:8b"]\n')
    settings = apply_policy(Settings(), load_policy(path))
    assert (settings.llm_fallback, settings.llm_fallback_agent) == (["gemini"], ["ollama:llama3.1:8b"])
    path.write_text('llm_fallback = ["nobody"]\n')
    with pytest.raises(UsageError, match=r"fallback entry 'nobody' names provider 'nobody'"):
        load_policy(path)
