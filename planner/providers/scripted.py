"""A provider that answers from a script: for users' own tests of the model path, in CI,
without a key or a network.

It goes where any provider goes (``CADRE_LLM_PROVIDER=scripted``), so its answers pass
through the same budget gate, rate limits, cache, recording and replay as a vendor's. Two
ways to script it (``CADRE_LLM_SCRIPT``):

* a file (JSON, or TOML when the name ends in ``.toml``) of replies per consultation kind,
  served in order, the last one repeating; ``default`` answers the kinds it does not name::

      {
        "plan": [{"output": {"nodes": [{"id": "rows", "tool": "sql.query",
                                        "inputs": {"sql": "select 1"}}], "output": "rows"}}],
        "decide": [{"error": "overloaded"}, {"output": {"choice": "retry", "reason": "flaky"}}],
        "default": [{"text": "not JSON: the caller falls back to its rules"}]
      }

  A reply is one of ``{"output": {...}}`` (the JSON object the model answers),
  ``{"text": "..."}`` (an answer that is not a JSON object, for the repair path) or
  ``{"error": "<code>"}`` (a :class:`ProviderError` of that code: ``overloaded``,
  ``refused``, ``truncated``, ...). ``tokens``: ``{"input": 10, "output": 5}`` may be added
  to any reply; the default is the request's estimate and the answer's length.

* ``module:function``: a Python function called with the :class:`LLMRequest` (``kind``,
  ``prompt``, ``schema``, ...) that returns the answer's JSON object, a ``str`` (a text
  answer), or an :class:`LLMResponse`, or raises :class:`ProviderError`; it may be async.

The model name is whatever the settings give (``scripted`` by default); it is priced at 0
unless the price table names it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from cadre.bus.errors import CadreError
from cadre.planner.providers.base import ERROR_CODES, LLMRequest, LLMResponse, ProviderError, Usage
from cadre.planner.providers.pricing import estimate_input_tokens, estimate_tokens

__all__ = ["Reply", "ScriptError", "ScriptedProvider", "load_script"]

Answer = dict[str, Any] | str | LLMResponse
Function = Callable[[LLMRequest], Answer | Awaitable[Answer]]


class ScriptError(CadreError):
    """A script that cannot be used (unreadable, malformed, a function that does not import)."""

    code = "invalid_script"


class Reply(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One scripted reply: exactly one of ``output``, ``text``, ``error``."""

    output: dict[str, Any] | None = None
    text: str | None = None
    error: str | None = None
    tokens: dict[str, int] | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("output", "text", "error") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a reply holds exactly one of output, text, error; got {given or 'none'}")
        if self.error is not None and self.error not in ERROR_CODES:
            raise ValueError(f"error {self.error!r} is not a provider error code ({', '.join(ERROR_CODES)})")


_SCRIPT: Final = msgspec.json.Decoder(dict[str, list[Reply]])


class ScriptedProvider:
    """:class:`planner.providers.base.Provider` answering from ``replies`` (per kind, or
    ``default``) or from ``function``; ``requests`` keeps what it was asked, in order."""

    def __init__(
        self,
        replies: Mapping[str, Sequence[Reply]] | None = None,
        *,
        function: Function | None = None,
        name: str = "scripted",
    ) -> None:
        if (replies is None) == (function is None):
            raise ValueError("a scripted provider takes replies or a function (one of them)")
        self.name = name
        self._replies = {kind: tuple(r) for kind, r in (replies or {}).items()}
        self._served: dict[str, int] = {}
        self._function = function
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        if self._function is not None:
            answer = self._function(request)
            if inspect.isawaitable(answer):
                answer = await answer
            if isinstance(answer, LLMResponse):
                return answer
            if isinstance(answer, str):
                return self._response(request, None, answer, None)
            if isinstance(answer, dict):
                return self._response(request, answer, json.dumps(answer, ensure_ascii=False), None)
            raise ScriptError(
                f"the scripted function answered the {request.kind} request with {type(answer).__name__}; "
                "expected a dict, a str or an LLMResponse"
            )
        reply = self._next(request)
        if reply.error is not None:
            raise ProviderError(
                reply.error,  # type: ignore[arg-type]  # checked against ERROR_CODES when loaded
                f"scripted {reply.error} for the {request.kind} request",
                provider=self.name,
                usage=self._usage(request, "", reply.tokens) if reply.error in ("refused", "truncated") else None,
            )
        if reply.output is not None:
            return self._response(request, reply.output, json.dumps(reply.output, ensure_ascii=False), reply.tokens)
        return self._response(request, None, reply.text or "", reply.tokens)

    async def aclose(self) -> None:
        return None

    def _next(self, request: LLMRequest) -> Reply:
        kind = request.kind if request.kind in self._replies else "default"
        replies = self._replies.get(kind)
        if not replies:
            raise ProviderError(
                "bad_request",
                f"the script has no reply for a {request.kind} request (and no default)",
                provider=self.name,
            )
        served = self._served.get(kind, 0)
        self._served[kind] = served + 1
        return replies[min(served, len(replies) - 1)]

    def _usage(self, request: LLMRequest, text: str, tokens: Mapping[str, int] | None) -> Usage:
        tokens = tokens or {}
        return Usage(
            input_tokens=tokens.get("input", estimate_input_tokens(request)),
            output_tokens=tokens.get("output", estimate_tokens(text)),
        )

    def _response(
        self, request: LLMRequest, output: dict[str, Any] | None, text: str, tokens: Mapping[str, int] | None
    ) -> LLMResponse:
        return LLMResponse(
            provider=self.name,
            model=request.model,
            output=output,
            text=text,
            usage=self._usage(request, text, tokens),
            stop_reason="end_turn",
            latency_ms=0.0,
        )


def load_script(spec: str, *, name: str = "scripted") -> ScriptedProvider:
    """The provider ``spec`` names: a file of replies (JSON or TOML), or ``module:function``."""
    path = Path(spec)
    if path.is_file():
        try:
            raw = path.read_bytes()
            data: Any = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
            return ScriptedProvider(_SCRIPT.decode(msgspec.json.encode(data)), name=name)
        except (OSError, ValueError, UnicodeDecodeError, msgspec.ValidationError) as exc:
            raise ScriptError(f"script {spec}: {exc}") from None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ScriptError(f"script {spec!r} is neither a file nor module:function")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ScriptError(f"script {spec!r}: {type(exc).__name__}: {exc}") from None
    if not callable(function):
        raise ScriptError(f"script {spec!r} is not a function")
    return ScriptedProvider(function=function, name=name)
