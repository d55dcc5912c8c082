"""Whether a stored event may move a workflow: its signature against the deployment's keyring.

Live actors (their state cache and their inputs) trust an event only when :func:`verdict` says
``signed``: a forged or unsigned event is skipped as if it had never arrived, though it keeps
its place in the integrity chain. Without a keyring (a test harness, a log read with no keys)
nothing is checked and every event counts, as before signing existed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from cadre.bus.signing import Keyring, Verdict
from cadre.store.records import Record, StoredEvent
from cadre.store.state import WorkflowState, apply, skip

UNCHECKED: Final = Verdict("signed", "not checked: no keyring")


def verdict(rec: StoredEvent, keyring: Keyring | None, *, signed_here: bool = False) -> Verdict:
    """The keyring's verdict on ``rec`` (``UNCHECKED`` without a keyring). ``signed_here``: this
    process made the signature over these very bytes, so only the key's role is checked."""
    if keyring is None:
        return UNCHECKED
    return keyring.check(rec.subject, rec.event.type, rec.event.id, rec.data, rec.signature, verified=signed_here)


def trusted_fold(workflow_id: str, records: Iterable[Record], keyring: Keyring | None) -> WorkflowState:
    """The workflow's state from the events the keyring trusts; every other record (malformed,
    forged, unsigned) moves only the chain's head, as it does in the actors' state cache."""
    state = WorkflowState(workflow_id=workflow_id)
    for r in records:
        if isinstance(r, StoredEvent) and verdict(r, keyring).trusted:
            apply(state, r)
        else:
            skip(state, r)
    return state


class Authorship(msgspec.Struct, frozen=True, kw_only=True):
    """One event the keyring does not trust: where it is, and why (``status``: forged or unsigned)."""

    index: int
    seq: int
    id: str
    type: str
    status: str
    reason: str
    role: str | None = None

    def line(self) -> str:
        return f"event {self.index} (seq {self.seq}, {self.type}, id {self.id}): {self.status}: {self.reason}"


def authorship(records: Iterable[Record], keyring: Keyring) -> list[Authorship]:
    """Every event of ``records`` whose signature the keyring does not accept, in stored order
    (malformed records are the integrity check's business)."""
    found = []
    for i, r in enumerate(records):
        if not isinstance(r, StoredEvent):
            continue
        v = verdict(r, keyring)
        if not v.trusted:
            found.append(
                Authorship(
                    index=i, seq=r.seq, id=r.event.id, type=r.event.type, status=v.status, reason=v.reason, role=v.role
                )
            )
    return found
