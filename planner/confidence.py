"""What a plan's confidence causes: the deployment's two thresholds, as plain functions.

A plan carries a confidence (0 to 1) for itself and one for each task (``bus.plan``): the
model's own estimate, or a library reuse's match score. The deployment may set two
thresholds (settings ``approve_below`` and ``reject_below``, unset by default: confidence
then changes nothing):

* below ``reject_below`` the validator rejects the plan, with a ``confidence`` check per plan
  and per task that names the value and the threshold (:func:`confidence_checks`); the
  planner re-plans where the workflow allows adaptation, else the workflow fails with
  ``plan_rejected``;
* below ``approve_below`` the agent asks a person before it runs a step
  (:func:`approval_reason`), through the same approval gate as a tool that requires approval.

A task runs under the lower of its own confidence and its plan's (:func:`task_confidence`):
a doubtful plan makes every step of every task wait for approval, a doubtful task only its
own steps. So there is no plan-level gate of its own: a plan is approved step by step, and
the approval's reason says whether the plan's or the task's confidence asked for it.
"""

from __future__ import annotations

from cadre.bus.plan import Check, Plan, Task

__all__ = ["approval_reason", "confidence_checks", "task_confidence"]


def task_confidence(plan: Plan | None, task: Task | None) -> float:
    """The confidence a task runs under: the lower of its own and its plan's (1.0 if unknown)."""
    own = task.confidence if task is not None else 1.0
    return min(own, plan.confidence) if plan is not None else own


def approval_reason(plan: Plan | None, task: Task | None, approve_below: float | None) -> str | None:
    """Why a step of ``task`` needs a person's approval for its confidence, or None if it does not."""
    if approve_below is None:
        return None
    plan_low = plan is not None and plan.confidence < approve_below
    task_low = task is not None and task.confidence < approve_below
    if not plan_low and not task_low:
        return None
    if task_low and task is not None and (plan is None or task.confidence <= plan.confidence):
        return f"task {task.id!r} has confidence {task.confidence:.2f}, below approve_below {approve_below:.2f}"
    assert plan is not None
    return f"the plan has confidence {plan.confidence:.2f}, below approve_below {approve_below:.2f}"


def confidence_checks(plan: Plan, reject_below: float | None) -> list[Check]:
    """The ``confidence`` checks of ``plan`` (none when ``reject_below`` is unset): one for the
    plan and one per task, each failing when the confidence is below the threshold."""
    if reject_below is None:
        return []
    checks = [_check("the plan", plan.confidence, reject_below, "confidence")]
    checks += [
        _check(f"task {t.id!r}", t.confidence, reject_below, f"nodes[{i}].confidence") for i, t in enumerate(plan.nodes)
    ]
    return checks


def _check(who: str, confidence: float, reject_below: float, path: str) -> Check:
    if confidence >= reject_below:
        return Check(
            name="confidence",
            passed=True,
            message=f"{who} has confidence {confidence:.2f} (reject_below {reject_below:.2f})",
            path=path,
        )
    return Check(
        name="confidence",
        passed=False,
        message=f"{who} has confidence {confidence:.2f}, below reject_below {reject_below:.2f}",
        fix="re-plan with tools and inputs the request clearly calls for, or send an explicit plan",
        path=path,
    )
