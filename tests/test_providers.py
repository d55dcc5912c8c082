"""The LLM provider port: one contract run against each adapter (real SDK, local fake API),
plus replay, parse-and-repair, prompts and cost arithmetic.

``ProviderContract`` holds the tests; ``TestAnthropicProvider``, ``TestGeminiProvider`` and
``TestOpenAIProvider`` run them against ``tests/fake_llm.py``'s fakes of each API. Retries
cost no time: the Anthropic and OpenAI fakes send ``retry-after-ms: 1`` and the Gemini
provider is configured with millisecond backoff.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, ClassVar

import msgspec
import pytest

from cadre.bus.plan import Plan
from cadre.bus.request import PlanIn
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.providers import (
    ERROR_CODES,
    PLAN_SCHEMA,
    LLMRequest,
    LLMResponse,
    ModelPrice,
    Outcome,
    Prices,
    Provider,
    ProviderConfig,
    ProviderError,
    Usage,
    cost_usd,
    estimate_input_tokens,
    estimate_tokens,
    model_price,
    parse_json_object,
    plan_request,
    plan_validator,
    problems_of,
    require_output,
    structured_flow,
    validate_plan_output,
    worst_case,
)
from cadre.planner.providers.anthropic import AnthropicProvider
from cadre.planner.providers.gemini import GeminiProvider
from cadre.planner.providers.openai import OpenAIProvider, response_format_for
from tests.fake_llm import (
    FakeAPI,
    anthropic_api,
    blocked,
    broken,
    gemini_api,
    max_tokens,
    ok,
    openai_api,
    refusal,
    slow,
    status,
    text,
)
from tests.scripted_provider import RecordedProvider, ReplayExhausted, run_structured

CATALOG = builtin_catalog()

VALID_PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "tables", "description": "list the tables", "tool": "sql.schema", "inputs": {}},
        {
            "id": "top",
            "description": "the five best customers",
            "depends_on": ["tables"],
            "tool": "sql.query",
            "inputs": {"sql": "select name from customers order by total desc limit 5"},
        },
    ],
    "output": "top",
    "rationale": "read the schema, then query",
}

PRICES = Prices(
    default=ModelPrice(input=100.0, output=100.0),
    by_model={
        "claude-haiku-4-5": model_price(input=1.0, output=5.0),
        "gemini-2.5-flash": ModelPrice(input=0.3, output=2.5, cache_read=0.03),
    },
)

Connect = Callable[..., Provider]


def request_for(model: str, text_: str = "find the top five customers") -> LLMRequest:
    return plan_request(text_, CATALOG.describe(), model, max_output_tokens=2048)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the contract ----------------------------------------------------------------------------


class ProviderContract:
    """What every adapter must do; subclasses say how to start its fake and build it."""

    model: ClassVar[str]
    name: ClassVar[str]
    overloaded_status: ClassVar[int]

    def serve(self) -> contextlib.AbstractAsyncContextManager[FakeAPI]:
        raise NotImplementedError

    def build(self, config: ProviderConfig) -> Provider:
        raise NotImplementedError

    def prompt_of(self, body: dict[str, Any]) -> str:
        """The user prompt in a request body as the adapter sent it."""
        raise NotImplementedError

    @pytest.fixture
    async def fake(self) -> AsyncIterator[FakeAPI]:
        async with self.serve() as api:
            yield api

    @pytest.fixture
    async def connect(self, fake: FakeAPI) -> AsyncIterator[Connect]:
        made: list[Provider] = []

        def connect(**overrides: Any) -> Provider:
            settings: dict[str, Any] = {
                "api_key": "test-key",
                "models": {"default": self.model},
                "base_url": fake.base_url,
                "timeout_s": 5.0,
                "max_retries": 2,
                "backoff_initial_s": 0.001,
                "backoff_max_s": 0.005,
            }
            provider = self.build(ProviderConfig(**(settings | overrides)))
            made.append(provider)
            return provider

        yield connect
        for provider in made:
            await provider.aclose()

    async def test_a_valid_plan_comes_back_parsed_with_usage_and_latency(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN, input=1200, output=300))
        provider = connect()
        response = await provider.complete(request_for(self.model))
        assert provider.name == self.name
        assert response.provider == self.name
        assert response.model == self.model
        assert response.output == VALID_PLAN
        assert parse_json_object(response.text) == VALID_PLAN
        assert response.usage == Usage(input_tokens=1200, output_tokens=300)
        assert response.latency_ms > 0
        assert response.request_id is not None
        assert [t.id for t in validate_plan_output(response.output).nodes] == ["tables", "top"]
        assert len(fake.requests) == 1

    async def test_usage_prices_the_call(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN, input=1000, output=500, cache_read=2000))
        response = await connect().complete(request_for(self.model))
        assert response.usage == Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=2000)
        price = PRICES.for_model(self.model)
        expected = (1000 * price.input + 500 * price.output + 2000 * price.cache_read) / 1e6
        assert cost_usd(response.usage, response.model, PRICES) == pytest.approx(expected)
        request = request_for(self.model)
        _, worst = worst_case(PRICES, request.model, estimate_input_tokens(request), request.max_output_tokens, 1.0)
        assert 0 < cost_usd(response.usage, response.model, PRICES) < worst

    @pytest.mark.parametrize("code", ["rate_limited", "overloaded", "server_error"])
    async def test_transient_errors_are_retried_a_bounded_number_of_times(
        self, fake: FakeAPI, connect: Connect, code: str
    ) -> None:
        http = {"rate_limited": 429, "overloaded": self.overloaded_status, "server_error": 500}[code]
        fake.add(*[status(http)] * 5)
        with pytest.raises(ProviderError) as caught:
            await connect(max_retries=2).complete(request_for(self.model))
        assert len(fake.requests) == 3  # max_retries + 1
        error = caught.value
        assert (error.code, error.status, error.retryable, error.provider) == (code, http, True, self.name)
        assert re.fullmatch(
            rf"{self.name}: the API .+ \(HTTP {http}\) \(the SDK retried up to 2 times\): .+; .+", error.message
        )

    async def test_a_retry_that_succeeds_is_invisible(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(status(429), status(self.overloaded_status), ok(VALID_PLAN))
        response = await connect(max_retries=2).complete(request_for(self.model))
        assert response.output == VALID_PLAN
        assert len(fake.requests) == 3

    async def test_no_retries_means_one_request(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(status(500), ok(VALID_PLAN))
        with pytest.raises(ProviderError, match=r"^\S+: the API failed with a server error \(HTTP 500\): "):
            await connect(max_retries=0).complete(request_for(self.model))
        assert len(fake.requests) == 1

    async def test_a_slow_api_times_out_quickly(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(slow(2.0), slow(2.0))
        provider = connect(timeout_s=0.3, max_retries=0)
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await provider.complete(request_for(self.model))
        assert time.monotonic() - started < 1.5
        assert (caught.value.code, caught.value.retryable, caught.value.status) == ("timeout", True, None)
        assert re.fullmatch(rf"{self.name}: no answer from .+ within 0\.3 s.*; retry later, .+", caught.value.message)

    async def test_timeouts_are_retried_a_bounded_number_of_times(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(slow(2.0), slow(2.0), slow(2.0))
        started = time.monotonic()
        with pytest.raises(ProviderError, match=r"^\S+: no answer from .+ within 0\.2 s") as caught:
            await connect(timeout_s=0.2, max_retries=1).complete(request_for(self.model))
        assert time.monotonic() - started < 2.5  # two attempts and one backoff, never the 2 s answer
        assert len(fake.requests) == 2
        assert caught.value.code == "timeout"

    async def test_aclose_is_idempotent(self, connect: Connect) -> None:
        provider = connect()
        await provider.aclose()
        await provider.aclose()

    async def test_an_unreachable_api_is_a_connection_error(self, connect: Connect) -> None:
        provider = connect(base_url=f"http://127.0.0.1:{closed_port()}", max_retries=0)
        started = time.monotonic()
        with pytest.raises(ProviderError, match=r"^\S+: could not reach .+; check base_url and the network") as caught:
            await provider.complete(request_for(self.model))
        assert time.monotonic() - started < 2
        assert (caught.value.code, caught.value.retryable) == ("connection", True)

    @pytest.mark.parametrize(
        ("http", "code"),
        [(401, "auth"), (403, "auth"), (400, "bad_request"), (404, "bad_request"), (422, "bad_request")],
    )
    async def test_client_errors_are_not_retried(self, fake: FakeAPI, connect: Connect, http: int, code: str) -> None:
        fake.add(status(http), ok(VALID_PLAN))
        with pytest.raises(ProviderError) as caught:
            await connect(max_retries=2).complete(request_for(self.model))
        assert len(fake.requests) == 1
        assert (caught.value.code, caught.value.status, caught.value.retryable) == (code, http, False)
        assert caught.value.message.endswith("retrying will not help")

    async def test_a_refusal_is_reported_as_refused(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(refusal())
        with pytest.raises(
            ProviderError, match=rf"^{self.name}: model \S+ refused to answer the plan request"
        ) as caught:
            await connect().complete(request_for(self.model))
        assert (caught.value.code, caught.value.retryable) == ("refused", False)
        assert len(fake.requests) == 1

    async def test_an_answer_cut_at_max_tokens_is_truncated(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(max_tokens())
        with pytest.raises(ProviderError, match=r"stopped at max_output_tokens=2048 .+; raise max_output_tokens") as e:
            await connect().complete(request_for(self.model))
        assert (e.value.code, e.value.retryable) == ("truncated", False)
        assert e.value.usage == Usage(input_tokens=10, output_tokens=5)  # billed even though there is no answer

    async def test_tokens_of_a_failed_round_are_counted(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(text("nope", input=7, output=3), refusal())
        outcome = await run_structured(connect(), request_for(self.model), validate_plan_output)
        assert outcome.fallback_reason == "provider_error: refused"
        assert outcome.usage == Usage(input_tokens=17, output_tokens=8)

    async def test_malformed_output_gets_one_repair_then_falls_back(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(text("not json{"), text("still not json"))
        outcome = await run_structured(connect(), request_for(self.model), validate_plan_output)
        assert (outcome.value, outcome.repaired, outcome.fallback_reason) == (None, True, "invalid_output_after_repair")
        assert len(fake.requests) == 2
        first, second = (self.prompt_of(body) for body in fake.requests)
        assert second.startswith(first)
        assert "<previous_answer>\nnot json{\n</previous_answer>" in second
        assert '- $: expected one JSON object for `emit_plan`, got "not json{"' in second
        assert [a.summary for a in outcome.attempts] == [
            'invalid output: $: expected one JSON object for `emit_plan`, got "not json{"',
            'invalid output: $: expected one JSON object for `emit_plan`, got "still not json"',
        ]

    async def test_malformed_output_repaired(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(text("not json{", input=100, output=10), ok(VALID_PLAN, input=150, output=200))
        outcome = await run_structured(connect(), request_for(self.model), validate_plan_output)
        assert isinstance(outcome.value, Plan)
        assert (outcome.repaired, outcome.fallback_reason, outcome.ok) == (True, None, True)
        assert outcome.usage == Usage(input_tokens=250, output_tokens=210)
        assert len(fake.requests) == 2

    async def test_an_invalid_plan_is_repaired_with_its_errors_by_path(self, fake: FakeAPI, connect: Connect) -> None:
        bad = {"nodes": [{"id": "bad id", "tool": "sql.query", "inputs": {}, "colour": "red"}]}
        fake.add(ok(bad), ok(VALID_PLAN))
        outcome = await run_structured(connect(), request_for(self.model), validate_plan_output)
        assert outcome.ok
        assert outcome.repaired
        second = self.prompt_of(fake.requests[1])
        assert "- $.nodes[0].id: String should match pattern '^[A-Za-z0-9_-]{1,64}$' (got \"bad id\")" in second
        assert "- $.nodes[0].colour: Extra inputs are not permitted" in second

    async def test_a_provider_error_gets_no_repair(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(status(401), ok(VALID_PLAN))
        outcome = await run_structured(connect(), request_for(self.model), validate_plan_output)
        assert (outcome.value, outcome.repaired, outcome.fallback_reason) == (None, False, "provider_error: auth")
        assert len(fake.requests) == 1


class TestAnthropicProvider(ProviderContract):
    model = "claude-haiku-4-5"  # not a deprecated name: the SDK warns on those, and warnings are errors here
    name = "anthropic"
    overloaded_status = 529

    def serve(self) -> contextlib.AbstractAsyncContextManager[FakeAPI]:
        return anthropic_api()

    def build(self, config: ProviderConfig) -> Provider:
        return AnthropicProvider(config)

    def prompt_of(self, body: dict[str, Any]) -> str:
        content = body["messages"][-1]["content"]
        assert isinstance(content, str)
        return content

    async def test_wire_format_is_forced_tool_use(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN))
        request = request_for(self.model)
        await connect().complete(request)
        body, headers = fake.requests[0], fake.headers[0]
        assert fake.paths == ["/v1/messages"]
        assert headers["authorization"] == "Bearer test-key"
        assert body["model"] == "claude-haiku-4-5"
        assert body["max_tokens"] == 2048
        assert body["system"] == request.system
        assert body["messages"] == [{"role": "user", "content": request.prompt}]
        assert [(t["name"], t["input_schema"]) for t in body["tools"]] == [("emit_plan", PLAN_SCHEMA)]
        assert body["tool_choice"] == {"type": "tool", "name": "emit_plan"}
        assert "temperature" not in body

    async def test_cache_writes_are_counted(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN, input=10, output=20, cache_read=300, cache_write=4000))
        response = await connect().complete(request_for(self.model))
        assert response.usage == Usage(
            input_tokens=10, output_tokens=20, cache_read_tokens=300, cache_write_tokens=4000
        )
        assert response.usage.total_input_tokens == 4310
        assert cost_usd(response.usage, self.model, PRICES) == pytest.approx(
            (10 * 1.0 + 20 * 5.0 + 300 * 0.1 + 4000 * 1.25) / 1e6
        )

    async def test_the_server_can_forbid_a_retry(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(status(529, {"x-should-retry": "false"}), ok(VALID_PLAN))
        with pytest.raises(ProviderError) as caught:
            await connect(max_retries=2).complete(request_for(self.model))
        assert len(fake.requests) == 1
        assert (caught.value.code, caught.value.request_id) == ("overloaded", "req_fake_1")
        assert "overloaded_error: fake status 529" in caught.value.message

    async def test_a_spend_limit_is_not_retryable(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(status(429, {"x-should-retry": "false"}, error_code="enforced_spend_limit_reached"))
        with pytest.raises(ProviderError) as caught:
            await connect().complete(request_for(self.model))
        assert (caught.value.code, caught.value.retryable) == ("rate_limited", False)

    async def test_text_without_a_tool_call_has_no_output(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(text('{"nodes": []}'))
        response = await connect().complete(request_for(self.model))
        assert (response.output, response.text, response.stop_reason) == (None, '{"nodes": []}', "end_turn")


class TestGeminiProvider(ProviderContract):
    model = "gemini-2.5-flash"
    name = "gemini"
    overloaded_status = 503

    def serve(self) -> contextlib.AbstractAsyncContextManager[FakeAPI]:
        return gemini_api()

    def build(self, config: ProviderConfig) -> Provider:
        return GeminiProvider(config)

    def prompt_of(self, body: dict[str, Any]) -> str:
        parts = body["contents"][-1]["parts"]
        assert isinstance(parts[0]["text"], str)
        return parts[0]["text"]

    async def test_wire_format_is_json_mode_with_the_schema(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN))
        request = request_for(self.model)
        await connect().complete(request)
        body, headers = fake.requests[0], fake.headers[0]
        assert fake.paths == ["/v1beta/models/gemini-2.5-flash:generateContent"]
        assert headers["x-goog-api-key"] == "test-key"
        assert body["contents"] == [{"role": "user", "parts": [{"text": request.prompt}]}]
        assert body["systemInstruction"]["parts"] == [{"text": request.system}]
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"] == PLAN_SCHEMA
        assert (config["maxOutputTokens"], config["temperature"], config["candidateCount"]) == (2048, 0.0, 1)

    async def test_thoughts_are_billed_as_output(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN, input=100, output=50, thoughts=400, cache_read=60))
        response = await connect().complete(request_for(self.model))
        assert response.usage == Usage(input_tokens=100, output_tokens=450, cache_read_tokens=60)

    async def test_a_blocked_prompt_is_refused(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(blocked())
        with pytest.raises(ProviderError, match=r"^gemini: model \S+ blocked the plan prompt \(blockReason SAFETY\)"):
            await connect().complete(request_for(self.model))

    async def test_a_fenced_json_answer_is_read(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(text('```json\n{"nodes": []}\n```'))
        response = await connect().complete(request_for(self.model))
        assert response.output == {"nodes": []}


class TestOpenAIProvider(ProviderContract):
    model = "gpt-4.1-mini"
    name = "openai"
    overloaded_status = 503

    def serve(self) -> contextlib.AbstractAsyncContextManager[FakeAPI]:
        return openai_api()

    def build(self, config: ProviderConfig) -> Provider:
        return OpenAIProvider(dataclasses.replace(config, base_url=f"{config.base_url}/v1"))

    def prompt_of(self, body: dict[str, Any]) -> str:
        content = body["messages"][-1]["content"]
        assert isinstance(content, str)
        return content

    async def test_wire_format_is_a_json_schema_response_format(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN))
        request = request_for(self.model)
        await connect().complete(request)
        body, headers = fake.requests[0], fake.headers[0]
        assert fake.paths == ["/v1/chat/completions"]
        assert headers["authorization"] == "Bearer test-key"
        assert body["messages"] == [
            {"role": "system", "content": request.system},
            {"role": "user", "content": request.prompt},
        ]
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "emit_plan", "schema": PLAN_SCHEMA, "strict": False},
        }
        # a compatible server (not api.openai.com): max_tokens, and the temperature
        assert (body["model"], body["max_tokens"], body["temperature"], body["n"]) == (self.model, 2048, 0.0, 1)
        assert "max_completion_tokens" not in body

    async def test_old_models_get_json_mode_with_the_schema_in_the_prompt(
        self, fake: FakeAPI, connect: Connect
    ) -> None:
        fake.add(ok(VALID_PLAN))
        request = request_for("gpt-3.5-turbo")
        response = await connect().complete(request)
        assert response.output == VALID_PLAN
        body = fake.requests[0]
        assert body["response_format"] == {"type": "json_object"}
        system = body["messages"][0]["content"]
        assert system.startswith(request.system + "\n\nAnswer with one JSON object (`emit_plan`)")
        assert msgspec.json.decode(system.rsplit("\n", 1)[1]) == PLAN_SCHEMA

    def test_the_response_format_rule(self) -> None:
        assert [response_format_for(m) for m in ("gpt-4o-mini", "gpt-4.1", "gpt-5", "o3", "llama3.2:1b")] == [
            "json_schema"
        ] * 5
        assert [response_format_for(m) for m in ("gpt-4", "gpt-4-turbo", "gpt-4-0613", "gpt-3.5-turbo")] == [
            "json_object"
        ] * 4
        assert response_format_for("llama3.2:1b", "json_object") == "json_object"

    async def test_openai_itself_gets_its_own_parameters(self) -> None:
        config = ProviderConfig(api_key="k", models={"default": "gpt-5-mini"})
        provider = OpenAIProvider(config)
        try:
            assert provider.official
            body = provider.body(request_for("gpt-5-mini"))
            assert (body["max_completion_tokens"], "max_tokens" in body, "temperature" in body) == (2048, False, False)
            body = provider.body(request_for("gpt-4.1-mini"))
            assert (body["max_completion_tokens"], body["temperature"]) == (2048, 0.0)
        finally:
            await provider.aclose()

    async def test_429_honours_retry_after(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(status(429, {"retry-after": "0.3"}), ok(VALID_PLAN))
        started = time.monotonic()
        response = await connect(max_retries=2).complete(request_for(self.model))
        assert response.output == VALID_PLAN
        assert time.monotonic() - started >= 0.3
        assert [h["x-stainless-retry-count"] for h in fake.headers] == ["0", "1"]

    async def test_a_retry_after_beyond_two_minutes_is_not_waited_for(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(status(429, {"retry-after": "600"}), ok(VALID_PLAN))
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await connect(max_retries=2).complete(request_for(self.model))
        assert time.monotonic() - started < 2
        assert len(fake.requests) == 1
        assert (caught.value.code, caught.value.retryable, caught.value.request_id) == (
            "rate_limited",
            True,
            "req_fake_1",
        )
        assert "rate_limit_exceeded: fake status 429" in caught.value.message

    async def test_no_quota_is_not_retryable(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(status(429, {"x-should-retry": "false"}, error_code="insufficient_quota"))
        with pytest.raises(ProviderError) as caught:
            await connect().complete(request_for(self.model))
        assert (caught.value.code, caught.value.retryable) == ("rate_limited", False)

    async def test_a_body_that_is_not_json_is_a_server_error(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(broken())
        with pytest.raises(ProviderError, match=r"^openai: the Chat Completions API at .+ body that is not JSON") as e:
            await connect().complete(request_for(self.model))
        assert (e.value.code, e.value.retryable) == ("server_error", True)
        assert len(fake.requests) == 1

    async def test_a_content_filter_is_refused(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(blocked())
        with pytest.raises(ProviderError, match=r"^openai: model \S+ refused .+ \(finish_reason content_filter\)"):
            await connect().complete(request_for(self.model))

    async def test_cached_and_reasoning_tokens_are_billed(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN, input=100, output=50, thoughts=400, cache_read=60))
        response = await connect().complete(request_for(self.model))
        assert response.usage == Usage(input_tokens=100, output_tokens=450, cache_read_tokens=60)

    async def test_a_local_server_needs_no_key(self, fake: FakeAPI, connect: Connect) -> None:
        fake.add(ok(VALID_PLAN))
        response = await connect(api_key="").complete(request_for("llama3.2:1b"))
        assert response.model == "llama3.2:1b"
        assert fake.headers[0]["authorization"] == "Bearer unused"


# --- replay and the parse-and-repair flow ------------------------------------------------------


def answer(output: dict[str, Any] | None, text_: str | None = None, **tokens: int) -> LLMResponse:
    return LLMResponse(
        provider="recorded",
        model="m",
        output=output,
        text=msgspec.json.encode(output).decode() if text_ is None else text_,
        usage=Usage(input_tokens=tokens.get("input", 10), output_tokens=tokens.get("output", 5)),
        stop_reason="end_turn",
        latency_ms=1.0,
    )


def overloaded() -> ProviderError:
    return ProviderError("overloaded", "the API is overloaded (HTTP 529)", provider="recorded", status=529)


def replay(
    flow: Generator[LLMRequest, LLMResponse | ProviderError, Outcome[Plan]],
    answers: Sequence[LLMResponse | ProviderError],
) -> tuple[Outcome[Plan], list[LLMRequest]]:
    """A hand-written replay driver: serve recorded answers to the flow, no I/O, no asyncio."""
    sent: list[LLMRequest] = []
    request = next(flow)
    for reply in answers:
        sent.append(request)
        try:
            request = flow.send(reply)
        except StopIteration as done:
            return done.value, sent
    raise AssertionError(f"the flow asked for answer {len(answers) + 1}; only {len(answers)} recorded")


REQUEST = request_for("m")


def test_flow_valid_first_time() -> None:
    outcome, sent = replay(structured_flow(REQUEST, validate_plan_output), [answer(VALID_PLAN)])
    assert sent == [REQUEST]
    assert isinstance(outcome.value, Plan)
    assert (outcome.repaired, outcome.fallback_reason, len(outcome.attempts)) == (False, None, 1)
    assert outcome.attempts[0].summary == "valid output"


def test_flow_repairs_once_with_the_same_request_shape() -> None:
    outcome, sent = replay(
        structured_flow(REQUEST, validate_plan_output), [answer({"nodes": []}), answer(VALID_PLAN, input=30)]
    )
    assert outcome.ok
    assert outcome.repaired
    assert outcome.usage == Usage(input_tokens=40, output_tokens=10)
    repair = sent[1]
    assert (repair.kind, repair.model, repair.schema, repair.schema_name, repair.max_output_tokens) == (
        REQUEST.kind,
        REQUEST.model,
        REQUEST.schema,
        REQUEST.schema_name,
        REQUEST.max_output_tokens,
    )
    assert repair.repair_of == '{"nodes":[]}'
    assert repair.system == REQUEST.system
    assert repair.prompt.startswith(REQUEST.prompt + "\n\nYour previous answer was not valid:\n")
    assert "- $.nodes: List should have at least 1 item after validation, not 0 (got [])" in repair.prompt


def test_flow_gives_up_after_one_repair() -> None:
    outcome, sent = replay(structured_flow(REQUEST, validate_plan_output), [answer(None, "no"), answer(None, "")])
    assert (outcome.value, outcome.fallback_reason, len(sent)) == (None, "invalid_output_after_repair", 2)
    assert outcome.attempts[1].problems == ("$: expected one JSON object for `emit_plan`, got an empty answer",)


def test_flow_provider_error_ends_it_without_repair() -> None:
    outcome, sent = replay(structured_flow(REQUEST, validate_plan_output), [overloaded()])
    assert (outcome.value, outcome.repaired, outcome.fallback_reason, len(sent)) == (
        None,
        False,
        "provider_error: overloaded",
        1,
    )
    assert re.fullmatch(
        r"error overloaded: recorded: the API is overloaded \(HTTP 529\); .+", outcome.attempts[0].summary
    )


def test_flow_provider_error_on_the_repair_round() -> None:
    outcome, _ = replay(structured_flow(REQUEST, validate_plan_output), [answer({"nodes": []}), overloaded()])
    assert (outcome.repaired, outcome.fallback_reason) == (True, "provider_error: overloaded")
    assert outcome.usage == Usage(input_tokens=10, output_tokens=5)


def test_flow_is_deterministic() -> None:
    answers = [answer({"nodes": [{"id": "x y"}]}), answer(VALID_PLAN)]
    _, first = replay(structured_flow(REQUEST, validate_plan_output), answers)
    _, second = replay(structured_flow(REQUEST, validate_plan_output), answers)
    assert first == second
    assert msgspec.json.encode(first) == msgspec.json.encode(second)


def test_the_repair_prompt_bounds_the_quoted_answer() -> None:
    huge = "x" * 10_000
    _, sent = replay(structured_flow(REQUEST, validate_plan_output), [answer(None, huge), answer(VALID_PLAN)])
    assert "x" * 4000 + " [...]\n</previous_answer>" in sent[1].prompt
    assert sent[1].repair_of == huge


async def test_recorded_provider_replays_in_order_and_refuses_more() -> None:
    provider = RecordedProvider([answer(VALID_PLAN), overloaded()])
    assert (await provider.complete(REQUEST)).output == VALID_PLAN
    with pytest.raises(ProviderError, match=r"^recorded: the API is overloaded \(HTTP 529\); retry later"):
        await provider.complete(REQUEST)
    with pytest.raises(ReplayExhausted, match=r"^call 3 \(plan with model m\) has no recorded answer: .+ holds 2; "):
        await provider.complete(REQUEST)
    assert provider.requests == [REQUEST, REQUEST]
    assert provider.remaining == 0
    await provider.aclose()


async def test_run_structured_with_the_catalog_checks_repairs_unknown_tools() -> None:
    wrong_tool = {"nodes": [{"id": "q", "tool": "sql.select", "inputs": {"sql": "select 1"}}]}
    provider = RecordedProvider([answer(wrong_tool), answer(VALID_PLAN)])
    outcome = await run_structured(provider, REQUEST, plan_validator(CATALOG))
    assert outcome.ok
    assert outcome.repaired
    problems = outcome.attempts[0].problems
    assert any(re.match(r"^\$\.nodes\[0\]\.tool: .*'sql\.select'", p) for p in problems), problems
    assert provider.requests[1].repair_of is not None


# --- prompts -----------------------------------------------------------------------------------


def test_the_plan_request_is_deterministic_and_grounded() -> None:
    first = request_for("claude-haiku-4-5", "report the top customers")
    assert first == request_for("claude-haiku-4-5", "report the top customers")
    assert (first.kind, first.schema_name, first.max_output_tokens, first.temperature) == ("plan", "emit_plan", 2048, 0)
    full = PlanIn.model_json_schema()
    assert full["$defs"]["TaskIn"]["properties"].pop("pool")  # not asked of the model: the deployment assigns pools
    for name in ("pre", "post"):  # checked conditions: the decomposer's and the plan author's, not the planner's
        assert full["$defs"]["TaskIn"]["properties"].pop(name)
    assert first.schema == full
    assert first.prompt == "Plan this request:\n<request>\nreport the top customers\n</request>"
    for tool in CATALOG:
        assert f'{{"name":"{tool}",' in first.system
    for word in ('"depends_on"', '"fallback_tools"', '"retries"', '"output"', "${task_id.field}", "emit_plan"):
        assert word in first.system


def test_prohibited_tools_are_left_out_of_the_prompt() -> None:
    catalog = CATALOG.with_policy(prohibited=["fs.write"])
    request = plan_request("x", catalog.describe(), "m", 100)
    assert '"name":"fs.write"' not in request.system
    assert '"name":"fs.read"' in request.system


def test_validate_plan_output_converts_to_the_wire_type() -> None:
    plan = validate_plan_output(VALID_PLAN)
    assert plan.nodes[1].depends_on == ("tables",)
    assert plan.output == "top"
    with pytest.raises(ValueError, match=r"nodes\.0\.id\n  String should match pattern"):
        validate_plan_output({"nodes": [{"id": "a.b"}]})


# --- errors, configuration, costs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("http", "code", "retryable"),
    [
        (429, "rate_limited", True),
        (529, "overloaded", True),
        (503, "overloaded", True),
        (500, "server_error", True),
        (502, "server_error", True),
        (408, "timeout", True),
        (400, "bad_request", False),
        (404, "bad_request", False),
        (422, "bad_request", False),
        (401, "auth", False),
        (403, "auth", False),
    ],
)
def test_http_status_maps_to_a_code(http: int, code: str, retryable: bool) -> None:
    error = ProviderError.from_status("x", http, "boom", request_id="r1", retries=1)
    assert (error.code, error.status, error.retryable, error.request_id) == (code, http, retryable, "r1")
    assert error.to_wire() == {"code": code, "message": error.message}


def test_provider_errors_are_well_formed() -> None:
    assert set(ERROR_CODES) == {
        "rate_limited",
        "overloaded",
        "server_error",
        "timeout",
        "connection",
        "bad_request",
        "auth",
        "malformed_output",
        "refused",
        "truncated",
    }
    error = ProviderError.from_status("anthropic", 429, "rate_limit_error: slow down", retries=2)
    assert error.message == (
        "anthropic: the API rate-limited the request (HTTP 429) (the SDK retried up to 2 times): "
        "rate_limit_error: slow down; wait and retry later, lower the concurrency, or raise the account's rate limit"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message, copy.status, copy.retryable) == (error.code, error.message, 429, True)
    with pytest.raises(ValueError, match=r"^unknown provider error code 'teapot'; expected one of rate_limited, "):
        ProviderError("teapot", "x", provider="p")  # type: ignore[arg-type]


def test_provider_config() -> None:
    config = ProviderConfig(api_key="secret", models={"default": "small", "decide": "large"})
    assert (config.model_for("plan"), config.model_for("decide")) == ("small", "large")
    assert "secret" not in repr(config)
    with pytest.raises(ValueError, match=r'^models must name a "default" model; got kinds \[\'plan\'\]$'):
        ProviderConfig(api_key="k", models={"plan": "m"})
    with pytest.raises(ValueError, match=r"^models names unknown kinds \['plann'\]"):
        ProviderConfig(api_key="k", models={"default": "m", "plann": "m"})
    with pytest.raises(ValueError, match=r"^timeout_s must be > 0 seconds; got 0$"):
        ProviderConfig(api_key="k", models={"default": "m"}, timeout_s=0)
    with pytest.raises(ValueError, match=r"^max_retries must be >= 0; got -1$"):
        ProviderConfig(api_key="k", models={"default": "m"}, max_retries=-1)


def test_costs_and_estimates() -> None:
    assert [estimate_tokens(s) for s in ("", "abcd", "abcde", "x" * 400)] == [0, 1, 2, 100]
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=1_000_000, cache_write_tokens=0)
    assert cost_usd(usage, "claude-haiku-4-5", PRICES) == pytest.approx(1.0 + 5.0 + 0.1)
    assert cost_usd(usage, "claude-haiku-4-5-20251001", PRICES) == pytest.approx(6.1)  # a dated name, by prefix
    assert cost_usd(usage, "unknown-model", PRICES) == pytest.approx(200.0)  # the default prices it
    request = request_for("claude-haiku-4-5")
    schema_chars = len(msgspec.json.encode(request.schema))
    chars = len(request.system) + len(request.prompt) + schema_chars
    assert estimate_input_tokens(request) == pytest.approx(chars / 4, abs=3)  # each part rounded up
    expected = (chars / 4 * 1.0 + 2048 * 5.0) / 1e6
    assert worst_case(PRICES, request.model, estimate_input_tokens(request), 2048, 1.0)[1] == pytest.approx(
        expected, rel=0.01
    )
    tokens, usd = worst_case(PRICES, "unknown-model", 1001, 10, 1.5)  # the safety factor, rounded up
    assert (tokens, usd) == (1502, pytest.approx((1502 * 100.0 + 10 * 100.0) / 1e6))


def test_openai_list_prices() -> None:
    from cadre.planner.providers.pricing import DEFAULT_PRICE, DEFAULT_PRICES

    prices = Prices(default=DEFAULT_PRICE, by_model=DEFAULT_PRICES)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=1_000_000)
    assert cost_usd(usage, "gpt-4.1-mini-2025-04-14", prices) == pytest.approx(0.40 + 1.60 + 0.10)  # by prefix
    assert cost_usd(usage, "gpt-4o-mini", prices) == pytest.approx(0.15 + 0.60 + 0.075)  # not gpt-4o's
    assert cost_usd(usage, "gpt-4o", prices) == pytest.approx(2.50 + 10.0 + 1.25)
    assert prices.for_model("gpt-5-mini").cache_write == prices.for_model("gpt-5-mini").input  # no write surcharge


def test_parse_json_object() -> None:
    assert parse_json_object(' {"a": 1} ') == {"a": 1}
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object('```\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object("[1, 2]") is None
    assert parse_json_object("not json{") is None
    assert parse_json_object("") is None


def test_require_output() -> None:
    assert require_output(answer({"a": 1})) == {"a": 1}
    with pytest.raises(
        ProviderError, match=r"^recorded: model m answered without a JSON object \(got 'oops'\); ask"
    ) as e:
        require_output(answer(None, "oops"))
    assert (e.value.code, e.value.retryable, e.value.usage) == (
        "malformed_output",
        False,
        Usage(input_tokens=10, output_tokens=5),
    )


def test_problems_of_other_validators() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"^Expected `str`, got `int` - at `\$\.nodes\[0\]\.id`$") as e:
        msgspec.convert({"nodes": [{"id": 1}]}, Plan)
    assert problems_of(e.value) == ["$.nodes[0].id: Expected `str`, got `int`"]
    assert problems_of(ValueError("no good")) == ["$: no good"]
