"""The inference cache: validated LLM outputs in a JetStream KV bucket, keyed by the callers'
``cache_key`` (lowercase hex digests, used as KV keys as given), one version per key, each
entry living ``ttl_s`` seconds.

A consultation that passes the gate is looked up (a hit is answered ``cached`` and costs
nothing); a settlement with ``ok``, ``cache_key`` and ``cache_value`` stores the value before
its answer is sent, so the caller's next consultation finds it. The cache is an optimisation:
a failed look-up decides without it and a failed write leaves the settlement standing (both
logged).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, KeyNotFoundError
from nats.js.kv import KeyValue

from cadre.bus.stream import StreamSpec

log = logging.getLogger("cadre.budget")

_EXISTS_WITH_OTHER_CONFIG: Final = 10058

_encode = msgspec.json.Encoder().encode
_json_object = msgspec.json.Decoder(dict[str, Any])


class InferenceCache:
    """The cache bucket, opened by :meth:`open`."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, ttl_s: float, like: StreamSpec) -> InferenceCache:
        """Create ``bucket`` (storage and replicas as ``like``), or use it as it is when it exists
        with another configuration (logged)."""
        config = api.KeyValueConfig(
            bucket=bucket,
            history=1,
            ttl=ttl_s,
            storage=api.StorageType.MEMORY if like.storage == "memory" else api.StorageType.FILE,
            replicas=like.replicas,
            direct=True,
        )
        try:
            return cls(await js.create_key_value(config))
        except BadRequestError as exc:
            if exc.err_code != _EXISTS_WITH_OTHER_CONFIG:
                raise
            log.warning("budget: inference cache %s exists with another configuration; using it as it is", bucket)
            return cls(await js.key_value(bucket))

    async def get(self, key: str) -> dict[str, Any] | None:
        """The output stored under ``key``; None when there is none, or the look-up failed (logged)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        except Exception as exc:  # the cache is an optimisation: decide without it
            log.warning("budget: inference cache look-up of %s failed: %r", key, exc)
            return None
        if not entry.value:
            return None
        try:
            return _json_object.decode(entry.value)
        except msgspec.DecodeError as exc:
            log.warning("budget: inference cache entry %s is not a JSON object: %s", key, exc)
            return None

    async def put(self, key: str, value: dict[str, Any] | None) -> None:
        """Store ``value`` under ``key``; a failure is logged (the settlement stands)."""
        try:
            await self._kv.put(key, _encode(value))
        except Exception as exc:  # the cache is an optimisation: the settlement stands
            log.warning("budget: could not cache %s: %r", key, exc)
