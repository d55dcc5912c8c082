"""The issue's acceptance, as a user runs it: `cadre run` in its own process, configured only
by the vendors' environment variables, against a local server that speaks the vendor's API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unique
from tests.fake_llm import FakeAPI, anthropic_api, gemini_api, ok, openai_api, status
from tests.scenarios import LIBRARY_REQUEST, MODEL_PLAN

CADRE = [sys.executable, "-m", "cadre.cli"]


def env_for(provider: str, api: FakeAPI, nats_url: str, tmp_path: Path) -> dict[str, str]:
    prefix = unique("a")
    env = clean_env()
    env.update(
        CADRE_NATS_URL=nats_url,
        CADRE_DATA_DIR=str(tmp_path),
        CADRE_SUBJECT_PREFIX=prefix,
        CADRE_STREAM_NAME=prefix.upper(),
        CADRE_LEDGER_STREAM_NAME=prefix.upper() + "_LEDGER",
        CADRE_INFERENCE_CACHE_BUCKET=prefix.upper() + "_INFERENCE",
        CADRE_LLM_MAX_RETRIES="2",
    )
    if provider == "anthropic":
        env.update(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=api.base_url)
    elif provider == "gemini":
        env.update(GEMINI_API_KEY="test-key", GOOGLE_GEMINI_BASE_URL=api.base_url)
    elif provider == "openai":
        env.update(OPENAI_API_KEY="test-key", OPENAI_BASE_URL=f"{api.base_url}/v1")
    else:  # the local preset: no key, only where the server is (its default is localhost:11434)
        env.update(CADRE_LLM_PROVIDER="ollama", CADRE_OLLAMA_BASE_URL=f"{api.base_url}/v1")
    return env


def clean_env() -> dict[str, str]:
    vendors = ("CADRE_", "ANTHROPIC_", "GEMINI_", "GOOGLE_", "OPENAI_")
    return {k: v for k, v in os.environ.items() if not k.startswith(vendors)}


async def cadre_run(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *CADRE, "run", *args, "--json", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()
    return proc.returncode, json.loads(lines[-1]), time.monotonic() - started


FAKES = {"anthropic": anthropic_api, "gemini": gemini_api, "openai": openai_api, "ollama": openai_api}
OVERLOADED = {"anthropic": 529, "gemini": 503, "openai": 503, "ollama": 503}
# The openai and ollama presets share one adapter: each runs where the other would only repeat it.


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])  # openai, ollama: the audit test below
async def test_cadre_run_plans_with_the_model(provider: str, nats_url: str, tmp_path: Path) -> None:
    async with FAKES[provider](ok(MODEL_PLAN)) as api:
        code, result, _ = await cadre_run(env_for(provider, api, nats_url, tmp_path), "how many customers do we have")
        assert code == 0, result
        assert len(api.requests) == 1
        assert result["status"] == "completed"
        assert result["plan_source"] == "model"
        assert result["result"]["columns"] == ["customers"]


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])  # openai: the contract suite and the fallback test
async def test_cadre_run_ends_within_the_retry_budget_when_the_api_is_always_overloaded(
    provider: str, nats_url: str, tmp_path: Path
) -> None:
    code_ = OVERLOADED[provider]
    async with FAKES[provider](*[status(code_)] * 10) as api:
        code, result, seconds = await cadre_run(env_for(provider, api, nats_url, tmp_path), LIBRARY_REQUEST)
        assert code == 0, result
        assert result["plan_source"] == "library"  # the model failed: the deterministic fallback
        assert len(api.requests) == 3  # the first try and CADRE_LLM_MAX_RETRIES=2 retries, no more
        assert seconds < 45


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama"])
async def test_cadre_run_with_budget_zero_sends_the_api_nothing(provider: str, nats_url: str, tmp_path: Path) -> None:
    async with FAKES[provider]() as api:
        code, result, _ = await cadre_run(env_for(provider, api, nats_url, tmp_path), LIBRARY_REQUEST, "--budget", "0")
        assert code == 0, result
        assert api.requests == []


@pytest.mark.parametrize(
    ("provider", "model", "cost"), [("openai", "gpt-4.1", "$0.00480"), ("ollama", "llama3.1:8b", "$0.00000")]
)
async def test_the_audit_shows_the_consultation_and_the_run_replays_offline(
    provider: str, model: str, cost: str, nats_url: str, tmp_path: Path
) -> None:
    async with FAKES[provider](ok(MODEL_PLAN, input=1200, output=300)) as api:
        env = env_for(provider, api, nats_url, tmp_path)
        code, result, _ = await cadre_run(env, "how many customers do we have")
        assert code == 0, result
        assert result["plan_source"] == "model"
    wf = result["workflow_id"]
    offline = {k: v for k, v in env.items() if not k.startswith("OPENAI_")}  # no key, and the server is gone
    audit = await cli(offline, "audit", wf)
    assert f"plan for workflow: granted; {provider}/{model}; 1200/300 tokens, {cost}" in audit
    replayed = json.loads((await cli(offline, "replay", wf, "--json")).strip().splitlines()[-1])
    assert (replayed["ok"], replayed["reproduced"]) == (True, replayed["events"])


async def cli(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *CADRE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out.decode(), err.decode())
    return out.decode()


def test_a_provider_named_without_its_key_is_a_clear_error(tmp_path: Path) -> None:
    env = clean_env()
    env.update(CADRE_LLM_PROVIDER="gemini", CADRE_DATA_DIR=str(tmp_path))
    proc = subprocess.run([*CADRE, "run", "anything"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "CADRE_LLM_PROVIDER=gemini but GEMINI_API_KEY (or GOOGLE_API_KEY) is not set" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_models_per_role_and_provider_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from cadre.llm import models_for, provider_name
    from cadre.settings import Settings

    for var in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY", "CADRE_LLM_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    both = Settings(anthropic_api_key="a", gemini_api_key="g", model_planner="small", model_agent="large")
    assert provider_name(both) == "anthropic"  # auto prefers Anthropic when both keys are set
    assert provider_name(Settings(gemini_api_key="g")) == "gemini"
    assert provider_name(Settings(llm_provider="none", anthropic_api_key="a")) is None
    models = models_for(both, "anthropic")
    assert (models["plan"], models["adapt"]) == ("small", "small")
    assert (models["recover"], models["interpret"], models["decide"], models["default"]) == ("large",) * 4
    assert models["decompose"] == "claude-haiku-4-5"  # the provider's default for an unset role


def test_openai_and_ollama_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from cadre.budget_config import budget_config
    from cadre.llm import local_models, models_for, provider_name
    from cadre.settings import Price, Settings

    for var in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CADRE_LLM_PROVIDER", raising=False)
    assert provider_name(Settings(openai_api_key="o")) == "openai"  # auto, after Anthropic and Gemini
    # the seed's small local planner and larger agents
    seed = Settings(llm_provider="ollama", model_planner="llama3.2:1b", model_agent="llama3.1:8b")
    assert provider_name(seed) == "ollama"
    models = models_for(seed, "ollama")
    assert (models["plan"], models["decide"], models["decompose"]) == ("llama3.2:1b", "llama3.1:8b", "llama3.1:8b")
    prices = budget_config(seed).prices
    assert prices.for_model("llama3.2:1b").input == prices.for_model("llama3.1:8b").output == 0
    # OpenAI itself is priced by its list prices; a compatible server's models cost 0 unless priced
    assert local_models(Settings(llm_provider="openai", openai_api_key="o")) == set()
    assert budget_config(Settings(llm_provider="openai", openai_api_key="o")).prices.for_model("gpt-4.1").input == 2.0
    vllm = Settings(llm_provider="openai", openai_base_url="http://gpu:8000/v1", model_planner="qwen3-32b")
    assert "qwen3-32b" in local_models(vllm)
    assert budget_config(vllm).prices.for_model("qwen3-32b").output == 0
    priced = vllm.model_copy(update={"prices": {"qwen": Price(input=0.1, output=0.2)}})
    assert budget_config(priced).prices.for_model("qwen3-32b").output == 0.2
    # a paid gateway is not local: an unknown model there gets the (high) default price
    gateway = vllm.model_copy(update={"openai_base_url": "https://gateway.example.com/v1"})
    assert local_models(gateway) == set()
    assert budget_config(gateway).prices.for_model("qwen3-32b").output == 75.0
    assert local_models(gateway.model_copy(update={"openai_base_url_free": True})) >= {"qwen3-32b"}
    assert local_models(vllm.model_copy(update={"openai_base_url_free": False})) == set()


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://localhost:8000/v1", True),
        ("http://127.0.0.1:1234/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://192.168.1.20:8000/v1", True),
        ("http://10.0.0.5/v1", True),
        ("http://gpu-box:8000/v1", True),
        ("http://llm.internal/v1", True),
        ("https://api.openai.com/v1", False),
        ("https://openrouter.ai/api/v1", False),
        ("https://8.8.8.8/v1", False),
    ],
)
def test_which_servers_are_local(url: str, local: bool) -> None:
    from cadre.llm import on_local_network

    assert on_local_network(url) is local
