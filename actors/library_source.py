"""The plan library as the planner sees it: example plans plus plans of completed workflows.

Example plans are read once from a directory (``examples/plans`` by default). Plans of
completed workflows are read from the log: each search first picks up the workflows that
completed since the last one (one direct get per new completion), so the library grows as
cadre works. What a completed workflow teaches depends on where its plan came from: a
model's plan joins (its literals that came from the request become parameters); a plan the
library itself gave teaches nothing new; a client's explicit plan joins only when the
deployment allows it (``library_learn_explicit``, off by default: otherwise any client
could plant entries); a re-planned workflow (revision > 1) and a dry run teach nothing.
Each entry records its origin. The planner records the hit it got (the bound plan, the
values, or what did not fit and the closest entries), so a replay does not depend on this.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.js.errors import NotFoundError

from cadre.actors.context import LibraryHit
from cadre.bus import codec
from cadre.bus.effects import LibraryNear
from cadre.bus.errors import DecodeError
from cadre.bus.events import PlanProposed, WorkflowRequested
from cadre.planner.binding import describe_params
from cadre.planner.library import Candidate, LibraryEntry, entry_from_workflow, load_entries, match
from cadre.store.jetstream import JetStreamLog


class LogLibrary:
    """Library port over example files and the event log."""

    def __init__(
        self,
        elog: JetStreamLog | None,
        examples: Path | None,
        *,
        threshold: float = 0.35,
        learn_explicit: bool = False,
        max_learned: int = 1_000,
    ) -> None:
        self._log = elog
        self._max_learned = max_learned
        self._threshold = threshold
        self._learn_explicit = learn_explicit
        self._entries: list[LibraryEntry] = load_entries(examples) if examples is not None and examples.is_dir() else []
        self._learned: dict[str, LibraryEntry] = {}
        self._next_seq = [1, 1]  # per filter of the completions (without, with a partition)
        self._lock = asyncio.Lock()

    @property
    def entries(self) -> list[LibraryEntry]:
        return [*self._entries, *self._learned.values()]

    async def refresh(self) -> None:
        """Learn the plans of workflows completed since the last refresh (stored with or without a
        partition in their subjects: a cursor each)."""
        if self._log is None:
            return
        js, stream, subjects = self._log.js, self._log.stream, self._log.subjects
        async with self._lock:
            for i, filtered in enumerate(subjects.stored_of_type("workflow_completed")):
                while True:
                    try:
                        m = await js.get_msg(stream, seq=self._next_seq[i], subject=filtered, next=True)
                    except NotFoundError:
                        break
                    self._next_seq[i] = (m.seq or self._next_seq[i]) + 1
                    parsed = subjects.parse_event(m.subject or "")
                    if parsed is None or parsed[0] in self._learned:
                        continue
                    entry = await self._entry_of(parsed[0])
                    if entry is not None:
                        self._learned[parsed[0]] = entry
                        if len(self._learned) > self._max_learned:  # the oldest learned plan goes first
                            del self._learned[next(iter(self._learned))]

    async def _entry_of(self, wf: str) -> LibraryEntry | None:
        elog = self._log
        assert elog is not None
        req_msg = await elog.last_msg_of_type(wf, "workflow_requested")
        plan_msg = await elog.last_msg_of_type(wf, "plan_proposed")
        if req_msg is None or plan_msg is None:
            return None
        try:
            req = codec.decode(req_msg.data or b"")
            plan = codec.decode(plan_msg.data or b"")
        except DecodeError:
            return None
        if not isinstance(req.data, WorkflowRequested) or not isinstance(plan.data, PlanProposed):
            return None
        if not self.teaches(req.data, plan.data):
            return None
        return entry_from_workflow(wf, req.data.request, plan.data.plan, origin=plan.data.source)

    def teaches(self, req: WorkflowRequested, proposed: PlanProposed) -> bool:
        """Whether a completed workflow with this request and (last) plan joins the library."""
        if not req.request.strip() or req.dry_run:
            return False  # no words to match against; or nothing really ran
        if proposed.revision != 1:
            return False  # the plan that completed answers only the rest of an earlier plan
        if proposed.source == "model":
            return True
        return proposed.source == "explicit" and self._learn_explicit  # "library": nothing new

    async def search(self, request: str) -> LibraryHit | None:
        await self.refresh()
        outcome = match(request, self.entries, threshold=self._threshold)
        if not outcome.closest:
            return None
        near = tuple(_near(c) for c in outcome.closest)
        if outcome.served is not None and outcome.plan is not None:
            c = outcome.served
            return LibraryHit(
                name=c.entry.name,
                source=c.entry.source,
                score=c.score,
                threshold=self._threshold,
                plan=outcome.plan,
                bindings=c.binding.values,
                closest=near,
            )
        c = outcome.closest[0]
        return LibraryHit(
            name=c.entry.name,
            source=c.entry.source,
            score=c.score,
            threshold=self._threshold,
            plan=c.entry.plan,
            fits=False,
            why_not=outcome.why_not(),
            closest=near,
        )


def _near(c: Candidate) -> LibraryNear:
    return LibraryNear(
        name=c.entry.name,
        source=c.entry.source,
        score=c.score,
        params=describe_params(c.entry.params),
        example=c.entry.request,
        misfits=c.binding.misfits,
    )
