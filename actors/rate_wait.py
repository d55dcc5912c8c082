"""Rate limits wait, within a bound (issue 13, item 5): the one mechanism every consultation uses.

A consultation the budget denies for the provider's rate limit (``Inferred.retry_after_s``) waits
when ``retry_after_s`` is at most the deployment's bound (``rate_limit_wait_max_s``) and the
workflow's deadline (if it has one) is not passed by then: the handler emits
``consultation_waiting`` (``until`` = now + ``retry_after_s``) instead of falling back, the same
actor defers that event to ``until`` (a durable timer: JetStream redelivers it, after a restart
too) and then asks again, once; a second denial falls back as without the wait. A consultation
never denied for a rate limit produces exactly the events it did before.

Plain functions; the handlers (the planner's ``plan`` and ``adapt``, the decomposer's ``decompose``,
the agent's ``recover``, ``decide`` and ``interpret``) keep what is theirs: what the run so far is,
and how they ask again (the agent resumes the step where it stopped, reading a tool's output back
from the wait's own recorded effect; the planner re-checks that the failure its ``adapt`` stands for
still stands).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cadre.actors import cancel
from cadre.actors.context import Context
from cadre.actors.inference import Inferred
from cadre.actors.outcome import Defer
from cadre.bus.events import ConsultationWaiting
from cadre.bus.plan import ErrorInfo
from cadre.store.state import WorkflowState


def deadline_of(state: WorkflowState) -> datetime | None:
    """The workflow's deadline, which no wait may pass; None: it has none. Before the planner has
    recorded it (``deadline_set`` goes out with the first plan, which may itself wait), the
    request's own."""
    if state.deadline is not None or state.request is None or state.started_at is None:
        return state.deadline
    return cancel.deadline_of(state.request, state.started_at)


def wait_s(
    inferred: Inferred[Any], wait_max_s: float, *, waited: bool, now: datetime, deadline: datetime | None
) -> float | None:
    """How long to wait before asking again, or None: fall back now (not a rate limit, no hint,
    over the bound, past the deadline, or this consultation waited once already)."""
    after = inferred.retry_after_s
    if inferred.value is not None or waited or after is None or not 0 < after <= wait_max_s:
        return None
    if deadline is not None and now + timedelta(seconds=after) >= deadline:
        return None
    return after


def waiting(
    ctx: Context,
    call: str,
    after: float,
    error: ErrorInfo,
    *,
    task_id: str = "",
    step_id: str = "",
    attempts: int = 0,
    deviations: tuple[str, ...] = (),
    tried: tuple[str, ...] = (),
    retryable: bool = False,
) -> ConsultationWaiting:
    """The event that waits ``after`` seconds before ``call`` is asked again."""
    return ConsultationWaiting(
        task_id=task_id,
        step_id=step_id,
        call=call,
        until=ctx.now() + timedelta(seconds=after),
        retry_after_s=after,
        attempts=attempts,
        deviations=deviations,
        tried=tried,
        error=error,
        retryable=retryable,
    )


def denial(inferred: Inferred[Any]) -> ErrorInfo:
    """The rate limit's denial, as the error a wait records."""
    return ErrorInfo(code="rate_limited", message=inferred.describe())


SETTLE = timedelta(seconds=0.5)
"""How long after ``until`` a deferred wait is redelivered. ``until`` counts from the handler's
clock when it asked, the budget's ``retry_after_s`` from the budget's a little later (grounding and
the request in between): asked again at ``until`` itself, the window may still hold the old grant
for those milliseconds. Only the redelivery's time moves, not an event, so replays are unchanged."""


def not_yet(ctx: Context, wait: ConsultationWaiting) -> Defer | None:
    """Defer the wait while its ``until`` has not come (the runtime redelivers it ``SETTLE`` after)."""
    return Defer(until=wait.until + SETTLE) if ctx.now() < wait.until else None


def waited_note(wait: ConsultationWaiting) -> str:
    """What the asking again says about the wait (a deviation, a plan's reason)."""
    return f"{wait.call} was denied for the provider's rate limit; waited {wait.retry_after_s:g} s and asked again"
