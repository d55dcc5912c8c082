"""The validator actor: checks plans and steps before anything runs.

Verdicts are events listing every check, passed and failed, with severity, message and a
suggested fix: ``plan_validated`` / ``plan_rejected`` for a plan, ``step_ready`` (the task's
first step, cleared to run) / ``steps_rejected`` for a task's steps, ``proposal_validated`` /
``proposal_rejected`` for a model's decision about a step (``planner.proposals``).

In a workflow whose request carries the ``resolved_steps`` marker (every new one but a dry run;
:attr:`store.state.WorkflowState.resolved_steps`), each step is cleared on its fully resolved
inputs: the task's first when its steps are proposed, each later one when the step before it
completes (the validator handles ``step_completed`` for that). The references are resolved as the
agent resolves them (upstream task outputs, the task's earlier steps' outputs), the step is checked
with :func:`planner.validation.check_step` (its fallbacks' safety rules too), and ``step_ready``
carries the inputs it checked (``resolved_inputs``); a refusal is ``steps_rejected`` naming the step.
Workflows recorded without the marker keep the earlier flow under replay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import msgspec

from cadre.actors.agent import skippable, upstream_outputs
from cadre.actors.context import Context
from cadre.actors.outcome import Outcome
from cadre.actors.runtime import ActorSpec
from cadre.bus.events import (
    Event,
    PlanProposed,
    PlanRejected,
    PlanValidated,
    ProposalMade,
    ProposalRejected,
    ProposalValidated,
    StepCompleted,
    StepReady,
    StepsProposed,
    StepsRejected,
)
from cadre.bus.plan import Check, Plan, StepIntent, Task
from cadre.planner import children
from cadre.planner import pools as agent_pools
from cadre.planner.catalog import Catalog
from cadre.planner.flows.child import flow_hook
from cadre.planner.flows.model import Flow
from cadre.planner.proposals import check_proposal
from cadre.planner.refs import RefError, resolve
from cadre.planner.safety import SafetyContext
from cadre.planner.scheduler import upstream
from cadre.planner.validation import Limits, check_step, passed_all, validate_plan, validate_steps
from cadre.store.records import StoredEvent
from cadre.store.state import WorkflowState


def make_spec(
    catalog: Catalog,
    limits: Limits | None = None,
    pools: agent_pools.Pools | None = None,
    safety: SafetyContext | None = None,
    flows: Mapping[str, Flow] | None = None,
) -> ActorSpec:
    """The validator under ``limits`` and the deployment's agent ``pools`` (a task naming a pool is
    checked against them: :mod:`planner.pools`); ``safety``: what the tools' safety rules need from
    the deployment (its HTTP allow-list; :mod:`planner.safety`); ``flows``: the deployment's flows,
    which a child task may run (:mod:`planner.flows.child`)."""
    lim = limits or Limits()
    ctx_safety = safety or SafetyContext()
    with_children = children.with_workflow_run(catalog)
    child_flows = flow_hook(flows, catalog) if flows else None

    plans: Memo[tuple[Check, ...]] = Memo()
    steps: Memo[tuple[Check, ...]] = Memo()
    ready: Memo[tuple[Check, ...]] = Memo()

    def check_plan(plan: Plan) -> list[Check]:
        """``validate_plan``, with ``workflow.run`` in the catalog for a plan that runs a child (only:
        a check's fix names the catalog's tools, and a plan without one is checked as it always was)."""

        def run() -> tuple[Check, ...]:
            runs_child = any(children.is_child(t) for t in plan.nodes)
            tools = with_children if runs_child else catalog
            return tuple(validate_plan(children.for_validation(plan), tools, lim, safety=ctx_safety))

        return list(plans.get(msgspec.json.encode(plan), run))

    async def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        data = rec.event.data
        if state.done or state.status in ("compensating", "cancelling"):
            return []
        if isinstance(data, PlanProposed):
            if data.revision != state.revision:
                return []  # superseded by a newer revision
            depth = children.depth_of(state.request)
            checks = (
                *check_plan(data.plan),
                *agent_pools.check_plan_pools(data.plan.nodes, pools),
                *children.check_children(data.plan, depth, lim.max_child_depth, check_plan, flows=child_flows),
            )
            if passed_all(checks):
                return [PlanValidated(revision=data.revision, checks=checks)]
            return [PlanRejected(revision=data.revision, checks=checks)]
        if isinstance(data, StepsProposed):
            task = state.tasks.get(data.task_id)
            if task is None or task.status != "running" or task.step_ids != [s.id for s in data.steps]:
                return []  # an earlier attempt's steps
            assert state.plan is not None
            ids = upstream(state.plan, task.task.id)  # references may reach any (transitive) upstream task
            outputs: dict[str, dict[str, Any]] = {
                dep: out for dep in ids if (t := state.tasks.get(dep)) is not None and (out := t.output) is not None
            }
            proposed, planned = task.task, data.steps

            def run() -> tuple[Check, ...]:
                return tuple(
                    validate_steps(proposed, planned, catalog, outputs, lim, upstream_ids=ids, safety=ctx_safety)
                )

            checks = (
                *steps.get(msgspec.json.encode((proposed, planned, outputs, sorted(ids))), run),
                *agent_pools.check_step_pools(task.task, data.steps, pools),
            )
            if not passed_all(checks):
                return [StepsRejected(task_id=data.task_id, checks=checks)]
            if state.resolved_steps:
                return [cleared(state, task.task, data.steps[0], checks)]
            return [StepReady(step=data.steps[0], checks=checks)]
        if isinstance(data, StepCompleted):
            return next_step(state, data)
        if isinstance(data, ProposalMade):
            return verdict(rec, data, state)
        return []

    def next_step(state: WorkflowState, data: StepCompleted) -> Outcome:
        """The step after a completed one, cleared on its resolved inputs (a ``resolved_steps`` workflow)."""
        task = state.tasks.get(data.task_id)
        if not state.resolved_steps or task is None or task.status != "running" or data.step_id not in task.step_ids:
            return []  # the planner's flow, the task's last step, or a step of an earlier attempt
        i = task.step_ids.index(data.step_id)
        if i + 1 >= len(task.step_ids):
            return []
        nxt = state.steps[task.step_ids[i + 1]]
        return [cleared(state, task.task, nxt.step)] if nxt.status == "proposed" else []

    def cleared(state: WorkflowState, task: Task, step: StepIntent, before: tuple[Check, ...] = ()) -> Event:
        """``step_ready`` with the inputs checked resolved, or ``steps_rejected`` naming the step."""
        who, path = f"step {step.id!r}", f"steps.{step.id}"
        try:
            inputs = resolve(step.inputs, upstream_outputs(state, step))
        except RefError as exc:
            msg = f"{who}: {exc.message}"
            check = Check(name="reference_resolves", passed=False, message=msg, fix=exc.fix, path=f"{path}.inputs")
            return StepsRejected(task_id=step.task_id, checks=(*before, check), step_id=step.id)

        def run() -> tuple[Check, ...]:
            checks = check_step(
                step.tool,
                inputs,
                catalog,
                safety=ctx_safety,
                limits=lim,
                pool=task.pool,
                pools=pools,
                who=who,
                path=path,
                planned=step.inputs,
            )
            for k, name in enumerate(step.fallback_tools):  # a fallback runs with the same inputs
                if name in catalog:
                    found = check_step(
                        name,
                        inputs,
                        catalog,
                        safety=ctx_safety,
                        who=f"{who} (fallback {name!r})",
                        path=f"{path}.fallback_tools[{k}]",
                        planned=step.inputs,
                    )
                    checks += [c for c in found if c.name == "inputs_safe"]
            return tuple(checks)

        checks = ready.get(msgspec.json.encode((step, inputs, task.pool)), run)
        if passed_all(checks):
            return StepReady(step=step, checks=(*before, *checks), resolved_inputs=inputs)
        return StepsRejected(task_id=step.task_id, checks=(*before, *checks), step_id=step.id)

    def verdict(rec: StoredEvent, data: ProposalMade, state: WorkflowState) -> Outcome:
        """A model's proposal, checked as a step of its task (``planner.proposals``)."""
        st = state.steps.get(data.step_id)
        task = state.tasks.get(data.task_id)
        if st is None or st.status != "validating" or st.proposal_id != rec.event.id or task is None:
            return []  # decided already, or superseded
        assert state.plan is not None
        ids = upstream(state.plan, task.task.id)
        outputs: dict[str, dict[str, Any]] = {
            dep: out for dep in ids if (t := state.tasks.get(dep)) is not None and (out := t.output) is not None
        }
        checks, approval = check_proposal(
            data,
            task.task,
            catalog,
            outputs,
            lim,
            upstream_ids=ids,
            pools=pools,
            skippable=skippable(state, st.step),
            expected=st.step.expected_outputs,
            safety=ctx_safety,
        )
        pid = rec.event.id
        if passed_all(checks):
            return [ProposalValidated(step_id=data.step_id, proposal_id=pid, checks=tuple(checks), approval=approval)]
        return [ProposalRejected(step_id=data.step_id, proposal_id=pid, checks=tuple(checks))]

    handles = frozenset({PlanProposed.TYPE, StepsProposed.TYPE, StepCompleted.TYPE, ProposalMade.TYPE})
    return ActorSpec(kind="validator", handles=handles, handler=handle)


T = TypeVar("T")


class Memo(Generic[T]):
    """Verdicts of the validator's pure checks, by the JSON of everything they read (the catalog,
    limits, pools and safety context are the spec's own): a plan, a task's proposed steps with the
    upstream outputs they resolve against, a step with its resolved inputs. The same check asked
    again (a workflow of the same plan, a replay of a workflow this process ran or replayed) is
    answered with the same verdict. Keys above ``max_key`` bytes are not kept, and the memo starts
    over past ``size`` entries."""

    def __init__(self, size: int = 1024, max_key: int = 16_384) -> None:
        self.size, self.max_key = size, max_key
        self.found: dict[bytes, T] = {}

    def __eq__(self, other: object) -> bool:
        """Memos of the same bounds are equal whatever they hold: what they hold is what the checks
        would say again (a handler's closure compares equal to another built the same way)."""
        return isinstance(other, Memo) and (self.size, self.max_key) == (other.size, other.max_key)

    __hash__ = None  # type: ignore[assignment]

    def get(self, key: bytes, make: Callable[[], T]) -> T:
        if (hit := self.found.get(key)) is not None:
            return hit
        value = make()
        if len(key) <= self.max_key:
            if len(self.found) >= self.size:
                self.found.clear()
            self.found[key] = value
        return value
