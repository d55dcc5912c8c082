"""Local fakes of the Anthropic Messages API, the Gemini generateContent API and the OpenAI
Chat Completions API (which Ollama, vLLM, llama.cpp server and LM Studio speak too).

Real SDK clients talk to these over HTTP on 127.0.0.1 (so retries, timeouts, headers and
error mapping are the SDKs' own, not mocks). Each fake serves a scripted queue of
behaviours, one per HTTP request, and records what it received::

    async with anthropic_api(status(529), ok({"answer": 42})) as api:
        provider = AnthropicProvider(ProviderConfig(api_key="k", base_url=api.base_url, ...))
        ...
        assert len(api.requests) == 2          # the request bodies, as JSON
        api.add(text("not json{"))             # script more

A request beyond the script gets a 400 with ``x-should-retry: false`` saying so, which the
test sees as a ``bad_request`` ProviderError naming the fake.

Error bodies have each API's real shape (shared/SDK-FACTS.md §1.3 and §2.3). Anthropic
and OpenAI error answers carry ``retry-after-ms: 1`` (unless the behaviour sets a
``retry-after`` of its own), which the SDKs honour, so retries cost no time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Kind = Literal["ok", "status", "slow", "text", "refusal", "max_tokens", "blocked", "broken"]


@dataclass(frozen=True)
class Tokens:
    input: int = 10
    output: int = 5
    cache_read: int = 0
    cache_write: int = 0  # Anthropic only
    thoughts: int = 0  # Gemini only


@dataclass(frozen=True)
class Behaviour:
    kind: Kind
    output: dict[str, Any] | None = None
    tokens: Tokens = Tokens()
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    error_code: str | None = None
    seconds: float = 0.0
    raw: str = ""
    usage: Callable[[dict[str, Any]], Tokens] | None = None  # tokens computed from the request body


def billing(output: dict[str, Any], usage: Callable[[dict[str, Any]], Tokens], /) -> Behaviour:
    """A normal answer whose usage ``usage`` computes from the request body it answers (a
    provider that bills what a test decides, e.g. the most the prompt allows)."""
    return Behaviour("ok", output=output, usage=usage)


def ok(output: dict[str, Any], /, **tokens: int) -> Behaviour:
    """A normal answer whose structured output is ``output``; ``tokens`` as in :class:`Tokens`."""
    return Behaviour("ok", output=output, tokens=Tokens(**tokens))


def status(code: int, headers: Mapping[str, str] | None = None, *, error_code: str | None = None) -> Behaviour:
    """An HTTP error with the API's error body (``error_code``: Anthropic's ``error.details.error_code``)."""
    return Behaviour("status", status=code, headers=dict(headers or {}), error_code=error_code)


def slow(seconds: float) -> Behaviour:
    """Answer after ``seconds`` (released early when the fake shuts down)."""
    return Behaviour("slow", seconds=seconds, output={"late": True})


def text(raw: str, /, **tokens: int) -> Behaviour:
    """An answer that is this text, not a structured output (Anthropic: a text block, no tool call)."""
    return Behaviour("text", raw=raw, tokens=Tokens(**tokens))


def refusal() -> Behaviour:
    """Anthropic: ``stop_reason: refusal``; Gemini: ``finishReason: SAFETY``."""
    return Behaviour("refusal")


def max_tokens() -> Behaviour:
    """An answer cut off at the output limit."""
    return Behaviour("max_tokens")


def blocked() -> Behaviour:
    """Gemini: no candidates, ``promptFeedback.blockReason: SAFETY``."""
    return Behaviour("blocked")


def broken(raw: str = '{"id": "chatcmpl-x", "choices": [', /) -> Behaviour:
    """OpenAI: a 200 ``application/json`` whose body is not JSON (a proxy cut the answer)."""
    return Behaviour("broken", raw=raw)


Render = Callable[[Behaviour, web.Request, dict[str, Any], int], web.Response]


class FakeAPI:
    """The scripted state of one fake: ``base_url``, and what it received, in order."""

    def __init__(self, render: Render, script: tuple[Behaviour, ...]) -> None:
        self._render = render
        self._script: deque[Behaviour] = deque(script)
        self._routes: list[tuple[str, deque[Behaviour]]] = []
        self._released = asyncio.Event()
        self.base_url = ""
        self.requests: list[dict[str, Any]] = []  # request bodies
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []  # time.monotonic() of each request's arrival

    def add(self, *behaviours: Behaviour) -> None:
        self._script.extend(behaviours)

    def when(self, marker: str, *behaviours: Behaviour) -> None:
        """Serve ``behaviours`` (in order, before the main script) to requests whose body
        contains ``marker`` (a tool or schema name, a phrase of the prompt)."""
        self._routes.append((marker, deque(behaviours)))

    @property
    def unused(self) -> int:
        return len(self._script) + sum(len(q) for _, q in self._routes)

    def _next(self, body: dict[str, Any]) -> Behaviour | None:
        raw = json.dumps(body)
        for marker, queue in self._routes:
            if queue and marker in raw:
                return queue.popleft()
        return self._script.popleft() if self._script else None

    async def handle(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        body = await request.json()
        self.requests.append(body)
        self.paths.append(request.path)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        n = len(self.requests)
        behaviour = self._next(body)
        if behaviour is None:
            return web.json_response(
                {"error": {"message": f"fake API: no scripted behaviour left for request #{n}"}},
                status=400,
                headers={"x-should-retry": "false"},
            )
        if behaviour.kind == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), behaviour.seconds)
            behaviour = Behaviour("ok", output=behaviour.output)
        return self._render(behaviour, request, body, n)


@contextlib.asynccontextmanager
async def _serve(route: str, render: Render, script: tuple[Behaviour, ...]) -> AsyncIterator[FakeAPI]:
    api = FakeAPI(render, script)
    app = web.Application()
    app.router.add_post(route, api.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    api.base_url = f"http://{host}:{port}"
    try:
        yield api
    finally:
        api._released.set()  # let slow handlers finish now rather than hold up the shutdown
        await runner.cleanup()


# --- Anthropic Messages API -------------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _anthropic(behaviour: Behaviour, request: web.Request, body: dict[str, Any], n: int) -> web.Response:
    request_id = f"req_fake_{n}"
    if behaviour.kind == "status":
        error: dict[str, Any] = {
            "type": _ANTHROPIC_ERROR_TYPES.get(behaviour.status, "api_error"),
            "message": f"fake status {behaviour.status}",
        }
        if behaviour.error_code:
            error["details"] = {"error_code": behaviour.error_code}
        headers = {"request-id": request_id, "retry-after-ms": "1", **behaviour.headers}
        return web.json_response(
            {"type": "error", "error": error, "request_id": request_id}, status=behaviour.status, headers=headers
        )
    tool = (body.get("tool_choice") or {}).get("name", "emit")
    content: list[dict[str, Any]]
    if behaviour.kind == "ok":
        content = [{"type": "tool_use", "id": f"toolu_{n}", "name": tool, "input": behaviour.output}]
        stop = "tool_use"
    elif behaviour.kind == "text":
        content, stop = [{"type": "text", "text": behaviour.raw}], "end_turn"
    elif behaviour.kind in ("refusal", "blocked"):
        content, stop = [{"type": "text", "text": "I can't help with that."}], "refusal"
    elif behaviour.kind == "max_tokens":
        content = [{"type": "tool_use", "id": f"toolu_{n}", "name": tool, "input": {}}]
        stop = "max_tokens"
    else:
        raise AssertionError(f"unhandled behaviour {behaviour.kind}")
    t = behaviour.usage(body) if behaviour.usage is not None else behaviour.tokens
    message = {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": t.input,
            "output_tokens": t.output,
            "cache_creation_input_tokens": t.cache_write,
            "cache_read_input_tokens": t.cache_read,
        },
    }
    return web.json_response(message, headers={"request-id": request_id})


def anthropic_api(*script: Behaviour) -> contextlib.AbstractAsyncContextManager[FakeAPI]:
    """A fake Messages API (``POST /v1/messages``) serving ``script``."""
    return _serve("/v1/messages", _anthropic, script)


# --- Gemini generateContent -------------------------------------------------------------------

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _gemini(behaviour: Behaviour, request: web.Request, body: dict[str, Any], n: int) -> web.Response:
    if behaviour.kind == "status":
        error = {
            "code": behaviour.status,
            "message": f"fake status {behaviour.status}",
            "status": _GEMINI_STATUS.get(behaviour.status, "UNKNOWN"),
        }
        return web.json_response({"error": error}, status=behaviour.status, headers=dict(behaviour.headers))
    model = request.match_info["rest"].split(":", 1)[0]
    t = behaviour.tokens
    answer: dict[str, Any] = {
        "usageMetadata": {
            "promptTokenCount": t.input + t.cache_read,  # includes the cached tokens
            "candidatesTokenCount": t.output,
            "thoughtsTokenCount": t.thoughts,
            "cachedContentTokenCount": t.cache_read,
            "totalTokenCount": t.input + t.cache_read + t.output + t.thoughts,
        },
        "modelVersion": model,
        "responseId": f"resp_{n}",
    }

    def candidate(text: str | None, finish: str) -> list[dict[str, Any]]:
        cand: dict[str, Any] = {"finishReason": finish, "index": 0}
        if text is not None:
            cand["content"] = {"role": "model", "parts": [{"text": text}]}
        return [cand]

    if behaviour.kind == "ok":
        answer["candidates"] = candidate(json.dumps(behaviour.output), "STOP")
    elif behaviour.kind == "text":
        answer["candidates"] = candidate(behaviour.raw, "STOP")
    elif behaviour.kind == "refusal":
        answer["candidates"] = candidate(None, "SAFETY")
        answer["candidates"][0]["safetyRatings"] = [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
        ]
    elif behaviour.kind == "max_tokens":
        answer["candidates"] = candidate('{"nodes": [{"id": "a", "descr', "MAX_TOKENS")
    elif behaviour.kind == "blocked":
        answer["promptFeedback"] = {"blockReason": "SAFETY"}
    else:
        raise AssertionError(f"unhandled behaviour {behaviour.kind}")
    return web.json_response(answer)


def gemini_api(*script: Behaviour) -> contextlib.AbstractAsyncContextManager[FakeAPI]:
    """A fake Gemini API (``POST /{version}/models/{model}:generateContent``) serving ``script``."""
    return _serve(r"/{version}/models/{rest:.+}", _gemini, script)


# --- OpenAI Chat Completions --------------------------------------------------------------------

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def _openai(behaviour: Behaviour, request: web.Request, body: dict[str, Any], n: int) -> web.Response:
    request_id = f"req_fake_{n}"
    if behaviour.kind == "status":
        kind, code = _OPENAI_ERRORS.get(behaviour.status, ("server_error", None))
        error = {
            "message": f"fake status {behaviour.status}",
            "type": kind,
            "param": None,
            "code": behaviour.error_code or code,
        }
        headers = {"x-request-id": request_id}
        if not any(h.lower().startswith("retry-after") for h in behaviour.headers):
            headers["retry-after-ms"] = "1"
        headers.update(behaviour.headers)
        return web.json_response({"error": error}, status=behaviour.status, headers=headers)
    if behaviour.kind == "broken":
        return web.Response(text=behaviour.raw, content_type="application/json", headers={"x-request-id": request_id})
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    finish = "stop"
    if behaviour.kind == "ok":
        message["content"] = json.dumps(behaviour.output)
    elif behaviour.kind == "text":
        message["content"] = behaviour.raw
    elif behaviour.kind == "refusal":
        message["refusal"] = "I'm sorry, I can't help with that."
    elif behaviour.kind == "max_tokens":
        message["content"], finish = '{"nodes": [{"id": "a", "descr', "length"
    elif behaviour.kind == "blocked":
        finish = "content_filter"
    else:
        raise AssertionError(f"unhandled behaviour {behaviour.kind}")
    t = behaviour.usage(body) if behaviour.usage is not None else behaviour.tokens
    completion = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "finish_reason": finish, "message": message, "logprobs": None}],
        "usage": {
            "prompt_tokens": t.input + t.cache_read,  # includes the cached tokens
            "completion_tokens": t.output + t.thoughts,  # includes the reasoning tokens
            "total_tokens": t.input + t.cache_read + t.output + t.thoughts,
            "prompt_tokens_details": {"cached_tokens": t.cache_read},
            "completion_tokens_details": {"reasoning_tokens": t.thoughts},
        },
    }
    return web.json_response(completion, headers={"x-request-id": request_id})


def openai_api(*script: Behaviour) -> contextlib.AbstractAsyncContextManager[FakeAPI]:
    """A fake Chat Completions API (``POST /v1/chat/completions``) serving ``script``; its
    ``base_url`` is the server's root, so an OpenAI client takes ``base_url + "/v1"``."""
    return _serve("/v1/chat/completions", _openai, script)
