"""The JetStream stream that holds every event: created or brought up to date at start-up.

Safe to run from many processes at once: creating a stream with the identical config is a
no-op for JetStream, and a config change is applied with an update. A cluster still electing
its leaders is waited for (:mod:`bus.retry`).

With ``partitions`` the stream stores each event with its workflow's partition in the subject
(:func:`bus.subjects.partition_transform`). A stream gets its partitions once: a spec without
partitions leaves an existing transform as it is (a reader, a process of another setting), and a
spec with another count is refused (:func:`partitions_of`, below), since the inputs stored so far
are routed by the count they were stored with.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError

from cadre.bus.errors import StreamConfigError
from cadre.bus.retry import RetryPolicy, is_transient, retrying
from cadre.bus.subjects import partition_transform, transform_partitions

_EXISTS_WITH_OTHER_CONFIG = 10058
_SUBJECTS_OVERLAP = 10065
_STORAGE_CHANGE = 10052


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """Settings of the event stream. Durations in seconds; 0 or -1 means unlimited."""

    name: str = "CADRE_EVENTS"
    subjects: str = "cadre.evt.>"
    storage: str = "file"  # file | memory
    replicas: int = 1
    duplicate_window: float = 120.0
    max_age: float = 0.0
    max_bytes: int = -1
    max_msgs: int = -1
    max_msg_size: int = 1024 * 1024
    partitions: int = 0  # the workflows' partitions stored in each subject (0: none)

    def config(self) -> api.StreamConfig:
        transform = None
        if self.partitions > 0:
            src, dest = partition_transform(self.subjects, self.partitions)
            transform = api.SubjectTransform(src=src, dest=dest)
        return api.StreamConfig(
            name=self.name,
            subjects=[self.subjects],
            storage=api.StorageType.MEMORY if self.storage == "memory" else api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            max_msg_size=self.max_msg_size,
            # Direct gets read the last event of a workflow cheaply; atomic batches store
            # several events of one workflow all or nothing.
            allow_direct=True,
            allow_atomic=True,
            subject_transform=transform,
        )


def partitions_of(config: api.StreamConfig) -> int:
    """The partitions a stream stores in its subjects (its subject transform; 0: none)."""
    transform = config.subject_transform
    return transform_partitions(transform.dest) if transform is not None else 0


def partitions_refused(stream: str, stored: int, wanted: int, setting: str = "CADRE_PARTITIONS") -> StreamConfigError:
    """The error of a process whose partitions differ from those the stream stores."""
    if stored == 0:
        return StreamConfigError(
            f"stream {stream!r} stores no partition in its subjects, but {setting}={wanted}: the stream gets its "
            f"partitions when it is created or brought up to date with {setting} set (any cadre process "
            "without authorization does it at start-up, else the admin's bootstrap: restart it with the setting)"
        )
    return StreamConfigError(
        f"stream {stream!r} stores its events in {stored} partitions (its subject transform), but "
        f"{setting}={wanted}: set {setting}={stored} in every process of this stream. The count cannot be "
        f"changed on a stream that has one (its stored inputs are routed by it); for another count, use a new "
        "stream (another subject prefix and stream name)"
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, retry: RetryPolicy | None = None) -> api.StreamInfo:
    """Create the event stream, or update it to ``spec``; raise :class:`StreamConfigError`.

    A transient error (a cluster electing its leader) is retried for ``retry.bound_s``, then raised as it is."""
    cfg = spec.config()

    async def create_or_update() -> api.StreamInfo:
        try:
            return await js.add_stream(cfg)
        except BadRequestError as exc:
            if exc.err_code != _EXISTS_WITH_OTHER_CONFIG:
                raise
            current = (await js.stream_info(spec.name)).config
            stored = partitions_of(current)
            if spec.partitions == 0:  # not this process's to change: keep what the stream has
                cfg.subject_transform = current.subject_transform
            elif stored not in (0, spec.partitions):
                raise partitions_refused(spec.name, stored, spec.partitions) from None
            return await js.update_stream(cfg)

    try:
        return await retrying(create_or_update, f"stream {spec.name} create", retry or RetryPolicy())
    except APIError as exc:
        if is_transient(exc):
            raise
        hint = {
            _SUBJECTS_OVERLAP: f"another stream already captures {spec.subjects!r}; delete it, or run "
            "cadre with another subject prefix",
            _STORAGE_CHANGE: f"stream {spec.name!r} exists with another storage type; JetStream cannot "
            "change it in place: delete the stream or keep its storage setting",
        }.get(exc.err_code or 0, "check the stream settings against the server's limits")
        raise StreamConfigError(
            f"could not create or update stream {spec.name!r}: {exc.description} (err_code {exc.err_code}); {hint}"
        ) from None
