"""The handlers the live system runs, built in one place for the system and for the replayer."""

from __future__ import annotations

from datetime import timedelta

from cadre.actors import agent, decomposer, planner, validator
from cadre.actors.runtime import ActorSpec
from cadre.planner.catalog import Catalog
from cadre.planner.validation import Limits

__all__ = ["live_specs"]


def live_specs(
    catalog: Catalog,
    *,
    approval_timeout: timedelta,
    limits: Limits | None = None,
    approve_below: float | None = None,
) -> tuple[ActorSpec, ...]:
    """The event handlers of the planner, validator, decomposer and agent (in that order):
    what ``cadre/system.py`` runs and what a replay re-runs (a what-if with a changed catalog
    and ``limits``). ``limits.reject_below`` and ``approve_below`` are the deployment's
    confidence thresholds (:mod:`planner.confidence`)."""
    return (
        planner.make_spec(catalog),
        validator.make_spec(catalog, limits),
        decomposer.make_spec(catalog),
        agent.make_spec(approval_timeout, catalog=catalog, approve_below=approve_below),
    )
