"""The plan library as the planner sees it: example plans plus plans of completed workflows.

Example plans are read once from a directory (``examples/plans`` by default). Plans of
completed workflows are read from the log: each search first picks up the workflows that
completed since the last one (one direct get per new completion), so the library grows as
cadre works. The planner records the hit it got, so a replay does not depend on this.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.js.errors import NotFoundError

from cadre.actors.context import LibraryHit
from cadre.bus import codec
from cadre.bus.errors import DecodeError
from cadre.bus.events import PlanProposed, WorkflowRequested
from cadre.planner.library import LibraryEntry, entry_from_workflow, load_entries, search
from cadre.store.jetstream import JetStreamLog


class LogLibrary:
    """Library port over example files and the event log."""

    def __init__(self, elog: JetStreamLog | None, examples: Path | None, *, threshold: float = 0.35) -> None:
        self._log = elog
        self._threshold = threshold
        self._entries: list[LibraryEntry] = load_entries(examples) if examples is not None and examples.is_dir() else []
        self._learned: dict[str, LibraryEntry] = {}
        self._next_seq = 1
        self._lock = asyncio.Lock()

    @property
    def entries(self) -> list[LibraryEntry]:
        return [*self._entries, *self._learned.values()]

    async def refresh(self) -> None:
        """Learn the plans of workflows completed since the last refresh."""
        if self._log is None:
            return
        js, stream, subjects = self._log.js, self._log.stream, self._log.subjects
        async with self._lock:
            while True:
                try:
                    m = await js.get_msg(
                        stream, seq=self._next_seq, subject=subjects.of_type("workflow_completed"), next=True
                    )
                except NotFoundError:
                    return
                self._next_seq = (m.seq or self._next_seq) + 1
                parsed = subjects.parse_event(m.subject or "")
                if parsed is None or parsed[0] in self._learned:
                    continue
                entry = await self._entry_of(parsed[0])
                if entry is not None:
                    self._learned[parsed[0]] = entry

    async def _entry_of(self, wf: str) -> LibraryEntry | None:
        js, stream, subjects = self._log.js, self._log.stream, self._log.subjects  # type: ignore[union-attr]
        try:
            req = codec.decode((await js.get_last_msg(stream, subjects.event(wf, "workflow_requested"))).data or b"")
            plan = codec.decode((await js.get_last_msg(stream, subjects.event(wf, "plan_proposed"))).data or b"")
        except (NotFoundError, DecodeError):
            return None
        if not isinstance(req.data, WorkflowRequested) or not isinstance(plan.data, PlanProposed):
            return None
        if not req.data.request.strip():
            return None  # an explicit plan with no words: nothing to match against
        if req.data.dry_run:
            return None  # nothing ran: a dry run proves nothing about its plan
        return entry_from_workflow(wf, req.data.request, plan.data.plan)

    async def search(self, request: str) -> LibraryHit | None:
        await self.refresh()
        match = search(request, self.entries, threshold=0.0)
        if match is None:
            return None
        e = match.entry
        return LibraryHit(name=e.name, source=e.source, score=match.score, threshold=self._threshold, plan=e.plan)
