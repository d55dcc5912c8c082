"""Whether a stored event may move a workflow: its signature against the deployment's keyring.

Live actors (their state cache and their inputs) trust an event only when :func:`verdict` says
``signed``: a forged or unsigned event is skipped as if it had never arrived, though it keeps
its place in the integrity chain. Without a keyring (a test harness, a log read with no keys)
nothing is checked and every event counts, as before signing existed.
"""

from __future__ import annotations

from typing import Final

from bus.signing import Keyring, Verdict
from store.records import StoredEvent

UNCHECKED: Final = Verdict("signed", "not checked: no keyring")


def verdict(rec: StoredEvent, keyring: Keyring | None) -> Verdict:
    """The keyring's verdict on ``rec`` (``UNCHECKED`` without a keyring)."""
    if keyring is None:
        return UNCHECKED
    return keyring.check(rec.subject, rec.event.type, rec.event.id, rec.data, rec.signature)
