"""The process's LLM, from settings: which provider, which model for which kind of call, and
which providers to fall back on.

``llm_provider=auto`` takes Anthropic when ``ANTHROPIC_API_KEY`` is set, else Gemini when
``GOOGLE_API_KEY`` / ``GEMINI_API_KEY`` is set, else OpenAI when ``OPENAI_API_KEY`` is set,
else none (every consultation then falls back to the rules without asking anybody).
``openai`` is OpenAI or, with ``OPENAI_BASE_URL``, any Chat Completions server (vLLM,
llama.cpp, LM Studio); ``ollama`` is a preset for a local Ollama (its default URL, no key);
``scripted`` answers from ``llm_script`` (:mod:`cadre.planner.providers.scripted`).

Roles map to consultation kinds: the planner's model plans and adapts, the decomposer's
decomposes, the agent's recovers, interprets and decides, so a small planner model and a
larger agent model (or the reverse) are two settings. ``llm_fallback`` (or a role's own
``llm_fallback_<role>``) lists ``provider`` or ``provider:model`` entries asked in turn when
the one before is overloaded, rate-limited or down; an entry without a model takes the
provider's default for the role.

Local models (the ollama preset's, those of an ``OPENAI_BASE_URL`` server on this machine or the
local network, the scripted provider's) cost 0 unless the price table names them
(:func:`local_models`); they still pass the budget gate.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping
from typing import Final

from cadre.actors.inference import LLM
from cadre.bus.errors import CadreError
from cadre.planner.providers.base import Provider, ProviderConfig
from cadre.settings import Settings

DEFAULT_MODELS: Final = {
    "anthropic": {"planner": "claude-sonnet-4-6", "decomposer": "claude-haiku-4-5", "agent": "claude-haiku-4-5"},
    "gemini": {"planner": "gemini-2.5-flash", "decomposer": "gemini-2.5-flash", "agent": "gemini-2.5-flash"},
    "openai": {"planner": "gpt-4.1", "decomposer": "gpt-4.1-mini", "agent": "gpt-4.1-mini"},
    "ollama": {"planner": "llama3.1:8b", "decomposer": "llama3.1:8b", "agent": "llama3.1:8b"},
    "scripted": {"planner": "scripted", "decomposer": "scripted", "agent": "scripted"},
}
ROLE_KINDS: Final = {
    "planner": ("plan", "adapt"),
    "decomposer": ("decompose",),
    "agent": ("recover", "interpret", "decide"),
}


class LLMSettingsError(CadreError):
    """The settings name a provider whose key is missing."""

    code = "llm_settings"


_KEY_VARS: Final = {
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY (or GOOGLE_API_KEY)",
    "openai": "OPENAI_API_KEY (or OPENAI_BASE_URL, for a server that needs no key)",
}


def provider_name(settings: Settings) -> str | None:
    """The provider the settings select, or None for no model at all."""
    choice = settings.llm_provider
    if choice == "none":
        return None
    if choice == "auto":
        for name in ("anthropic", "gemini", "openai"):
            if _key(settings, name) is not None:
                return name
        return None
    check_provider(settings, choice, f"CADRE_LLM_PROVIDER={choice}")
    return choice


def check_provider(settings: Settings, name: str, named_by: str) -> None:
    """Refuse a provider that cannot be used: a key it needs, or its script, is not set."""
    if name == "scripted":
        if settings.llm_script is None:
            raise LLMSettingsError(f"{named_by} but CADRE_LLM_SCRIPT (a file of replies or module:function) is not set")
        return
    if name == "ollama" or (name == "openai" and settings.openai_base_url is not None):
        return  # local and compatible servers take any key
    if _key(settings, name) is None:
        raise LLMSettingsError(f"{named_by} but {_KEY_VARS[name]} is not set")


def _key(settings: Settings, name: str) -> str | None:
    secret = {
        "anthropic": settings.anthropic_api_key,
        "gemini": settings.gemini_api_key,
        "openai": settings.openai_api_key,
    }.get(name)
    return secret.get_secret_value() if secret is not None else None


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


def fallback_lists(settings: Settings) -> dict[str, list[tuple[str, str]]]:
    """Per role, the (provider, model) entries to fall back on, in order."""
    own = {
        "planner": settings.llm_fallback_planner,
        "decomposer": settings.llm_fallback_decomposer,
        "agent": settings.llm_fallback_agent,
    }
    lists: dict[str, list[tuple[str, str]]] = {}
    for role in ROLE_KINDS:
        mine = own[role]
        entries = mine if mine is not None else settings.llm_fallback
        chain = []
        for entry in entries:
            provider, _, model = entry.partition(":")
            chain.append((provider, model or DEFAULT_MODELS[provider][role]))
        lists[role] = chain
    return lists


def local_models(settings: Settings) -> set[str]:
    """The models this process would ask of a local server: priced at 0 when the price table
    does not name them (the ollama preset, an ``OPENAI_BASE_URL`` server on the local network or
    as ``openai_base_url_free`` says, the scripted provider)."""
    name = provider_name(settings)
    used: list[tuple[str, str]] = []
    if name is not None:
        used += [(name, model) for model in models_for(settings, name).values()]
    for chain in fallback_lists(settings).values():
        used += chain
    return {model for provider, model in used if _is_local(settings, provider)}


def _is_local(settings: Settings, provider: str) -> bool:
    if provider in ("ollama", "scripted"):
        return True
    base = settings.openai_base_url
    if provider != "openai" or base is None:
        return False
    if settings.openai_base_url_free is not None:
        return settings.openai_base_url_free
    return on_local_network(base)


def on_local_network(url: str) -> bool:
    """Whether ``url``'s host is this machine or the local network: a loopback or private
    address, ``localhost``, a name without a dot (``gpu-box``), or one under ``.local``,
    ``.lan``, ``.internal`` or ``.home.arpa``. A public name (a paid gateway) is not."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith(_LOCAL_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_link_local


_LOCAL_SUFFIXES: Final = (".localhost", ".local", ".lan", ".internal", ".home.arpa")


def build_provider(settings: Settings, name: str) -> Provider:
    """The provider ``name`` as the settings configure it (its HTTP client opened lazily)."""
    check_provider(settings, name, f"the LLM fallback list names {name}")
    if name == "scripted":
        from cadre.planner.providers.scripted import load_script

        assert settings.llm_script is not None  # check_provider
        return load_script(settings.llm_script)
    base_url = {
        "anthropic": settings.anthropic_base_url,
        "gemini": settings.gemini_base_url,
        "openai": settings.openai_base_url,
        "ollama": settings.ollama_base_url,
    }[name]
    config = ProviderConfig(
        api_key=_key(settings, name) or "",
        models={"default": DEFAULT_MODELS[name]["agent"]},  # the LLM picks the model per kind
        base_url=base_url,
        timeout_s=settings.llm_timeout_s,
        max_retries=settings.llm_max_retries,
    )
    # The adapters are imported here so that a process without a model never imports the SDKs.
    if name == "anthropic":
        from cadre.planner.providers.anthropic import AnthropicProvider

        return AnthropicProvider(config)
    if name == "gemini":
        from cadre.planner.providers.gemini import GeminiProvider

        return GeminiProvider(config)
    from cadre.planner.providers.openai import OpenAIProvider

    return OpenAIProvider(config, name=name, response_format=settings.openai_response_format)


def build_llm(settings: Settings) -> LLM | None:
    """The process's LLM with its fallbacks (one provider object per provider), or None."""
    name = provider_name(settings)
    if name is None:
        return None
    limits = {
        "default": settings.llm_max_output_tokens,
        "plan": settings.llm_max_output_tokens_plan,
        "adapt": settings.llm_max_output_tokens_plan,
    }
    providers: dict[str, Provider] = {}

    def provider(of: str) -> Provider:
        if of not in providers:
            providers[of] = build_provider(settings, of)
        return providers[of]

    models = models_for(settings, name)
    fallbacks: dict[str, tuple[LLM, ...]] = {}
    for role, chain in fallback_lists(settings).items():
        for kind in ROLE_KINDS[role]:
            fallbacks[kind] = tuple(
                LLM(provider=provider(p), models={"default": m}, max_output_tokens=limits) for p, m in chain
            )
    return LLM(provider=provider(name), models=models, max_output_tokens=limits, fallbacks=_frozen(fallbacks))


def _frozen(fallbacks: dict[str, tuple[LLM, ...]]) -> Mapping[str, tuple[LLM, ...]]:
    return {kind: chain for kind, chain in fallbacks.items() if chain}
