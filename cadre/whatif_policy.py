"""The what-if of ``cadre replay WF --policy FILE``: a deployment's policy file (``cadre/policy_file.py``,
the same file and loader a live deployment reads) applied over the deployment's settings, and the
recorded workflow re-decided under it.

Every key a live deployment applies the what-if applies the same way, through the same handlers
(:func:`cadre.system.system_specs`): the catalog's tool policy, the validator's limits, the agent
pools; the caps, level and mode also over each request's own (``actors.replay.whatif``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cadre.actors.replay import Replayer
from cadre.actors.replay.whatif import WhatIf
from cadre.budget_config import budget_config
from cadre.planner.builtin_tools import compensation_specs
from cadre.planner.catalog import Catalog
from cadre.policy_file import PolicyFile, apply_policy, load_policy
from cadre.settings import Settings
from cadre.system import catalog_for, system_specs

__all__ = ["WhatIfPolicy", "WhatIfSetup", "load_policy", "what_if_setup"]


WhatIfPolicy = PolicyFile
"""The keys of a policy file (its old name here)."""


@dataclass(frozen=True)
class WhatIfSetup:
    """A what-if ready to run: the replayer with the changed specs, the changes, the changed catalog."""

    replayer: Replayer
    whatif: WhatIf
    catalog: Catalog


def what_if_setup(settings: Settings, policy: PolicyFile, base: Replayer) -> WhatIfSetup:
    """The deployment of ``settings`` with ``policy`` applied (``base`` gives the model fallback)."""
    changed = apply_policy(settings, policy)
    catalog = catalog_for(changed)
    specs = system_specs(changed, catalog)
    whatif = WhatIf(
        budget=budget_config(changed),
        intelligence=policy.intelligence,
        mode=policy.mode,
        workflow_usd=policy.budget_workflow_usd,
        daily_usd=policy.budget_daily_usd,
    )
    # Tools are checked against what the agents' toolbox runs: the catalog and the compensating tools.
    runnable = Catalog([*catalog.values(), *(s for s in compensation_specs() if s.name not in catalog)])
    return WhatIfSetup(Replayer(specs, base.fallback_llm), whatif, runnable)
