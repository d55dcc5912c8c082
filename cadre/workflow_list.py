"""``cadre workflows``: the rows of the listing and how they print. Pure: the command
(:func:`cadre.commands.workflows`) reads the log and the clock and passes them in.

A row: the workflow's id, state (as ``cadre status`` names it), request (the text, or "(an
explicit plan)"), start (its ``workflow_requested``), end (its terminal event) and duration (to
its end, or to now while it runs). The request is recorded text: it prints through
:func:`cadre.safe_text.visible`, so control characters in it are shown, never sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import msgspec

from cadre.bus.events import WorkflowRequested
from cadre.safe_text import visible
from cadre.store.records import StoredEvent

STATES = ("requested", "running", "awaiting_approval", "completed", "failed")


class WorkflowRow(msgspec.Struct, frozen=True, kw_only=True):
    """One workflow of the listing (module docstring); ``duration_s`` runs to ``now`` without an end."""

    workflow_id: str
    state: str
    request: str | None
    dry_run: bool
    started_at: datetime | None
    ended_at: datetime | None
    duration_s: float | None
    events: int


def row(
    wf: str, state: str, events: int, requested: StoredEvent | None, ended: StoredEvent | None, now: datetime
) -> WorkflowRow:
    """The row of ``wf`` from its request and terminal events (None: not there, or not trusted)."""
    request, dry_run, started = None, False, None
    if requested is not None and isinstance(requested.event.data, WorkflowRequested):
        data = requested.event.data
        request = data.request or "(an explicit plan)"
        dry_run, started = data.dry_run, requested.event.at
    end = ended.event.at if ended is not None else None
    duration = None if started is None else round(((end or now) - started).total_seconds(), 3)
    return WorkflowRow(
        workflow_id=wf,
        state=state,
        request=request,
        dry_run=dry_run,
        started_at=started,
        ended_at=end,
        duration_s=duration,
        events=events,
    )


def select(rows: Iterable[WorkflowRow], *, state: str | None = None, limit: int | None = None) -> list[WorkflowRow]:
    """Newest first (by start; those with no recorded start last, by id), of ``state`` when given,
    at most ``limit``."""
    chosen = [r for r in rows if state is None or r.state == state]
    chosen.sort(key=lambda r: r.workflow_id)
    chosen.sort(
        key=lambda r: (r.started_at is not None, r.started_at.timestamp() if r.started_at else 0.0), reverse=True
    )
    return chosen if limit is None else chosen[:limit]


def _newest_first(r: WorkflowRow) -> tuple[bool, float]:
    return (r.started_at is not None, r.started_at.timestamp() if r.started_at is not None else 0.0)


def row_json(r: WorkflowRow) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(r)
    return out


def _duration(r: WorkflowRow) -> str:
    if r.duration_s is None:
        return "-"
    s = r.duration_s
    text = f"{s:.2f}s" if s < 60 else f"{s / 60:.1f}m" if s < 3600 else f"{s / 3600:.1f}h"
    return text if r.ended_at is not None else text + "+"


def lines(rows: Iterable[WorkflowRow], width: int = 60) -> Iterator[str]:
    """A header and one line per row, each safe to print; a running workflow's duration ends in ``+``."""
    yield f"{'STARTED (UTC)':<19}  {'DURATION':>9}  {'STATE':<17}  {'WORKFLOW':<22}  REQUEST"
    for r in rows:
        started = r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else "-"
        request = r.request if r.request is not None else "(no trusted request)"
        if len(request) > width:
            request = request[: width - 1] + "…"
        dry = "(dry run) " if r.dry_run else ""
        yield visible(f"{started:<19}  {_duration(r):>9}  {r.state:<17}  {r.workflow_id:<22}  {dry}{request}")
