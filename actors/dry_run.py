"""A dry run's result: what a real run would do, from the simulated steps in the workflow's state.

Pure: the planner completes a dry run with :func:`dry_run_result`, made of what the state
holds (the plan, each simulated step with its recorded quote), so a replay makes it again.

The cost covers the execution-time consultations of every step at the budget's worst case
(each kind the workflow's level and mode allow, repair rounds included: see
:func:`actors.agent.would_consult`); planning and decomposition have happened already and are
in the run's own record. A re-plan after a failed task (``adapt``) is not included. The
expected cost and duration come from the agent's past live runs (in that process, since it
started), and are None ("no past runs") without any.
"""

from __future__ import annotations

from typing import Any, Final

from cadre.planner.scheduler import topo_order
from cadre.store.state import StepState, WorkflowState

NOTE: Final = (
    "dry run: planned, validated and decomposed for real; no tool ran and no model was consulted "
    "for execution; outputs are placeholders"
)


def simulated_steps(state: WorkflowState) -> list[StepState]:
    """The simulated steps of the workflow's tasks, in plan order, then step order."""
    if state.plan is None:
        return []
    out: list[StepState] = []
    for tid in topo_order(state.plan):
        task = state.tasks.get(tid)
        if task is None:
            continue
        out.extend(st for sid in task.step_ids if (st := state.steps.get(sid)) is not None and st.simulated)
    return out


def _step(st: StepState) -> dict[str, Any]:
    e = st.estimate
    return {
        "step": st.step.id,
        "task": st.step.task_id,
        "tool": st.step.tool,
        "inputs": st.step.inputs,
        "fallback_tools": list(st.step.fallback_tools),
        "would_need_approval": st.would_need_approval,
        "worst_case_usd": e.worst_usd if e is not None else 0.0,
        "consultations": [
            {"call": q.call, "times": q.times, "model": q.model, "worst_case_usd": q.worst_usd}
            for q in (e.quotes if e is not None else ())
            if q.allowed
        ],
        "expected_ms": e.past_tool_ms if e is not None else None,
    }


def _cost(steps: list[StepState]) -> dict[str, Any]:
    quotes = [q for st in steps if st.estimate is not None for q in st.estimate.quotes]
    worst = round(sum(q.worst_usd for q in quotes if q.allowed), 8)
    not_allowed = {q.call: q.why for q in quotes if not q.allowed}
    expected = [st.estimate.expected_usd if st.estimate is not None else None for st in steps]
    past = max((st.estimate.past_steps for st in steps if st.estimate is not None), default=0)
    known = bool(steps) and all(x is not None for x in expected)
    cap = next((st.estimate.cap_usd for st in steps if st.estimate is not None), None)
    return {
        "worst_case_usd": worst,
        "cap_usd": cap,
        "at_most_usd": min(worst, cap) if cap is not None else worst,
        "expected_usd": round(sum(x for x in expected if x is not None), 8) if known else None,
        "expected_from": f"{past} past tool call(s) of the agent" if known else "no past runs",
        "not_possible": not_allowed,
        "covers": "execution-time consultations (recover, interpret, decide) of every step, every tool failing, "
        "repair rounds included; not a re-plan after a failed task (adapt)",
    }


def _duration(steps: list[StepState]) -> dict[str, Any]:
    times = {st.step.tool: st.estimate.past_tool_ms if st.estimate is not None else None for st in steps}
    unknown = sorted(tool for tool, ms in times.items() if ms is None)
    total = None if unknown or not steps else round(sum(times[st.step.tool] or 0.0 for st in steps), 3)
    return {
        "expected_ms": total,
        "expected_from": "past runs of the same tools, one step after another" if total is not None else "no past runs",
        "tools_without_past_runs": unknown,
    }


def dry_run_result(state: WorkflowState, output: Any) -> dict[str, Any]:
    """The result a dry run completes with: the plan, its steps with their tools and inputs (as
    planned), the steps that would need approval, the cost and duration estimates, and the
    placeholder ``output``."""
    steps = simulated_steps(state)
    return {
        "dry_run": True,
        "note": NOTE,
        "plan": {
            "source": state.plan_source,
            "revision": state.revision,
            "tasks": topo_order(state.plan) if state.plan is not None else [],
        },
        "steps": [_step(st) for st in steps],
        "would_need_approval": [st.step.id for st in steps if st.would_need_approval],
        "cost": _cost(steps),
        "duration": _duration(steps),
        "output": output,
    }
