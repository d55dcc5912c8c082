"""The decomposer actor: turns a dispatched task into steps (declarative tool intents).

The rules first: a task that names its tool and inputs becomes one step. A task they cannot
decompose (one that names no tool, only a description or capabilities) goes to the model
(``decompose``, gated by the budget: levels from ``adaptive`` up), whose steps get the rules'
ids and must pass the same step checks as the validator's before they are proposed. Without
a valid answer the task is answered with ``steps_rejected``, saying why the rules could not
decompose it and why the model did not either. The model decomposes a task of an agent pool
with the pool's tools only (``planner.pools``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from cadre.actors import rate_wait
from cadre.actors.context import Context
from cadre.actors.outcome import Outcome
from cadre.actors.runtime import ActorSpec
from cadre.bus.effects import Grounded
from cadre.bus.events import ConsultationWaiting, Event, StepsProposed, StepsRejected, TaskReady
from cadre.bus.plan import Check, StepIntent, Task
from cadre.planner import pools as agent_pools
from cadre.planner.catalog import Catalog
from cadre.planner.decompose import DecompositionError, decompose
from cadre.planner.providers.agent_prompts import decompose_request, decompose_validator
from cadre.planner.scheduler import upstream
from cadre.store.records import StoredEvent
from cadre.store.state import WorkflowState, wait_key


def upstream_of(state: WorkflowState, task_id: str) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """The tasks ``task_id``'s steps may reference (its transitive upstream, as the validator
    allows) and the outputs of those that have one."""
    ids = upstream(state.plan, task_id) if state.plan is not None and task_id in state.tasks else set()
    outputs = {tid: out for tid in ids if (t := state.tasks.get(tid)) is not None and (out := t.output) is not None}
    return ids, outputs


def task_query(task: Task) -> str:
    """What the documentation is searched with for a task: its description, tool and capabilities."""
    return " ".join(x for x in (task.description, task.tool or "", *task.capabilities) if x)


def referenced(steps: tuple[StepIntent, ...], grounding: Grounded | None) -> tuple[StepIntent, ...]:
    """The steps with the documents their task was grounded in (``documentation_references``)."""
    if grounding is None or not grounding.passages:
        return steps
    refs = grounding.references
    return tuple(msgspec.structs.replace(s, documentation_references=refs) for s in steps)


async def decompose_with_model(
    ctx: Context,
    state: WorkflowState,
    data: TaskReady,
    catalog: Catalog,
    exc: DecompositionError,
    wait_max_s: float = 0.0,
    waited: ConsultationWaiting | None = None,
) -> list[Event]:
    """The model's steps for a task the rules could not decompose, or ``steps_rejected``; a
    ``decompose`` denied for the provider's rate limit waits up to ``wait_max_s`` first, once
    (``waited``: that wait, come, :mod:`actors.rate_wait`)."""
    task = data.task
    ids, outputs = upstream_of(state, task.id)
    grounding = await ctx.ground("decompose", task_query(task), tool=task.tool)
    request = decompose_request(
        task, catalog, attempt=data.attempt, upstream=outputs, reason=exc.reason, grounding=grounding
    )
    validate = decompose_validator(task, catalog, attempt=data.attempt, upstream_ids=ids, upstream_outputs=outputs)
    inferred = await ctx.infer("decompose", request, validate, ctx.policy(state.request))
    if inferred.value is not None:
        return [StepsProposed(task_id=task.id, steps=referenced(inferred.value, grounding))]
    now, deadline = ctx.now(), rate_wait.deadline_of(state)
    after = rate_wait.wait_s(inferred, wait_max_s, waited=waited is not None, now=now, deadline=deadline)
    if after is not None:
        denial = rate_wait.denial(inferred)
        return [rate_wait.waiting(ctx, "decompose", after, denial, task_id=task.id, attempts=data.attempt)]
    note = f"{rate_wait.waited_note(waited)}; " if waited is not None else ""
    check = Check(
        name="decomposable",
        passed=False,
        message=f"{exc.message}; decomposition by the model: {note}{inferred.describe()}",
        fix="give the task a tool and its inputs, or allow decomposition by a model (intelligence level and budget)",
        path=f"tasks.{task.id}",
    )
    return [StepsRejected(task_id=task.id, checks=(check,))]


def make_spec(catalog: Catalog, pools: agent_pools.Pools | None = None, rate_limit_wait_s: float = 0.0) -> ActorSpec:
    """The decomposer; a ``decompose`` denied for the rate limit waits up to ``rate_limit_wait_s``, once."""

    async def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        data = rec.event.data
        waited: ConsultationWaiting | None = None
        if isinstance(data, ConsultationWaiting) and data.call == "decompose" and not state.done:
            key = wait_key("decompose", data.task_id, data.attempts)
            task = state.tasks.get(data.task_id)
            if state.waits.get(key) != rec.event.id or task is None:
                return []
            waited, data = data, TaskReady(task=task.task, attempt=data.attempts)
        if not isinstance(data, TaskReady) or state.done or state.status == "cancelling":
            return []
        task = state.tasks.get(data.task.id)
        if task is None or task.status != "ready" or task.attempt != data.attempt:
            return []  # decomposed already, or superseded by a later attempt
        if waited is None and wait_key("decompose", data.task.id, data.attempt) in state.waits:
            return []  # waiting out a rate limit: the wait asks again
        if waited is not None and (deferred := rate_wait.not_yet(ctx, waited)) is not None:
            return deferred
        try:
            steps = decompose(data.task, catalog, attempt=data.attempt)
        except DecompositionError as exc:
            tools = agent_pools.narrowed(catalog, data.task.pool, pools)
            return await decompose_with_model(ctx, state, data, tools, exc, rate_limit_wait_s, waited)
        # the documentation of the task (its tool's first), for the agent and the audit; no model reads it here
        grounding = await ctx.ground("steps", task_query(data.task), tool=data.task.tool, for_model=False)
        return [StepsProposed(task_id=data.task.id, steps=referenced(tuple(steps), grounding))]

    return ActorSpec(kind="decomposer", handles=frozenset({TaskReady.TYPE, ConsultationWaiting.TYPE}), handler=handle)
