"""OpenTelemetry trace context on NATS messages: the W3C ``traceparent`` (and ``tracestate``) headers.

An event appended while a span is current carries that span's context in its message headers, so
whoever handles the event continues the trace (``actors.tracing``). The headers are observation,
not state: they are not part of the event's payload, its signature (which covers subject, id and
payload: ``bus.signing``) or its chain hash, and nothing a handler decides on reads them.

Off by default: :func:`outgoing` then adds nothing and :func:`incoming` reads nothing, so a
process without tracing writes exactly the messages it wrote before. The propagators are
OpenTelemetry's global ones (``OTEL_PROPAGATORS``, by default W3C trace context and baggage).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.context import Context

TRACEPARENT: Final = "traceparent"

_NONE: Final[dict[str, str]] = {}
_on = False


def switch(on: bool) -> None:
    """Carry trace context on the messages this process writes and reads (``actors.tracing`` turns
    it on when it is configured, and off again)."""
    global _on
    _on = on


def active() -> bool:
    return _on


def outgoing() -> dict[str, str]:
    """The headers that carry the current span's context; none when tracing is off or no span is
    current. The result is the caller's to merge, never to change."""
    if not _on:
        return _NONE
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def incoming(headers: Mapping[str, str] | None) -> Context | None:
    """The remote span context a message's headers carry, as a parent for the span that handles it;
    None when tracing is off or the headers hold no valid ``traceparent``."""
    if not _on or not headers or TRACEPARENT not in headers:
        return None
    ctx = propagate.extract(dict(headers))
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None
