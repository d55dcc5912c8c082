"""The Gemini adapter: JSON-mode generateContent with the request's JSON Schema.

The schema goes verbatim as ``responseJsonSchema`` with ``responseMimeType:
application/json``; the answer's text is parsed here (``response.parsed`` is silently
``None`` on bad JSON, so it is not used).

Notes on google-genai 3.4 (see shared/SDK-FACTS.md §2): the default API version is ``v1``
(``v1beta`` is set here, it has ``responseJsonSchema``); ``HttpOptions.timeout`` is in
*milliseconds* and bounds each attempt; retries are ``HttpRetryOptions`` (408, 429, 5xx but
not 529, and transport errors including timeouts); automatic continuation is turned off so
that one call is one HTTP request (a ``CONTINUATION`` finish then reads as truncated).

Transport: the provider hands the SDK its own ``httpx2.AsyncClient``. Left to itself the SDK
picks aiohttp whenever aiohttp is importable, and then (aiohttp 3.14) subclasses
``aiohttp.ClientSession`` on the first call, which aiohttp answers with a
``DeprecationWarning`` (an error under ``-W error``), sleeps 1-10 s before an implicit retry
of a connection error when no retry options are set, and lets raw aiohttp exceptions
through. With httpx2 the behaviour no longer depends on which packages happen to be
installed, and both adapters share one HTTP stack (anthropic uses httpx2 as well).
"""

from __future__ import annotations

import time
from typing import Final

import httpx2
from google import genai
from google.genai import errors, types

from cadre.planner.providers.base import (
    LLMRequest,
    LLMResponse,
    ProviderConfig,
    ProviderError,
    Usage,
    parse_json_object,
)

__all__ = ["GeminiProvider"]

API_VERSION: Final = "v1beta"

_REFUSED: Final = frozenset(
    {
        types.FinishReason.SAFETY,
        types.FinishReason.RECITATION,
        types.FinishReason.LANGUAGE,
        types.FinishReason.BLOCKLIST,
        types.FinishReason.PROHIBITED_CONTENT,
        types.FinishReason.SPII,
        types.FinishReason.IMAGE_SAFETY,
        types.FinishReason.IMAGE_PROHIBITED_CONTENT,
        types.FinishReason.MODEL_ARMOR,
    }
)
_TRUNCATED: Final = frozenset({types.FinishReason.MAX_TOKENS, types.FinishReason.CONTINUATION})


class GeminiProvider:
    """:class:`planner.providers.base.Provider` for Gemini models (Gemini Developer API)."""

    name = "gemini"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        # tenacity's exponential wait adds up to `jitter` seconds at random; keep it to the initial delay.
        retry = types.HttpRetryOptions(
            attempts=config.max_retries + 1,
            initial_delay=config.backoff_initial_s,
            max_delay=config.backoff_max_s,
            jitter=config.backoff_initial_s,
        )
        # Owned here (the SDK does not close a client it was given): see the module docstring.
        self._http = httpx2.AsyncClient(timeout=config.timeout_s, follow_redirects=True)
        self._client = genai.Client(
            vertexai=False,  # explicit, so GOOGLE_GENAI_USE_VERTEXAI in the environment cannot switch backends
            api_key=config.api_key,
            http_options=types.HttpOptions(
                base_url=config.base_url,
                api_version=API_VERSION,
                timeout=max(1, round(config.timeout_s * 1000)),  # milliseconds
                retry_options=retry,
                httpx_async_client=self._http,
            ),
        )
        self._closed = False

    async def complete(self, request: LLMRequest) -> LLMResponse:
        config = types.GenerateContentConfig(
            system_instruction=request.system,
            response_mime_type="application/json",
            response_json_schema=request.schema,
            max_output_tokens=request.max_output_tokens,
            temperature=request.temperature,
            candidate_count=1,
            automatic_continuation=False,
        )
        started = time.perf_counter()
        try:
            response = await self._client.aio.models.generate_content(
                model=request.model, contents=request.prompt, config=config
            )
        except errors.APIError as exc:
            detail = f"{exc.status}: {exc.message}" if exc.status else str(exc.message)
            raise ProviderError.from_status(self.name, exc.code, detail, retries=self.config.max_retries) from exc
        except errors.UnknownApiResponseError as exc:
            raise ProviderError(
                "server_error", f"the API answered with a body that is not JSON: {exc}", provider=self.name
            ) from exc
        except (TimeoutError, httpx2.TimeoutException) as exc:
            raise ProviderError(
                "timeout",
                f"no answer from generateContent within {self.config.timeout_s} s for model {request.model}",
                provider=self.name,
            ) from exc
        except httpx2.TransportError as exc:
            raise ProviderError(
                "connection",
                f"could not reach generateContent at {self.config.base_url or 'the default endpoint'} "
                f"(the SDK retried up to {self.config.max_retries} times): {type(exc).__name__}: {exc}",
                provider=self.name,
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return self._response(response, request, latency_ms)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aio.aclose()
        await self._http.aclose()
        self._client.close()

    def _response(self, response: types.GenerateContentResponse, request: LLMRequest, latency_ms: float) -> LLMResponse:
        model = response.model_version or request.model
        request_id = response.response_id
        meta = response.usage_metadata
        prompt = (meta.prompt_token_count or 0) if meta is not None else 0
        cached = (meta.cached_content_token_count or 0) if meta is not None else 0
        output = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0) if meta is not None else 0
        # promptTokenCount includes the cached tokens; thoughts are billed as output.
        usage = Usage(input_tokens=prompt - cached, output_tokens=output, cache_read_tokens=cached)
        candidate = response.candidates[0] if response.candidates else None
        if candidate is None:
            feedback = response.prompt_feedback
            reason = feedback.block_reason if feedback is not None else None
            if reason is not None:
                raise ProviderError(
                    "refused",
                    f"model {model} blocked the {request.kind} prompt (blockReason {reason.value})",
                    provider=self.name,
                    request_id=request_id,
                    usage=usage,
                )
        finish = candidate.finish_reason if candidate is not None else None
        if finish is not None and finish in _REFUSED:
            raise ProviderError(
                "refused",
                f"model {model} refused to answer the {request.kind} request (finishReason {finish.value})",
                provider=self.name,
                request_id=request_id,
                usage=usage,
            )
        if finish is not None and finish in _TRUNCATED:
            raise ProviderError(
                "truncated",
                f"model {model} stopped at max_output_tokens={request.max_output_tokens} "
                f"before finishing the {request.kind} answer (finishReason {finish.value})",
                provider=self.name,
                request_id=request_id,
                usage=usage,
            )
        # The answer's text parts, without thought summaries (what `response.text` does, minus its log lines).
        parts = candidate.content.parts if candidate is not None and candidate.content is not None else None
        text = "".join(p.text for p in parts or () if isinstance(p.text, str) and not p.thought)
        return LLMResponse(
            provider=self.name,
            model=model,
            output=parse_json_object(text),
            text=text,
            usage=usage,
            stop_reason=finish.value if finish is not None else "unknown",
            latency_ms=latency_ms,
            request_id=request_id,
        )
