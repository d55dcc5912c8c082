"""JSON codec of the envelope: fast (msgspec), strict about types, clear about errors.

Decoding is two steps: the envelope with its ``data`` kept raw, then ``data`` with the
decoder of the payload type the envelope names. An event written with an older version of
its type (``v``) goes through :func:`bus.upcast.upcast` on the way, so it decodes as the
current type. Errors name the JSON path that failed::

    DecodeError: invalid event: Expected `int`, got `str` (at $.data.revision)
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from cadre.bus.effects import Effect
from cadre.bus.errors import DecodeError
from cadre.bus.events import EVENT_TYPES, VERSIONS, Envelope, Event
from cadre.bus.upcast import effect_v2, upcast

_encoder = msgspec.json.Encoder()


class _WireEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str
    type: str
    workflow_id: str
    causation_id: str | None
    actor: str
    at: datetime
    v: int = 1
    prev: str = ""
    basis: int = 0
    data: msgspec.Raw
    effects: msgspec.Raw = msgspec.Raw(b"[]")


_envelope_decoder = msgspec.json.Decoder(_WireEnvelope)
_payload_decoders: dict[str, msgspec.json.Decoder[Event]] = {
    name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()
}
_effects_decoder = msgspec.json.Decoder(tuple[Effect, ...])
_any_decoder = msgspec.json.Decoder()
_NO_EFFECTS = (b"[]", b"")
_TYPED_EFFECTS = 3
"""The first version whose effects are typed (:mod:`bus.effects`)."""
_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)


def _error(what: str, exc: msgspec.DecodeError, prefix: str = "") -> DecodeError:
    """Turn msgspec's "Expected X, got Y - at `$.a.b`" into a DecodeError with a path."""
    m = _PATH.match(str(exc))
    assert m is not None  # the pattern matches every string
    path = m.group("path") or "$"
    if prefix:
        path = prefix + path[1:]
    return DecodeError(what, f"{m.group('msg')} (at {path})", path)


def encode(event: Envelope) -> bytes:
    """The event's wire bytes (JSON)."""
    if event.at.tzinfo is None:
        raise ValueError(f"event {event.id} has a naive timestamp; cadre records times in UTC")
    return _encoder.encode(event)


def decode(data: bytes | bytearray | memoryview) -> Envelope:
    """Decode one event; raise :class:`DecodeError` naming what and where when it is not valid."""
    try:
        wire = _envelope_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise _error("event", exc) from None
    payload_decoder = _payload_decoders.get(wire.type)
    if payload_decoder is None:
        raise DecodeError(
            "event",
            f"unknown event type {wire.type!r} (at $.type); known types: {', '.join(sorted(EVENT_TYPES))}",
            "$.type",
        )
    raw = wire.data if wire.v >= VERSIONS[wire.type] else _upcast(wire)
    try:
        payload = payload_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise _error("event", exc, prefix="$.data") from None
    return Envelope(
        id=wire.id,
        type=wire.type,
        workflow_id=wire.workflow_id,
        causation_id=wire.causation_id,
        actor=wire.actor,
        at=wire.at,
        v=wire.v,
        prev=wire.prev,
        basis=wire.basis,
        data=payload,
        effects=_effects(wire),
    )


def _effects(wire: _WireEnvelope) -> tuple[Effect, ...]:
    """The envelope's effects, typed; written before v3, through :func:`bus.upcast.effect_v2`."""
    raw = bytes(wire.effects)
    if raw in _NO_EFFECTS:
        return ()
    try:
        if wire.v >= _TYPED_EFFECTS:
            return _effects_decoder.decode(raw)
        old: Any = _any_decoder.decode(raw)
        if not isinstance(old, list):
            raise DecodeError("event", f"Expected `array`, got `{type(old).__name__}` (at $.effects)", "$.effects")
        return _effects_decoder.decode(_encoder.encode([effect_v2(e) if isinstance(e, dict) else e for e in old]))
    except msgspec.DecodeError as exc:
        raise _error("event", exc, prefix="$.effects") from None


def _upcast(wire: _WireEnvelope) -> bytes:
    """The payload of an event written with an older version of its type, as the current version."""
    try:
        obj: Any = _any_decoder.decode(wire.data)
    except msgspec.DecodeError as exc:
        raise _error("event", exc, prefix="$.data") from None
    if not isinstance(obj, dict):
        raise DecodeError("event", f"Expected `object`, got `{type(obj).__name__}` (at $.data)", "$.data")
    try:
        return _encoder.encode(upcast(wire.type, wire.v, obj))
    except Exception as exc:  # an upcaster meeting data it does not expect: the event is malformed
        raise DecodeError(
            "event", f"cannot upcast {wire.type} v{wire.v} to v{VERSIONS[wire.type]}: {exc!r} (at $.data)", "$.data"
        ) from None


def to_builtins(event: Envelope) -> dict[str, object]:
    """The event as plain JSON-ready Python values (for ``--json`` output)."""
    out = msgspec.to_builtins(event)
    assert isinstance(out, dict)
    return out
