"""Time travel: a workflow's state as of a stream sequence (``cadre events WF --at SEQ``).

The state is the fold of the workflow's events up to and including ``SEQ``, nothing else:
the same fold the actors use, so it is what a handler deciding at ``SEQ`` saw (an event's
``basis`` names such a sequence). Shown as lines for people or as one JSON object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from cadre.bus.signing import Keyring
from cadre.render import json_line
from cadre.safe_text import visible_lines
from cadre.store.authenticity import trusted_fold
from cadre.store.records import Record
from cadre.store.state import WorkflowState

_json = msgspec.json.Encoder()


def state_at(workflow_id: str, records: Sequence[Record], seq: int, keyring: Keyring | None = None) -> WorkflowState:
    """The workflow's state after its records up to stream sequence ``seq``: malformed ones, and
    events ``keyring`` does not accept, move the head only (as in the actors' fold)."""
    return trusted_fold(workflow_id, [r for r in records if r.seq <= seq], keyring)


def state_json(state: WorkflowState, at: int, later: int) -> dict[str, Any]:
    """The state as plain JSON values, with the sequence asked for and how many records came after it."""
    out: dict[str, Any] = msgspec.to_builtins(state)
    out.pop("last_data", None)
    out["last_hash"] = state.last_hash
    return {"at": at, "later": later, **out}


def state_lines(state: WorkflowState, at: int, later: int, width: int = 100) -> list[str]:
    """The state for people: status, request, plan, tasks, steps, outcome."""
    lines = [f"workflow {state.workflow_id} as of stream sequence {at}: {state.status}"]
    after = f", {later} later" if later else ""
    head = f", last at #{state.last_seq} (chain head {state.last_hash})" if state.last_seq else ""
    lines.append(f"  events    {state.events}{after}{head}")
    if state.request is not None:
        req = state.request
        extra = [f"{k} {v}" for k, v in (("budget_usd", req.budget_usd), ("mode", req.mode)) if v is not None]
        text = req.request or "(explicit plan)"
        lines.append(f"  request   {_short(text, width)}" + (f" ({', '.join(extra)})" if extra else ""))
    if state.plan is not None:
        lines.append(
            f"  plan      revision {state.revision} ({state.plan_source}), {len(state.plan.nodes)} task(s), "
            f"output {state.plan.output}"
        )
    for tid, t in state.tasks.items():
        what = f"attempt {t.attempt}" if t.attempt else ""
        if t.error is not None:
            what += f" {t.error.code}: {t.error.message}"
        lines.append(f"  task      {tid:<14} {t.status:<10} {what}".rstrip())
    for sid, st in state.steps.items():
        detail = st.tool or st.step.tool
        if st.status == "awaiting_approval" and st.approval_deadline is not None:
            detail += f", approval due {st.approval_deadline:%Y-%m-%d %H:%M:%S}"
        if st.error is not None:
            detail += f", {st.error.code}: {st.error.message}"
        lines.append(f"  step      {sid:<14} {st.status:<10} {_short(detail, width)}")
    if state.status == "completed":
        lines.append(f"  result    {_short(_json.encode(state.result).decode(), width)}")
    if state.failure is not None:
        lines.append(f"  failure   {state.failure.code}: {_short(state.failure.message, width)}")
    if state.dead_letters:
        lines.append(f"  dead letters {state.dead_letters}")
    return lines


def show(workflow_id: str, records: Sequence[Record], at: int, as_json: bool, keyring: Keyring | None = None) -> None:
    """Print the workflow's state as of ``at``."""
    state = state_at(workflow_id, records, at, keyring)
    later = sum(r.seq > at for r in records)
    if as_json:
        print(json_line(state_json(state, at, later)), flush=True)
    else:
        print(visible_lines(state_lines(state, at, later)), flush=True)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
