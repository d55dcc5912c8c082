"""The preview of the flow and path a request would take, with nothing run: ``cadre plan`` and the
``<prefix>.plan`` subject (request/reply, answered by the planner's process like the requests
subject by the intake: ``{"request": "..."}`` in, the preview or ``{"error": {...}}`` out).

The preview is the planner's deterministic choice (:func:`planner.flows.choose.by_rules`), made
into the plan it would propose and checked by the plan validator; with a model configured it
says the planner asks the model first and that this is its fallback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cadre.bus.subjects import Subjects
from cadre.planner.catalog import Catalog
from cadre.planner.flows.choose import by_rules, plan_choice
from cadre.planner.flows.model import Flow, FlowError

__all__ = ["preview", "serve_plan"]


def preview(flows: Mapping[str, Flow], catalog: Catalog, text: str, *, model: bool) -> dict[str, Any]:
    """The flow, path and plan ``text`` would take without a model (module docstring)."""
    out: dict[str, Any] = {"request": text, "runs": "nothing: a preview"}
    if model:
        out["model"] = (
            "a model is configured: the planner asks it first for the flow and path; this is the choice it "
            "falls back on when the model may not be used or gives no valid answer (the model's own choice: "
            '`cadre run --dry-run "..."`, which plans for real and runs no tool)'
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


@asynccontextmanager
async def serve_plan(
    nc: NATS, subjects: Subjects, flows: Mapping[str, Flow], catalog: Catalog, *, model: bool
) -> AsyncIterator[None]:
    """Answer ``<prefix>.plan`` requests (``{"request": "..."}``) with :func:`preview`, or
    ``{"error": {...}}`` for a malformed one, as the requests subject answers."""

    async def on_msg(m: Msg) -> None:
        if not m.reply:
            return
        try:
            body = json.loads(m.data)
            text = body.get("request") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError('expected {"request": "..."}')
            answer: dict[str, Any] = preview(flows, catalog, text, model=model)
        except ValueError as exc:  # json.JSONDecodeError is one
            answer = {"error": {"code": "invalid_request", "message": str(exc)}}
        await m.respond(msgspec.json.encode(answer))

    sub = await nc.subscribe(subjects.plan, queue="cadre-plan", cb=on_msg)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
