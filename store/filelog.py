"""The event log as a JSON Lines file: export from JetStream, read back without NATS.

File format (one JSON object per line)::

    {"cadre_export": 1, "stream": "CADRE_EVENTS", "prefix": "cadre",
     "heads": {"wf-1": {"head": "5b0c…", "seq": 7, "count": 5}}}
    {"seq": 1, "subject": "cadre.evt.wf-1.workflow_requested", "event": {…the stored bytes…},
     "signer": "UA…", "sig": "…"}
    {"seq": 7, "subject": "cadre.evt.wf-1.x", "malformed": "JSON is malformed…", "data_b64": "Z2FyYmFnZQ=="}
    {"object": "sha256:9f86…", "data_b64": "eyJyb3dzIjog…"}

An object line (format 2, after the records) holds an output stored by reference
(:mod:`store.objects`): its events carry its digest, and reading the file resolves them from these
lines, each checked against its digest (a file without such outputs is written as format 1).

An event line embeds the event exactly as it was stored (not re-encoded), so digests and
signatures computed over stored bytes stay valid on the file. A malformed message is kept,
base64-encoded, with its reason: exporting loses nothing. ``heads`` records, per workflow,
the chain hash of its last record, that record's sequence and the number of records
(:class:`store.integrity.Anchor`): the integrity chain covers every event but the last, and
the heads cover the last one and tell a removed line from an edited one. (Files written
before ``heads`` existed read as before; their last events are then not covered.)
An event's ``signer``/``sig`` are the signature it was stored with (absent: unsigned), and
the header's ``keyring`` the public keys of the deployment that wrote it (:mod:`bus.signing`),
so an audit of the file can check who wrote what without the live system.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

import msgspec

from cadre.bus import codec
from cadre.bus.errors import DecodeError, StoreError
from cadre.bus.events import chain_hash
from cadre.bus.signing import SIG_HEADER, SIGNER_HEADER, Keyring, KeyringFile
from cadre.bus.subjects import Subjects
from cadre.store.integrity import Anchor
from cadre.store.objects import references, resolve_record
from cadre.store.records import Malformed, Record, StoredEvent, events_only, to_record
from cadre.store.source import EventSource

FORMAT_VERSION = 2  # 2: object lines (outputs stored by reference); 1 without them


class LogFileError(StoreError):
    """An export file that cannot be read: names the file and line."""

    code = "log_file_error"


class _Header(msgspec.Struct, frozen=True):
    cadre_export: int
    stream: str = "CADRE_EVENTS"
    prefix: str = "cadre"
    heads: dict[str, Anchor] = msgspec.field(default_factory=dict)
    keyring: KeyringFile | None = None


class _Object(msgspec.Struct, frozen=True):
    """An output stored by reference (``store.objects``): its digest and its bytes."""

    object: str
    data_b64: str


class _Line(msgspec.Struct, frozen=True, omit_defaults=True):
    seq: int
    subject: str
    event: msgspec.Raw = msgspec.Raw(b"")  # empty when the line is a malformed record
    malformed: str | None = None
    data_b64: str | None = None
    signer: str | None = None
    sig: str | None = None


_header_decoder = msgspec.json.Decoder(_Header)
_line_decoder = msgspec.json.Decoder(_Line)
_object_decoder = msgspec.json.Decoder(_Object)
_OBJECT_LINE = b'{"object":'
_encoder = msgspec.json.Encoder()


async def export(
    source: EventSource, workflow_ids: Iterable[str], out: IO[bytes], *, keyring: Keyring | None = None
) -> int:
    """Export the workflows' records (malformed ones included) from any event source."""
    records: list[Record] = []
    for wf in workflow_ids:
        records.extend(await source.read_records(wf))
    objects = await source.object_bytes(stored_references(records))
    return write_export(out, records, stream=source.stream, subjects=source.subjects, keyring=keyring, objects=objects)


def stored_references(records: Iterable[Record]) -> list[str]:
    """The digests of the outputs the records' stored events refer to, in order, each once."""
    found: dict[str, None] = {}
    for r in records:
        data = r.data if isinstance(r, StoredEvent) else b""
        if b'"cadre_object"' in data:  # cheap test before a decode of the stored bytes
            with contextlib.suppress(DecodeError):
                found.update(dict.fromkeys(references(codec.decode(data))))
    return list(found)


def write_export(
    out: IO[bytes],
    records: Iterable[Record],
    *,
    stream: str,
    subjects: Subjects,
    keyring: Keyring | None = None,
    objects: Mapping[str, bytes] | None = None,
) -> int:
    """Write a header (each workflow's head, the keyring's public keys), ``records``, and the
    ``objects`` they refer to (format 2; without objects a file stays format 1); return how many records."""
    records = list(records)
    header = _Header(
        FORMAT_VERSION if objects else 1,
        stream,
        subjects.prefix,
        heads(records, subjects),
        keyring.file if keyring else None,
    )
    out.write(_encoder.encode(header) + b"\n")
    n = 0
    for r in records:
        if isinstance(r, StoredEvent):
            sig = r.signature
            line = _Line(
                r.seq,
                r.subject,
                event=msgspec.Raw(r.data),
                signer=sig.signer if sig else None,
                sig=sig.sig if sig else None,
            )
        else:
            line = _Line(r.seq, r.subject, malformed=r.reason, data_b64=base64.b64encode(r.data).decode())
        out.write(_encoder.encode(line) + b"\n")
        n += 1
    for digest, data in (objects or {}).items():  # after the records: a reader of records meets them last
        out.write(_encoder.encode(_Object(digest, base64.b64encode(data).decode())) + b"\n")
    return n


def heads(records: Iterable[Record], subjects: Subjects) -> dict[str, Anchor]:
    """Each workflow's head among ``records`` (in stored order): last record's hash and sequence, and count."""
    last: dict[str, Record] = {}
    count: dict[str, int] = {}
    for r in records:
        parsed = subjects.parse_event(r.subject)
        if parsed is not None:
            last[parsed[0]] = r
            count[parsed[0]] = count.get(parsed[0], 0) + 1
    return {wf: Anchor(head=chain_hash(r.data), seq=r.seq, count=count[wf]) for wf, r in last.items()}


class FileLog:
    """A read-only event log over an export file, with the read side of :class:`JetStreamLog`.

    ``heads``: each workflow's head as the export recorded it (empty for older files).
    """

    def __init__(
        self,
        records: list[Record],
        *,
        stream: str,
        subjects: Subjects,
        path: Path | None = None,
        heads: dict[str, Anchor] | None = None,
        keyring: Keyring | None = None,
        objects: dict[str, bytes] | None = None,
    ):
        self.records = records
        self.objects = objects or {}
        self.subjects = subjects
        self.path = path
        self.heads = heads or {}
        self.keyring = keyring
        self._stream = stream

    @property
    def stream(self) -> str:
        return self._stream

    @classmethod
    def load(cls, path: Path) -> FileLog:
        """Read an export file; raise :class:`LogFileError` naming the line that is not valid."""
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise LogFileError(f"cannot read event file {str(path)!r}: {exc.strerror}") from None
        if not lines:
            raise LogFileError(f"{path}:1: empty file; expected a cadre export (see `cadre export`)")
        try:
            header = _header_decoder.decode(lines[0])
        except msgspec.DecodeError as exc:
            raise LogFileError(
                f"{path}:1: not a cadre export header ({exc}); expected "
                '{"cadre_export": 1, "stream": ..., "prefix": ...}'
            ) from None
        if header.cadre_export > FORMAT_VERSION:
            raise LogFileError(
                f"{path}:1: export format {header.cadre_export} is newer than this cadre reads "
                f"({FORMAT_VERSION}); upgrade cadre"
            )
        subjects = Subjects(header.prefix)
        records: list[Record] = []
        objects: dict[str, bytes] = {}
        for lineno, raw in enumerate(lines[1:], start=2):
            if not raw.strip():
                continue
            if raw.startswith(_OBJECT_LINE):
                digest, data = _parse_object(path, lineno, raw)
                objects[digest] = data
                continue
            records.append(_parse_line(path, lineno, raw, subjects))
        # Outputs stored by reference read from the file's own objects, each checked against its digest.
        records = [resolve_record(r, objects) for r in records]
        keyring = Keyring(header.keyring) if header.keyring is not None else None
        return cls(
            records,
            stream=header.stream,
            subjects=subjects,
            path=path,
            heads=header.heads,
            keyring=keyring,
            objects=objects,
        )

    def _of(self, workflow_id: str, after_seq: int) -> list[Record]:
        head = self.subjects.workflow(workflow_id)[:-1]  # "<prefix>.evt.<wf>."
        return [r for r in self.records if r.seq > after_seq and r.subject.startswith(head)]

    async def read_records(self, workflow_id: str, *, after_seq: int = 0) -> list[Record]:
        return self._of(workflow_id, after_seq)

    async def read(self, workflow_id: str, *, after_seq: int = 0) -> list[StoredEvent]:
        return events_only(self._of(workflow_id, after_seq))

    async def last_seq(self, workflow_id: str) -> int:
        recs = self._of(workflow_id, 0)
        return recs[-1].seq if recs else 0

    async def workflows(self) -> list[str]:
        found = {p[0] for r in self.records if (p := self.subjects.parse_event(r.subject)) is not None}
        return sorted(found)

    async def object_bytes(self, digests: list[str]) -> dict[str, bytes]:
        return {d: self.objects[d] for d in digests if d in self.objects}


def _parse_object(path: Path, lineno: int, raw: bytes) -> tuple[str, bytes]:
    try:
        line = _object_decoder.decode(raw)
        return line.object, base64.b64decode(line.data_b64, validate=True)
    except (msgspec.DecodeError, binascii.Error) as exc:
        raise LogFileError(f"{path}:{lineno}: not an exported object: {exc}") from None


def _parse_line(path: Path, lineno: int, raw: bytes, subjects: Subjects) -> Record:
    try:
        line = _line_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise LogFileError(f"{path}:{lineno}: not an exported record: {exc}") from None
    if len(line.event):
        signature = {SIGNER_HEADER: line.signer or "", SIG_HEADER: line.sig or ""} if line.signer or line.sig else None
        return to_record(subjects, line.seq, line.subject, bytes(line.event), signature)
    if line.malformed is not None and line.data_b64 is not None:
        try:
            data = base64.b64decode(line.data_b64, validate=True)
        except binascii.Error:
            raise LogFileError(f"{path}:{lineno}: data_b64 is not valid base64") from None
        return Malformed(line.seq, line.subject, line.malformed, data)
    raise LogFileError(f"{path}:{lineno}: a record needs either 'event' or 'malformed' with 'data_b64'")
