"""Where a stored request meets its requester: one record per payload digest, plain functions.

The requests stream keeps a request but not its reply subject, so the intake's consumer (which
turns stored requests into workflows) and its queue-group subscriber (which holds the reply
subjects) meet in a key-value record keyed by the digest of the payload. Requests with the same
bytes are interchangeable: whichever copy becomes a workflow, a requester of those bytes may be
told its id, as long as each workflow id goes to one requester at most (FIFO pairing).

Both sides change a record only with compare-and-set, so these functions see one consistent
record and return the new one (or None: nothing to write):

* the consumer **reserves** a stored copy (its stream sequence) before it appends the workflow,
  then **settles** it with the answer (``{"workflow_id": ...}`` or ``{"error": ...}``);
* a requester **claims** a settled copy that no one has claimed;
* a requester that found nothing to claim within its wait **refuses**: the record then holds a
  refusal that covers the copies stored up to ``until_seq`` (the stream's last sequence when the
  refusal is written, which is after the requester's own copy, if it was stored at all); the
  consumer **drops** the first such copy it meets instead of making a workflow of it. A refusal
  is only written when no copy is reserved or settled unclaimed, so the "overloaded" a requester
  receives is true: its request does not become a workflow.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

KEEP_CLAIMED = 32
"""Claimed copies kept in a record (so a redelivered copy is known as done), newest kept."""
KEEP_UNCLAIMED = 256
"""Settled copies nobody claimed (published without a reply) kept in a record, newest kept."""


class Copy(msgspec.Struct, frozen=True, array_like=True):
    """One stored copy of the payload: its stream sequence, its answer once settled, claimed or not."""

    seq: int
    answer: dict[str, Any] | None = None
    claimed: bool = False


class Pairing(msgspec.Struct, frozen=True):
    """The record of one payload digest."""

    copies: tuple[Copy, ...] = ()
    refusals: tuple[int, ...] = ()  # until_seq of each refusal not yet honoured


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Pairing)


def encode(p: Pairing) -> bytes:
    return _encoder.encode(p)


def decode(data: bytes | None) -> Pairing:
    return _decoder.decode(data) if data else Pairing()


Reserved = Literal["proceed", "drop", "again", "done"]


def reserve(p: Pairing, seq: int) -> tuple[Pairing | None, Reserved]:
    """The consumer meets the stored copy ``seq``.

    ``proceed``: reserved, make the workflow; ``drop``: a refusal covers it, make nothing;
    ``again``: reserved before (a redelivery), make the workflow (idempotent) and settle;
    ``done``: settled before, only acknowledge it.
    """
    for c in p.copies:
        if c.seq == seq:
            return None, "done" if c.answer is not None else "again"
    covering = [u for u in p.refusals if u >= seq]
    if covering:
        rest = list(p.refusals)
        rest.remove(min(covering))
        return Pairing(p.copies, tuple(rest)), "drop"
    return Pairing((*p.copies, Copy(seq)), p.refusals), "proceed"


def settle(p: Pairing, seq: int, answer: dict[str, Any]) -> Pairing | None:
    """The answer of copy ``seq`` is known (None: it was settled already)."""
    copies = list(p.copies)
    for i, c in enumerate(copies):
        if c.seq == seq:
            if c.answer is not None:
                return None
            copies[i] = Copy(seq, answer, c.claimed)
            break
    else:  # the record expired meanwhile: the copy comes back settled
        copies.append(Copy(seq, answer))
    return Pairing(_pruned(copies), p.refusals)


def claim(p: Pairing) -> tuple[Pairing, dict[str, Any]] | None:
    """A requester takes the oldest settled, unclaimed copy's answer (None: there is none)."""
    copies = list(p.copies)
    for i, c in enumerate(copies):
        if c.answer is not None and not c.claimed:
            copies[i] = Copy(c.seq, c.answer, True)
            return Pairing(_pruned(copies), p.refusals), c.answer
    return None


def in_progress(p: Pairing) -> bool:
    """Whether a copy is reserved and not yet settled (a workflow is being made of it)."""
    return any(c.answer is None for c in p.copies)


def refuse(p: Pairing, until_seq: int) -> Pairing | None:
    """A requester gives up: a refusal covering copies up to ``until_seq`` (None: it may not,
    because a copy is reserved or settled and unclaimed, which it should wait for or claim)."""
    if any(not c.claimed for c in p.copies):
        return None
    return Pairing(p.copies, (*p.refusals, until_seq))


def _pruned(copies: list[Copy]) -> tuple[Copy, ...]:
    claimed = [c for c in copies if c.claimed]
    unclaimed = [c for c in copies if c.answer is not None and not c.claimed]
    drop = {c.seq for c in claimed[:-KEEP_CLAIMED]} | {c.seq for c in unclaimed[:-KEEP_UNCLAIMED]}
    return tuple(c for c in copies if c.seq not in drop)
