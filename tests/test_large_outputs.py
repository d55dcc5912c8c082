"""Large tool outputs: above tool_output_inline_max_bytes an output is stored by reference (an object
named by its digest, the event carrying the digest); above the hard cap (tool_output_max_bytes) a step
fails once with output_too_large."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from cadre import audit_html, audit_text
from cadre.bus import codec
from cadre.bus.effects import ToolCalled
from cadre.bus.errors import StoreError
from cadre.bus.events import StepCompleted, StepFailed, WorkflowCompleted, make_event
from cadre.cli import main
from cadre.replay_cli import replayer_for
from cadre.store.audit import audit, value_digest
from cadre.store.filelog import FileLog, export
from cadre.store.integrity import verify
from cadre.store.jetstream import JetStreamLog
from cadre.store.objects import REF_KEY, OutputObjects, digest_of, references
from cadre.store.records import Malformed, StoredEvent
from tests.system_harness import cadre_running, settings_for

ROWS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) SELECT x{pad} FROM n"
PAD = ", printf('%0100d', x) AS pad"  # 10 000 rows of about 120 bytes: about 1.2 MB, over the server's max payload


def query(pad: str, *, downstream: bool = False) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {"id": "big", "tool": "sql.query", "inputs": {"sql": ROWS.format(pad=pad), "max_rows": 10000}}
    ]
    if downstream:
        nodes.append(
            {
                "id": "report",
                "tool": "text.render",
                "depends_on": ["big"],
                "inputs": {"template": "{n} rows of {columns}", "values": {"n": "${big.row_count}"}},
            }
        )
        nodes[1]["inputs"]["values"]["columns"] = "${big.columns}"
        # The big output is the workflow's result as well: workflow_completed carries it by reference too.
        return {"request": "ten thousand rows", "plan": {"nodes": nodes, "output": "big"}}
    return {"request": "ten thousand rows", "plan": {"nodes": nodes}}


def step_completed(events: list[StoredEvent], task: str) -> StoredEvent:
    return next(e for e in events if isinstance(e.event.data, StepCompleted) and e.event.data.task_id == task)


async def test_a_large_output_goes_by_reference_and_its_export_audits_and_replays_offline(
    nats_url: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_url, tmp_path)
    exported = tmp_path / "big.jsonl"
    async with cadre_running(settings) as h:
        small = await h.run(query(""))  # 10 000 rows of one number: about 70 kB, inline
        big = await h.run(query(PAD, downstream=True))
        wf = big.workflow_id
        events = await h.events(wf)
        small_events = await h.events(small.workflow_id)
        with exported.open("wb") as f:
            await export(h.bus.log, [wf], f, keyring=h.keyring)
        # A reader that has not seen the object (another process) reads it from the store.
        fresh = JetStreamLog(
            h.bus.nc,
            stream=settings.stream(),
            subjects=settings.subjects,
            objects=OutputObjects(h.bus.log.js, settings.outputs_bucket),
        )
        fresh_records = await fresh.read_records(wf)
        # Someone swaps the object in the store: the event's signed digest no longer matches.
        done = step_completed(events, "big")
        [digest] = references(codec.decode(done.data))
        await OutputObjects(h.bus.log.js, settings.outputs_bucket)._store.put(digest, b'{"rows": []}')
        swapped = await JetStreamLog(
            h.bus.nc,
            stream=settings.stream(),
            subjects=settings.subjects,
            objects=OutputObjects(h.bus.log.js, settings.outputs_bucket),
        ).read_records(wf)

    assert small.status == "completed", small.failure
    assert small.tasks["big"].output is not None
    assert small.tasks["big"].output["row_count"] == 10_000
    assert REF_KEY.encode() not in step_completed(small_events, "big").data  # under the threshold: inline

    assert big.status == "completed", big.failure
    assert big.tasks["report"].output == {"text": '10000 rows of ["x","pad"]'}
    # Stored: the reference and its digest, in the signed bytes; read: the output as the tool gave it.
    stored = codec.decode(done.data)
    assert isinstance(stored.data, StepCompleted)
    assert stored.data.output == {REF_KEY: digest, "bytes": stored.data.output["bytes"]}
    assert stored.data.output["bytes"] > 1024 * 1024 > len(done.data)
    [tool] = [f for f in stored.effects if isinstance(f, ToolCalled)]
    assert tool.output == stored.data.output  # the effect carries the same reference, not a second copy
    assert isinstance(done.event.data, StepCompleted)
    assert done.event.data.output["row_count"] == 10_000
    assert digest == digest_of(msgspec.json.encode(done.event.data.output))
    [end] = [e for e in events if isinstance(e.event.data, WorkflowCompleted)]
    assert references(codec.decode(end.data)) == [digest]
    assert end.event.data.result == done.event.data.output
    assert [r.event for r in fresh_records if isinstance(r, StoredEvent)] == [e.event for e in events]

    # The export carries the object: it reads, audits and replays with no server.
    flog = FileLog.load(exported)
    assert set(flog.objects) == {digest}
    records = await flog.read_records(wf)
    assert not [r for r in records if isinstance(r, Malformed)]
    assert [r.event for r in records if isinstance(r, StoredEvent)] == [e.event for e in events]
    assert verify(records, anchor=flog.heads.get(wf)).ok
    result = replayer_for(settings).replay(records)
    assert result.ok, "\n".join(result.lines())
    assert result.reproduced == result.events == len(records)
    keys = settings.auth_dir / "keyring.json"
    args = ["audit", wf, "--verify", "--from-file", str(exported), "--keys", str(keys)]
    assert await asyncio.to_thread(main, args) == 0

    # A tampered object in the export, or in the store, fails the audit.
    tampered = tmp_path / "tampered.jsonl"
    lines = exported.read_bytes().splitlines()
    obj = json.loads(lines[-1])
    obj["data_b64"] = base64.b64encode(b'{"rows": [], "row_count": 0}').decode()
    lines[-1] = json.dumps(obj).encode()
    tampered.write_bytes(b"\n".join(lines) + b"\n")
    bad = [r for r in await FileLog.load(tampered).read_records(wf) if isinstance(r, Malformed)]
    assert [r.seq for r in bad] == [done.seq, end.seq]  # each event that names the object
    assert bad[0].reason.startswith(f"object_mismatch: the output object {digest}")
    args[4] = str(tampered)
    assert await asyncio.to_thread(main, args) == 1
    assert [r.seq for r in swapped if isinstance(r, Malformed)] == [done.seq, end.seq]
    assert not verify(swapped).ok


async def test_an_output_over_the_hard_cap_fails_once(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path, tool_output_max_bytes=1_000_000)) as h:
        big = await h.run(query(PAD))
        events = await h.events(big.workflow_id)
    failures = [e.event.data for e in events if isinstance(e.event.data, StepFailed)]
    assert len(failures) == 1  # once: no redelivery, no retry
    assert failures[0].error.code == "output_too_large"
    assert "the limit is 1000000 (tool_output_max_bytes)" in failures[0].error.message
    assert big.status == "failed"
    assert big.dead_letters == 0
    assert "handler_failed" not in {e.event.type for e in events}


def test_the_golden_log_of_an_output_by_reference_carries_its_object() -> None:
    """The export form of the by-reference path (tests/golden, replayed by tests/test_replay.py): the
    stored event carries the digest, the file the object, and reading it gives the output back."""
    flog = FileLog.load(Path(__file__).parent / "golden" / "output_by_reference.jsonl")
    events = [r for r in flog.records if isinstance(r, StoredEvent)]
    assert len(events) == len(flog.records)
    done = step_completed(events, "big")
    assert references(codec.decode(done.data)) == list(flog.objects)
    assert isinstance(done.event.data, StepCompleted)
    assert done.event.data.output["row_count"] == 10_000
    count = step_completed(events, "count").event.data
    assert isinstance(count, StepCompleted)
    assert count.output == {"text": "10000 rows"}
    # The audit names the object the output is stored as, beside the digest of the output itself.
    report = audit(flog.records)
    [query] = [c for c in report.tool_calls if c.tool == "sql.query"]
    assert query.stored_as == next(iter(flog.objects))
    assert query.output_digest == value_digest(done.event.data.output)
    assert f"stored by reference {query.stored_as}" in "\n".join(audit_text.lines(report))
    assert query.stored_as in audit_html.render(report)


async def test_without_the_object_store_an_append_says_how_to_make_it(nats_url: str) -> None:
    """A deployment whose streams were made before outputs went by reference: a clear error naming the
    bootstrap, not a publish nobody answers."""
    settings = settings_for(nats_url, Path("unused"))
    nc = await nats.connect(nats_url)
    try:
        elog = JetStreamLog(
            nc,
            stream=settings.stream(),
            subjects=settings.subjects,
            objects=OutputObjects(nc.jetstream(), settings.outputs_bucket),
            inline_max_bytes=64,
        )
        await elog.ensure_stream()
        output = {"rows": [[i] for i in range(100)]}
        done = StepCompleted(task_id="t", step_id="t.s1", tool="sql.query", planned_tool="sql.query", output=output)
        event = make_event(done, workflow_id="wf-big", actor="agent", at=datetime.now(UTC))
        with pytest.raises(StoreError, match=r"no object store .* `cadre auth bootstrap`"):
            await elog.append("wf-big", [event], expected_seq=0)
        assert await elog.last_seq("wf-big") == 0  # nothing stored without its object
        await nc.jetstream().delete_stream(settings.stream_name)
    finally:
        await nc.close()


def test_on_the_embedded_server_with_its_authorization_every_command_reads_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cadre run` (the node role puts the object), then `events` and `export` as a client, from the
    READERS account's mirrors: the output comes back whole, and the export carries its object."""
    monkeypatch.setenv("CADRE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CADRE_NATS_URL", raising=False)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(query(PAD, downstream=True)["plan"]))
    assert main(["run", "ten thousand rows", "--plan", str(plan), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["status"] == "completed"
    assert run["result"]["row_count"] == 10_000
    wf = run["workflow_id"]
    assert main(["events", wf, "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    outputs = [e["data"]["output"] for e in events if e["type"] == "step_completed"]
    assert [o.get("row_count") for o in outputs] == [10_000, None]  # big, then the rendered count
    assert main(["export", wf, "-o", str(tmp_path / "wf.jsonl")]) == 0
    assert len(FileLog.load(tmp_path / "wf.jsonl").objects) == 1


async def test_the_state_cache_never_folds_past_an_output_it_could_not_read(nats_url: str, tmp_path: Path) -> None:
    """The object store does not answer once while the feed brings a step's event: the cache drops
    the workflow (rather than fold the next events without that one) and reads it from the log."""
    from cadre.actors.state_cache import StateCache
    from cadre.bus.events import WorkflowRequested

    settings = settings_for(nats_url, tmp_path)
    nc = await nats.connect(nats_url)
    objects = OutputObjects(nc.jetstream(), settings.outputs_bucket)
    elog = JetStreamLog(nc, stream=settings.stream(), subjects=settings.subjects, objects=objects, inline_max_bytes=64)
    await elog.ensure_stream()
    await objects.ensure(memory=True)
    cache = StateCache(elog, catch_up_after=0.2)
    await cache.start()
    real_get = objects.get
    failures = 0

    async def flaky_get(digests: list[str]) -> dict[str, bytes]:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise nats.errors.TimeoutError
        return await real_get(digests)

    try:
        wf = "wf-flaky"
        at = datetime.now(UTC)
        r1 = await elog.append(wf, [make_event(WorkflowRequested(request="r"), workflow_id=wf, actor="intake", at=at)])
        await cache.state_at(wf, r1.last_seq)
        objects._kept.clear()  # as in a process that did not put it
        objects.get = flaky_get  # type: ignore[method-assign]
        output = {"rows": [[i] for i in range(100)]}
        done = StepCompleted(task_id="t", step_id="t.s1", tool="sql.query", planned_tool="sql.query", output=output)
        r2 = await elog.append(wf, [make_event(done, workflow_id=wf, actor="agent", at=at, causation_id="x")])
        objects._kept.clear()
        small = StepCompleted(task_id="u", step_id="u.s1", tool="test.echo", planned_tool="test.echo")
        r3 = await elog.append(wf, [make_event(small, workflow_id=wf, actor="agent", at=at, causation_id="y")])
        state = await asyncio.wait_for(cache.state_at(wf, r3.last_seq), 10)
        assert failures == 1
        assert r3.last_seq > r2.last_seq
        assert (state.last_seq, state.events) == (r3.last_seq, 3)  # the step's event folded, not skipped
    finally:
        await cache.stop()
        js = nc.jetstream()
        await js.delete_stream(settings.stream_name)
        await js.delete_stream("OBJ_" + settings.outputs_bucket)
        await nc.close()
