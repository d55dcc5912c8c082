"""The policy file of ``cadre replay WF --policy FILE``: what a what-if changes.

JSON, or TOML when the name ends in ``.toml``; unknown keys are refused (a typo is an error,
not a silent default). Every key is optional; a key that is present replaces the
deployment's setting of the same name for the what-if::

    {
      "prohibited_tools": ["fs.write"],         # the catalog's policy (the validator refuses them,
      "approval_tools": ["sql.query"],          #  the decomposer gates them on a person)
      "limits": {"max_tasks": 2},               # the validator's size limits (planner.validation.Limits)
      "budget_workflow_usd": 0.01,              # the workflow's LLM cap (over its request's own)
      "budget_daily_usd": 1.0,                  # the deployment's daily cap
      "intelligence": "basic",                  # the workflow's level and mode (over its request's own)
      "mode": "strict"
    }
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from cadre.actors.replay import Replayer, live_specs
from cadre.actors.replay.whatif import WhatIf
from cadre.budget_config import budget_config
from cadre.commands import UsageError
from cadre.planner.catalog import Catalog
from cadre.planner.validation import Limits
from cadre.settings import Intelligence, Mode, Settings
from cadre.system import catalog_for


class LimitsPolicy(BaseModel):
    """The validator's limits to try (each default: the deployment's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_tasks: int | None = Field(default=None, ge=1)
    max_depth: int | None = Field(default=None, ge=1)
    max_steps_per_task: int | None = Field(default=None, ge=1)
    max_inputs_bytes: int | None = Field(default=None, ge=1)


class WhatIfPolicy(BaseModel):
    """The keys of a policy file (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prohibited_tools: list[str] | None = None
    approval_tools: list[str] | None = None
    limits: LimitsPolicy | None = None
    budget_workflow_usd: float | None = Field(default=None, ge=0)
    budget_daily_usd: float | None = Field(default=None, ge=0)
    intelligence: Intelligence | None = None
    mode: Mode | None = None


def load_policy(path: Path) -> WhatIfPolicy:
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
        return WhatIfPolicy.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise UsageError(f"policy file {path}: {problems}") from None


@dataclass(frozen=True)
class WhatIfSetup:
    """A what-if ready to run: the replayer with the changed specs, the changes, the changed catalog."""

    replayer: Replayer
    whatif: WhatIf
    catalog: Catalog


def what_if_setup(settings: Settings, policy: WhatIfPolicy, base: Replayer) -> WhatIfSetup:
    """The deployment of ``settings`` with ``policy`` applied (``base`` gives the model fallback)."""
    update: dict[str, Any] = {}
    for key in ("prohibited_tools", "approval_tools", "budget_workflow_usd", "budget_daily_usd"):
        value = getattr(policy, key)
        if value is not None:
            update[key] = value
    changed = settings.model_copy(update=update)
    catalog = catalog_for(changed)
    limits = Limits(reject_below=settings.reject_below)
    if policy.limits is not None:
        given = {k: v for k, v in policy.limits.model_dump().items() if v is not None}
        limits = Limits(reject_below=settings.reject_below, **given)
    specs = live_specs(
        catalog,
        approval_timeout=timedelta(seconds=settings.approval_timeout_s),
        limits=limits,
        approve_below=settings.approve_below,
    )
    whatif = WhatIf(
        budget=budget_config(changed),
        intelligence=policy.intelligence,
        mode=policy.mode,
        workflow_usd=policy.budget_workflow_usd,
        daily_usd=policy.budget_daily_usd,
    )
    return WhatIfSetup(Replayer(specs, base.fallback_llm), whatif, catalog)
