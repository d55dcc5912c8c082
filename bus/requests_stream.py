"""The durable intake's JetStream parts: the requests stream and the pairing bucket.

``<stream>_REQUESTS`` captures ``<prefix>.requests``, so a request published while no intake runs
(or faster than the intake takes them) is kept, with or without a reply subject. It is created with
``no_ack``: a stream that captures a request's subject would otherwise answer the requester with its
own PubAck, before the intake's answer. Work-queue retention (a request is removed once the intake
acknowledges it), bounded (``max_msgs``, ``max_bytes``) with ``discard=new``: a full stream refuses
new requests rather than dropping stored ones.

``<stream>_INTAKE`` is a key-value bucket where the intake's consumer and its request/reply side meet
(``actors.intake_pairing``): one key per payload digest, written with compare-and-set by both.

Created by ``cadre auth bootstrap`` (or by the first process of a server without authorization), like
the event stream. Safe to run from many processes at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError

from cadre.bus.errors import StreamConfigError
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects

_EXISTS_WITH_OTHER_CONFIG = 10058


@dataclass(frozen=True, slots=True)
class IntakeSpec:
    """Names and bounds of the intake's stream and bucket (``Settings.intake()``)."""

    stream: str = "CADRE_EVENTS_REQUESTS"
    subject: str = "cadre.requests"
    bucket: str = "CADRE_EVENTS_INTAKE"
    durable: str = "cadre_intake"
    storage: str = "file"  # file | memory
    replicas: int = 1
    max_msgs: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    max_msg_size: int = 1024 * 1024
    pairing_ttl: float = 600.0

    def stream_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            storage=api.StorageType.MEMORY if self.storage == "memory" else api.StorageType.FILE,
            retention=api.RetentionPolicy.WORK_QUEUE,
            discard=api.DiscardPolicy.NEW,
            num_replicas=self.replicas,
            max_msgs=self.max_msgs,
            max_bytes=self.max_bytes,
            max_msg_size=self.max_msg_size,
            no_ack=True,  # the intake answers requesters, not the stream
        )

    def bucket_config(self) -> api.KeyValueConfig:
        return api.KeyValueConfig(
            bucket=self.bucket,
            history=1,
            ttl=self.pairing_ttl,
            storage=api.StorageType.MEMORY if self.storage == "memory" else api.StorageType.FILE,
            replicas=self.replicas,
            direct=True,
        )


@dataclass(frozen=True, slots=True)
class IntakeOptions:
    """How the intake takes requests (``Settings``: ``intake_*``)."""

    reply_wait: float = 3.0  # a requester is answered "overloaded" when its request is not taken by then
    concurrency: int = 64  # stored requests made into workflows at once
    ack_wait: float = 10.0  # a stored request taken by an intake that died is taken again after this
    max_waiting: int = 20_000  # requesters waiting at once; beyond, the wait is cut to a second
    poll: float = 1.0  # a waiting requester looks at its record at least this often


async def ensure_intake_streams(js: JetStreamContext, spec: IntakeSpec) -> None:
    """Create the requests stream and the pairing bucket, or bring them to ``spec``."""
    cfg = spec.stream_config()
    try:
        try:
            await js.add_stream(cfg)
        except BadRequestError as exc:
            if exc.err_code != _EXISTS_WITH_OTHER_CONFIG:
                raise
            await js.update_stream(cfg)
        try:
            await js.create_key_value(spec.bucket_config())
        except BadRequestError as exc:
            if exc.err_code != _EXISTS_WITH_OTHER_CONFIG:
                raise
            # Made with another TTL or storage: the pairing works the same on it; keep it as it is.
    except APIError as exc:
        raise StreamConfigError(
            f"could not create or update the intake's stream {spec.stream!r} or bucket {spec.bucket!r}: "
            f"{exc.description} (err_code {exc.err_code}); another stream may already capture {spec.subject!r}"
        ) from None


def intake_spec(events: StreamSpec, subjects: Subjects, **bounds: Any) -> IntakeSpec:
    """The intake's parts of a deployment, named after its event stream (``<stream>_REQUESTS``,
    ``<stream>_INTAKE``) and stored like it; ``bounds`` set ``max_msgs``, ``max_bytes``, ..."""
    return IntakeSpec(
        stream=f"{events.name}_REQUESTS",
        subject=subjects.requests,
        bucket=f"{events.name}_INTAKE",
        durable=f"{subjects.prefix.replace('.', '_')}_intake",
        storage=events.storage,
        replicas=events.replicas,
        **bounds,
    )
