"""Planning and adaptation with a model: the real anthropic / google-genai / openai clients against
local fakes of their APIs, the real budget actor, the whole cadre on the test server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cadre.bus.effects import BudgetDecided, CallSettled, Effect, ModelCalled
from cadre.bus.events import PlanProposed
from cadre.store.records import StoredEvent
from tests.fake_llm import FakeAPI, anthropic_api, gemini_api, ok, openai_api, slow, status, text
from tests.scenarios import FLAKY_PLAN, LIBRARY_REQUEST, MODEL_PLAN, NOVEL_REQUEST, REMAINING
from tests.system_harness import Harness, cadre_running, settings_for

Fake = Callable[..., contextlib.AbstractAsyncContextManager[FakeAPI]]
PROVIDERS: dict[str, Fake] = {"anthropic": anthropic_api, "gemini": gemini_api, "openai": openai_api}


def model_settings(provider: str, api: FakeAPI, nats_url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    keys = {
        "anthropic": {"anthropic_api_key": "test-key", "anthropic_base_url": api.base_url},
        "gemini": {"gemini_api_key": "test-key", "gemini_base_url": api.base_url},
        "openai": {"openai_api_key": "test-key", "openai_base_url": f"{api.base_url}/v1"},
    }[provider]
    base = {"llm_provider": provider, "llm_max_retries": 1, "llm_timeout_s": 5.0, **keys}
    return {"nats_url": nats_url, "data_dir": tmp_path, **base, **extra}


@contextlib.asynccontextmanager
async def cadre_with_model(
    provider: str, nats_url: str, tmp_path: Path, *script: Any, **extra: Any
) -> AsyncIterator[tuple[Harness, FakeAPI]]:
    async with PROVIDERS[provider](*script) as api:
        s = model_settings(provider, api, nats_url, tmp_path, **extra)
        async with cadre_running(settings_for(s.pop("nats_url"), s.pop("data_dir"), **s)) as cadre:
            yield cadre, api


async def plan_event(cadre: Harness, wf: str, revision: int = 1) -> tuple[PlanProposed, tuple[Effect, ...]]:
    for r in await cadre.events(wf):
        if isinstance(r, StoredEvent) and isinstance(r.event.data, PlanProposed) and r.event.data.revision == revision:
            return r.event.data, r.event.effects
    raise AssertionError(f"no plan_proposed revision {revision} in {wf}")


E = TypeVar("E", BudgetDecided, ModelCalled, CallSettled)


def effects_of(effects: tuple[Effect, ...], kind: type[E]) -> list[E]:
    return [e for e in effects if isinstance(e, kind)]


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "openai"])
async def test_a_plan_from_the_model_runs_end_to_end_and_its_cost_is_settled(
    provider: str, nats_url: str, tmp_path: Path
) -> None:
    async with cadre_with_model(provider, nats_url, tmp_path, ok(MODEL_PLAN, input=1200, output=300)) as (cadre, api):
        state = await cadre.run({"request": NOVEL_REQUEST})
        assert state.status == "completed", state.failure
        assert state.result["columns"] == ["customers"]
        assert state.result["rows"][0][0] > 0
        proposed, effects = await plan_event(cadre, state.workflow_id)
        assert proposed.source == "model"
        assert f"answered by {provider}/" in proposed.reason
        assert len(api.requests) == 1
        prompt = str(api.requests[0])
        assert "sql.query" in prompt
        assert NOVEL_REQUEST in prompt
        [decision] = effects_of(effects, BudgetDecided)
        assert decision.decision.outcome == "granted"
        [call] = effects_of(effects, ModelCalled)
        assert call.response is not None
        assert call.response.usage.output_tokens == 300
        [settled] = effects_of(effects, CallSettled)
        model = call.response.model
        price_in, price_out = {"anthropic": (3.0, 15.0), "gemini": (0.30, 2.50), "openai": (2.0, 8.0)}[provider]
        assert model.startswith(("claude-sonnet-4", "gemini-2.5-flash", "gpt-4.1"))
        cost = (1200 * price_in + 300 * price_out) / 1e6
        assert settled.cost_usd == pytest.approx(cost)
        assert cadre.system is not None
        sample = cadre.system.metrics.registry.get_sample_value
        labels = {"kind": "plan", "provider": provider}
        assert sample("cadre_consultations_total", {**labels, "outcome": "granted"}) == 1
        assert sample("cadre_llm_tokens_total", {**labels, "direction": "output"}) == 300
        assert sample("cadre_llm_usd_total", labels) == pytest.approx(cost)
        assert sample("cadre_budget_decisions_total", {"kind": "plan", "outcome": "granted", "reason": ""}) == 1
        seconds = {**labels, "model": call.response.model}
        assert sample("cadre_llm_seconds_count", seconds) == 1
        assert 0 < (sample("cadre_llm_seconds_sum", seconds) or 0) < 5
        assert [s for m in cadre.system.metrics.llm_fallbacks.collect() for s in m.samples] == []  # no fallback


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
async def test_budget_zero_sends_nothing_and_the_run_completes_by_the_library(
    provider: str, nats_url: str, tmp_path: Path
) -> None:
    async with cadre_with_model(provider, nats_url, tmp_path) as (cadre, api):
        state = await cadre.run({"request": LIBRARY_REQUEST, "budget_usd": 0})
        assert state.status == "completed", state.failure
        assert api.requests == []
        proposed, effects = await plan_event(cadre, state.workflow_id)
        assert proposed.source == "library"
        assert "over_workflow_cap" in proposed.reason
        assert [e.decision.outcome for e in effects_of(effects, BudgetDecided)] == ["denied"]


async def test_basic_intelligence_consults_nobody(nats_url: str, tmp_path: Path) -> None:
    async with cadre_with_model("anthropic", nats_url, tmp_path) as (cadre, api):
        state = await cadre.run({"request": LIBRARY_REQUEST, "intelligence": "basic"})
        assert state.status == "completed", state.failure
        assert api.requests == []
        proposed, _ = await plan_event(cadre, state.workflow_id)
        assert "not_allowed" in proposed.reason


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
async def test_overloaded_every_time_falls_back_after_the_retries(provider: str, nats_url: str, tmp_path: Path) -> None:
    code = 529 if provider == "anthropic" else 503
    async with cadre_with_model(provider, nats_url, tmp_path, status(code), status(code)) as (cadre, api):
        state = await cadre.run({"request": LIBRARY_REQUEST})
        assert state.status == "completed", state.failure
        assert len(api.requests) == 2  # the first try and llm_max_retries=1 retry, then no more
        proposed, effects = await plan_event(cadre, state.workflow_id)
        assert proposed.source == "library"
        assert "provider_error: overloaded" in proposed.reason
        [call] = effects_of(effects, ModelCalled)
        assert call.error is not None
        assert call.error.code == "overloaded"


@pytest.mark.parametrize("failure", [status(429), status(500)])
async def test_rate_limited_and_server_errors_fall_back(failure: Any, nats_url: str, tmp_path: Path) -> None:
    async with cadre_with_model("anthropic", nats_url, tmp_path, failure, failure) as (cadre, api):
        state = await cadre.run({"request": LIBRARY_REQUEST})
        assert state.status == "completed", state.failure
        assert len(api.requests) == 2
        proposed, _ = await plan_event(cadre, state.workflow_id)
        assert proposed.source == "library"
        assert "provider_error" in proposed.reason


async def test_a_timeout_falls_back_and_never_hangs(nats_url: str, tmp_path: Path) -> None:
    script = (slow(30), slow(30))
    async with cadre_with_model("anthropic", nats_url, tmp_path, *script, llm_timeout_s=0.3, llm_max_retries=0) as (
        cadre,
        _api,
    ):
        state = await cadre.run({"request": LIBRARY_REQUEST}, within=15)
        assert state.status == "completed", state.failure
        proposed, _ = await plan_event(cadre, state.workflow_id)
        assert proposed.source == "library"
        assert "provider_error: timeout" in proposed.reason


async def test_malformed_output_gets_one_repair_round_then_the_fallback(nats_url: str, tmp_path: Path) -> None:
    script = (text("here is your plan: {nodes: oops"), text("still not JSON"))
    async with cadre_with_model("anthropic", nats_url, tmp_path, *script) as (cadre, api):
        state = await cadre.run({"request": LIBRARY_REQUEST})
        assert state.status == "completed", state.failure
        assert len(api.requests) == 2
        repair = api.requests[1]["messages"][-1]["content"]
        assert "Your previous answer was not valid" in repair
        assert "{nodes: oops" in repair
        proposed, effects = await plan_event(cadre, state.workflow_id)
        assert proposed.source == "library"
        assert "invalid_output_after_repair" in proposed.reason
        assert [e.decision.outcome for e in effects_of(effects, BudgetDecided)] == ["granted", "granted"]
        assert len(effects_of(effects, CallSettled)) == 2


async def test_the_repair_round_can_fix_a_plan(nats_url: str, tmp_path: Path) -> None:
    bad = {**MODEL_PLAN, "nodes": [{**MODEL_PLAN["nodes"][0], "tool": "sql.nonexistent"}]}
    async with cadre_with_model("anthropic", nats_url, tmp_path, ok(bad), ok(MODEL_PLAN)) as (cadre, api):
        state = await cadre.run({"request": NOVEL_REQUEST})
        assert state.status == "completed", state.failure
        repair = api.requests[1]["messages"][-1]["content"]
        assert "$.nodes[0].tool" in repair
        assert "sql.nonexistent" in repair
        proposed, _ = await plan_event(cadre, state.workflow_id)
        assert proposed.source == "model"
        assert "after one repair round" in proposed.reason


async def test_the_same_prompt_is_served_from_the_inference_cache(nats_url: str, tmp_path: Path) -> None:
    async with cadre_with_model("anthropic", nats_url, tmp_path, ok(MODEL_PLAN)) as (cadre, api):
        first = await cadre.run({"request": NOVEL_REQUEST})
        second = await cadre.run({"request": NOVEL_REQUEST})
        assert first.status == second.status == "completed"
        assert len(api.requests) == 1
        proposed, effects = await plan_event(cadre, second.workflow_id)
        assert proposed.source == "cache" or "from the inference cache" in proposed.reason
        assert [e.decision.outcome for e in effects_of(effects, BudgetDecided)] == ["cached"]
        assert effects_of(effects, CallSettled) == []


async def test_autonomous_creative_workflow_is_re_planned_after_a_task_fails(nats_url: str, tmp_path: Path) -> None:
    async with cadre_with_model("anthropic", nats_url, tmp_path) as (cadre, api):
        api.when("emit_remaining_plan", ok(REMAINING))
        body = {"request": "echo then flaky", "plan": FLAKY_PLAN, "intelligence": "autonomous", "mode": "creative"}
        state = await cadre.run(body)
        assert state.status == "completed", state.failure
        assert state.revision == 2
        assert state.result == {"value": "kept"}
        assert state.tasks["first"].status == "completed"  # kept, not run again
        proposed, _ = await plan_event(cadre, state.workflow_id, revision=2)
        assert "re-planned after task 'second' failed" in proposed.reason
        [adapt] = [r for r in api.requests if "emit_remaining_plan" in str(r)]
        prompt = adapt["messages"][-1]["content"]
        assert "already used" in prompt
        assert '"kept"' in prompt


@pytest.mark.parametrize(("intelligence", "mode"), [("autonomous", "adaptive"), ("intelligent", "creative")])
async def test_without_autonomous_creative_a_failed_task_fails_the_workflow(
    intelligence: str, mode: str, nats_url: str, tmp_path: Path
) -> None:
    async with cadre_with_model("anthropic", nats_url, tmp_path) as (cadre, api):
        body = {"request": "echo then flaky", "plan": FLAKY_PLAN, "intelligence": intelligence, "mode": mode}
        state = await cadre.run(body)
        assert state.status == "failed"
        assert state.failed_task == "second"
        assert not [r for r in api.requests if "emit_remaining_plan" in str(r)]  # no adaptation was asked
