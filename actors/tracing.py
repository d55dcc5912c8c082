"""OpenTelemetry traces of workflows: a span per request taken, handler run, tool call and model call.

Off unless configured (:func:`configure` at start-up, from the settings: an OTLP collector named by
the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
``CADRE_TRACES=otlp``), or enabled with a tracer provider of the caller's (:func:`enable`: tests,
benchmarks). Off, nothing here runs: the runtime awaits its handler as it is, the answers are the
plain :class:`~actors.answers.LiveAnswers`, and no message gets a header.

On, trace context travels with the events (``bus.trace_headers``):

* the intake takes a stored request in a span that continues the requester's trace (a
  ``traceparent`` header on the request: the requests stream keeps message headers), or starts a
  new one; ``workflow_requested`` carries that span's context;
* each handler run is a span (``<kind> <event type>``, a consumer span) whose parent is the context
  its input event carries; every event the handler appends carries the run's context, so the next
  actor's run is its child, and so on through the workflow;
* an input without trace headers (appended by a service that traces nothing, or before tracing was
  on) continues the workflow's trace as this process last saw it (a bounded map of workflow ids), or
  starts one: one trace per workflow;
* a tool call is a span ``execute_tool <tool>``; a model call is a client span ``chat <model>`` with
  the GenAI semantic conventions (``gen_ai.provider.name`` and the older ``gen_ai.system``,
  ``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` / ``output_tokens``, ...) and what it cost
  as ``cadre.cost_usd`` once the budget settled it.

Trace context is observation, not state: handlers never see it, no event's payload holds it and
signatures do not cover it. A replay asks :class:`~actors.answers.RecordedAnswers` and runs no
runtime: it emits no spans.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context as TraceContext
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, Tracer, TracerProvider

from cadre.actors.answers import LiveAnswers
from cadre.actors.context import Outside
from cadre.actors.inference import LLM
from cadre.bus import trace_headers
from cadre.bus.effects import CallSettled, ModelCalled, ToolCalled
from cadre.bus.errors import CadreError
from cadre.bus.ledger import Decision, Settlement
from cadre.planner.providers.base import LLMRequest
from cadre.store.records import StoredEvent

__all__ = [
    "GEN_AI",
    "TracedAnswers",
    "TracesUnavailable",
    "answers_for",
    "configure",
    "disable",
    "enable",
    "enabled",
    "handled",
    "taken",
]

T = TypeVar("T")
log = logging.getLogger("cadre.tracing")

Mode = Literal["auto", "otlp", "off"]


class GEN_AI:
    """GenAI semantic-convention attribute names (our own constants: the incubating semconv
    package marks every ``gen_ai.*`` constant deprecated)."""

    OPERATION: Final = "gen_ai.operation.name"
    PROVIDER: Final = "gen_ai.provider.name"
    SYSTEM: Final = "gen_ai.system"  # the older name of the provider, still read by many back ends
    REQUEST_MODEL: Final = "gen_ai.request.model"
    REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
    REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
    RESPONSE_MODEL: Final = "gen_ai.response.model"
    INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
    OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
    CACHE_READ_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
    CACHE_CREATION_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
    TOOL_NAME: Final = "gen_ai.tool.name"


COST_USD: Final = "cadre.cost_usd"
_WORKFLOWS_KEPT: Final = 10_000


class TracesUnavailable(CadreError):
    """Traces were asked for but the OpenTelemetry SDK or OTLP exporter is not installed."""

    code = "traces_unavailable"


@dataclass
class _Tracing:
    tracer: Tracer
    # The span context each workflow's trace continues from when an input carries none: the first
    # this process saw of it (the intake's span, or a handler run that started the trace).
    workflows: OrderedDict[str, SpanContext] = field(default_factory=OrderedDict)

    def parent(self, workflow_id: str, headers: Mapping[str, str] | None) -> TraceContext | None:
        ctx = trace_headers.incoming(headers)
        if ctx is not None:
            self.remember(workflow_id, trace.get_current_span(ctx).get_span_context())
            return ctx
        known = self.workflows.get(workflow_id)
        return trace.set_span_in_context(trace.NonRecordingSpan(known)) if known is not None else None

    def remember(self, workflow_id: str, span: SpanContext) -> None:
        if workflow_id in self.workflows:
            return
        self.workflows[workflow_id] = span
        if len(self.workflows) > _WORKFLOWS_KEPT:
            self.workflows.popitem(last=False)


_state: _Tracing | None = None


def enabled() -> bool:
    return _state is not None


def enable(provider: TracerProvider) -> None:
    """Trace with ``provider``'s tracer from now on (the global provider is left as it is)."""
    global _state
    _state = _Tracing(provider.get_tracer("cadre"))
    trace_headers.switch(True)


def disable() -> None:
    global _state
    _state = None
    trace_headers.switch(False)


def configure(mode: Mode, endpoint: str | None) -> bool:
    """At a process's start: export spans by OTLP over HTTP when ``mode`` is ``otlp``, or ``auto``
    with a collector ``endpoint`` (``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``); whether traces are on.

    The exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables itself (endpoint, headers,
    timeout) and the resource ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (service name
    ``cadre`` by default). The SDK is imported only here: ``pip install 'cadre-workflows[otel]'``;
    without it ``otlp`` raises :class:`TracesUnavailable` and ``auto`` logs a warning and runs untraced.
    Tracing already enabled (a test's provider) is kept as it is.
    """
    if _state is not None:
        return True
    if mode == "off" or (mode == "auto" and not endpoint):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        if mode == "auto":  # an endpoint set for other programs: cadre runs on, untraced, and says why
            log.warning(
                "OTLP endpoint %s is set but %s is not installed: no traces (pip install 'cadre-workflows[otel]')",
                endpoint,
                exc.name,
            )
            return False
        raise TracesUnavailable(
            f"traces are configured (CADRE_TRACES={mode}) but {exc.name} is not installed: "
            "pip install 'cadre-workflows[otel]', or set CADRE_TRACES=off"
        ) from None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "cadre"}))
    provider = SdkTracerProvider(resource=resource)  # shuts down (flushing its spans) at exit
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    enable(provider)
    return True


# -- the intake and the handler runs --------------------------------------------------------------


def taken(
    work: Awaitable[dict[str, Any]], headers: Mapping[str, str] | None, seq: int | None
) -> Awaitable[dict[str, Any]]:
    """``work`` (the intake making stored request ``seq`` a workflow, or a request taken directly:
    ``cadre run``; its answer) in a span under the requester's trace, when tracing is on; else
    ``work`` itself."""
    if _state is None:
        return work
    return _taken(_state, work, headers, seq)


async def _taken(
    state: _Tracing, work: Awaitable[dict[str, Any]], headers: Mapping[str, str] | None, seq: int | None
) -> dict[str, Any]:
    parent = trace_headers.incoming(headers)
    attributes: dict[str, str | int] = {"messaging.system": "nats", "messaging.operation.type": "process"}
    if seq is not None:
        attributes["cadre.request.seq"] = seq
    with state.tracer.start_as_current_span(
        "intake request", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        answer = await work
        wf = answer.get("workflow_id")
        if isinstance(wf, str):
            span.set_attribute("cadre.workflow_id", wf)
            if answer.get("existing"):
                span.set_attribute("cadre.request.existing", True)
            else:
                state.remember(wf, span.get_span_context())
        elif isinstance(error := answer.get("error"), dict):
            span.set_status(Status(StatusCode.ERROR, str(error.get("message", ""))[:200]))
            span.set_attribute("error.type", str(error.get("code", "invalid_request")))
        return answer


def handled(
    work: Awaitable[T], kind: str, rec: StoredEvent, headers: Mapping[str, str] | None, pool: str | None = None
) -> Awaitable[T]:
    """``work`` (the run of ``kind``'s handler on ``rec``, and the storing of its outputs) in a span
    continuing the trace the input carries, when tracing is on; else ``work`` itself. ``pool``: the
    spec's own consumer (an agent pool, the planner's children relay), named in the span so two
    specs of one kind handling the same event give two spans told apart."""
    if _state is None:
        return work
    return _handled(_state, work, kind, rec, headers, pool)


async def _handled(
    state: _Tracing,
    work: Awaitable[T],
    kind: str,
    rec: StoredEvent,
    headers: Mapping[str, str] | None,
    pool: str | None,
) -> T:
    event = rec.event
    parent = state.parent(event.workflow_id, headers)
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": rec.subject,
        "cadre.actor.kind": kind,
        "cadre.workflow_id": event.workflow_id,
        "cadre.event.id": event.id,
        "cadre.event.type": event.type,
        "cadre.event.seq": rec.seq,
    }
    if pool is not None:
        attributes["cadre.actor.pool"] = pool
    pending: list[_ModelSpan] = []
    token = _model_spans.set(pending)
    try:
        with state.tracer.start_as_current_span(
            f"{kind} {event.type}" if pool is None else f"{kind}[{pool}] {event.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            if parent is None:
                state.remember(event.workflow_id, span.get_span_context())
            try:
                return await work
            finally:
                for m in pending:  # model calls no settlement followed (denied later, no budget, an error)
                    m.span.end(end_time=m.ended)
    finally:
        _model_spans.reset(token)


# -- tool and model calls ---------------------------------------------------------------------------


@dataclass
class _ModelSpan:
    call: str
    span: Span
    ended: int  # when the call returned (ns): the span ends then, after the settlement names its cost


_model_spans: ContextVar[list[_ModelSpan] | None] = ContextVar("cadre_model_spans", default=None)


def answers_for(outside: Outside) -> LiveAnswers:
    """The live answers of an actor system: traced ones when tracing is on."""
    return TracedAnswers(outside, _state.tracer) if _state is not None else LiveAnswers(outside)


class TracedAnswers(LiveAnswers):
    """Live answers whose tool and model calls are spans (children of the current handler run)."""

    def __init__(self, outside: Outside, tracer: Tracer) -> None:
        super().__init__(outside)
        self.tracer = tracer

    async def run_tool(
        self, tool: str, inputs: dict[str, Any], idempotency_key: str, compensable: bool = False
    ) -> ToolCalled:
        attributes = {GEN_AI.OPERATION: "execute_tool", GEN_AI.TOOL_NAME: tool}
        with self.tracer.start_as_current_span(
            f"execute_tool {tool}", kind=SpanKind.INTERNAL, attributes=attributes
        ) as span:
            effect = await super().run_tool(tool, inputs, idempotency_key, compensable)
            span.set_attribute("cadre.tool.inputs", effect.inputs)
            if effect.error is not None:
                span.set_attribute("error.type", effect.error.code)
                span.set_status(Status(StatusCode.ERROR, effect.error.message[:200]))
            return effect

    async def call_model(self, llm: LLM, request: LLMRequest) -> ModelCalled:
        started = time.time_ns()
        effect = await super().call_model(llm, request)
        ended = time.time_ns()
        provider = llm.provider.name
        span = self.tracer.start_span(
            f"chat {request.model}",
            kind=SpanKind.CLIENT,
            start_time=started,
            attributes=model_attributes(provider, request, effect),
        )
        if effect.error is not None:
            span.set_status(Status(StatusCode.ERROR, effect.error.message[:200]))
        pending = _model_spans.get()
        if pending is None:
            span.end(end_time=ended)
        else:
            pending.append(_ModelSpan(request.kind, span, ended))
        return effect

    async def settle(self, call: str, decision: Decision, settlement: Settlement) -> CallSettled | None:
        settled = await super().settle(call, decision, settlement)
        pending = _model_spans.get()
        match = next((m for m in reversed(pending or []) if m.call == call), None)
        if match is not None and pending is not None:
            pending.remove(match)
            if settled is not None:
                match.span.set_attribute(COST_USD, settled.cost_usd)
            match.span.end(end_time=match.ended)
        return settled


def model_attributes(provider: str, request: LLMRequest, effect: ModelCalled) -> dict[str, str | int | float]:
    """The GenAI attributes of a model call (what was asked, what answered, the tokens billed)."""
    attributes: dict[str, str | int | float] = {
        GEN_AI.OPERATION: "chat",
        GEN_AI.PROVIDER: provider,
        GEN_AI.SYSTEM: provider,
        GEN_AI.REQUEST_MODEL: request.model,
        GEN_AI.REQUEST_MAX_TOKENS: request.max_output_tokens,
        GEN_AI.REQUEST_TEMPERATURE: request.temperature,
        "cadre.call": request.kind,
        "cadre.model.outcome": effect.outcome,
        "cadre.model.ask": effect.ask,
    }
    response = effect.response
    if response is not None:
        attributes[GEN_AI.RESPONSE_MODEL] = response.model
    usage = response.usage if response is not None else effect.usage
    if usage is not None:
        # The conventions count every input token (cached ones too) in input_tokens.
        attributes[GEN_AI.INPUT_TOKENS] = usage.total_input_tokens
        attributes[GEN_AI.OUTPUT_TOKENS] = usage.output_tokens
        attributes[GEN_AI.CACHE_READ_TOKENS] = usage.cache_read_tokens
        attributes[GEN_AI.CACHE_CREATION_TOKENS] = usage.cache_write_tokens
    if effect.failure is not None:
        attributes["error.type"] = effect.failure.code
    return attributes
