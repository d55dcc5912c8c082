"""A model's decision about a step, checked like a step before anything of it runs.

The agent turns a ``recover`` answer into a proposal (``bus.events.ProposalMade``): retry a
tried tool, run an alternative tool, or skip the step. :func:`check_proposal` is the validator's
verdict on it, a plain function over plain data. A call (retry or alternative) goes through the
validator's own step check (:func:`planner.validation.validate_steps`: tool known and allowed by
the policy, inputs against the tool's schema, size limit, references) and the agent pools'
(:func:`planner.pools.check_step_pools`); a skip must lose nothing the workflow uses. A cleared
call waits for a person when its tool requires approval, or when the tool is not read-only: a
side effect the model chose, with inputs it wrote, is not run on its word alone unless the
deployment says so (``Limits.model_side_effects_need_approval``).

Check names added here: ``skip_allowed``, ``model_side_effect``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec
from pydantic import ValidationError

from cadre.bus.events import ProposalMade
from cadre.bus.plan import Check, StepIntent, Task
from cadre.planner import pools as agent_pools
from cadre.planner.catalog import Catalog, Safety
from cadre.planner.safety import SafetyContext
from cadre.planner.validation import Limits, needs_approval, validate_steps

CALLS = frozenset({"retry", "alternative"})
"""The proposals that call a tool (the others call nothing)."""


def proposed_step(proposal: ProposalMade) -> StepIntent:
    """The step a proposal would run: its tool and inputs under the step's id."""
    return StepIntent(id=proposal.step_id, task_id=proposal.task_id, tool=proposal.tool, inputs=proposal.inputs)


def check_output(proposal: ProposalMade, catalog: Catalog, limits: Limits, expected: Sequence[str]) -> list[Check]:
    """The model's replacement of a tool's output (``interpret``): valid for the tool's output
    model (``output_valid``), with every field the step expects (``output_expected``), and within
    the size limit of what a model may write (``output_size``: ``Limits.max_inputs_bytes``)."""
    who = f"the model's output for step {proposal.step_id!r} ({proposal.tool})"
    output = proposal.output if proposal.output is not None else {}
    spec = catalog.get(proposal.tool)
    if spec is None:
        fix = "interpret only the output of a tool of the catalog"
        return [Check(name="tool_exists", passed=False, message=f"{who}: no such tool", fix=fix, path="tool")]
    checks: list[Check] = []
    try:
        spec.output_model.model_validate(output)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '$'}: {e['msg']}" for e in exc.errors())
        fix = f"return an object of {spec.output_model.__name__}"
        checks.append(Check(name="output_valid", passed=False, message=f"{who}: {problems}", fix=fix, path="output"))
    else:
        said = f"{who} matches {spec.output_model.__name__}"
        checks.append(Check(name="output_valid", passed=True, message=said, path="output"))
    missing = [name for name in expected if name not in output]
    if missing:
        said = f"{who} lacks {', '.join(missing)}, which the step expects"
        fix = "include every expected field"
        checks.append(Check(name="output_expected", passed=False, message=said, fix=fix, path="output"))
    else:
        checks.append(Check(name="output_expected", passed=True, message=f"{who} has every expected field"))
    size = len(msgspec.json.encode(output))
    if size > limits.max_inputs_bytes:
        said = f"{who} takes {size} bytes as JSON; the limit is {limits.max_inputs_bytes}"
        fix = "a model may not write outputs this large"
        checks.append(Check(name="output_size", passed=False, message=said, fix=fix, path="output"))
    else:
        checks.append(Check(name="output_size", passed=True, message=f"{who} takes {size} bytes as JSON"))
    return checks


def check_proposal(
    proposal: ProposalMade,
    task: Task,
    catalog: Catalog,
    upstream_outputs: Mapping[str, Mapping[str, Any]],
    limits: Limits,
    *,
    upstream_ids: Collection[str] | None = None,
    pools: agent_pools.Pools | None = None,
    skippable: bool = False,
    expected: Sequence[str] = (),
    safety: SafetyContext | None = None,
) -> tuple[list[Check], tuple[str, ...]]:
    """Every check of ``proposal`` (passed and failed) and, when it passes, why a person must
    approve it first (empty: it runs at once). ``safety``: what the tools' safety rules need from the
    deployment (:mod:`planner.safety`), so a proposal meets the same rules as a planned step."""
    who = f"the model's proposal for step {proposal.step_id!r} ({proposal.source}: {proposal.action})"
    if proposal.action == "skip":
        if skippable:
            said = f"{who}: nothing the workflow uses reads the step's output"
            return [Check(name="skip_allowed", passed=True, message=said, path="action")], ()
        said = f"{who}: the workflow uses the step's output, so it cannot be skipped"
        fix = "retry the step, run another tool, or let it fail"
        return [Check(name="skip_allowed", passed=False, message=said, fix=fix, path="action")], ()
    if proposal.action == "output":
        return check_output(proposal, catalog, limits, expected), ()
    if proposal.action not in CALLS:
        said = f"{who}: {proposal.action!r} is not a proposal the agent can carry out"
        return [Check(name="proposal_action", passed=False, message=said, fix="retry, alternative or skip")], ()
    step = proposed_step(proposal)
    checks = [
        *validate_steps(
            task, [step], catalog, upstream_outputs, limits, upstream_ids=upstream_ids, safety=safety or SafetyContext()
        ),
        *agent_pools.check_step_pools(task, [step], pools),
    ]
    spec = catalog.get(step.tool)
    reasons: list[str] = []
    if needs_approval(step, catalog):
        reasons.append(f"tool {step.tool} requires approval")
    if spec is not None and spec.safety is Safety.SIDE_EFFECT:
        said = f"{who}: tool {step.tool!r} has side effects and the model chose it"
        if limits.model_side_effects_need_approval:
            reasons.append(f"the model chose {step.tool}, which has side effects, with inputs it wrote")
            fix = "approve it when asked (cadre approve), or deny it and the step fails as planned"
            checks.append(
                Check(
                    name="model_side_effect",
                    passed=False,
                    severity="warning",
                    message=f"{said}: it waits for approval",
                    fix=fix,
                    path="tool",
                )
            )
        else:
            said += ": the deployment lets it run without approval"
            checks.append(Check(name="model_side_effect", passed=True, severity="warning", message=said, path="tool"))
    return checks, tuple(reasons)
