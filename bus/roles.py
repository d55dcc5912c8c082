"""Who writes which event type: the one table that NATS permissions (:mod:`bus.auth`) and
signature checks (:mod:`bus.signing`) both follow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# Which event types each writer emits (docs/architecture.md, "Flow of one workflow").
EMITS: Mapping[str, tuple[str, ...]] = {
    "intake": ("workflow_requested",),
    "planner": (
        "plan_proposed",
        "task_ready",
        "step_ready",
        "workflow_completed",
        "workflow_failed",
        "compensation_started",
        "deadline_set",
        "cancel_requested",  # the deadline's (by="deadline")
        "workflow_cancelled",
        "consultation_waiting",
        "branch_taken",
        "child_requested",  # a task that runs a child workflow (actors.children)
        # The children relay, hosted with the planner: a child's end on its parent, a parent's
        # cancel on its children (cancel_requested, by="parent").
        "child_completed",
        "child_failed",
    ),
    "validator": (
        "plan_validated",
        "plan_rejected",
        "step_ready",
        "steps_rejected",
        "proposal_validated",
        "proposal_rejected",
    ),
    "decomposer": ("steps_proposed", "steps_rejected", "consultation_waiting"),
    # approval_denied: the deadline's denial (by=timeout) of an unanswered approval.
    "agent": (
        "step_completed",
        "step_failed",
        "approval_requested",
        "approval_denied",
        "proposal_made",
        "consultation_waiting",
        "step_compensated",
    ),
    "approvals": ("approval_granted", "approval_denied", "cancel_requested", "redriven"),
}
RUNTIME_EMITS = ("handler_failed", "effects_recorded", "forged_event")
"""Written by the actor runtime of any kind: dead letters, the effects of a handler with no output,
and the record of an input it refused as forged."""

ACTOR_ROLES: Final = ("planner", "validator", "decomposer", "agent")
SIGNING_ROLES: Final = ("intake", *ACTOR_ROLES, "approvals")
"""The roles that sign what they store (the budget writes its own ledger, not events)."""


def emits_signed() -> dict[str, tuple[str, ...]]:
    """What each signing role may emit: its own types, for an actor kind its runtime's too, and for
    the planner the intake's (``cadre actor planner`` hosts the intake, as its NATS permissions say)."""
    table = {role: (*EMITS[role], *(RUNTIME_EMITS if role in ACTOR_ROLES else ())) for role in SIGNING_ROLES}
    table["planner"] = (*table["planner"], *EMITS["intake"])
    return table
