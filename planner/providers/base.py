"""The LLM provider port: one request type, one response type, one error family.

A :class:`Provider` turns an :class:`LLMRequest` (system prompt, user prompt and the JSON
Schema of the object expected back) into an :class:`LLMResponse` whose ``output`` is that
object, or raises :class:`ProviderError`. Adapters (``anthropic.py``, ``gemini.py``,
``openai.py``) speak one vendor SDK each; ``scripted.py`` answers from a script. Requests
and responses are frozen msgspec Structs so that they can be recorded in events and replayed
(the response and its usage are defined with the effects that record them, :mod:`bus.effects`).
What a call costs, and the token estimate a consultation carries, are in ``pricing.py``.

Retries happen inside the SDKs (bounded by :attr:`ProviderConfig.max_retries`); an error
that reaches the caller has already been retried, and ``retryable`` only says whether the
cause is transient (try later, or another provider) or needs a change (key, request, model).

Configuration arrives as a frozen :class:`ProviderConfig` built at the composition root;
nothing in this package reads the environment or the clock (``time.perf_counter`` measures
latency only).

    CadreError
     └─ ProviderError                 an LLM call that did not produce an answer (``code`` below)

    code              when                                        retryable
    rate_limited      HTTP 429                                    yes (no, for a spend limit)
    overloaded        HTTP 529 / 503                              yes
    server_error      other HTTP 5xx, an unreadable API response  yes
    timeout           no answer within timeout_s (or HTTP 408)    yes
    connection        the API could not be reached                yes
    bad_request       HTTP 400 / 404 / 422 and other 4xx          no
    auth              HTTP 401 / 403 (and 402: billing)           no
    malformed_output  the model answered without a JSON object    no   (require_output)
    refused           the model refused (stop reason / SAFETY)    no
    truncated         the answer hit max_output_tokens            no
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, get_args

import msgspec

from cadre.bus.effects import LLMResponse, Usage
from cadre.bus.errors import CadreError
from cadre.bus.ledger import CONSULTATION_KINDS

__all__ = [
    "ERROR_CODES",
    "KINDS",
    "ErrorCode",
    "LLMRequest",
    "LLMResponse",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "Usage",
    "parse_json_object",
    "require_output",
]

KINDS: Final = CONSULTATION_KINDS
"""What an LLM call is for (the kinds the budget gates); :attr:`ProviderConfig.models` may name a model per kind."""


class LLMRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One structured-output call: answer ``prompt`` with one JSON object matching ``schema``.

    ``kind`` is one of :data:`KINDS`. ``repair_of`` is set on the repair round only: it holds
    the previous, invalid output (the prompt then already lists what was wrong with it).
    """

    kind: str
    model: str
    system: str
    prompt: str
    schema: dict[str, Any]
    schema_name: str
    max_output_tokens: int
    temperature: float = 0.0
    repair_of: str | None = None


ErrorCode = Literal[
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
]
ERROR_CODES: Final[tuple[ErrorCode, ...]] = get_args(ErrorCode)

_RETRYABLE: Final[frozenset[str]] = frozenset({"rate_limited", "overloaded", "server_error", "timeout", "connection"})

_ADVICE: Final[Mapping[str, str]] = {
    "rate_limited": "wait and retry later, lower the concurrency, or raise the account's rate limit",
    "overloaded": "retry later or fall back to another provider",
    "server_error": "retry later or fall back to another provider",
    "timeout": "retry later, raise timeout_s, or lower max_output_tokens",
    "connection": "check base_url and the network, then retry",
    "bad_request": "check the model name and the request (schema, max_output_tokens); retrying will not help",
    "auth": "check the API key (and the account's billing); retrying will not help",
    "malformed_output": "ask again with the problems listed (the structured flow does this once)",
    "refused": "rephrase the request, or fall back to a plan without the model",
    "truncated": "raise max_output_tokens or ask for a smaller answer",
}


class ProviderError(CadreError):
    """An LLM call that produced no answer; ``code`` is one of :data:`ERROR_CODES`.

    ``status`` is the HTTP status when there was one. ``retryable`` says whether the cause
    is transient (the SDK has already retried; the caller may try later or fall back to
    another provider) — it defaults from the code. ``usage`` is set when the model did
    answer (refused, truncated) and the tokens are billed anyway. The message ends with
    what to do.
    """

    code: str

    def __init__(
        self,
        code: ErrorCode,
        what: str,
        *,
        provider: str,
        status: int | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown provider error code {code!r}; expected one of {', '.join(ERROR_CODES)}")
        super().__init__(f"{provider}: {what}; {_ADVICE[code]}")
        self.code = code
        self.what = what
        self.provider = provider
        self.status = status
        self.retryable = code in _RETRYABLE if retryable is None else retryable
        self.request_id = request_id
        self.usage = usage

    def __reduce__(self) -> tuple[Any, ...]:  # keep the error picklable despite keyword-only fields
        return (
            _rebuild_error,
            (self.code, self.what, self.provider, self.status, self.retryable, self.request_id, self.usage),
        )

    @classmethod
    def sdk_timeout(cls, provider: str, api: str, timeout_s: float, retries: int, model: str) -> ProviderError:
        """No answer from ``api`` within the per-attempt timeout, after the SDK's own retries."""
        return cls(
            "timeout",
            f"no answer from {api} within {timeout_s} s per attempt "
            f"(the SDK retried up to {retries} times) for model {model}",
            provider=provider,
        )

    @classmethod
    def unreachable(cls, provider: str, api: str, where: object, retries: int, exc: BaseException) -> ProviderError:
        """``api`` at ``where`` could not be reached (after the SDK's own retries); names the cause."""
        cause = exc.__cause__ or exc
        return cls(
            "connection",
            f"could not reach {api} at {where} "
            f"(the SDK retried up to {retries} times): {type(cause).__name__}: {cause}",
            provider=provider,
        )

    @classmethod
    def from_status(
        cls, provider: str, status: int, detail: str, *, request_id: str | None = None, retries: int = 0
    ) -> ProviderError:
        """The error for an HTTP error status (after ``retries`` retries inside the SDK)."""
        code = status_code(status)
        tried = f" (the SDK retried up to {retries} times)" if code in _RETRYABLE and retries else ""
        what = f"{_STATUS_WHAT[code]} (HTTP {status}){tried}: {detail or 'no detail given'}"
        return cls(code, what, provider=provider, status=status, request_id=request_id)


def _rebuild_error(
    code: ErrorCode,
    what: str,
    provider: str,
    status: int | None,
    retryable: bool,
    request_id: str | None,
    usage: Usage | None,
) -> ProviderError:
    return ProviderError(
        code, what, provider=provider, status=status, retryable=retryable, request_id=request_id, usage=usage
    )


_STATUS_WHAT: Final[Mapping[str, str]] = {
    "rate_limited": "the API rate-limited the request",
    "overloaded": "the API is overloaded",
    "server_error": "the API failed with a server error",
    "timeout": "the API timed out the request",
    "bad_request": "the API rejected the request",
    "auth": "the API refused the credentials",
}


def status_code(status: int) -> ErrorCode:
    """The :class:`ProviderError` code for an HTTP error status."""
    if status == 429:
        return "rate_limited"
    if status in (503, 529):
        return "overloaded"
    if status >= 500:
        return "server_error"
    if status == 408:
        return "timeout"
    if status in (401, 402, 403):
        return "auth"
    return "bad_request"


class Provider(Protocol):
    """The port: one structured-output call, and closing the client."""

    name: str

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Answer ``request``; raise :class:`ProviderError` when there is no answer."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP client (idempotent)."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """How to reach one provider, read once at the composition root.

    ``models`` maps a request kind (:data:`KINDS`) to a model and must hold ``"default"``,
    so a small model can plan while a larger one runs agents. ``timeout_s`` bounds *each*
    HTTP attempt; the SDK makes at most ``max_retries`` more attempts on transient errors
    (429, 5xx, connection errors, and timeouts where the SDK retries them), waiting between
    them as the server's ``retry-after`` says or with exponential backoff from
    ``backoff_initial_s`` up to ``backoff_max_s``. (The Anthropic SDK's backoff is fixed at
    0.5 s doubling to 8 s; there, the backoff fields are unused.) ``base_url`` ``None``
    means the SDK's default endpoint.
    """

    api_key: str = field(repr=False)
    models: Mapping[str, str]
    base_url: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0

    def __post_init__(self) -> None:
        if "default" not in self.models:
            raise ValueError(f'models must name a "default" model; got kinds {sorted(self.models)}')
        unknown = sorted(set(self.models) - {"default", *KINDS})
        if unknown:
            raise ValueError(f"models names unknown kinds {unknown}; expected default or one of {', '.join(KINDS)}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds; got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0; got {self.max_retries}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"need 0 <= backoff_initial_s <= backoff_max_s; got {self.backoff_initial_s} and {self.backoff_max_s}"
            )
        # A read-only copy: the caller's dict must not change a frozen config behind its back.
        object.__setattr__(self, "models", types.MappingProxyType(dict(self.models)))

    def model_for(self, kind: str) -> str:
        """The model configured for ``kind``, else the default one."""
        return self.models.get(kind, self.models["default"])


def require_output(response: LLMResponse) -> dict[str, Any]:
    """``response.output``, or :class:`ProviderError` ``malformed_output`` when the model
    answered without a JSON object (for callers that do not run the repair flow)."""
    if response.output is None:
        got = repr(response.text[:80]) if response.text else "an empty answer"
        raise ProviderError(
            "malformed_output",
            f"model {response.model} answered without a JSON object (got {got})",
            provider=response.provider,
            request_id=response.request_id,
            usage=response.usage,
        )
    return response.output


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object ``text`` holds, or ``None`` (not JSON, or JSON but not an object).

    Tolerates what models wrap JSON in: surrounding whitespace and one Markdown code fence.
    """
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        body = body[3:-3]
        body = body.split("\n", 1)[1] if "\n" in body else ""  # drop the fence's language tag line
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
