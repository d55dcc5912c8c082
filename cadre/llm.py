"""The process's LLM, from settings: which provider, which model for which kind of call.

``llm_provider=auto`` takes Anthropic when ``ANTHROPIC_API_KEY`` is set, else Gemini when
``GOOGLE_API_KEY`` / ``GEMINI_API_KEY`` is set, else none (every consultation then falls back
to the rules without asking anybody). Roles map to consultation kinds: the planner's model
plans and adapts, the decomposer's decomposes, the agent's recovers, interprets and decides,
so a small planner model and a larger agent model (or the reverse) are two settings.
"""

from __future__ import annotations

from typing import Final

from cadre.actors.inference import LLM
from cadre.bus.errors import CadreError
from cadre.planner.providers.base import Provider, ProviderConfig
from cadre.settings import Settings

DEFAULT_MODELS: Final = {
    "anthropic": {"planner": "claude-sonnet-4-6", "decomposer": "claude-haiku-4-5", "agent": "claude-haiku-4-5"},
    "gemini": {"planner": "gemini-2.5-flash", "decomposer": "gemini-2.5-flash", "agent": "gemini-2.5-flash"},
}
ROLE_KINDS: Final = {
    "planner": ("plan", "adapt"),
    "decomposer": ("decompose",),
    "agent": ("recover", "interpret", "decide"),
}


class LLMSettingsError(CadreError):
    """The settings name a provider whose key is missing."""

    code = "llm_settings"


def provider_name(settings: Settings) -> str | None:
    """The provider the settings select, or None for no model at all."""
    choice = settings.llm_provider
    if choice == "none":
        return None
    if choice == "auto":
        if settings.anthropic_api_key is not None:
            return "anthropic"
        return "gemini" if settings.gemini_api_key is not None else None
    key = settings.anthropic_api_key if choice == "anthropic" else settings.gemini_api_key
    if key is None:
        var = "ANTHROPIC_API_KEY" if choice == "anthropic" else "GEMINI_API_KEY (or GOOGLE_API_KEY)"
        raise LLMSettingsError(f"CADRE_LLM_PROVIDER={choice} but {var} is not set")
    return choice


def models_for(settings: Settings, provider: str) -> dict[str, str]:
    """A model per consultation kind, from the role settings over the provider's defaults."""
    chosen = {
        "planner": settings.model_planner,
        "decomposer": settings.model_decomposer,
        "agent": settings.model_agent,
    }
    models = {"default": settings.model_agent or DEFAULT_MODELS[provider]["agent"]}
    for role, kinds in ROLE_KINDS.items():
        for kind in kinds:
            models[kind] = chosen[role] or DEFAULT_MODELS[provider][role]
    return models


def build_llm(settings: Settings) -> LLM | None:
    """The process's LLM (its HTTP client opened lazily by the SDK), or None."""
    name = provider_name(settings)
    if name is None:
        return None
    models = models_for(settings, name)
    key, base_url = (
        (settings.anthropic_api_key, settings.anthropic_base_url)
        if name == "anthropic"
        else (settings.gemini_api_key, settings.gemini_base_url)
    )
    assert key is not None  # provider_name only picks a provider whose key is set
    config = ProviderConfig(
        api_key=key.get_secret_value(),
        models=models,
        base_url=base_url,
        timeout_s=settings.llm_timeout_s,
        max_retries=settings.llm_max_retries,
    )
    # The adapters are imported here so that a process without a model never imports the SDKs.
    provider: Provider
    if name == "anthropic":
        from cadre.planner.providers.anthropic import AnthropicProvider

        provider = AnthropicProvider(config)
    else:
        from cadre.planner.providers.gemini import GeminiProvider

        provider = GeminiProvider(config)
    limits = {
        "default": settings.llm_max_output_tokens,
        "plan": settings.llm_max_output_tokens_plan,
        "adapt": settings.llm_max_output_tokens_plan,
    }
    return LLM(provider=provider, models=models, max_output_tokens=limits)
