"""The scripted provider users test their model path with: replies per consultation kind from
a file, or a Python function named in settings, through the same budget gate, recording and
replay as any provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cadre.bus.effects import BudgetDecided, CallSettled, ModelCalled
from cadre.llm import LLMSettingsError, build_llm
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.providers import LLMRequest, ProviderError, Usage, estimate_input_tokens, plan_request
from cadre.planner.providers.scripted import ScriptedProvider, ScriptError, load_script
from cadre.replay_cli import replayer_for
from cadre.settings import Settings
from tests.scenarios import LIBRARY_REQUEST, MODEL_PLAN, NOVEL_REQUEST
from tests.system_harness import cadre_running, settings_for
from tests.test_llm_planning import effects_of, plan_event

CATALOG = builtin_catalog()


def request(kind: str = "plan") -> LLMRequest:
    r = plan_request("count the customers", CATALOG.describe(), "scripted", 512)
    return LLMRequest(
        kind=kind,
        model=r.model,
        system=r.system,
        prompt=r.prompt,
        schema=r.schema,
        schema_name=r.schema_name,
        max_output_tokens=r.max_output_tokens,
    )


def plan_answer(request: LLMRequest) -> dict[str, Any]:
    """A scripted function: the plan for any plan request (named in settings as module:function)."""
    assert request.kind == "plan"
    return MODEL_PLAN


async def async_answer(request: LLMRequest) -> str:
    return "not JSON"


async def test_replies_per_kind_in_order_the_last_repeating(tmp_path: Path) -> None:
    script = tmp_path / "replies.json"
    script.write_text(
        json.dumps(
            {
                "plan": [{"error": "overloaded"}, {"output": MODEL_PLAN, "tokens": {"input": 100, "output": 20}}],
                "default": [{"text": "no"}],
            }
        )
    )
    provider = load_script(str(script))
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request())
    assert (caught.value.code, caught.value.retryable, caught.value.provider) == ("overloaded", True, "scripted")
    for _ in range(2):  # the last reply repeats
        answer = await provider.complete(request())
        assert (answer.output, answer.usage) == (MODEL_PLAN, Usage(input_tokens=100, output_tokens=20))
    other = await provider.complete(request("decide"))
    assert (other.output, other.text) == (None, "no")
    assert other.usage == Usage(input_tokens=estimate_input_tokens(request("decide")), output_tokens=1)
    assert [r.kind for r in provider.requests] == ["plan", "plan", "plan", "decide"]


async def test_a_toml_script_and_a_kind_without_replies(tmp_path: Path) -> None:
    script = tmp_path / "replies.toml"
    script.write_text('[[plan]]\nerror = "refused"\n')
    provider = load_script(str(script))
    with pytest.raises(ProviderError, match=r"^scripted: scripted refused for the plan request"):
        await provider.complete(request())
    with pytest.raises(ProviderError, match=r"the script has no reply for a decide request \(and no default\)"):
        await provider.complete(request("decide"))


async def test_a_function_named_in_settings_answers() -> None:
    provider = load_script("tests.test_scripted_provider:plan_answer")
    assert (await provider.complete(request())).output == MODEL_PLAN
    text = await load_script("tests.test_scripted_provider:async_answer").complete(request())
    assert (text.output, text.text) == (None, "not JSON")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"plan": [{"output": {}, "text": "x"}]}', "exactly one of output, text, error"),
        ('{"plan": [{"error": "teapot"}]}', "'teapot' is not a provider error code"),
        ('{"plan": [{"answer": 1}]}', "unknown field `answer`"),
        ("{not json", "script .+replies.json: "),
    ],
)
def test_a_bad_script_is_a_clear_error(tmp_path: Path, content: str, problem: str) -> None:
    script = tmp_path / "replies.json"
    script.write_text(content)
    with pytest.raises(ScriptError, match=problem):
        load_script(str(script))


def test_a_script_that_is_neither_a_file_nor_a_function() -> None:
    with pytest.raises(ScriptError, match=r"'nothing.json' is neither a file nor module:function"):
        load_script("nothing.json")
    with pytest.raises(ScriptError, match=r"ModuleNotFoundError"):
        load_script("no_such_module:f")
    with pytest.raises(ValueError, match="replies or a function"):
        ScriptedProvider()


def test_the_scripted_provider_needs_its_script() -> None:
    with pytest.raises(LLMSettingsError, match=r"CADRE_LLM_PROVIDER=scripted but CADRE_LLM_SCRIPT .+ is not set"):
        build_llm(Settings(llm_provider="scripted"))


async def test_a_scripted_run_goes_through_the_budget_and_replays(nats_url: str, tmp_path: Path) -> None:
    script = tmp_path / "replies.json"
    script.write_text(json.dumps({"plan": [{"output": MODEL_PLAN}]}))
    settings = settings_for(nats_url, tmp_path, llm_provider="scripted", llm_script=str(script))
    async with cadre_running(settings) as cadre:
        state = await cadre.run({"request": NOVEL_REQUEST})
        assert state.status == "completed", state.failure
        assert state.result["columns"] == ["customers"]
        proposed, effects = await plan_event(cadre, state.workflow_id)
        assert proposed.source == "model"
        assert "answered by scripted/scripted in 1 call(s)" in proposed.reason
        [decided] = effects_of(effects, BudgetDecided)
        assert decided.decision.outcome == "granted"
        [called] = effects_of(effects, ModelCalled)
        assert called.response is not None
        assert called.response.output == MODEL_PLAN
        [settled] = effects_of(effects, CallSettled)
        assert settled.cost_usd == 0  # a local model: priced at 0, still gated and settled

        denied = await cadre.run({"request": LIBRARY_REQUEST, "budget_usd": 0})
        assert denied.status == "completed", denied.failure
        proposed, effects = await plan_event(cadre, denied.workflow_id)
        assert [e.decision.outcome for e in effects_of(effects, BudgetDecided)] == ["denied"]  # even free calls
        assert (proposed.source, effects_of(effects, ModelCalled)) == ("library", [])
        records = [await cadre.bus.log.read_records(wf) for wf in (state.workflow_id, denied.workflow_id)]
    for wf_records in records:
        result = replayer_for(settings).replay(wf_records)
        assert result.ok, "\n".join(result.lines())


def test_the_readme_example_runs_on_the_embedded_server(tmp_path: Path) -> None:
    """`cadre run` with a scripted model and no NATS of its own: the embedded server's per-role
    permissions let the planner consult the budget."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    script = readme.split("cat > replies.json <<'JSON'\n", 1)[1].split("JSON\n", 1)[0]
    (tmp_path / "replies.json").write_text(script)
    vendors = ("CADRE_", "ANTHROPIC_", "GEMINI_", "GOOGLE_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(vendors)}
    env.update(CADRE_DATA_DIR=str(tmp_path / "data"), CADRE_LLM_PROVIDER="scripted", CADRE_LLM_SCRIPT="replies.json")
    proc = subprocess.run(
        [sys.executable, "-m", "cadre.cli", "run", "how many customers do we have", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["status"], result["plan_source"]) == ("completed", "model"), proc.stderr
    assert result["result"]["columns"] == ["customers"]
