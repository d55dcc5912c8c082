"""LLM providers: the port (``base``), its adapters, parse-and-repair, prices (``pricing``) and prompts.

    from cadre.planner.providers import ProviderConfig, plan_request
    from cadre.planner.providers.anthropic import AnthropicProvider

    provider = AnthropicProvider(ProviderConfig(api_key=key, models={"default": "claude-haiku-4-5"}))
    request = plan_request(text, catalog.describe(), provider.config.model_for("plan"), 4096)
    response = await provider.complete(request)

Actors never call a provider directly: :meth:`actors.context.Context.infer` runs the
parse-and-repair flow (:func:`structured_flow`) with every call gated by the budget.

The adapters are imported lazily (``planner.providers.anthropic`` / ``.gemini`` / ``.openai``,
and ``.scripted`` for users' tests) by whoever wires them, so that importing the port does not
import the vendor SDKs.
"""

from cadre.planner.providers.base import (
    ERROR_CODES,
    KINDS,
    ErrorCode,
    LLMRequest,
    LLMResponse,
    Provider,
    ProviderConfig,
    ProviderError,
    Usage,
    parse_json_object,
    require_output,
)
from cadre.planner.providers.pricing import (
    ModelPrice,
    Prices,
    cost_usd,
    estimate_input_tokens,
    estimate_tokens,
    model_price,
    worst_case,
)
from cadre.planner.providers.prompts import PLAN_SCHEMA, plan_request, plan_validator, validate_plan_output
from cadre.planner.providers.structured import (
    Attempt,
    InvalidOutput,
    Outcome,
    StructuredFlow,
    problems_of,
    repair_request,
    structured_flow,
)

__all__ = [
    "ERROR_CODES",
    "KINDS",
    "PLAN_SCHEMA",
    "Attempt",
    "ErrorCode",
    "InvalidOutput",
    "LLMRequest",
    "LLMResponse",
    "ModelPrice",
    "Outcome",
    "Prices",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "StructuredFlow",
    "Usage",
    "cost_usd",
    "estimate_input_tokens",
    "estimate_tokens",
    "model_price",
    "parse_json_object",
    "plan_request",
    "plan_validator",
    "problems_of",
    "repair_request",
    "require_output",
    "structured_flow",
    "validate_plan_output",
    "worst_case",
]
