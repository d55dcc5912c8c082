"""The policy file: one file that configures a deployment (``CADRE_POLICY`` / ``--policy FILE`` on
``cadre up``, ``cadre actor`` and ``cadre run``) and the what-if of ``cadre replay WF --policy FILE``.

JSON, or TOML when the name ends in ``.toml``; unknown keys are refused (a typo is an error,
not a silent default). Every key is optional; a key that is present replaces the setting of
the same name (:class:`cadre.settings.Settings`), the validator's limits key by key::

    {
      "prohibited_tools": ["fs.write"],         # the catalog's policy (the validator refuses them,
      "approval_tools": ["sql.query"],          #  the decomposer gates them on a person)
      "limits": {"max_tasks": 2},               # the validator's size limits (planner.validation.Limits)
      "budget_workflow_usd": 0.01,              # the workflow's LLM cap
      "budget_daily_usd": 1.0,                  # the deployment's daily cap
      "intelligence": "basic",                  # the workflows' level and mode
      "mode": "strict",
      "approve_below": 0.5,                     # confidence thresholds: approval below, rejection below
      "reject_below": 0.2,
      "model_side_effects_need_approval": true, # a side-effect tool a model chose waits for a person
      "pools": {                                # agent pools and the tools each may use
        "files": {"tools": ["fs.read", "fs.write"]},
        "data": {"tools": ["sql.query", "sql.schema", "text.render"]}
      },
      "llm_fallback": ["gemini", "openai:gpt-4.1-mini"],   # providers asked in turn when one is down
      "llm_fallback_planner": ["ollama:llama3.2:1b"]        #  (every role, or one role's own list)
    }

A live deployment takes ``intelligence`` and ``mode`` as the defaults of requests that set none;
a what-if applies them, and the caps, over each request's own (``actors.replay.whatif``).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cadre.commands import UsageError
from cadre.settings import AgentPool, Intelligence, Mode, Settings, check_fallback, check_pool_names
from cadre.system import UnknownPool, catalog_for, check_pool, pools_of


class LimitsPolicy(BaseModel):
    """The validator's limits to set (each default: the deployment's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_tasks: int | None = Field(default=None, ge=1)
    max_depth: int | None = Field(default=None, ge=1)
    max_steps_per_task: int | None = Field(default=None, ge=1)
    max_inputs_bytes: int | None = Field(default=None, ge=1)


class PolicyFile(BaseModel):
    """The keys of a policy file (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prohibited_tools: list[str] | None = None
    approval_tools: list[str] | None = None
    limits: LimitsPolicy | None = None
    budget_workflow_usd: float | None = Field(default=None, ge=0)
    budget_daily_usd: float | None = Field(default=None, ge=0)
    intelligence: Intelligence | None = None
    mode: Mode | None = None
    approve_below: float | None = Field(default=None, ge=0, le=1)
    reject_below: float | None = Field(default=None, ge=0, le=1)
    model_side_effects_need_approval: bool | None = None
    on_failure: Literal["fail", "compensate"] | None = None
    pools: dict[str, AgentPool] | None = None
    llm_fallback: list[str] | None = None
    llm_fallback_planner: list[str] | None = None
    llm_fallback_decomposer: list[str] | None = None
    llm_fallback_agent: list[str] | None = None

    @field_validator("llm_fallback", "llm_fallback_planner", "llm_fallback_decomposer", "llm_fallback_agent")
    @classmethod
    def _fallback(cls, entries: list[str] | None) -> list[str] | None:
        return check_fallback(entries)

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, pools: dict[str, AgentPool] | None) -> dict[str, AgentPool] | None:
        return check_pool_names(pools) if pools is not None else None


def load_policy(path: Path) -> PolicyFile:
    """Read a policy file; a :class:`UsageError` names the file and what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read policy file {str(path)!r}: {exc.strerror}") from None
    try:
        data: Any = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise UsageError(f"policy file {path} is not valid {kind}: {exc}") from None
    try:
        return PolicyFile.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise UsageError(f"policy file {path}: {problems}") from None


def apply_policy(settings: Settings, policy: PolicyFile) -> Settings:
    """``settings`` with every key ``policy`` sets put onto the setting of the same name.

    A key without a setting of its name in this version of cadre is a :class:`UsageError`
    rather than a key silently ignored.
    """
    fields = type(settings).model_fields
    update: dict[str, Any] = {}
    missing: list[str] = []
    for key, value in policy:
        if value is None:
            continue
        if key not in fields:
            missing.append(key)
            continue
        if isinstance(value, LimitsPolicy):
            value = settings.limits.model_copy(update=value.model_dump(exclude_none=True))
        update[key] = value
    if missing:
        raise UsageError(f"the policy sets {', '.join(missing)}, which this version of cadre has no setting for")
    return settings.model_copy(update=update)


def check_deployment(settings: Settings) -> None:
    """Refuse pools that name tools the catalog does not have, and an agent pool not declared."""
    if not settings.pools and settings.agent_pool is None:
        return
    catalog = catalog_for(settings)
    for name, tools in (pools_of(settings) or {}).items():
        unknown = sorted(t for t in tools if t not in catalog)
        if unknown:
            raise UsageError(f"agent pool {name!r} names tools the catalog does not have: {', '.join(unknown)}")
    try:
        check_pool(settings, settings.agent_pool)
    except UnknownPool as exc:
        raise UsageError(str(exc)) from None


def deployment_settings(settings: Settings) -> Settings:
    """``settings`` with its policy file (``settings.policy``) applied and checked."""
    if settings.policy is not None:
        settings = apply_policy(settings, load_policy(settings.policy))
    check_deployment(settings)
    return settings


__all__ = ["LimitsPolicy", "PolicyFile", "apply_policy", "deployment_settings", "load_policy"]
