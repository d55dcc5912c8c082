"""Agent pools: which tools each pool's agents may use, and the decisions about them.

A deployment's policy file may declare pools (``{"pools": {"files": {"tools": ["fs.read"]}}}``).
A plan task may name one (``Task.pool``): its steps then run only on that pool's agents
(``cadre actor agent --pool NAME``) and only with the pool's tools. The validator checks this
at plan time (:func:`check_plan_pools`, :func:`check_step_pools`); the agent checks again
before it runs a step (:func:`serves`, :func:`refusal`). A task without a pool runs on the
agents without one, with any tool of the catalog, as a deployment without pools does.

Pure functions over plain data; a plan that names no pool gets no check from here, so the
checks of a deployment without pools are what they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from cadre.bus.plan import Check, ErrorInfo, StepIntent, Task
from cadre.planner.catalog import Catalog

Pools = Mapping[str, frozenset[str]]
"""Pool name -> the tools its agents may use."""

EVERY_POOL: Final = "*"
"""An agent that serves every pool (a replay re-runs the steps of all of them)."""

POOL_REFUSED: Final = "pool_refused"
"""The code of a step an agent refuses on its pool's policy (a policy refusal: no recovery)."""


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in sorted(names)) or "(none)"


def problem(pool: str, tools: Iterable[str], pools: Pools | None) -> str | None:
    """Why ``pool`` may not run ``tools`` under ``pools`` (None when it may)."""
    if not pools:
        return f"agent pool {pool!r} is not declared: the deployment's policy declares no agent pools"
    if pool not in pools:
        return f"agent pool {pool!r} is not declared in the deployment's policy (pools: {_names(pools)})"
    outside = [t for t in dict.fromkeys(tools) if t not in pools[pool]]
    if outside:
        return f"agent pool {pool!r} may not use {_names(outside)} (it may use {_names(pools[pool])})"
    return None


def _fix(pools: Pools | None) -> str:
    if not pools:
        return "remove the task's pool, or declare the pool in the policy file's pools"
    return "name a pool whose tools include the task's tools, remove the task's pool, or change the policy file's pools"


def task_tools(task: Task) -> tuple[str, ...]:
    return ((task.tool,) if task.tool is not None else ()) + task.fallback_tools


def check_plan_pools(tasks: Sequence[Task], pools: Pools | None) -> list[Check]:
    """A check for each task that names a pool: it exists and may use the task's tool and fallbacks."""
    out: list[Check] = []
    for i, task in enumerate(tasks):
        if task.pool is None:
            continue
        path = f"nodes[{i}].pool"
        why = problem(task.pool, task_tools(task), pools)
        if why is None:
            message = f"task {task.id!r} runs on agent pool {task.pool!r}, which may use its tools"
            out.append(Check(name="agent_pool", passed=True, message=message, path=path))
        else:
            message = f"task {task.id!r}: {why}"
            out.append(Check(name="agent_pool", passed=False, message=message, fix=_fix(pools), path=path))
    return out


def check_step_pools(task: Task, steps: Sequence[StepIntent], pools: Pools | None) -> list[Check]:
    """For a task of a pool, a check per step: the pool may use the step's tool and fallbacks."""
    if task.pool is None:
        return []
    out: list[Check] = []
    for i, step in enumerate(steps):
        path = f"steps[{i}].tool"
        why = problem(task.pool, (step.tool, *step.fallback_tools), pools)
        if why is None:
            message = f"step {step.id!r} uses tools of agent pool {task.pool!r}"
            out.append(Check(name="agent_pool", passed=True, message=message, path=path))
        else:
            message = f"step {step.id!r}: {why}"
            out.append(Check(name="agent_pool", passed=False, message=message, fix=_fix(pools), path=path))
    return out


def narrowed(catalog: Catalog, pool: str | None, pools: Pools | None) -> Catalog:
    """The tools a task or step of ``pool`` may use: the pool's, else the whole ``catalog``."""
    if pool is None or not pools or pool not in pools:
        return catalog
    return Catalog(catalog[name] for name in catalog if name in pools[pool])


def serves(agent_pool: str | None, step_pool: str | None, pools: Pools | None) -> bool:
    """Whether an agent of ``agent_pool`` takes a step of ``step_pool`` (else it leaves it alone).

    An agent of a pool takes its pool's steps; an agent without a pool takes the steps without
    one, and those of a pool the policy does not declare (no pool's agent would: it refuses
    them); :data:`EVERY_POOL` takes every step.
    """
    if agent_pool == EVERY_POOL:
        return True
    if agent_pool is not None:
        return step_pool == agent_pool
    return step_pool is None or not pools or step_pool not in pools


def refusal(step_pool: str | None, step: StepIntent, pools: Pools | None) -> ErrorInfo | None:
    """The policy refusal of a step of ``step_pool`` whose pool may not run it (None: it may)."""
    if step_pool is None:
        return None
    why = problem(step_pool, (step.tool, *step.fallback_tools), pools)
    return None if why is None else ErrorInfo(code=POOL_REFUSED, message=why)
