"""The OpenAI adapter: Chat Completions with a JSON Schema (or JSON mode), for OpenAI and
any server that speaks the same API (Ollama, vLLM, llama.cpp server, LM Studio).

Structured output, by :class:`ResponseFormat`:

* ``json_schema``: ``response_format: {"type": "json_schema", "json_schema": {name, schema,
  strict: false}}``. Not strict: strict mode needs ``additionalProperties: false`` on every
  object, and a plan's tool ``inputs`` are open objects (the same reason the Claude adapter
  sends no ``strict``). OpenAI's current models, Ollama (0.5+), vLLM, llama.cpp server and
  LM Studio all take it.
* ``json_object`` (JSON mode): ``response_format: {"type": "json_object"}`` with the schema
  quoted in the system message (JSON mode needs the word JSON in the messages and does not
  know the schema). For older OpenAI models (``gpt-3.5``, ``gpt-4``, ``gpt-4-turbo``).
* ``auto``: ``json_object`` for the models above, ``json_schema`` for every other one.

The answer's text is parsed here; ``message.refusal`` (set by OpenAI's structured outputs)
and ``finish_reason: content_filter`` read as refused, ``finish_reason: length`` as
truncated. OpenAI itself gets ``max_completion_tokens`` (its reasoning models refuse
``max_tokens``) and no ``temperature`` for the reasoning models (``o1``, ``o3``, ``o4``,
``gpt-5``: they fix sampling); compatible servers get ``max_tokens`` and the temperature.

Notes on openai 3.63 (shared/FEATURE-FACTS.md §2): the transport is httpx2; the SDK retries
408/409/429/5xx, timeouts and connection errors itself (``max_retries``), honouring the
server's ``retry-after-ms``/``retry-after`` up to 60 s and not retrying at all past 120 s;
its backoff is fixed (0.5 s doubling to 8 s, so the backoff fields are unused). A 200 whose
body is broken JSON surfaces as a raw ``json.JSONDecodeError`` and a non-JSON 200 as a
``str``: both are mapped to ``server_error`` here. Nothing else escapes :meth:`complete`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final, Literal

import openai
from openai.types.chat import ChatCompletion

from cadre.planner.providers.base import (
    LLMRequest,
    LLMResponse,
    ProviderConfig,
    ProviderError,
    Usage,
    parse_json_object,
)

__all__ = ["JSON_MODE_MODELS", "OPENAI_BASE_URL", "OpenAIProvider", "ResponseFormat", "response_format_for"]

ResponseFormat = Literal["auto", "json_schema", "json_object"]

OPENAI_BASE_URL: Final = "https://api.openai.com/v1"

JSON_MODE_MODELS: Final = ("gpt-3.5", "gpt-4-", "gpt-4-turbo")
"""Model name prefixes (and ``gpt-4`` itself) that take JSON mode but not a JSON Schema."""

_REASONING: Final = ("o1", "o3", "o4", "gpt-5")

# 429s that will not pass with time: the account is out of credit.
_NO_QUOTA: Final = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


def response_format_for(model: str, setting: ResponseFormat = "auto") -> Literal["json_schema", "json_object"]:
    """How ``model`` is asked for JSON under ``setting`` (the module docstring's rule)."""
    if setting != "auto":
        return setting
    if model == "gpt-4" or model.startswith(JSON_MODE_MODELS):
        return "json_object"
    return "json_schema"


class OpenAIProvider:
    """:class:`planner.providers.base.Provider` over Chat Completions.

    ``name`` is what the audit, the budget's rate limits and the cache key call it:
    ``openai`` by default, ``ollama`` for the local preset. ``official`` says the endpoint is
    OpenAI's own (``config.base_url`` unset or api.openai.com), which decides the token-limit
    parameter and whether reasoning models get a temperature.
    """

    def __init__(
        self, config: ProviderConfig, *, name: str = "openai", response_format: ResponseFormat = "auto"
    ) -> None:
        self.name = name
        self.config = config
        self.response_format: ResponseFormat = response_format
        base_url = config.base_url or OPENAI_BASE_URL
        self.official = base_url.rstrip("/").startswith("https://api.openai.com")
        self._client = openai.AsyncOpenAI(
            api_key=config.api_key or "unused",  # the SDK refuses an empty key; local servers ignore it
            base_url=base_url,
            max_retries=config.max_retries,
            timeout=config.timeout_s,
        )

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        try:
            completion: Any = await self._client.chat.completions.create(**self.body(request))
        except openai.OpenAIError as exc:
            raise self._error(exc, request) from exc
        except json.JSONDecodeError as exc:
            raise ProviderError(
                "server_error",
                f"the Chat Completions API at {self._client.base_url} answered with a body that is not JSON: {exc}",
                provider=self.name,
            ) from exc
        if not isinstance(completion, ChatCompletion):  # a proxy's HTML page comes back as a str
            raise ProviderError(
                "server_error",
                f"the Chat Completions API at {self._client.base_url} answered with "
                f"{type(completion).__name__} {str(completion)[:80]!r}, not a chat completion",
                provider=self.name,
            )
        latency_ms = (time.perf_counter() - started) * 1000
        return self._response(completion, request, latency_ms)

    def body(self, request: LLMRequest) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for ``request``."""
        mode = response_format_for(request.model, self.response_format)
        system = request.system
        response_format: dict[str, Any]
        if mode == "json_schema":
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": False},
            }
        else:
            schema = json.dumps(request.schema, separators=(",", ":"), ensure_ascii=False)
            system = (
                f"{request.system}\n\nAnswer with one JSON object (`{request.schema_name}`) matching this "
                f"JSON Schema, and nothing else:\n{schema}"
            )
            response_format = {"type": "json_object"}
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": request.prompt}],
            "response_format": response_format,
            "n": 1,
        }
        reasoning = request.model.startswith(_REASONING)
        if self.official:
            body["max_completion_tokens"] = request.max_output_tokens
        else:
            body["max_tokens"] = request.max_output_tokens
        if not (self.official and reasoning):
            body["temperature"] = request.temperature
        return body

    async def aclose(self) -> None:
        await self._client.close()

    def _response(self, completion: ChatCompletion, request: LLMRequest, latency_ms: float) -> LLMResponse:
        request_id = completion._request_id or completion.id  # the x-request-id header, else the completion id
        model = completion.model or request.model
        usage = _usage(completion)
        choice = completion.choices[0] if completion.choices else None
        if choice is None:
            raise ProviderError(
                "server_error",
                f"model {model} answered the {request.kind} request without a choice",
                provider=self.name,
                request_id=request_id,
                usage=usage,
            )
        finish = choice.finish_reason or "unknown"
        refusal = choice.message.refusal
        if refusal or finish == "content_filter":
            why = f"refusal {refusal[:80]!r}" if refusal else "finish_reason content_filter"
            raise ProviderError(
                "refused",
                f"model {model} refused to answer the {request.kind} request ({why})",
                provider=self.name,
                request_id=request_id,
                usage=usage,
            )
        if finish == "length":
            raise ProviderError(
                "truncated",
                f"model {model} stopped at max_output_tokens={request.max_output_tokens} "
                f"before finishing the {request.kind} answer (finish_reason length)",
                provider=self.name,
                request_id=request_id,
                usage=usage,
            )
        text = choice.message.content or ""
        return LLMResponse(
            provider=self.name,
            model=model,
            output=parse_json_object(text),
            text=text,
            usage=usage,
            stop_reason=finish,
            latency_ms=latency_ms,
            request_id=request_id,
        )

    def _error(self, exc: openai.OpenAIError, request: LLMRequest) -> ProviderError:
        retries = self.config.max_retries
        where = self._client.base_url
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError.sdk_timeout(
                self.name, "the Chat Completions API", self.config.timeout_s, retries, request.model
            )
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError.unreachable(self.name, "the Chat Completions API", where, retries, exc)
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            detail = str(body.get("message") or exc.message)
            if exc.code:
                detail = f"{exc.code}: {detail}"
            error = ProviderError.from_status(
                self.name, exc.status_code, detail, request_id=exc.request_id, retries=retries
            )
            if exc.code in _NO_QUOTA:
                error.retryable = False
            return error
        if isinstance(exc, openai.APIResponseValidationError):
            return ProviderError(
                "server_error",
                f"the Chat Completions API answered with a body the SDK could not read: {exc.message}",
                provider=self.name,
            )
        return ProviderError(
            "server_error", f"the SDK failed unexpectedly: {type(exc).__name__}: {exc}", provider=self.name
        )


def _usage(completion: ChatCompletion) -> Usage:
    """Tokens billed: ``prompt_tokens`` includes the cached ones (billed at the cache rate);
    ``completion_tokens`` includes the reasoning ones."""
    u = completion.usage
    if u is None:  # some compatible servers leave usage out
        return Usage(input_tokens=0, output_tokens=0)
    details = u.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return Usage(input_tokens=u.prompt_tokens - cached, output_tokens=u.completion_tokens, cache_read_tokens=cached)
