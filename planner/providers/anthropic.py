"""The Claude adapter: structured output by forced tool use over the Messages API.

The request becomes one tool, named ``request.schema_name`` with ``input_schema =
request.schema``, and ``tool_choice`` forces the model to call it; the ``tool_use`` block's
``input`` is the answer. (No ``strict`` flag: strict tools require ``additionalProperties:
false`` on every object, and a plan's tool ``inputs`` are open objects.)

``request.temperature`` is not sent: anthropic 2.11's ``messages.create`` has no
``temperature`` (nor ``top_p``/``top_k``) parameter any more, and current models fix sampling.

Notes on anthropic 2.11 (see shared/SDK-FACTS.md §1): the transport is httpx2; the SDK
retries 408/409/429/5xx and connection errors itself (``max_retries``), honouring the
server's ``retry-after(-ms)`` with no cap; ``timeout`` bounds each attempt. Every SDK error
is mapped to a :class:`ProviderError` here; nothing else escapes :meth:`complete`.
"""

from __future__ import annotations

import json
import time
from typing import Final

import anthropic
from anthropic.types import Message, TextBlock, ToolUseBlock

from cadre.planner.providers.base import LLMRequest, LLMResponse, ProviderConfig, ProviderError, Usage

__all__ = ["AnthropicProvider"]

# 429s that will not pass with time: the account hit a spend limit.
_SPEND_LIMITS: Final = (anthropic.EnforcedSpendLimitReachedError, anthropic.ContractSpendLimitReachedError)


class AnthropicProvider:
    """:class:`planner.providers.base.Provider` for Claude models."""

    name = "anthropic"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._client = anthropic.AsyncAnthropic(
            api_key=config.api_key,
            base_url=config.base_url,
            max_retries=config.max_retries,
            # An explicit timeout also turns off the SDK's "streaming is required" guess for large max_tokens.
            timeout=config.timeout_s,
        )

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        try:
            message = await self._client.messages.create(
                model=request.model,
                max_tokens=request.max_output_tokens,
                system=request.system,
                messages=[{"role": "user", "content": request.prompt}],
                tools=[
                    {
                        "name": request.schema_name,
                        "description": "Return the answer as the input of this tool, matching its schema.",
                        "input_schema": request.schema,
                    }
                ],
                tool_choice={"type": "tool", "name": request.schema_name},
            )
        except anthropic.AnthropicError as exc:
            raise self._error(exc, request) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return self._response(message, request, latency_ms)

    async def aclose(self) -> None:
        await self._client.close()

    def _response(self, message: Message, request: LLMRequest, latency_ms: float) -> LLMResponse:
        request_id = message._request_id  # the `request-id` header; the SDK's documented accessor
        stop = message.stop_reason or "unknown"
        usage = Usage(
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
            cache_read_tokens=message.usage.cache_read_input_tokens or 0,
            cache_write_tokens=message.usage.cache_creation_input_tokens or 0,
        )
        if stop == "refusal":
            raise ProviderError(
                "refused",
                f"model {message.model} refused to answer the {request.kind} request (stop_reason refusal)",
                provider=self.name,
                request_id=request_id,
                usage=usage,
            )
        if stop in ("max_tokens", "model_context_window_exceeded"):
            raise ProviderError(
                "truncated",
                f"model {message.model} stopped at max_output_tokens={request.max_output_tokens} "
                f"before finishing the {request.kind} answer (stop_reason {stop})",
                provider=self.name,
                request_id=request_id,
                usage=usage,
            )
        output = None
        text = ""
        for block in message.content:
            if isinstance(block, ToolUseBlock) and block.name == request.schema_name:
                output = block.input if isinstance(block.input, dict) else None
                text = json.dumps(block.input, ensure_ascii=False)
                break
        else:  # the model wrote text instead of calling the tool
            text = "".join(block.text for block in message.content if isinstance(block, TextBlock))
        return LLMResponse(
            provider=self.name,
            model=message.model,
            output=output,
            text=text,
            usage=usage,
            stop_reason=stop,
            latency_ms=latency_ms,
            request_id=request_id,
        )

    def _error(self, exc: anthropic.AnthropicError, request: LLMRequest) -> ProviderError:
        retries = self.config.max_retries
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderError.sdk_timeout(
                self.name, "the Messages API", self.config.timeout_s, retries, request.model
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return ProviderError.unreachable(self.name, "the Messages API", self._client.base_url, retries, exc)
        if isinstance(exc, anthropic.APIStatusError):
            detail = exc.api_message or exc.message
            if exc.type:
                detail = f"{exc.type}: {detail}"
            error = ProviderError.from_status(
                self.name, exc.status_code, detail, request_id=exc.request_id, retries=retries
            )
            if isinstance(exc, _SPEND_LIMITS):
                error.retryable = False
            return error
        if isinstance(exc, anthropic.APIResponseValidationError):
            return ProviderError(
                "server_error",
                f"the Messages API answered with a body the SDK could not read: {exc.message}",
                provider=self.name,
            )
        if isinstance(exc, anthropic.CredentialsError):
            return ProviderError("auth", f"the SDK could not load credentials: {exc}", provider=self.name)
        return ProviderError(
            "server_error", f"the SDK failed unexpectedly: {type(exc).__name__}: {exc}", provider=self.name
        )
