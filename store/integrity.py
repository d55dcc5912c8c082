"""The integrity chain of a workflow's events, and its verification. Pure: no I/O, no clock.

**The chain rule.** Every event of schema v2 or later carries ``prev``: the chain hash
(:func:`bus.events.chain_hash`, blake2b-128 hex) of the exact stored bytes of the workflow's
previous message in stream order, and "" when it is the workflow's first. The log sets it
when appending, and stores each message expecting the one it chains to
(``Nats-Expected-Last-Subject-Sequence``), so the chain holds in *stored* order however many
writers append at once (``store.jetstream``).

**What it shows.** An event changed after its successor was written no longer hashes to its
successor's ``prev``; a removed, inserted or moved event breaks a link as well.
:func:`verify` names the first problem (modified, removed, inserted, reordered) with the
index, stream sequence, id and type of the event concerned. The last event has no successor:
an :class:`Anchor` (the head hash and event count recorded apart, as an export's header
does) covers it, and tells a removal from a modification; on the live log, the stream's
record of deleted sequences does the latter. The chain makes tampering *evident*: someone
who rewrites every event after a change (and the anchor) is caught only by an anchor kept
elsewhere, or signed.

**Unchained events.** v1 events (written before the chain) carry no ``prev``: their own link
is not checked, but the link of the event after them is. A malformed message (not a cadre
event) holds its place in stream order: the next event chains to its bytes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import msgspec

from cadre.bus.events import CHAIN_VERSION, chain_hash
from cadre.store.objects import OBJECT_PROBLEMS
from cadre.store.records import Malformed, Record, StoredEvent

ProblemKind = Literal["modified", "removed", "inserted", "reordered", "object"]
Status = Literal["intact", "unchained", "broken"]


class Anchor(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow's head as recorded apart from its events: the chain hash of its last message,
    that message's stream sequence, and how many messages it had (0: not recorded)."""

    head: str
    seq: int = 0
    count: int = 0


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """Where a record is: its index among the records checked, stream sequence, id and type."""

    index: int
    seq: int
    event_id: str  # "" for a malformed message
    type: str  # a malformed message's: the last token of its subject

    def describe(self) -> str:
        ident = f"id {self.event_id}" if self.event_id else "malformed"
        return f"index {self.index} (seq {self.seq}, {self.type}, {ident})"


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """The first place the chain does not hold: what happened (as far as the chain can tell),
    the record concerned (``at``; None when the whole workflow is missing), and the record
    it was found against."""

    kind: ProblemKind
    at: Position | None
    related: Position | None = None
    message: str


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :func:`verify`.

    ``status``: ``intact`` (every link checked holds), ``unchained`` (nothing to check: every
    event is schema v1), ``broken`` (``problem`` says where). ``chained`` counts the events
    whose own link was checked, ``unchained`` the v1 events, ``malformed`` the messages that
    are not cadre events; ``head`` is the chain hash of the last record.
    """

    status: Status
    events: int
    chained: int
    unchained: int
    malformed: int
    head: str
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.status != "broken"

    def summary(self) -> str:
        """One line for people."""
        if self.problem is not None and self.problem.kind == "object":
            return f"chain intact, but an output stored by reference does not hold: {self.problem.message}"
        if self.problem is not None:
            return f"chain broken: {self.problem.message}"
        if self.status == "unchained":
            return f"unchained (schema v1): {self.events} events written before the chain existed; nothing to verify"
        notes = []
        if self.unchained:
            notes.append(f"{self.unchained} unchained (schema v1)")
        if self.malformed:
            notes.append(f"{self.malformed} malformed")
        return f"chain intact: {self.events} events" + (f" ({', '.join(notes)})" if notes else "")


def prev_of(record: Record) -> str | None:
    """The ``prev`` a record carries, or None when it carries none (schema v1, or malformed)."""
    if isinstance(record, StoredEvent) and record.event.v >= CHAIN_VERSION:
        return record.event.prev
    return None


def verify(
    records: Sequence[Record], *, anchor: Anchor | None = None, deleted: Collection[int] | None = None
) -> Verdict:
    """Check one workflow's records, in stored order, against the chain rule.

    ``anchor``: the head recorded apart (an export's header), which covers the last event and
    tells a removal (fewer events than recorded) from a modification. ``deleted``: stream
    sequences the live stream reports deleted, which does the same on the live log (None:
    not known; then a broken link with nothing missing reads as a modification).
    """
    check = _Check(records, anchor, deleted)
    problem = check.links() or check.end() or _object_problem(check, records)
    chained = sum(p is not None for p in check.prevs)
    malformed = sum(isinstance(r, Malformed) for r in records)
    if problem is not None:
        status: Status = "broken"
    elif records and chained == 0 and malformed < len(records):
        status = "unchained"
    else:
        status = "intact"
    return Verdict(
        status=status,
        events=len(records),
        chained=chained,
        unchained=len(records) - chained - malformed,
        malformed=malformed,
        head=check.hashes[-1] if records else "",
        problem=problem,
    )


def _object_problem(check: _Check, records: Sequence[Record]) -> Problem | None:
    """The first event whose output stored by reference is missing or does not match the digest its
    stored (chained, signed) bytes carry (``store.objects``): the event is intact, its object is not."""
    for i, r in enumerate(records):
        if isinstance(r, Malformed) and r.reason.startswith(OBJECT_PROBLEMS):
            return Problem(kind="object", at=check.pos(i), message=f"{check.pos(i).describe()}: {r.reason}")
    return None


class _Check:
    """The records with their hashes and prevs, and the rules that name a broken link."""

    def __init__(self, records: Sequence[Record], anchor: Anchor | None, deleted: Collection[int] | None) -> None:
        self.records = records
        self.anchor = anchor
        self.deleted = deleted
        self.hashes = [chain_hash(r.data) for r in records]
        self.prevs = [prev_of(r) for r in records]
        self.by_hash: dict[str, int] = {}
        for i, h in enumerate(self.hashes):
            self.by_hash.setdefault(h, i)

    def pos(self, i: int) -> Position:
        r = self.records[i]
        if isinstance(r, StoredEvent):
            return Position(index=i, seq=r.seq, event_id=r.event.id, type=r.event.type)
        return Position(index=i, seq=r.seq, event_id="", type=r.subject.rsplit(".", 1)[-1])

    def want(self, i: int) -> str:
        """What record ``i`` should carry as ``prev``."""
        return self.hashes[i - 1] if i else ""

    def links(self) -> Problem | None:
        for i, p in enumerate(self.prevs):
            if p is not None and p != self.want(i):
                return self.diagnose(i)
        return None

    def diagnose(self, i: int) -> Problem:
        """Record ``i`` does not chain to the record before it: say why, as precisely as the chain can."""
        p = self.prevs[i]
        at = self.pos(i)
        n = len(self.records)
        copy = self.copy_of(i)
        if copy is not None:
            same = "the same bytes" if self.hashes[copy] == self.hashes[i] else "the same event id"
            return Problem(
                kind="inserted",
                at=at,
                related=self.pos(copy),
                message=f"inserted event at {at.describe()}: a copy of {self.pos(copy).describe()} ({same})",
            )
        j = self.by_hash.get(p) if p else None
        if j is not None and j > i:
            return Problem(
                kind="reordered",
                at=at,
                related=self.pos(j),
                message=f"reordered events: {at.describe()} was stored before {self.pos(j).describe()}, "
                "which it follows in the chain",
            )
        if j is not None and j < i - 1:
            first = self.pos(j + 1)
            return Problem(
                kind="inserted",
                at=first,
                related=at,
                message=f"inserted event at {first.describe()}: the chain goes from index {j} to "
                f"{at.describe()}, past it",
            )
        nxt = self.prevs[i + 1] if i + 1 < n else None
        if nxt is not None and nxt == self.want(i):
            return Problem(
                kind="inserted",
                at=at,
                related=self.pos(i + 1),
                message=f"inserted event at {at.describe()}: not part of the chain (the next event chains "
                "to the one before it)",
            )
        if p == "":
            return Problem(
                kind="inserted",
                at=at,
                message=f"inserted event at {at.describe()}: it claims to be the workflow's first event "
                "(empty prev), but it is not",
            )
        if (nxt is not None and nxt != self.hashes[i]) or (
            i == n - 1 and self.anchor is not None and self.anchor.head != self.hashes[i]
        ):
            return Problem(
                kind="modified",
                at=at,
                message=f"modified event at {at.describe()}: its prev chains to nothing in the log, "
                "and nothing chains to it",
            )
        if i == 0:
            return Problem(
                kind="removed",
                at=at,
                message=f"removed event before {at.describe()}: the workflow's first event is missing "
                "(the first one left chains to an event that is not in the log)",
            )
        before = self.pos(i - 1)
        removal = self.removal_evidence(i)
        if removal is not None:
            return Problem(
                kind="removed",
                at=at,
                related=before,
                message=f"removed event between {before.describe()} and {at.describe()}: the latter chains "
                f"to an event that is not in the log ({removal})",
            )
        hint = "" if self.known_complete() else " (or an event after it was removed: nothing recorded the event count)"
        return Problem(
            kind="modified",
            at=before,
            related=at,
            message=f"modified event at {before.describe()}: the next event ({at.describe()}) chains to "
            f"other bytes than it holds{hint}",
        )

    def end(self) -> Problem | None:
        """The last event against the anchor (every link before it held)."""
        anchor = self.anchor
        n = len(self.records)
        if anchor is None:
            return None
        if n == 0:
            if anchor.count > 0:
                return Problem(
                    kind="removed",
                    at=None,
                    message=f"removed events: the workflow had {anchor.count} events (head {anchor.head}), "
                    "none are left",
                )
            return None
        last = self.pos(n - 1)
        fewer = 0 < n < anchor.count
        more = 0 < anchor.count < n
        if self.hashes[-1] != anchor.head:
            if fewer:
                return Problem(
                    kind="removed",
                    at=last,
                    message=f"removed event after {last.describe()}: the workflow had {anchor.count} events ending "
                    f"in head {anchor.head} (seq {anchor.seq}); {n} are left",
                )
            if more:
                return Problem(
                    kind="inserted",
                    at=last,
                    message=f"inserted event at {last.describe()}: the workflow had {anchor.count} events ending "
                    f"in head {anchor.head} (seq {anchor.seq}); there are {n}",
                )
            return Problem(
                kind="modified",
                at=last,
                message=f"modified event at {last.describe()}: the last event's hash is not the head recorded "
                f"for the workflow ({anchor.head})",
            )
        if fewer or more:  # every link holds: the difference is among unchained (v1) events
            return Problem(
                kind="removed" if fewer else "inserted",
                at=self.pos(0),
                message=f"{'removed' if fewer else 'inserted'} event among the unchained (schema v1) events: "
                f"the workflow had {anchor.count} events, there are {n}",
            )
        return None

    def copy_of(self, i: int) -> int | None:
        """Another record with record ``i``'s bytes, or else its event id."""
        h = self.hashes[i]
        for k, other in enumerate(self.hashes):
            if k != i and other == h:
                return k
        r = self.records[i]
        if isinstance(r, StoredEvent):
            for k, o in enumerate(self.records):
                if k != i and isinstance(o, StoredEvent) and o.event.id == r.event.id:
                    return k
        return None

    def removal_evidence(self, i: int) -> str | None:
        """Why an event is missing before record ``i``, if anything says so."""
        lo, hi = self.records[i - 1].seq, self.records[i].seq
        if self.deleted is not None:
            gone = sorted(s for s in self.deleted if lo < s < hi)
            if gone:
                return f"stream sequence {gone[0]} between them was deleted"
        anchor = self.anchor
        if anchor is not None and anchor.count > len(self.records):
            return f"the workflow had {anchor.count} events, {len(self.records)} are left"
        return None

    def known_complete(self) -> bool:
        """Whether something tells that no event is missing (so a broken link is a modification)."""
        return self.deleted is not None or (self.anchor is not None and self.anchor.count > 0)
