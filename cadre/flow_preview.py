"""The preview of the flow and path a request would take, with nothing run: ``cadre plan`` and the
``<prefix>.plan`` subject (request/reply, answered by the planner's process like the requests
subject by the intake: ``{"request": "..."}`` in, the preview or ``{"error": {...}}`` out).

Without a model (:func:`preview`) the preview is the planner's deterministic choice
(:func:`planner.flows.choose.by_rules`), made into the plan it would propose and checked by the
plan validator. With a model (:func:`preview_by_model`, in the planner's process) it is the
planner's own choice: :func:`actors.planner.plan_flow`, the same ``plan`` consultation through
the budget, the same validator and repair round, the same fallback to the rules, the default
path or the whole flow, in a context of its own whose tools, library and grounding are absent
(so nothing can run) and whose effects are kept by nobody: no workflow is started and nothing is
appended. The budget accounts the consultation to a *preview id* (``preview-<hex>``, no
workflow's), which counts toward the deployment's spend like any call; the preview says its id
and cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cadre.actors.answers import LiveAnswers
from cadre.actors.clock import utc_now
from cadre.actors.context import Context, Outside
from cadre.actors.planner import plan_flow
from cadre.bus.effects import BudgetDecided, CallSettled, ModelCalled
from cadre.bus.errors import CadreError
from cadre.bus.events import Envelope, WorkflowRequested
from cadre.bus.subjects import Subjects
from cadre.planner.catalog import Catalog
from cadre.planner.flows.choose import by_rules, plan_choice
from cadre.planner.flows.model import Flow, FlowError
from cadre.store.records import StoredEvent

__all__ = ["PREVIEW_PREFIX", "preview", "preview_by_model", "preview_outside", "serve_plan"]

PREVIEW_PREFIX: Final = "preview-"
"""The ids the budget accounts a preview's consultation to (no workflow has one)."""

RUNS: Final = "nothing: a preview"


def preview(flows: Mapping[str, Flow], catalog: Catalog, text: str, *, model: bool) -> dict[str, Any]:
    """The flow, path and plan ``text`` would take without a model (module docstring)."""
    out: dict[str, Any] = {"request": text, "runs": RUNS}
    if model:
        out["model"] = (
            "a model is configured: the planner asks it first for the flow and path; this is the choice it "
            "falls back on when the model may not be used or gives no valid answer (the model's own choice: "
            "`cadre plan` with the deployment running, which asks the planner)"
        )
    choice = by_rules(list(flows.values()), text)
    if choice is None:
        out |= {"flow": None, "why": "no flow's match rule matches the request: the planner plans it as any request"}
        return out
    out |= {
        "flow": choice.flow.name,
        "path": list(choice.path),
        "chosen_by": "rule" if choice.path_kind == "the rule's path" else "default",
        "why": f"{choice.why}; {choice.path_kind}",
        "params": choice.params,
    }
    try:
        plan = plan_choice(choice, text, catalog)
    except FlowError as exc:
        out |= {"error": {"code": exc.code, "message": f"{choice.path_kind} cannot serve the request: {exc}"}}
        return out
    out["plan"] = msgspec.to_builtins(plan)
    return out


def preview_outside(outside: Outside) -> Outside:
    """The planner process's ports for a preview: its model, budget and policy; no tools, library or
    grounding (:func:`actors.planner.plan_flow` asks for none of them; without them nothing can run)."""
    return dataclasses.replace(outside, tools=None, library=None, grounding=None)


def preview_id() -> str:
    """A fresh preview id (:data:`PREVIEW_PREFIX`)."""
    return PREVIEW_PREFIX + secrets.token_hex(8)


async def preview_by_model(
    flows: Mapping[str, Flow],
    catalog: Catalog,
    text: str,
    answers: LiveAnswers,
    *,
    now: datetime,
    pid: str,
) -> dict[str, Any]:
    """The flow, path and plan the planner would choose for ``text`` with its model (module
    docstring): :func:`actors.planner.plan_flow` in a context for the preview id ``pid``."""
    req = WorkflowRequested(request=text)
    env = Envelope(
        id=f"{pid}-request",
        type=WorkflowRequested.TYPE,
        workflow_id=pid,
        causation_id=None,
        actor="preview",
        at=now,
        data=req,
    )
    ctx = Context(kind="planner", stored=StoredEvent(0, "", env, b""), now=now, answers=answers)
    proposed, why = await plan_flow(ctx, req, flows, catalog)
    out: dict[str, Any] = {"request": text, "runs": RUNS, "model": consulted(ctx, pid)}
    if proposed is None or proposed.flow is None:
        return out | {"flow": None, "why": f"{why}: the planner plans it as any request (the model, then the library)"}
    return out | {
        "flow": proposed.flow,
        "path": list(proposed.path),
        "chosen_by": proposed.chosen_by,
        "why": proposed.reason,
        "plan": msgspec.to_builtins(proposed.plan),
    }


def consulted(ctx: Context, pid: str) -> dict[str, Any]:
    """What the preview's consultation did, from its context's effects: the budget's decisions, the
    model's calls, what was charged and to which id."""
    decisions = [e.decision for e in ctx.effects if isinstance(e, BudgetDecided)]
    calls = sum(1 for e in ctx.effects if isinstance(e, ModelCalled) and e.outcome not in ("cached", "no_provider"))
    cost = round(sum(e.cost_usd for e in ctx.effects if isinstance(e, CallSettled)), 8)
    return {
        "preview_id": pid,
        "decisions": [d.outcome + (f" ({d.reason})" if d.reason else "") for d in decisions],
        "calls": calls,
        "cost_usd": cost,
        "charged": f"${cost:.6f} to {pid}, the preview's id in the budget (no workflow's): it counts toward the "
        "deployment's spend like any call"
        if decisions
        else "nothing: the budget was not asked",
    }


@asynccontextmanager
async def serve_plan(
    nc: NATS,
    subjects: Subjects,
    flows: Mapping[str, Flow],
    catalog: Catalog,
    *,
    model: bool,
    answers: LiveAnswers | None = None,
) -> AsyncIterator[None]:
    """Answer ``<prefix>.plan`` requests (``{"request": "..."}``) with :func:`preview_by_model` when
    the process has a model (``answers``: its ports, :func:`preview_outside`), else :func:`preview`;
    ``{"error": {...}}`` for a malformed one, as the requests subject answers."""

    pending: set[asyncio.Task[None]] = set()

    async def answer(m: Msg) -> None:
        try:
            body = json.loads(m.data)
            text = body.get("request") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError('expected {"request": "..."}')
            if answers is not None and model:
                reply: dict[str, Any] = await preview_by_model(
                    flows, catalog, text, answers, now=utc_now(), pid=preview_id()
                )
            else:
                reply = preview(flows, catalog, text, model=model)
        except ValueError as exc:  # json.JSONDecodeError is one
            reply = {"error": {"code": "invalid_request", "message": str(exc)}}
        except CadreError as exc:
            reply = {"error": exc.to_wire()}
        await m.respond(msgspec.json.encode(reply))

    async def on_msg(m: Msg) -> None:
        """Each preview in a task of its own: one waiting on the model holds up no other."""
        if not m.reply:
            return
        task = asyncio.create_task(answer(m))
        pending.add(task)
        task.add_done_callback(pending.discard)

    sub = await nc.subscribe(subjects.plan, queue="cadre-plan", cb=on_msg)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
