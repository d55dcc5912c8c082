"""A workflow's page, from its records: what the audit finds (:func:`cadre.store.audit.audit`), the
DAG of its current plan with each task's and step's state (the trusted fold), a timeline of tasks
and steps, the tool calls with their inputs and outputs, the consultations with their answers, and
the chain's integrity verdict. Every value is bounded (:func:`bounded`); :func:`full_value` gives one
whole on demand. Pure: the server reads the records and passes them in."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from cadre.bus.effects import ModelCalled, ToolCalled
from cadre.bus.events import EffectsRecorded, StepCompleted, StepFailed, StepReady, TaskReady
from cadre.bus.signing import Keyring
from cadre.commands import folded_state
from cadre.store.audit import audit
from cadre.store.authenticity import trusted_fold, verdict
from cadre.store.integrity import verify
from cadre.store.records import Record, StoredEvent
from cadre.store.state import TaskState, WorkflowState

PREVIEW_CHARS = 600  # characters of a value the page shows before "show all"


def bounded(value: Any, limit: int = PREVIEW_CHARS) -> dict[str, Any]:
    """``value`` as indented JSON text, cut at ``limit`` characters (``cut``: how many were left out)."""
    text = value if isinstance(value, str) else json.dumps(msgspec.to_builtins(value), indent=1, ensure_ascii=False)
    cut = max(0, len(text) - limit)
    return {"text": text[:limit] if cut else text, "cut": cut}


def _effects(r: StoredEvent) -> Sequence[object]:
    e = r.event
    return e.data.effects if isinstance(e.data, EffectsRecorded) else e.effects


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def page(wf: str, records: Sequence[Record], keyring: Keyring | None) -> dict[str, Any]:
    """Everything the workflow page shows (module docstring)."""
    report = audit(records, keyring)
    state = trusted_fold(wf, records, keyring)
    trusted = [r for r in records if isinstance(r, StoredEvent) and verdict(r, keyring).trusted]
    inputs_of = {
        sid: (s.resolved_inputs if s.resolved_inputs is not None else s.step.inputs) for sid, s in state.steps.items()
    }

    # The DAG of the current plan: each task's state, its steps and their states.
    tasks = []
    plan_tasks = {t.id: t for t in state.plan.nodes} if state.plan is not None else {}
    confidence = {t.id: t.confidence for p in report.plans[-1:] for t in p.tasks}
    for tid, t in plan_tasks.items():
        ts = state.tasks.get(tid)
        tasks.append(
            {
                "id": tid,
                "tool": t.tool,
                "description": t.description,
                "depends_on": list(t.depends_on),
                "status": _task_status(state, ts),
                "attempt": ts.attempt if ts is not None else 0,
                "confidence": confidence.get(tid, t.confidence),
                "steps": [
                    {
                        "id": sid,
                        "tool": state.steps[sid].tool or state.steps[sid].step.tool,
                        "status": state.steps[sid].status,
                    }
                    for sid in (ts.step_ids if ts is not None else [])
                    if sid in state.steps
                ],
            }
        )

    # The timeline: when each task and step began and ended.
    spans: dict[str, dict[str, Any]] = {}
    for r in trusted:
        d, at = r.event.data, r.event.at
        if isinstance(d, TaskReady):
            spans.setdefault("task:" + d.task.id, {"kind": "task", "id": d.task.id, "start": at, "end": None})
        elif isinstance(d, StepReady):
            spans.setdefault(
                "step:" + d.step.id, {"kind": "step", "id": d.step.id, "task": d.step.task_id, "start": at, "end": None}
            )
        elif isinstance(d, StepCompleted | StepFailed):
            span = spans.setdefault(
                "step:" + d.step_id, {"kind": "step", "id": d.step_id, "task": d.task_id, "start": at, "end": None}
            )
            span["end"] = at
            span["ok"] = isinstance(d, StepCompleted)
            task = spans.get("task:" + d.task_id)
            if task is not None:
                task["end"] = at
    timeline = [{**s, "start": _iso(s["start"]), "end": _iso(s["end"])} for s in spans.values()]

    # Tool calls and model answers, in order, each bounded.
    calls, answers = [], []
    for r in trusted:
        for i, x in enumerate(_effects(r)):
            if isinstance(x, ToolCalled):
                scope = _step_of(r)
                output = x.refused if x.error is not None else x.output
                calls.append(
                    {
                        "event_id": r.event.id,
                        "effect": i,
                        "at": _iso(r.event.at),
                        "step": scope,
                        "tool": x.tool,
                        "ok": x.error is None,
                        "error": None if x.error is None else f"{x.error.code}: {x.error.message}",
                        "ms": x.ms,
                        "input": bounded(inputs_of.get(scope or "")) if scope in inputs_of else None,
                        "output": bounded(output) if output is not None else None,
                    }
                )
            elif isinstance(x, ModelCalled):
                resp = x.response
                answer = None if resp is None else (resp.output if resp.output is not None else resp.text)
                answers.append(
                    {
                        "event_id": r.event.id,
                        "effect": i,
                        "call": x.call,
                        "prompt_digest": x.ask,
                        "outcome": x.outcome,
                        "answer": bounded(answer) if answer is not None else None,
                    }
                )
    consultations = []
    pending = list(answers)
    for c in report.consultations:
        match = next((a for a in pending if a["event_id"] == c.event_id and a["call"] == c.kind), None)
        if match is not None:
            pending.remove(match)
        consultations.append(
            {
                **msgspec.to_builtins(c),
                **(
                    {"prompt_digest": match["prompt_digest"], "answer": match["answer"], "effect": match["effect"]}
                    if match
                    else {}
                ),
            }
        )

    waiting = [
        {
            "step_id": sid,
            "task_id": s.step.task_id,
            "tool": s.step.tool,
            "inputs": bounded(inputs_of.get(sid)),
            "deadline": _iso(s.approval_deadline),
        }
        for sid, s in state.steps.items()
        if s.status == "awaiting_approval" and s.approval_request_id is not None
    ]
    integrity = verify(records)
    out = report.to_json()
    out["result"] = bounded(report.result) if report.result is not None else None
    out.update(
        {
            "status": folded_state(state),
            "dag": tasks,
            "spans": timeline,
            "tool_calls": calls,
            "consultations": consultations,
            "waiting": waiting,
            "integrity": {"status": integrity.status, "ok": integrity.ok, "summary": integrity.summary()},
            "last_seq": state.last_seq,
        }
    )
    return out


def _task_status(state: WorkflowState, ts: TaskState | None) -> str:
    """A task's state as the DAG shows it: ``awaiting_approval`` while one of its steps waits for a decision."""
    if ts is None:
        return "pending"
    if any(state.steps[s].status == "awaiting_approval" for s in ts.step_ids if s in state.steps):
        return "awaiting_approval"
    return ts.status


def _step_of(r: StoredEvent) -> str | None:
    """The step a tool call's event is about (a step's completion or failure), if any."""
    d = r.event.data
    if isinstance(d, StepCompleted | StepFailed):
        return d.step_id
    return None


def full_value(records: Sequence[Record], keyring: Keyring | None, event_id: str, effect: int, part: str) -> Any:
    """One whole value the page showed bounded: a tool call's ``output`` or ``input``, or a model's
    ``answer``, of effect number ``effect`` of event ``event_id``; None when there is no such value."""
    wf = next((r.event.workflow_id for r in records if isinstance(r, StoredEvent)), "")
    for r in records:
        if not (isinstance(r, StoredEvent) and r.event.id == event_id and verdict(r, keyring).trusted):
            continue
        effects = _effects(r)
        x = effects[effect] if 0 <= effect < len(effects) else None
        if isinstance(x, ToolCalled) and part == "output":
            return x.refused if x.error is not None else x.output
        if isinstance(x, ToolCalled) and part == "input":
            step = _step_of(r)
            s = trusted_fold(wf, records, keyring).steps.get(step or "")
            return None if s is None else (s.resolved_inputs if s.resolved_inputs is not None else s.step.inputs)
        if isinstance(x, ModelCalled) and part == "answer" and x.response is not None:
            return x.response.output if x.response.output is not None else x.response.text
    return None
