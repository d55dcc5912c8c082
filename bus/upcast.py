"""Upcasters: old versions of an event's payload, read as the current version of its type.

An upcaster is a small pure function over a payload's JSON object, registered for the
version it reads::

    @upcaster("handler_failed", 1)
    def handler_failed_v1(data: dict[str, Any]) -> dict[str, Any]: ...   # v1 payload -> v2 payload

The codec (:func:`bus.codec.decode`) calls :func:`upcast` when an event's ``v`` is older than
:data:`bus.events.VERSIONS` of its type, then decodes the result with the current type, so
old logs read as current types and nothing else in cadre knows about old versions. A version
step with no registered function changed only the envelope (v1 -> v2 added ``prev`` and
``basis``, which decode to their defaults): the payload passes unchanged.

Rules: an upcaster never drops information it cannot rebuild, takes and returns plain JSON
values, and is never edited once released (a later change is a new version with a new
function). Stored bytes are never rewritten: the integrity chain covers them as written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cadre.bus.errors import CadreError
from cadre.bus.events import VERSIONS

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""``(event type, version it reads) -> function`` giving the payload of the next version."""


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``fn`` as the step from ``from_version`` to ``from_version + 1`` of ``event_type``."""
    if event_type not in VERSIONS:
        raise ValueError(f"no event type {event_type!r}; known: {', '.join(sorted(VERSIONS))}")
    if not 1 <= from_version < VERSIONS[event_type]:
        raise ValueError(
            f"{event_type} is at version {VERSIONS[event_type]}; an upcaster reads a version from 1 "
            f"to {VERSIONS[event_type] - 1}, not {from_version}"
        )

    def register(fn: Upcaster) -> Upcaster:
        key = (event_type, from_version)
        if key in UPCASTERS:
            raise ValueError(f"an upcaster for {event_type} v{from_version} is already registered")
        UPCASTERS[key] = fn
        return fn

    return register


def upcast(event_type: str, version: int, data: Payload) -> Payload:
    """``data`` (a payload of ``event_type`` at ``version``) as the type's current version."""
    for v in range(version, VERSIONS.get(event_type, 1)):
        step = UPCASTERS.get((event_type, v))
        if step is not None:
            data = step(data)
    return data


# -- the upcasters ----------------------------------------------------------------------------


def _cadre_codes() -> dict[str, str]:
    """Class name -> wire code of every cadre error (what v1 dead letters named by class)."""
    codes: dict[str, str] = {}
    pending: list[type[CadreError]] = [CadreError]
    while pending:
        cls = pending.pop()
        codes.setdefault(cls.__name__, cls.code)
        pending.extend(cls.__subclasses__())
    return codes


@upcaster("handler_failed", 1)
def handler_failed_v1(data: Payload) -> Payload:
    """v1 put the Python exception's class name in ``error.code`` (``"RuntimeError"``), except
    for an undecodable input (``"malformed_event"``). v2 splits the two meanings: ``error.code``
    is a stable code (a cadre error's own code, else ``handler_error``) and ``exception`` the
    class name."""
    error = data.get("error")
    if not isinstance(error, dict) or "exception" in data:
        return data
    code = error.get("code")
    if code == "malformed_event" or not isinstance(code, str):
        return data
    return {**data, "error": {**error, "code": _cadre_codes().get(code, "handler_error")}, "exception": code}


def effect_v2(effect: Payload) -> Payload:
    """One effect as written before v3 (``{kind, key, value, error, ms}``, the answer in an
    untyped ``value``), as its typed form (:mod:`bus.effects`). An effect already in the typed
    form (it has no ``key``) passes unchanged."""
    if "key" not in effect:
        return effect
    kind = effect.get("kind")
    key = str(effect["key"])
    value = effect.get("value")
    fields: Payload = value if isinstance(value, dict) else {}
    base: Payload = {"kind": kind, "error": effect.get("error"), "ms": effect.get("ms", 0.0)}
    call, _, rest = key.partition(":")
    match kind:
        case "tool":
            tool, _, inputs = key.rpartition(":")
            if effect.get("error") is None:
                return {**base, "tool": tool, "inputs": inputs, "output": value}
            retryable = bool(fields.get("retryable", False))
            return {**base, "tool": tool, "inputs": inputs, "retryable": retryable, "refused": fields.get("output")}
        case "library":
            return {**base, "request": key, "hit": value}
        case "budget":
            decision = {k: v for k, v in fields.items() if k != "consultation"}
            return {**base, "call": call, "cache_key": rest, "decision": decision, "asked": fields.get("consultation")}
        case "llm":
            if fields.get("outcome") == "no_provider":
                return {**base, "call": call, "ask": rest, "outcome": "no_provider"}
            if fields.get("cached"):
                return {**base, "call": call, "ask": rest, "outcome": "cached"}
            if "response" in fields:
                return {**base, "call": call, "ask": rest, "outcome": "answered", "response": fields["response"]}
            failure = fields.get("error")
            usage = fields.get("usage")
            return {**base, "call": call, "ask": rest, "outcome": "failed", "failure": failure, "usage": usage}
        case "settle":
            cost = fields.get("cost_usd") or 0.0
            acknowledged = bool(fields.get("acknowledged", False))
            return {**base, "call": call, "reservation_id": rest, "cost_usd": cost, "acknowledged": acknowledged}
    return effect  # an unknown kind: decoding names it


@upcaster("effects_recorded", 2)
def effects_recorded_v2(data: Payload) -> Payload:
    """v3 typed the effects (:func:`effect_v2`)."""
    effects = data.get("effects")
    if not isinstance(effects, list):
        return data
    return {**data, "effects": [effect_v2(e) if isinstance(e, dict) else e for e in effects]}
