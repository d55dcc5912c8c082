"""CPU of tracing per handler run and per tool call, off and on (no server needed).

    .venv/bin/python bench/traces.py [--n N]

A handler run is ``actors.tracing.handled`` around a handler that appends nothing but reads the
outgoing trace headers (as an append does), on an input whose headers carry a ``traceparent``;
a tool call is ``TracedAnswers.run_tool`` of an instant tool against ``LiveAnswers.run_tool``.
Off: tracing not enabled (the runtime's path when no collector is configured). On: an SDK tracer
provider with a ``BatchSpanProcessor``, as an OTLP set-up has, into an exporter that counts the spans
and drops them (:func:`dropping`): what tracing costs short of encoding and sending the spans (the
processor's thread does that). Not the SDK's in-memory exporter: it keeps every span, which an OTLP
exporter does not. Process CPU time, every thread; the best of 5 rounds of N. One JSON object on
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from cadre.actors import tracing
from cadre.actors.answers import LiveAnswers
from cadre.actors.clock import utc_now
from cadre.actors.context import Outside
from cadre.bus import trace_headers
from cadre.bus.events import make_event
from cadre.bus.request import parse_request
from cadre.store.records import StoredEvent

HEADERS = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "Nats-Msg-Id": "x"}


class Dropped(SpanExporter):
    """Counts the spans it is given and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def dropping() -> tuple[TracerProvider, Dropped]:
    """Tracing on, spans batched (as with OTLP) to an exporter that drops them."""
    exporter = Dropped()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing.enable(provider)
    return provider, exporter


class Instant:
    async def run(self, tool: str, inputs: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        return inputs


async def best_us(n: int, one: Callable[[], Awaitable[object]]) -> float:
    rounds = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            await one()
        rounds.append((time.process_time() - started) / n * 1e6)
    return round(min(rounds), 2)


async def main(n: int) -> dict[str, Any]:
    env = make_event(parse_request(b'{"request": "x"}'), workflow_id="wf-1", actor="intake", at=utc_now())
    rec = StoredEvent(seq=7, subject="cadre.evt.wf-1.workflow_requested", event=env, data=b"{}")
    outside = Outside(tools=Instant())

    async def handler() -> int:
        trace_headers.outgoing()
        return 1

    async def run() -> object:
        return await tracing.handled(handler(), "planner", rec, HEADERS)

    plain = LiveAnswers(outside)
    off = {
        "handler_run_us": await best_us(n, run),
        "tool_call_us": await best_us(n, lambda: plain.run_tool("t", {}, "k")),
    }
    provider, exporter = dropping()
    traced = tracing.answers_for(outside)
    on = {
        "handler_run_us": await best_us(n, run),
        "tool_call_us": await best_us(n, lambda: traced.run_tool("t", {}, "k")),
    }
    provider.force_flush()
    spans = exporter.spans
    tracing.disable()
    provider.shutdown()
    return {"python": platform.python_version(), "n": n, "off": off, "on": on, "spans_exported": spans}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="CPU of tracing per handler run and tool call, off and on")
    ap.add_argument("--n", type=int, default=20_000, help="calls per round")
    print(json.dumps(asyncio.run(main(ap.parse_args().n))))
