"""The handlers the live system runs, built in one place for the system and for the replayer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from cadre.actors import agent, decomposer, planner, validator
from cadre.actors.redrive import redrivable
from cadre.actors.runtime import ActorSpec
from cadre.planner.catalog import Catalog
from cadre.planner.flows.model import Flow
from cadre.planner.pools import EVERY_POOL, Pools
from cadre.planner.safety import SafetyContext
from cadre.planner.validation import NO_DEPLOYMENT, Limits

__all__ = ["live_specs"]


def live_specs(
    catalog: Catalog,
    *,
    approval_timeout: timedelta,
    limits: Limits | None = None,
    approve_below: float | None = None,
    pools: Pools | None = None,
    agent_pool: str | None = EVERY_POOL,
    rate_limit_wait_s: float = 0.0,
    on_failure: str = "fail",
    safety: SafetyContext | None = None,
    flows: Mapping[str, Flow] | None = None,
) -> tuple[ActorSpec, ...]:
    """The event handlers of the planner, validator, decomposer and agent (in that order):
    what ``cadre/system.py`` runs and what a replay re-runs (a what-if with a changed catalog,
    ``limits`` and ``pools``). ``limits.reject_below`` and ``approve_below`` are the deployment's
    confidence thresholds (:mod:`planner.confidence`); ``agent_pool``: the pool the agent serves
    (``actors.agent``; a replay's agent serves every pool); ``safety``: what the tools' safety rules
    need from the deployment (:mod:`planner.safety`); ``flows``: the deployment's flows (:mod:`planner.flows`)."""
    specs = (
        planner.make_spec(catalog, on_failure, rate_limit_wait_s, flows, (limits or Limits()).max_child_depth),
        validator.make_spec(catalog, limits, pools, safety, flows),
        decomposer.make_spec(catalog, pools, rate_limit_wait_s),
        agent.make_spec(
            approval_timeout,
            catalog=catalog,
            approve_below=approve_below,
            pools=pools,
            pool=agent_pool,
            rate_limit_wait_s=rate_limit_wait_s,
            safety=safety if safety is not None else NO_DEPLOYMENT,
            on_failure=on_failure,
        ),
    )
    return tuple(redrivable(s) for s in specs)  # a redriven input goes to the kind that gave up on it
