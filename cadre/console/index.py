"""The console's in-memory index of workflows: one :class:`Summary` per workflow, folded from each
record as the stream delivers it (one pass at start, then live), so the list page is a sort of what
is held, never a read of the log.

A summary keeps counts of event types (the state comes from them, as for ``cadre status``), the
request, start and end, the cost settled so far, the dead letters and the events the keyring did
not accept. Only the events that make the row (the request, the plan, approvals, the end) are
checked against the keyring here: an untrusted one counts as a problem and for nothing else.
Every event of a workflow is checked when its page is opened (:mod:`cadre.console.views`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cadre.bus.effects import CallSettled
from cadre.bus.events import TERMINAL_TYPES, EffectsRecorded, ForgedEvent, HandlerFailed, WorkflowRequested
from cadre.bus.signing import Keyring
from cadre.commands import workflow_state
from cadre.store.authenticity import verdict
from cadre.store.records import Malformed, Record, StoredEvent

# The event types a row is made of: checked against the keyring before they count.
ROW_TYPES = frozenset(
    {
        "workflow_requested",
        "plan_proposed",
        "approval_requested",
        "approval_granted",
        "approval_denied",
        *TERMINAL_TYPES,
    }
)
REQUEST_PREVIEW = 300  # characters of the request a row carries


@dataclass
class Summary:
    """One workflow as the list shows it (module docstring)."""

    workflow_id: str
    types: Counter[str] = field(default_factory=Counter)
    request: str | None = None
    dry_run: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None
    last_at: datetime | None = None
    last_seq: int = 0
    cost_usd: float = 0.0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    untrusted: list[dict[str, Any]] = field(default_factory=list)
    malformed: int = 0

    @property
    def state(self) -> str:
        return workflow_state(self.types)

    def row(self, now: datetime) -> dict[str, Any]:
        end = self.ended_at if self.state in ("completed", "failed", "cancelled") else None
        duration = None if self.started_at is None else round(((end or now) - self.started_at).total_seconds(), 3)
        return {
            "workflow_id": self.workflow_id,
            "state": self.state,
            "request": self.request,
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": end.isoformat() if end else None,
            "duration_s": duration,
            "cost_usd": round(self.cost_usd, 6),
            "events": sum(self.types.values()) + self.malformed + len(self.untrusted),
            "problems": len(self.dead_letters) + len(self.untrusted) + self.malformed,
        }


class WorkflowIndex:
    """Every workflow's :class:`Summary`, kept by :meth:`add` (records in stream order)."""

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        self.by_id: dict[str, Summary] = {}
        self.last_seq = 0
        self.listeners: list[Callable[[Summary], None]] = []

    def add(self, wf: str, r: Record) -> Summary:
        s = self.by_id.get(wf)
        if s is None:
            s = self.by_id[wf] = Summary(wf)
        s.last_seq = self.last_seq = max(self.last_seq, r.seq)
        if isinstance(r, Malformed):
            s.malformed += 1
        else:
            _fold(s, r, self.keyring)
        for listener in self.listeners:
            listener(s)
        return s

    def rows(
        self, now: datetime, *, state: str | None = None, text: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[dict[str, Any]]]:
        """How many match, and the ``limit`` newest of them after ``offset`` (newest first: by start,
        those without one last, then by id)."""
        needle = (text or "").strip().lower()
        chosen = [
            s
            for s in self.by_id.values()
            if (state is None or s.state == state)
            and (not needle or needle in s.workflow_id.lower() or needle in (s.request or "").lower())
        ]
        chosen.sort(key=lambda s: s.workflow_id)
        chosen.sort(key=lambda s: (s.started_at is not None, s.started_at.timestamp() if s.started_at else 0.0))
        chosen.reverse()
        return len(chosen), [s.row(now) for s in chosen[offset : offset + limit]]

    def counts(self) -> Counter[str]:
        return Counter(s.state for s in self.by_id.values())

    def problems(self, now: datetime, stuck_after_s: float) -> dict[str, list[dict[str, Any]]]:
        """Dead letters, events the keyring refused (seen here or by the actors), and workflows
        that have not ended and have had no event for ``stuck_after_s`` seconds."""
        dead: list[dict[str, Any]] = []
        untrusted: list[dict[str, Any]] = []
        stuck: list[dict[str, Any]] = []
        for s in self.by_id.values():
            dead.extend(s.dead_letters)
            untrusted.extend(s.untrusted)
            if s.state not in ("completed", "failed", "cancelled") and s.last_at is not None:
                idle = (now - s.last_at).total_seconds()
                if idle > stuck_after_s:
                    stuck.append({"workflow_id": s.workflow_id, "state": s.state, "idle_s": round(idle, 1)})
        stuck.sort(key=lambda x: -float(x["idle_s"]))
        return {"dead_letters": dead, "untrusted": untrusted, "stuck": stuck}


def _fold(s: Summary, r: StoredEvent, keyring: Keyring | None) -> None:
    e = r.event
    if e.type in ROW_TYPES and keyring is not None:
        checked = verdict(r, keyring)
        if not checked.trusted:
            s.untrusted.append(
                {
                    "workflow_id": s.workflow_id,
                    "seq": r.seq,
                    "type": e.type,
                    "status": checked.status,
                    "reason": checked.reason,
                    "seen_by": "console",
                }
            )
            return
    s.types[e.type] += 1
    s.last_at = e.at
    data = e.data
    if isinstance(data, WorkflowRequested):
        text = data.request or "(an explicit plan)"
        s.request = text[:REQUEST_PREVIEW] + ("…" if len(text) > REQUEST_PREVIEW else "")
        s.dry_run, s.started_at = data.dry_run, e.at
    elif e.type in TERMINAL_TYPES:
        s.ended_at = e.at
    elif isinstance(data, HandlerFailed):
        s.dead_letters.append(
            {
                "workflow_id": s.workflow_id,
                "seq": r.seq,
                "actor": e.actor,
                "at": e.at.isoformat(),
                "input_type": data.input_type,
                "attempts": data.attempts,
                "code": data.error.code,
                "message": data.error.message,
            }
        )
    elif isinstance(data, ForgedEvent):
        s.untrusted.append(
            {
                "workflow_id": s.workflow_id,
                "seq": data.input_seq,
                "type": data.input_type,
                "status": data.status,
                "reason": data.reason,
                "seen_by": e.actor,
            }
        )
    s.cost_usd += _settled(e.data.effects if isinstance(e.data, EffectsRecorded) else e.effects)


def _settled(effects: Iterable[object]) -> float:
    return sum(x.cost_usd for x in effects if isinstance(x, CallSettled))
