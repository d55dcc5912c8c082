"""Where a flow goes on after a node: pure decisions over a plan and its tasks' statuses.

When a flow's task completes, the planner takes the first of its ``branches`` whose condition
holds over the task's output (CEL, :mod:`planner.conditions`, the language of the steps'
checked conditions; a way without a condition always holds). A way back marked ``exhausted``
is a loop at its maximum: it is recorded as held but not taken, and the next way is tried.
The decision leaves out (*skips*) every task no taken way can reach any more: a task is
skipped when all the tasks it depends on are done (completed and decided, or skipped) and
none of them took the way to it. The decision is the ``branch_taken`` event: recorded, and
made again identically by a replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from cadre.bus.events import BranchChecked, BranchTaken
from cadre.bus.plan import Plan, Task
from cadre.planner import conditions
from cadre.planner.scheduler import COMPLETED, PENDING, SKIPPED, topo_order

__all__ = ["DECIDING", "decide", "effective_status", "skip_closure"]

DECIDING: Final = "deciding"
"""The status the scheduler sees for a flow's task that completed and has not yet chosen its way on."""

OUTPUT_NAMES: Final = ("output",)
"""What a branch condition may name."""


def effective_status(plan: Plan, status: Mapping[str, str], decided: Mapping[str, str | None]) -> dict[str, str]:
    """``status`` with each completed task that has branches and no decision yet as :data:`DECIDING`, so
    that nothing after it starts before its way on is chosen (plans without branches: unchanged)."""
    out = dict(status)
    for t in plan.nodes:
        if t.branches and out.get(t.id) == COMPLETED and t.id not in decided:
            out[t.id] = DECIDING
    return out


def _took(task: Task, status: Mapping[str, str], decided: Mapping[str, str | None], to: str) -> bool:
    return status.get(task.id) == COMPLETED and (not task.branches or decided.get(task.id) == to)


def _settled(task: Task, status: Mapping[str, str], decided: Mapping[str, str | None]) -> bool:
    s = status.get(task.id, PENDING)
    return s == SKIPPED or (s == COMPLETED and (not task.branches or task.id in decided))


def skip_closure(plan: Plan, status: Mapping[str, str], decided: Mapping[str, str | None]) -> list[str]:
    """The pending tasks no way can reach any more (module docstring), in plan order."""
    by_id = {t.id: t for t in plan.nodes}
    st = dict(status)
    skipped = []
    for tid in topo_order(plan):
        task = by_id[tid]
        if st.get(tid, PENDING) != PENDING or not task.depends_on:
            continue
        deps = [by_id[d] for d in task.depends_on if d in by_id]
        if all(_settled(d, st, decided) for d in deps) and not any(_took(d, st, decided, tid) for d in deps):
            st[tid] = SKIPPED
            skipped.append(tid)
    return skipped


def decide(
    plan: Plan, task_id: str, output: Any, status: Mapping[str, str], decided: Mapping[str, str | None]
) -> BranchTaken:
    """The way on after ``task_id`` (completed with ``output``) and the tasks that leaves out."""
    by_id = {t.id: t for t in plan.nodes}
    task = by_id[task_id]
    checked: list[BranchChecked] = []
    chosen = None
    loop_note = ""
    for b in task.branches:
        if b.when is None:
            held, reason = True, ""
        else:
            outcome = conditions.check(b.when, {"output": output}, OUTPUT_NAMES)
            held, reason = outcome.passed, outcome.reason
        if held and b.exhausted:
            reason = f"the loop back to {b.to!r} was taken {b.exhausted} time(s), its maximum: it stops here"
            loop_note = f"; {reason}"
            checked.append(BranchChecked(to=b.to, when=b.when, held=True, reason=reason))
            continue
        checked.append(BranchChecked(to=b.to, when=b.when, held=held, reason=reason))
        if held:
            chosen = b
            break
    if chosen is None:
        to, why = None, "no way on held: this branch of the flow ends here"
    elif chosen.to not in by_id:
        to, why = None, f"the way to {chosen.to!r} held, but the chosen path leaves {chosen.to!r} out: this branch ends"
    else:
        to = chosen.to
        why = f"condition {chosen.when!r} held" if chosen.when is not None else "the way on without a condition"
    now_decided = {**decided, task_id: to}
    now_status = {**status, task_id: COMPLETED}
    return BranchTaken(
        task_id=task_id,
        to=to,
        why=why + loop_note,
        checked=tuple(checked),
        skipped=tuple(skip_closure(plan, now_status, now_decided)),
    )
