"""Large tool outputs, stored by reference: the event carries a digest, a JetStream object store the bytes.

A step's output travels twice in its event: as ``step_completed.output`` and as the ``output`` of the
``ToolCalled`` effect that produced it (or its ``refused`` output, for ``invalid_output``); the output
task's travels again as ``workflow_completed.result``; a step that reads it carries it resolved, as
``step_ready.resolved_inputs``. A value whose JSON is larger than the inline limit
is put in the object store under its digest (``sha256:<hex>`` of its JSON bytes, which is also the
object's name), and each of these places carries a reference instead of the value::

    {"cadre_object": "sha256:9f86…", "bytes": 1234567}

The substitution is the log's (``store.jetstream``): on append, before the event is encoded and signed,
a large output is replaced by its reference (:func:`outsized`); on every read, after decoding, the
reference is replaced by the object's value (:func:`resolved`), checked against the digest. So handlers,
folds, replay and the audit see outputs as they were, while the stored bytes, the integrity chain and the
signature cover the digest: an object swapped in the store no longer matches the signed digest, and the
event that names it reads as a malformed record (``object_mismatch``), which ``cadre audit --verify``
reports. An export file carries the objects its events name (``store.filelog``), so it reads, audits and
replays with no server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.object_store import ObjectStore

from cadre.bus.effects import ToolCalled
from cadre.bus.errors import StoreError
from cadre.bus.events import EffectsRecorded, Envelope, StepCompleted, StepReady, WorkflowCompleted
from cadre.store.records import Malformed, Record, StoredEvent

REF_KEY = "cadre_object"
_DIGEST_PREFIX = "sha256:"
_EXISTS_WITH_OTHER_CONFIG = 10058
_STREAM_NOT_FOUND = 10059
OBJECT_PROBLEMS = ("object_missing", "object_mismatch")  # the reasons of a record whose object does not hold


def digest_of(data: bytes) -> str:
    """The name an object is stored under: the SHA-256 of its bytes."""
    return _DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def reference_of(output: Any) -> str | None:
    """The digest an output refers to, when it is a reference (None: an output carried inline)."""
    if isinstance(output, dict) and len(output) == 2 and isinstance(ref := output.get(REF_KEY), str):
        return ref
    return None


def _out(output: Any, limit: int, objects: dict[str, bytes]) -> Any:
    if output is None or reference_of(output) is not None:
        return output
    data = msgspec.json.encode(output)
    if len(data) <= limit:
        return output
    digest = digest_of(data)
    objects[digest] = data
    return {REF_KEY: digest, "bytes": len(data)}


def outsized(env: Envelope, limit: int) -> tuple[Envelope, dict[str, bytes]]:
    """``env`` with every output larger than ``limit`` bytes of JSON replaced by its reference, and
    the objects to store first (by digest). Unchanged, and no objects, when every output is small."""
    objects: dict[str, bytes] = {}
    data = env.data
    if isinstance(data, StepCompleted) and data.output:
        data = msgspec.structs.replace(data, output=_out(data.output, limit, objects))
    elif isinstance(data, WorkflowCompleted) and data.result is not None:
        data = msgspec.structs.replace(data, result=_out(data.result, limit, objects))
    elif isinstance(data, StepReady) and data.resolved_inputs:
        data = msgspec.structs.replace(data, resolved_inputs=_out(data.resolved_inputs, limit, objects))
    elif isinstance(data, EffectsRecorded):
        data = msgspec.structs.replace(data, effects=_effects_out(data.effects, limit, objects))
    effects = _effects_out(env.effects, limit, objects)
    if not objects:
        return env, objects
    return msgspec.structs.replace(env, data=data, effects=effects), objects


def _effects_out(effects: tuple[Any, ...], limit: int, objects: dict[str, bytes]) -> tuple[Any, ...]:
    if not any(isinstance(f, ToolCalled) and (f.output or f.refused is not None) for f in effects):
        return effects
    return tuple(
        msgspec.structs.replace(f, output=_out(f.output, limit, objects), refused=_out(f.refused, limit, objects))
        if isinstance(f, ToolCalled)
        else f
        for f in effects
    )


def references(env: Envelope) -> list[str]:
    """The digests ``env`` refers to, in order, each once."""
    found: dict[str, None] = {}
    data = env.data
    outputs: list[Any] = []
    if isinstance(data, StepCompleted):
        outputs.append(data.output)
    elif isinstance(data, WorkflowCompleted):
        outputs.append(data.result)
    elif isinstance(data, StepReady):
        outputs.append(data.resolved_inputs)
    elif isinstance(data, EffectsRecorded):
        outputs += [v for f in data.effects if isinstance(f, ToolCalled) for v in (f.output, f.refused)]
    outputs += [v for f in env.effects if isinstance(f, ToolCalled) for v in (f.output, f.refused)]
    for o in outputs:
        if (ref := reference_of(o)) is not None:
            found[ref] = None
    return list(found)


class ObjectProblem(Exception):
    """An object an event refers to is missing, or its bytes do not match the digest."""

    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(f"{reason}: {digest}")
        self.digest = digest
        self.reason = reason


def _value(digest: str, objects: Mapping[str, bytes]) -> Any:
    data = objects.get(digest)
    if data is None:
        raise ObjectProblem(digest, "object_missing")
    if digest_of(data) != digest:
        raise ObjectProblem(digest, "object_mismatch")
    return msgspec.json.decode(data)  # the bytes the digest names: what was put


def _in(output: Any, objects: Mapping[str, bytes]) -> Any:
    ref = reference_of(output)
    return output if ref is None else _value(ref, objects)


def _effects_in(effects: tuple[Any, ...], objects: Mapping[str, bytes]) -> tuple[Any, ...]:
    return tuple(
        msgspec.structs.replace(f, output=_in(f.output, objects), refused=_in(f.refused, objects))
        if isinstance(f, ToolCalled)
        else f
        for f in effects
    )


def resolved(env: Envelope, objects: Mapping[str, bytes]) -> Envelope:
    """``env`` with each reference replaced by its object's value; :class:`ObjectProblem` when one is
    missing from ``objects`` or does not match its digest."""
    data = env.data
    if isinstance(data, StepCompleted):
        data = msgspec.structs.replace(data, output=_in(data.output, objects))
    elif isinstance(data, WorkflowCompleted):
        data = msgspec.structs.replace(data, result=_in(data.result, objects))
    elif isinstance(data, StepReady):
        data = msgspec.structs.replace(data, resolved_inputs=_in(data.resolved_inputs, objects))
    elif isinstance(data, EffectsRecorded):
        data = msgspec.structs.replace(data, effects=_effects_in(data.effects, objects))
    return msgspec.structs.replace(env, data=data, effects=_effects_in(env.effects, objects))


def resolve_record(rec: Record, objects: Mapping[str, bytes]) -> Record:
    """The record with its event's references resolved from ``objects``; a reference that cannot be
    makes the record :class:`Malformed` (its stored bytes kept), never an exception."""
    if not isinstance(rec, StoredEvent) or not references(rec.event):
        return rec
    try:
        return msgspec.structs.replace(rec, event=resolved(rec.event, objects))
    except ObjectProblem as exc:
        what = "is not in the object store" if exc.reason == "object_missing" else "does not match its digest"
        reason = f"{exc.reason}: the output object {exc.digest} of event {rec.event.id} {what}"
        return Malformed(rec.seq, rec.subject, reason, rec.data)


class OutputObjects:
    """The object store of large outputs (bucket ``bucket``, stream ``OBJ_<bucket>``; in the READERS
    account, its mirror of the same name), with a small memory of the objects this process put or read
    lately (``keep_bytes`` in all)."""

    def __init__(
        self, js: JetStreamContext, bucket: str, *, keep_bytes: int = 32 * 1024 * 1024, wait_missing_s: float = 0.0
    ) -> None:
        self.bucket = bucket
        self.stream = f"OBJ_{bucket}"
        self._js = js
        self._store = ObjectStore(js=js, name=bucket, stream=self.stream)
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._kept_bytes = 0
        self._keep_bytes = keep_bytes
        # A reader of a mirror (the READERS account's) may see an event before its object has been
        # mirrored: a missing object is looked for again until this many seconds have passed.
        self._wait_missing_s = wait_missing_s

    async def ensure(self, *, memory: bool = False, replicas: int = 1, max_age: float = 0.0) -> None:
        """Create the bucket (safe from many processes at once; an existing one is kept as it is).
        ``max_age``: the event stream's (0: kept for ever), so an object lasts as long as its events."""
        cfg = api.ObjectStoreConfig(
            bucket=self.bucket,
            description="cadre: tool outputs stored by reference, named by their digest",
            storage=api.StorageType.MEMORY if memory else api.StorageType.FILE,
            replicas=replicas,
            ttl=max_age if max_age > 0 else None,
        )
        try:
            await self._js.create_object_store(self.bucket, cfg)
        except BadRequestError as exc:
            if exc.err_code != _EXISTS_WITH_OTHER_CONFIG:
                raise

    def _keep(self, digest: str, data: bytes) -> None:
        if len(data) > self._keep_bytes or digest in self._kept:
            return
        self._kept[digest] = data
        self._kept_bytes += len(data)
        while self._kept_bytes > self._keep_bytes:
            _, old = self._kept.popitem(last=False)
            self._kept_bytes -= len(old)

    def _meta_subject(self, digest: str) -> str:
        return f"$O.{self.bucket}.M.{base64.urlsafe_b64encode(digest.encode()).decode()}"

    async def _info(self, digest: str, *, writing: bool = False) -> api.ObjectInfo | None:
        try:
            msg = await self._js.get_last_msg(self.stream, self._meta_subject(digest))
        except NotFoundError as exc:
            if writing and exc.err_code == _STREAM_NOT_FOUND:
                raise StoreError(
                    f"no object store {self.bucket!r} for outputs stored by reference: create it with "
                    "`cadre auth bootstrap` (the embedded server's start makes it)"
                ) from None
            return None  # no such object (or, for a reader, no store: the event reads as malformed)
        info = api.ObjectInfo.from_response(json.loads(msg.data or b"{}"))
        return None if info.deleted else info

    async def put(self, objects: Mapping[str, bytes]) -> None:
        """Store each object under its digest, unless it is there already (content-addressed)."""
        for digest, data in objects.items():
            if digest not in self._kept and await self._info(digest, writing=True) is None:
                await self._store.put(digest, data)
            self._keep(digest, data)

    async def get(self, digests: list[str]) -> dict[str, bytes]:
        """The objects found, by digest (a missing one is left out; the caller judges the bytes)."""
        out: dict[str, bytes] = {}
        for digest in digests:
            if (kept := self._kept.get(digest)) is not None:
                out[digest] = kept
                continue
            info = await self._info(digest)
            waited = 0.0
            while info is None and waited < self._wait_missing_s:
                await asyncio.sleep(0.05)
                waited += 0.05
                info = await self._info(digest)
            if info is None:
                continue
            out[digest] = data = await self._chunks(info)
            if digest_of(data) == digest:
                self._keep(digest, data)
        return out

    async def _chunks(self, info: api.ObjectInfo) -> bytes:
        parts: list[bytes] = []
        if not info.chunks:
            return b""
        sub = await self._js.subscribe(f"$O.{self.bucket}.C.{info.nuid}", stream=self.stream, ordered_consumer=True)
        try:
            for _ in range(info.chunks):
                msg = await sub.next_msg(timeout=5.0)
                parts.append(msg.data)
        finally:
            await sub.unsubscribe()
        return b"".join(parts)

    async def resolve(self, rec: Record) -> Record:
        """``rec`` with its references resolved from the store (see :func:`resolve_record`)."""
        if not isinstance(rec, StoredEvent):
            return rec
        refs = references(rec.event)
        if not refs:
            return rec
        return resolve_record(rec, await self.get(refs))
