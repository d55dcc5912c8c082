"""The budget actor's configuration and ledger stream, built from the process settings."""

from __future__ import annotations

import dataclasses

from cadre.actors.budget.rules import BudgetConfig
from cadre.bus.stream import StreamSpec
from cadre.planner.providers.pricing import FREE, ModelPrice, Prices, model_price
from cadre.settings import Price, RateLimit, Settings


def _model_price(price: Price) -> ModelPrice:
    """A settings price with its unset cache rates filled in (:func:`planner.providers.pricing.model_price`)."""
    return model_price(price.input, price.output, price.cache_read, price.cache_write)


def budget_config(settings: Settings) -> BudgetConfig:
    """Caps, reservation timeout, rate limits and prices of the budget, from ``settings``."""
    default = RateLimit()
    return BudgetConfig(
        workflow_usd=settings.budget_workflow_usd,
        daily_usd=settings.budget_daily_usd,
        reservation_timeout_s=settings.budget_reservation_timeout_s,
        rate_limits={p: (r.requests_per_minute, r.tokens_per_minute) for p, r in settings.rate_limits.items()},
        prices=Prices(
            default=_model_price(settings.default_price),
            by_model=_local_prices(settings) | {prefix: _model_price(p) for prefix, p in settings.prices.items()},
        ),
        default_rate_limit=(default.requests_per_minute, default.tokens_per_minute),
    )


def _local_prices(settings: Settings) -> dict[str, ModelPrice]:
    """Local models (:func:`cadre.llm.local_models`) the price table does not name, at 0."""
    from cadre.llm import LLMSettingsError, local_models  # late: cadre.llm imports the actors' inference port

    try:
        models = local_models(settings)
    except LLMSettingsError:  # a provider this process cannot use; the process that would use it says so
        return {}
    return {m: FREE for m in models if not any(m.startswith(p) for p in settings.prices)}


def ledger_spec(settings: Settings) -> StreamSpec:
    """The ledger's stream: one subject, stored and replicated like the event stream, kept forever."""
    return dataclasses.replace(
        settings.stream(),
        name=settings.ledger_stream_name,
        subjects=settings.subjects.ledger,
        max_age=0.0,
        max_bytes=-1,
        partitions=0,  # one subject, no workflows
    )
