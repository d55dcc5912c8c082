"""OpenTelemetry traces of workflows, with the SDK's in-memory exporter, against a real nats-server and a
real cadre: a client's ``traceparent`` reaches every span of its workflow (the intake, planning, each
step's handler, each tool call, the model consultation with its GenAI attributes); without one each
workflow is a trace of its own; with tracing off nothing is traced and no message gets a header."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cadre import commands
from cadre.actors import tracing
from cadre.bus import trace_headers
from cadre.replay_cli import replayer_for
from cadre.settings import Settings
from cadre.store.records import StoredEvent
from tests.conftest import until
from tests.scenarios import MODEL_PLAN, NOVEL_REQUEST
from tests.system_harness import Harness, cadre_running, settings_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"

PLAN: dict[str, Any] = {
    "nodes": [
        {"id": "count", "tool": "sql.query", "inputs": {"sql": "SELECT COUNT(*) AS customers FROM customers"}},
        {"id": "say", "depends_on": ["count"], "tool": "test.echo", "inputs": {"value": "counted"}},
    ],
    "output": "say",
    "rationale": "count, then say it",
}
REQUEST = "how many customers are in the shop database"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # spans visible as soon as they end
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


def scripted(nats_url: str, tmp_path: Path) -> Settings:
    script = tmp_path / "replies.json"
    script.write_text(json.dumps({"plan": [{"output": PLAN, "tokens": {"input": 120, "output": 30}}]}))
    return settings_for(nats_url, tmp_path, llm_provider="scripted", llm_script=str(script))


async def submit(cadre: Harness, headers: dict[str, str] | None = None) -> str:
    resp = await cadre.bus.nc.request(
        cadre.settings.subjects.requests, json.dumps({"request": REQUEST}).encode(), timeout=5, headers=headers
    )
    reply: dict[str, Any] = json.loads(resp.data)
    assert "workflow_id" in reply, reply
    return str(reply["workflow_id"])


def of_workflow(exporter: InMemorySpanExporter, wf: str) -> list[ReadableSpan]:
    runs = [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("cadre.workflow_id") == wf]
    ids = {s.context.span_id for s in runs if s.context is not None}
    children = [s for s in exporter.get_finished_spans() if s.parent is not None and s.parent.span_id in ids]
    return runs + [s for s in children if s not in runs]


async def settled(exporter: InMemorySpanExporter, cadre: Harness, wf: str) -> list[ReadableSpan]:
    """The workflow's spans once the run that appended each of its events has ended (the last
    appends workflow_completed as it stores it; its span ends just after)."""
    appenders = set()
    for e in await cadre.events(wf):
        headers = (await cadre.bus.log.raw_message(e.seq))[2]
        appenders.add(int(headers["traceparent"].split("-")[2], 16))
    async with asyncio.timeout(10):
        ended = {s.context.span_id for s in of_workflow(exporter, wf) if s.context is not None}
        while not appenders <= ended:
            await asyncio.sleep(0.05)
            ended = {s.context.span_id for s in of_workflow(exporter, wf) if s.context is not None}
    return of_workflow(exporter, wf)


def trace_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def named(found: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in found if s.name == name]


async def test_a_clients_traceparent_reaches_every_span_of_its_workflow(
    nats_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    settings = scripted(nats_url, tmp_path)
    async with cadre_running(settings) as cadre:
        wf = await submit(cadre, {"traceparent": TRACEPARENT})
        state = await cadre.wait(wf)
        assert state.status == "completed", state.failure
        found = await settled(spans, cadre, wf)
        stored = await cadre.events(wf)
        raw = [await cadre.bus.log.raw_message(e.seq) for e in stored]
        records = await cadre.bus.log.read_records(wf)

    assert {trace_hex(s) for s in found} == {TRACE_ID}
    [intake] = named(found, "intake request")
    assert intake.parent is not None
    assert format(intake.parent.span_id, "016x") == CLIENT_SPAN
    assert intake.parent.is_remote
    assert intake.kind == SpanKind.CONSUMER
    by_id = {s.context.span_id: s for s in found if s.context is not None}

    # Planning: the planner's run on the request is the intake's child, the model call the planner's.
    [planning] = named(found, "planner workflow_requested")
    assert planning.parent is not None
    assert by_id[planning.parent.span_id] is intake
    [chat] = [s for s in found if s.name.startswith("chat ")]
    assert chat.parent is not None
    assert by_id[chat.parent.span_id] is planning
    attrs = dict(chat.attributes or {})
    assert chat.kind == SpanKind.CLIENT
    assert (attrs["gen_ai.provider.name"], attrs["gen_ai.system"], attrs["gen_ai.operation.name"]) == (
        "scripted",
        "scripted",
        "chat",
    )
    assert chat.name == f"chat {attrs['gen_ai.request.model']}"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (120, 30)
    assert attrs["cadre.cost_usd"] == 0  # a local model, priced at 0: settled all the same
    assert attrs["cadre.call"] == "plan"
    assert chat.start_time is not None
    assert chat.end_time is not None
    assert chat.end_time >= chat.start_time

    # Each step's handler run, and its tool call as the run's child.
    for tool in ("sql.query", "test.echo"):
        [call] = named(found, f"execute_tool {tool}")
        assert (call.attributes or {})["gen_ai.tool.name"] == tool
        assert call.parent is not None
        run = by_id[call.parent.span_id]
        assert (run.attributes or {})["cadre.actor.kind"] == "agent"
    kinds = {(s.attributes or {}).get("cadre.actor.kind") for s in found}
    assert {"planner", "validator", "agent"} <= kinds

    # Every handler run continues from the event it handled: its parent is the run that appended it.
    runs = [s for s in found if (s.attributes or {}).get("cadre.event.type")]
    appended_by = {}
    for e, (_, _, headers) in zip(stored, raw, strict=True):
        assert headers["traceparent"].split("-")[1] == TRACE_ID
        appended_by[e.seq] = int(headers["traceparent"].split("-")[2], 16)
    for run in runs:
        seq = int((run.attributes or {})["cadre.event.seq"])
        assert run.parent is not None, run.name
        assert run.parent.span_id == appended_by[seq], run.name

    # Observation, not state: the trace headers are outside the signed payload; the record replays.
    assert all(isinstance(r, StoredEvent) and r.signature is not None for r in records)
    assert not [e.event.type for e in stored if TRACE_ID.encode() in e.data or CLIENT_SPAN.encode() in e.data]
    before = len(spans.get_finished_spans())
    result = replayer_for(settings).replay(records)
    assert result.ok, "\n".join(result.lines())
    assert len(spans.get_finished_spans()) == before  # a replay emits no spans


async def test_without_a_traceparent_each_workflow_is_a_trace_of_its_own(
    nats_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    settings = scripted(nats_url, tmp_path)
    async with cadre_running(settings) as cadre:
        first, second = await submit(cadre), await submit(cadre)
        traces = []
        for wf in (first, second):
            assert (await cadre.wait(wf)).status == "completed"
            found = await settled(spans, cadre, wf)
            [intake] = named(found, "intake request")
            assert intake.parent is None  # the intake started the trace
            assert len({trace_hex(s) for s in found}) == 1
            traces.append(trace_hex(intake))
    assert traces[0] != traces[1]


async def test_an_event_appended_outside_any_span_continues_its_workflows_trace(
    nats_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """A cancel (appended by the approvals service, which traces nothing) carries no context: the
    planner's run on it continues the trace of the workflow it cancels."""
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    waits = {"plan": {"nodes": [{"id": "save", "tool": "fs.write", "inputs": {"path": "a.txt", "content": "ok"}}]}}
    async with cadre_running(settings) as cadre:
        resp = await cadre.bus.nc.request(
            settings.subjects.requests, json.dumps(waits).encode(), timeout=5, headers={"traceparent": TRACEPARENT}
        )
        wf = json.loads(resp.data)["workflow_id"]
        await cadre.wait(wf, until="approval_requested")
        assert await commands.cancel(settings, wf, reason="not today") == 0
        assert (await cadre.wait(wf, within=5)).status == "cancelled"
        stored = {e.event.type: e.seq for e in await cadre.events(wf)}
        cancel_headers = (await cadre.bus.log.raw_message(stored["cancel_requested"]))[2]
        await until(lambda: bool(named(of_workflow(spans, wf), "planner cancel_requested")), 5)
        found = of_workflow(spans, wf)
    assert "traceparent" not in cancel_headers
    [run] = named(found, "planner cancel_requested")
    [intake] = named(found, "intake request")
    assert run.parent is not None
    assert intake.context is not None
    assert run.parent.span_id == intake.context.span_id  # the trace as this process first saw it
    assert {trace_hex(s) for s in found} == {TRACE_ID}


async def test_tracing_off_no_spans_and_no_headers(nats_url: str, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # made, never enabled: tracing stays off
    assert not tracing.enabled()
    assert not trace_headers.active()
    async with cadre_running(settings_for(nats_url, tmp_path)) as cadre:
        assert cadre.system is not None
        assert type(cadre.system.answers) is not tracing.TracedAnswers
        wf = await submit(cadre, {"traceparent": TRACEPARENT})
        assert (await cadre.wait(wf)).status == "completed"
        stored = await cadre.events(wf)
        headers = [(await cadre.bus.log.raw_message(e.seq))[2] for e in stored]
    assert exporter.get_finished_spans() == ()
    assert all("traceparent" not in h for h in headers)


async def test_a_cadre_run_exports_its_trace_to_an_otlp_collector(tmp_path: Path) -> None:
    """`cadre run` in a process of its own, the standard OTEL_ variables pointing at a collector (a
    fake one here, decoding the OTLP/HTTP protobuf): the workflow's spans arrive, one trace."""
    bodies: list[tuple[str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        bodies.append((request.content_type, await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        (tmp_path / "replies.json").write_text(json.dumps({"plan": [{"output": MODEL_PLAN}]}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CADRE_", "OTEL_", "OPENAI_", "ANTHROPIC_"))}
        env.update(
            CADRE_DATA_DIR=str(tmp_path / "data"),
            CADRE_LLM_PROVIDER="scripted",
            CADRE_LLM_SCRIPT="replies.json",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_SERVICE_NAME="cadre-under-test",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cadre.cli",
            "run",
            NOVEL_REQUEST,
            "--json",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out.decode().strip().splitlines()[-1])["status"] == "completed"
    assert bodies, "no spans were exported"
    names, traces, services = [], set(), set()
    for content_type, body in bodies:
        assert content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    names.append(span.name)
                    traces.add(span.trace_id)
    assert services == {"cadre-under-test"}
    assert {"intake request", "planner workflow_requested", "execute_tool sql.query"} <= set(names)
    assert any(n.startswith("chat ") for n in names)
    assert len(traces) == 1


def test_configure_does_nothing_without_a_collector() -> None:
    assert tracing.configure("off", "http://127.0.0.1:4318") is False
    assert tracing.configure("auto", None) is False
    assert not tracing.enabled()
    assert trace_headers.outgoing() == {}
    assert trace_headers.incoming({"traceparent": TRACEPARENT}) is None


def test_without_the_otel_extra_auto_runs_untraced_and_otlp_refuses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)  # not installed
    assert tracing.configure("auto", "http://127.0.0.1:4318") is False
    assert "pip install 'cadre-workflows[otel]'" in caplog.text
    with pytest.raises(tracing.TracesUnavailable, match=r"CADRE_TRACES=otlp\) but .+ is not installed: pip install"):
        tracing.configure("otlp", None)
    assert not tracing.enabled()
