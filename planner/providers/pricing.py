"""What an LLM call costs and what it may cost: prices, token estimates and the worst case.

The one home of these numbers and formulas; the budget (``actors/budget/``), the settings
(``cadre/settings.py``, ``cadre/budget_config.py``) and the context's consultation
(``actors/context.py``) take them from here.

    ModelPrice, Prices      USD per million tokens, by model name (exact, else longest prefix)
    DEFAULT_PRICES          the shipped table by model name prefix, and DEFAULT_PRICE for the rest
    model_price             a price whose unset cache rates get Anthropic's pattern (0.1x, 1.25x input)
    openai_price, FREE      an OpenAI price (its cached-input rate); a local model's (0)
    cost_usd                what a call's usage cost
    estimate_tokens         a rough token count of a text (4 characters a token)
    estimate_input_tokens   the estimated input of a request, as a consultation carries it
    input_token_bound       an upper bound of a request's input tokens: its UTF-8 bytes plus framing
    bound_usd               what a call can cost at most: the reservation the budget holds for it
    worst_case              the rule before the bound (estimate x safety factor), kept for old records

Pure: no I/O, no clock, no configuration read.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cadre.planner.providers.base import LLMRequest, Usage

__all__ = [
    "DEFAULT_PRICE",
    "DEFAULT_PRICES",
    "FRAMING_MARGIN_TOKENS",
    "FREE",
    "ModelPrice",
    "Prices",
    "bound_usd",
    "cost_usd",
    "estimate_input_tokens",
    "estimate_tokens",
    "input_token_bound",
    "input_token_price",
    "model_price",
    "openai_price",
    "worst_case",
]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens, by how the tokens are billed."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0


def model_price(
    input: float, output: float, cache_read: float | None = None, cache_write: float | None = None
) -> ModelPrice:
    """A price whose unset cache rates follow Anthropic's pattern: reads at 0.1x input, 5-minute
    cache writes at 1.25x input."""
    return ModelPrice(
        input=input,
        output=output,
        cache_read=cache_read if cache_read is not None else 0.1 * input,
        cache_write=cache_write if cache_write is not None else 1.25 * input,
    )


def openai_price(input: float, output: float, cached: float) -> ModelPrice:
    """An OpenAI price: cached input tokens at ``cached``; writing the cache costs what input does."""
    return ModelPrice(input=input, output=output, cache_read=cached, cache_write=input)


FREE: Final = ModelPrice(input=0.0, output=0.0)
"""The price of a model served locally (Ollama, a compatible server of one's own)."""


@dataclass(frozen=True, slots=True)
class Prices:
    """A price table: ``by_model`` (a model name or a prefix of one) and a ``default``.

    Look-up takes the exact name, else the longest key that prefixes the name (so
    ``claude-haiku-4-5`` prices ``claude-haiku-4-5-20251001``), else ``default``. Keep the
    table in configuration and re-check it against the vendors' pricing pages.
    """

    default: ModelPrice
    by_model: Mapping[str, ModelPrice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_model", types.MappingProxyType(dict(self.by_model)))

    def for_model(self, model: str) -> ModelPrice:
        if model in self.by_model:
            return self.by_model[model]
        prefixes = [key for key in self.by_model if model.startswith(key)]
        return self.by_model[max(prefixes, key=len)] if prefixes else self.default


# Prices by model name prefix, USD per million tokens, from the vendors' pricing pages
# (re-check them before relying on them). Unknown models are priced at DEFAULT_PRICE, a
# deliberately high figure, so that a reservation for an unknown model errs on the safe side.
DEFAULT_PRICES: Final[Mapping[str, ModelPrice]] = types.MappingProxyType(
    {
        "claude-haiku-4": model_price(1.0, 5.0),
        "claude-sonnet-4": model_price(3.0, 15.0),
        "claude-sonnet-5": model_price(3.0, 15.0),
        "claude-opus-4": model_price(5.0, 25.0),
        "claude-opus-5": model_price(5.0, 25.0),
        "gemini-2.5-flash-lite": model_price(0.10, 0.40, cache_read=0.01, cache_write=0.10),
        "gemini-2.5-flash": model_price(0.30, 2.50, cache_read=0.03, cache_write=0.30),
        "gemini-2.5-pro": model_price(1.25, 10.0, cache_read=0.125, cache_write=1.25),
        # OpenAI (cached input at its own rate; no surcharge for writing the cache)
        "gpt-5": openai_price(1.25, 10.0, cached=0.125),
        "gpt-5-mini": openai_price(0.25, 2.0, cached=0.025),
        "gpt-5-nano": openai_price(0.05, 0.40, cached=0.005),
        "gpt-4.1": openai_price(2.0, 8.0, cached=0.50),
        "gpt-4.1-mini": openai_price(0.40, 1.60, cached=0.10),
        "gpt-4.1-nano": openai_price(0.10, 0.40, cached=0.025),
        "gpt-4o": openai_price(2.50, 10.0, cached=1.25),
        "gpt-4o-mini": openai_price(0.15, 0.60, cached=0.075),
        "o3": openai_price(2.0, 8.0, cached=0.50),
        "o3-mini": openai_price(1.10, 4.40, cached=0.55),
        "o4-mini": openai_price(1.10, 4.40, cached=0.275),
        "gpt-4-turbo": openai_price(10.0, 30.0, cached=10.0),
        "gpt-3.5-turbo": openai_price(0.50, 1.50, cached=0.50),
    }
)
DEFAULT_PRICE: Final = model_price(15.0, 75.0)


def cost_usd(usage: Usage, model: str, prices: Prices) -> float:
    """What ``usage`` cost on ``model``, in USD."""
    price = prices.for_model(model)
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_read_tokens * price.cache_read
        + usage.cache_write_tokens * price.cache_write
    ) / 1_000_000


def estimate_tokens(text: str) -> int:
    """A rough token count for budgeting: one token per 4 characters, rounded up.

    English prose and JSON average 3.5-4.5 characters per token on current tokenizers, so
    this is close for them and underestimates dense non-Latin text; it is only used to
    reserve budget before a call, and the call's real usage settles the account.
    """
    return math.ceil(len(text) / 4)


def estimate_input_tokens(request: LLMRequest) -> int:
    """The estimated input of ``request``: its system prompt, its prompt and its output schema."""
    schema = json.dumps(request.schema, separators=(",", ":"), sort_keys=True)
    return estimate_tokens(request.system) + estimate_tokens(request.prompt) + estimate_tokens(schema)


def worst_case(
    prices: Prices, model: str, est_input_tokens: int, max_output_tokens: int, input_safety_factor: float
) -> tuple[int, float]:
    """(input tokens reserved, worst-case USD) of a call: the input estimate times the safety
    factor, rounded up, at the input price (no cache discount), plus every allowed output token
    at the output price."""
    price = prices.for_model(model)
    input_tokens = math.ceil(est_input_tokens * input_safety_factor)
    return input_tokens, (input_tokens * price.input + max_output_tokens * price.output) / 1_000_000


FRAMING_MARGIN_TOKENS: Final = 1024
"""Input tokens a provider adds around the text we send, reserved on top of its bytes: the
role and turn markers of the messages, the tool definition wrapper and the hidden system
prompt Anthropic adds for tool use (a few hundred tokens by its documentation), Gemini's
structured-output framing. Generous on purpose: it is reserved, not spent."""


def input_token_bound(request: LLMRequest) -> int:
    """An upper bound of the input tokens ``request`` can be billed for: the UTF-8 bytes of its
    system prompt, prompt, schema (as JSON) and schema name, plus :data:`FRAMING_MARGIN_TOKENS`.

    Why bytes bound tokens: the tokenizers of these providers are byte-level BPE (or, for
    Gemini, SentencePiece with byte fallback) vocabularies over the UTF-8 bytes of the text;
    every token stands for at least one byte and no byte is split across two tokens, so a
    text of n bytes is at most n tokens. Typical text is 3-5 bytes a token, so the bound is
    about 4x the estimate for English and exact-ish for worst-case input (one token a byte).
    The schema is counted as JSON with spaces after separators (as SDKs send it, unescaped);
    the tool wrapper around it (name, description) counts into the framing margin.
    """
    schema = json.dumps(request.schema, ensure_ascii=False)
    parts = (request.system, request.prompt, schema, request.schema_name)
    return sum(len(part.encode("utf-8")) for part in parts) + FRAMING_MARGIN_TOKENS


def input_token_price(price: ModelPrice) -> float:
    """The highest USD per million a billed input token can cost: an input token may be billed
    as plain input, as a cache write (Anthropic's 1.25x) or as a cache read."""
    return max(price.input, price.cache_write, price.cache_read)


def bound_usd(prices: Prices, model: str, max_input_tokens: int, max_output_tokens: int) -> float:
    """What a call can cost at most: every input token at :func:`input_token_price` plus every
    allowed output token at the output price. A provider bills at most ``max_input_tokens``
    (:func:`input_token_bound`) and at most ``max_output_tokens`` (the call's hard limit), so the
    real cost cannot exceed this."""
    price = prices.for_model(model)
    return (max_input_tokens * input_token_price(price) + max_output_tokens * price.output) / 1_000_000
