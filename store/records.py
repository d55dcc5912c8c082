"""What reading the log yields: a stored event, or a message that is not a valid event.

A message on an event subject that does not decode, or whose subject disagrees with its
envelope, is never skipped silently: it becomes a :class:`Malformed` record carrying its
stream sequence and the reason, so tools can show it and strict readers can refuse it.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from cadre.bus import codec
from cadre.bus.errors import DecodeError, MalformedEvent
from cadre.bus.events import Envelope
from cadre.bus.signing import Signature, signature_of
from cadre.bus.subjects import Subjects


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: its stream sequence, subject, the decoded envelope and its exact bytes,
    and the signature of whoever wrote it (None: written unsigned, as before signing existed).

    ``subject`` is the subject the event was published to, ``<prefix>.evt.<wf>.<type>``: the
    partition token a partitioned stream adds when it stores it is dropped (it is the server's
    function of the workflow id; the signature binds the published subject)."""

    seq: int
    subject: str
    event: Envelope
    data: bytes
    signature: Signature | None = None


class Malformed(msgspec.Struct, frozen=True, gc=False):
    """A message on an event subject that is not a valid cadre event."""

    seq: int
    subject: str
    reason: str
    data: bytes

    def error(self) -> MalformedEvent:
        return MalformedEvent(self.seq, self.subject, self.reason)


Record = StoredEvent | Malformed


def to_record(
    subjects: Subjects, seq: int, subject: str, data: bytes, headers: Mapping[str, str] | None = None
) -> Record:
    """Decode one stored message; a problem becomes a :class:`Malformed` record, never an exception.

    ``headers`` are the message's NATS headers, where its signature travels (:mod:`bus.signing`).
    A stored subject's partition token is dropped (:meth:`Subjects.parse_stored`).
    """
    stored = subjects.parse_stored(subject)  # one parse: the workflow, the type, the published subject
    if stored is not None:
        subject = stored[2]
    try:
        event = codec.decode(data)
    except DecodeError as exc:
        return Malformed(seq, subject, exc.reason, data)
    if stored is None or stored[0] != event.workflow_id or stored[1] != event.type:
        return Malformed(
            seq,
            subject,
            f"envelope says workflow {event.workflow_id!r} type {event.type!r}, "
            f"but it was stored under subject {subject!r}",
            data,
        )
    return StoredEvent(seq, subject, event, data, signature_of(headers))


def events_only(records: list[Record]) -> list[StoredEvent]:
    """The records as events; raise :class:`MalformedEvent` at the first malformed one."""
    for r in records:
        if isinstance(r, Malformed):
            raise r.error()
    return records  # type: ignore[return-value]  # every record was checked to be a StoredEvent
