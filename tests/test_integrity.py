"""The integrity chain: real runs verify; edits, removals, insertions and moves are named."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from pathlib import Path

import msgspec
import pytest

from cadre import commands
from cadre.actors.context import Context, Outside
from cadre.actors.outcome import Outcome
from cadre.actors.runtime import ActorSpec, RuntimeOptions, run_actors
from cadre.bus import Subjects, encode
from cadre.bus.errors import ConcurrencyConflict
from cadre.bus.events import (
    Envelope,
    PlanProposed,
    PlanValidated,
    StepCompleted,
    StepReady,
    StepsProposed,
    TaskReady,
    WorkflowCompleted,
    WorkflowRequested,
    chain_hash,
)
from cadre.bus.plan import Plan, StepIntent, Task
from cadre.cli import main
from cadre.store import FileLog, JetStreamLog, StoredEvent, export, fold, to_record, verify, write_export
from cadre.store.integrity import Anchor, Verdict
from cadre.store.records import Record
from cadre.store.state import WorkflowState
from tests.conftest import ev, requested, unchained
from tests.system_harness import cadre_running, settings_for
from tests.test_cli import isolated  # noqa: F401  (a fixture)

# -- a workflow of nine events, chained as the log chains them ---------------------------------


def run_events(wf: str) -> list[Envelope]:
    root = requested(wf, "report the top customers")
    task = Task(id="q", tool="sql.query", inputs={"sql": "select 1"})
    step = StepIntent(id="q.s1", task_id="q", tool="sql.query", inputs={"sql": "select 1"})
    payloads = [
        PlanProposed(plan=Plan(nodes=(task,), output="q")),
        PlanValidated(revision=1),
        TaskReady(task=task),
        StepsProposed(task_id="q", steps=(step,)),
        StepReady(step=step),
        StepCompleted(task_id="q", step_id="q.s1", tool="sql.query", planned_tool="sql.query", output={"n": 1}),
        StepCompleted(task_id="q", step_id="q.s1", tool="sql.query", planned_tool="sql.query", output={"n": 2}),
        WorkflowCompleted(result={"rows": [1]}),
    ]
    out = [root]
    for i, p in enumerate(payloads, start=1):
        out.append(ev(p, wf, cause=out[-1].id, i=i, actor="planner"))
    return out


def chained(events: list[Envelope], subjects: Subjects, *, start: int = 1, step: int = 3) -> list[Record]:
    """Records as the log would store them: each event's prev is the hash of the one before."""
    records: list[Record] = []
    prev = ""
    for k, e in enumerate(events):
        data = encode(msgspec.structs.replace(e, prev=prev))
        records.append(to_record(subjects, start + k * step, subjects.event(e.workflow_id, e.type), data))
        prev = chain_hash(data)
    return records


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, list[Record]]:
    """An export file of one workflow (with another one's events interleaved)."""
    subjects = Subjects("cadre")
    mine = chained(run_events("wf-a"), subjects, start=1, step=2)
    other = chained(run_events("wf-b")[:4], subjects, start=2, step=2)
    records = sorted([*mine, *other], key=lambda r: r.seq)
    path = tmp_path / "export.jsonl"
    with path.open("wb") as out:
        write_export(out, records, stream="CADRE_EVENTS", subjects=subjects)
    return path, mine


def lines_of(path: Path) -> tuple[bytes, list[bytes]]:
    """The header and the lines of workflow wf-a."""
    lines = path.read_bytes().splitlines()
    return lines[0], lines[1:]


def rewrite(path: Path, header: bytes, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join([header, *lines]) + b"\n")


def line_index(lines: list[bytes], seq: int) -> int:
    return next(i for i, line in enumerate(lines) if json.loads(line)["seq"] == seq)


def verify_file(path: Path, wf: str = "wf-a") -> Verdict:
    flog = FileLog.load(path)
    return verify(asyncio.run(flog.read_records(wf)), anchor=flog.heads.get(wf))


def named(verdict: Verdict, kind: str, rec: Record, index: int) -> None:
    """The verdict names ``kind`` at ``rec`` (index, stream seq, id, type), and says so in its message."""
    assert verdict.status == "broken"
    p = verdict.problem
    assert p is not None
    assert p.kind == kind, p.message
    assert p.at is not None
    assert isinstance(rec, StoredEvent)
    assert (p.at.index, p.at.seq, p.at.event_id, p.at.type) == (index, rec.seq, rec.event.id, rec.event.type)
    assert p.message.startswith(f"{kind} event")
    assert f"index {index} (seq {rec.seq}, {rec.event.type}, id {rec.event.id})" in p.message


# -- pure: verify over records -----------------------------------------------------------------


def test_a_chained_workflow_verifies_and_its_head_is_the_last_hash() -> None:
    records = chained(run_events("wf"), Subjects("cadre"))
    verdict = verify(records)
    assert verdict.status == "intact"
    assert (verdict.events, verdict.chained, verdict.unchained, verdict.malformed) == (9, 9, 0, 0)
    assert verdict.head == chain_hash(records[-1].data)
    assert verdict.summary() == "chain intact: 9 events"
    assert verify(records, anchor=Anchor(head=verdict.head, seq=records[-1].seq, count=9)).ok


def test_fold_knows_what_to_chain_to() -> None:
    records = chained(run_events("wf"), Subjects("cadre"))
    events = [r for r in records if isinstance(r, StoredEvent)]
    state = fold("wf", events[:4])
    assert state.last_hash == chain_hash(records[3].data) == events[4].event.prev
    assert WorkflowState(workflow_id="wf").last_hash == ""


def test_live_removal_is_told_from_a_modification_by_the_deleted_sequences() -> None:
    records = chained(run_events("wf"), Subjects("cadre"), step=2)
    del records[4]  # seq 9
    assert verify(records, deleted={9}).problem is not None
    p = verify(records, deleted={9}).problem
    assert p is not None
    assert (p.kind, p.at and p.at.index) == ("removed", 4)
    assert "stream sequence 9 between them was deleted" in p.message
    p = verify(records, deleted=set()).problem
    assert p is not None
    assert (p.kind, p.at and p.at.index) == ("modified", 3)
    p = verify(records).problem  # nothing known about deletions: says it may be either
    assert p is not None
    assert p.message.endswith("(or an event after it was removed: nothing recorded the event count)")


# -- an export file, tampered with --------------------------------------------------------------


def test_an_untouched_export_verifies(exported: tuple[Path, list[Record]]) -> None:
    path, mine = exported
    verdict = verify_file(path)
    assert verdict.status == "intact"
    assert verdict.events == 9
    header = json.loads(path.read_bytes().splitlines()[0])
    assert header["heads"]["wf-a"] == {"head": chain_hash(mine[-1].data), "seq": mine[-1].seq, "count": 9}
    assert verify_file(path, "wf-b").ok


@pytest.mark.parametrize("k", [0, 3, 7])
def test_editing_one_byte_of_an_event_is_named(exported: tuple[Path, list[Record]], k: int) -> None:
    path, mine = exported
    header, lines = lines_of(path)
    i = line_index(lines, mine[k].seq)
    assert b'"at":"2026-' in lines[i]
    lines[i] = lines[i].replace(b'"at":"2026-', b'"at":"2027-', 1)  # one byte, still a valid event
    rewrite(path, header, lines)
    verdict = verify_file(path)
    named(verdict, "modified", mine[k], k)
    assert f"the next event (index {k + 1} (seq {mine[k + 1].seq}" in verdict.problem.message  # type: ignore[union-attr]


def test_editing_the_last_event_is_caught_by_the_recorded_head(exported: tuple[Path, list[Record]]) -> None:
    path, mine = exported
    header, lines = lines_of(path)
    i = line_index(lines, mine[-1].seq)
    lines[i] = lines[i].replace(b'"rows":[1]', b'"rows":[7]')
    rewrite(path, header, lines)
    verdict = verify_file(path)
    named(verdict, "modified", mine[-1], 8)
    assert "the last event's hash is not the head recorded" in verdict.problem.message  # type: ignore[union-attr]


def test_an_edit_that_breaks_the_json_is_a_modification(exported: tuple[Path, list[Record]]) -> None:
    path, mine = exported
    header, lines = lines_of(path)
    i = line_index(lines, mine[2].seq)
    lines[i] = lines[i].replace(b'"revision":1', b'"revision":"1"')  # no longer a valid plan_validated
    rewrite(path, header, lines)
    verdict = verify_file(path)
    p = verdict.problem
    assert p is not None
    assert p.at is not None
    assert (p.kind, p.at.index, p.at.seq) == ("modified", 2, mine[2].seq)
    assert (p.at.type, p.at.event_id) == ("plan_validated", "")  # malformed now: named by its subject
    assert verdict.malformed == 1


def test_editing_an_events_prev_is_named_at_that_event(exported: tuple[Path, list[Record]]) -> None:
    path, mine = exported
    header, lines = lines_of(path)
    i = line_index(lines, mine[5].seq)
    lines[i] = re.sub(rb'"prev":"[0-9a-f]', b'"prev":"x', lines[i], count=1)
    rewrite(path, header, lines)
    named(verify_file(path), "modified", mine[5], 5)


@pytest.mark.parametrize(("k", "where"), [(4, "between"), (0, "before"), (8, "after")])
def test_deleting_a_line_is_named(exported: tuple[Path, list[Record]], k: int, where: str) -> None:
    path, mine = exported
    header, lines = lines_of(path)
    del lines[line_index(lines, mine[k].seq)]
    rewrite(path, header, lines)
    verdict = verify_file(path)
    p = verdict.problem
    assert p is not None
    assert p.kind == "removed", p.message
    assert p.message.startswith(f"removed event {where} ")
    if where == "between":  # named at the event after the gap, against the one before it
        named(verdict, "removed", mine[k + 1], k)
        assert p.related is not None
        assert p.related.seq == mine[k - 1].seq
        assert "the workflow had 9 events, 8 are left" in p.message
    elif where == "before":
        named(verdict, "removed", mine[1], 0)
    else:
        named(verdict, "removed", mine[7], 7)


@pytest.mark.parametrize(("copied", "at"), [(2, 6), (2, 3), (5, 5), (8, 9)])
def test_inserting_a_copied_line_is_named(exported: tuple[Path, list[Record]], copied: int, at: int) -> None:
    """A copy of event ``copied`` inserted so that it becomes event ``at`` of the workflow."""
    path, mine = exported
    header, lines = lines_of(path)
    line = lines[line_index(lines, mine[copied].seq)]
    pos = line_index(lines, mine[at].seq) if at < len(mine) else len(lines)
    lines.insert(pos, line)
    rewrite(path, header, lines)
    verdict = verify_file(path)
    p = verdict.problem
    assert p is not None
    assert p.kind == "inserted", p.message
    assert p.at is not None
    assert p.related is not None
    # right before its original, the copy fits the chain and the original is the one out of place
    assert (p.at.index, p.related.index) == (at + (copied == at), copied)
    assert p.at.event_id == mine[copied].event.id  # type: ignore[union-attr]
    assert "a copy of index" in p.message
    assert "(the same bytes)" in p.message


@pytest.mark.parametrize(("a", "b"), [(3, 4), (2, 6), (0, 1), (7, 8)])
def test_swapping_two_lines_is_named(exported: tuple[Path, list[Record]], a: int, b: int) -> None:
    path, mine = exported
    header, lines = lines_of(path)
    ia, ib = line_index(lines, mine[a].seq), line_index(lines, mine[b].seq)
    lines[ia], lines[ib] = lines[ib], lines[ia]
    rewrite(path, header, lines)
    verdict = verify_file(path)
    p = verdict.problem
    assert p is not None
    assert p.kind == "reordered", p.message
    assert p.at is not None
    assert p.related is not None
    assert p.at.index == a
    assert p.at.event_id == mine[b].event.id  # type: ignore[union-attr]  # event b now stands at a
    assert p.message.startswith(f"reordered events: index {a} (seq {mine[b].seq}, ")


def test_an_export_without_heads_still_checks_every_link(exported: tuple[Path, list[Record]]) -> None:
    path, mine = exported
    header, lines = lines_of(path)
    old = json.loads(header)
    del old["heads"]
    i = line_index(lines, mine[3].seq)
    lines[i] = lines[i].replace(b'"at":"2026-', b'"at":"2027-', 1)
    rewrite(path, json.dumps(old).encode(), lines)
    named(verify_file(path), "modified", mine[3], 3)


# -- the CLI ------------------------------------------------------------------------------------


def test_audit_verify_from_a_file(
    exported: tuple[Path, list[Record]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CADRE_NATS_URL", "nats://127.0.0.1:1")  # never used: the file is read
    path, mine = exported
    assert main(["audit", "wf-a", "--verify", "--from-file", str(path)]) == 0
    assert capsys.readouterr().out == "chain intact: 9 events\nsignatures not checked: no keyring (pass --keys FILE)\n"
    header, lines = lines_of(path)
    del lines[line_index(lines, mine[4].seq)]
    rewrite(path, header, lines)
    assert main(["audit", "wf-a", "--verify", "--from-file", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"chain broken: removed event between index 3 (seq {mine[3].seq}, task_ready, id ")
    assert main(["audit", "wf-a", "--verify", "--from-file", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "broken"
    assert report["problem"]["kind"] == "removed"
    assert report["problem"]["at"] == {
        "index": 4,
        "seq": mine[5].seq,
        "event_id": mine[5].event.id,  # type: ignore[union-attr]
        "type": "step_ready",
    }
    assert report["head_recorded"] is True


def test_audit_without_verify_writes_the_report(
    exported: tuple[Path, list[Record]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = exported  # the report itself is tested in tests/test_replay.py
    assert main(["audit", "wf-a", "--from-file", str(path)]) == 0
    assert capsys.readouterr().out.startswith("workflow wf-a: ")
    assert main(["audit", "wf-a", "--from-file", str(path), "--verify", "--html", "x.html"]) == 2
    assert capsys.readouterr().err.startswith("cadre: usage_error: --html FILE writes the report")


def test_audit_of_a_missing_workflow_is_a_usage_error(
    exported: tuple[Path, list[Record]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = exported
    assert main(["audit", "nope", "--verify", "--from-file", str(path)]) == 2
    assert re.match(r"^cadre: usage_error: no workflow 'nope' in .*export\.jsonl", capsys.readouterr().err)


def test_audit_verify_live_names_a_deleted_event(
    isolated: tuple[str, Subjects, object],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, subjects, spec = isolated

    async def seed() -> list[StoredEvent]:
        from cadre.bus import ConnectOptions, connect

        nc = await connect(ConnectOptions(url=url))
        log = JetStreamLog(nc, stream=spec, subjects=subjects)  # type: ignore[arg-type]
        await log.ensure_stream()
        await log.append("wf1", run_events("wf1"), expected_seq=0)
        stored = await log.read("wf1")
        await nc.drain()
        return stored

    stored = asyncio.run(seed())
    assert main(["audit", "wf1", "--verify"]) == 0
    assert capsys.readouterr().out == "chain intact: 9 events\nsignatures not checked: no keyring (pass --keys FILE)\n"

    async def remove(seq: int) -> None:
        from cadre.bus import ConnectOptions, connect

        nc = await connect(ConnectOptions(url=url))
        await nc.jetstream().delete_msg(spec.name, seq)  # type: ignore[attr-defined]
        await nc.drain()

    asyncio.run(remove(stored[4].seq))
    assert main(["audit", "wf1", "--verify", "--json"]) == 1
    problem = json.loads(capsys.readouterr().out)["problem"]
    assert problem["kind"] == "removed"
    assert problem["at"]["seq"] == stored[5].seq
    assert f"stream sequence {stored[4].seq} between them was deleted" in problem["message"]


# -- the log keeps the chain with concurrent writers ----------------------------------------------


async def test_concurrent_appenders_keep_one_valid_chain(log: JetStreamLog) -> None:
    """4 writers append 50 events each to one workflow at once, each retrying on conflicts."""
    root = requested("wf")
    await log.append("wf", [root], expected_seq=0)
    conflicts = 0

    async def writer(w: int) -> None:
        nonlocal conflicts
        seq, head = await log.head("wf")
        for i in range(50):
            e = ev(WorkflowCompleted(result=[w, i]), "wf", cause=f"writer-{w}", i=i)
            while True:
                try:
                    r = await log.append("wf", [e], expected_seq=seq, prev=head)
                    seq, head = r.last_seq, r.last_hash
                    break
                except ConcurrencyConflict:
                    conflicts += 1
                    seq, head = await log.head("wf")

    await asyncio.gather(*(writer(w) for w in range(4)))
    records = await log.read_records("wf")
    assert verify(records).status == "intact"
    results = [r.event.data.result for r in records[1:] if isinstance(r, StoredEvent)]  # type: ignore[union-attr]
    assert sorted(map(tuple, results)) == [(w, i) for w in range(4) for i in range(50)]
    for w in range(4):  # each writer's events in its own order
        assert [i for ww, i in results if ww == w] == list(range(50))
    assert conflicts > 0  # they did race


@pytest.mark.parametrize("atomic", [True, False])
async def test_concurrent_multi_event_appends_keep_the_chain(log: JetStreamLog, atomic: bool) -> None:
    """Writers appending 5 events at a time: batches land whole; one-by-one appends report how
    many landed before a conflict, and the writer appends the rest at the new end."""
    await log.append("wf", [requested("wf")], expected_seq=0)
    partial: list[int] = []

    async def writer(w: int) -> None:
        for b in range(10):
            batch = [ev(WorkflowCompleted(result=[w, b, k]), "wf", cause=f"w{w}b{b}", i=k) for k in range(5)]
            seq, head = await log.head("wf")
            while batch:
                try:
                    await log.append("wf", batch, expected_seq=seq, prev=head, atomic=atomic)
                    break
                except ConcurrencyConflict as exc:
                    partial.append(exc.stored)
                    batch = batch[exc.stored :]
                    seq, head = await log.head("wf")

    await asyncio.gather(*(writer(w) for w in range(4)))
    records = await log.read_records("wf")
    assert verify(records).status == "intact"
    assert len(records) == 1 + 4 * 10 * 5
    assert partial  # they did race
    if atomic:  # a batch is all or nothing
        assert set(partial) == {0}  # each batch side by side
        results = [r.event.data.result for r in records[1:] if isinstance(r, StoredEvent)]  # type: ignore[union-attr]
        for start in range(0, len(results), 5):
            group = results[start : start + 5]
            assert [g[:2] for g in group] == [group[0][:2]] * 5


async def test_appends_at_the_end_chain_without_an_expectation(log: JetStreamLog) -> None:
    """expected_seq=None (dead letters): the log reads the end, chains to it, retries on conflicts."""
    events = [requested("wf"), *[ev(WorkflowCompleted(result=i), "wf", cause="c", i=i) for i in range(20)]]
    await log.append("wf", events[:1])
    await asyncio.gather(*(log.append("wf", [e]) for e in events[1:]))
    again = await log.append("wf", [events[5]])
    assert again.already_stored
    records = await log.read_records("wf")
    assert len(records) == 21
    assert verify(records).status == "intact"


async def test_a_redelivered_batch_on_an_unchanged_workflow_is_already_stored(log: JetStreamLog) -> None:
    r0 = await log.append("wf", [requested("wf")], expected_seq=0)
    batch = [ev(WorkflowCompleted(result=i), "wf", cause="c", i=i) for i in range(3)]
    first = await log.append("wf", batch, expected_seq=r0.last_seq, prev=r0.last_hash)
    again = await log.append("wf", batch, expected_seq=first.last_seq, prev=first.last_hash)
    assert again.already_stored
    assert (again.last_seq, again.last_hash) == (first.last_seq, first.last_hash)
    assert unchained([s.event for s in await log.read("wf")])[1:] == batch


def racing_kinds(calls: dict[str, int]) -> tuple[ActorSpec, ActorSpec]:
    """Two kinds that answer a request at the same moment, with three events each."""
    gate = asyncio.Barrier(2)

    def kind(name: str) -> ActorSpec:
        async def handler(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
            calls[name] += 1
            await asyncio.wait_for(gate.wait(), 5)  # both decide on the same state, then append
            return [WorkflowCompleted(result=[name, i]) for i in range(3)]

        return ActorSpec(kind=name, handles=frozenset({WorkflowRequested.TYPE}), handler=handler)

    return kind("left"), kind("right")


async def run_until(log: JetStreamLog, wf: str, n: int) -> list[Record]:
    async with asyncio.timeout(10), contextlib.aclosing(log.follow(wf)) as feed:
        seen = 0
        async for _ in feed:
            seen += 1
            if seen == n:
                break
    return await log.read_records(wf)


FAST = RuntimeOptions(backoff=(0.05,), max_attempts=3, fetch_timeout=0.2, drain_timeout=5)


async def test_non_consistent_handlers_of_two_processes_are_not_run_again_on_a_conflict(log: JetStreamLog) -> None:
    """The kind that loses the race appends its same outputs after the other's, without running again."""
    calls = {"left": 0, "right": 0}
    left, right = racing_kinds(calls)
    async with (
        run_actors(log, [(left, 1)], outside=Outside(), options=FAST) as one,
        run_actors(log, [(right, 1)], outside=Outside(), options=FAST) as two,  # another process's cache
    ):
        await log.append("wf", [requested("wf")], expected_seq=0)
        records = await run_until(log, "wf", 7)
        conflicts = sum(
            s.metrics.registry.get_sample_value("cadre_conflicts_total", {"kind": k}) or 0
            for s, k in ((one, "left"), (two, "right"))
        )
    assert calls == {"left": 1, "right": 1}
    assert verify(records).status == "intact"
    assert len(records) == 7
    outs = [r.event for r in records[1:] if isinstance(r, StoredEvent)]
    assert all(e.basis == records[0].seq for e in outs)  # both decided on the state after the request
    assert conflicts >= 1


async def test_actors_of_one_process_take_turns_and_never_conflict(log: JetStreamLog) -> None:
    calls = {"left": 0, "right": 0}
    left, right = racing_kinds(calls)
    async with run_actors(log, [(left, 1), (right, 1)], outside=Outside(), options=FAST) as sys_:
        await log.append("wf", [requested("wf")], expected_seq=0)
        records = await run_until(log, "wf", 7)
        reg = sys_.metrics.registry
        conflicts = sum(reg.get_sample_value("cadre_conflicts_total", {"kind": k}) or 0 for k in ("left", "right"))
    assert calls == {"left": 1, "right": 1}
    assert verify(records).status == "intact"
    assert conflicts == 0
    kinds = [r.event.actor for r in records[1:] if isinstance(r, StoredEvent)]
    assert kinds in (["left"] * 3 + ["right"] * 3, ["right"] * 3 + ["left"] * 3)  # each output side by side


# -- real runs ----------------------------------------------------------------------------------


def dag_with_approval() -> dict[str, object]:
    return {
        "plan": {
            "nodes": [
                {"id": "a", "tool": "test.echo", "inputs": {"value": "x"}},
                {"id": "b", "tool": "test.echo", "inputs": {"value": "y"}},
                {
                    "id": "save",
                    "tool": "fs.write",
                    "depends_on": ["a", "b"],
                    "inputs": {"path": "out/chained.txt", "content": "ok"},
                },
            ],
            "output": "save",
        }
    }


async def test_a_real_run_verifies_live_and_exported(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        wf = (await h.submit(dag_with_approval()))["workflow_id"]
        await h.wait(wf, until="approval_requested")
        assert await commands.approve(settings, wf, "save.s1", deny=False, reason="fine") == 0
        state = await h.wait(wf)
        records = await h.bus.log.read_records(wf)
        buf = io.BytesIO()
        await export(h.bus.log, [wf], buf)
    assert state.status == "completed", state.failure
    verdict = verify(records)
    assert verdict.status == "intact", verdict.problem
    assert verdict.chained == len(records) > 10
    # every output names the state its handler decided on: after its cause, before itself
    seq_of = {r.event.id: r.seq for r in records if isinstance(r, StoredEvent)}
    for r in records:
        assert isinstance(r, StoredEvent)
        e = r.event
        if e.causation_id is None:
            assert e.basis == 0
        else:
            assert seq_of[e.causation_id] <= e.basis < r.seq, (e.type, e.basis, r.seq)
    path = tmp_path / "run.jsonl"
    path.write_bytes(buf.getvalue())
    flog = FileLog.load(path)
    assert verify(await flog.read_records(wf), anchor=flog.heads[wf]).status == "intact"


async def test_a_run_with_a_dead_letter_verifies(nats_url: str, tmp_path: Path) -> None:
    """A foreign (malformed) message and the dead letter for it stay in the chain."""
    settings = settings_for(nats_url, tmp_path, approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        wf = (await h.submit(dag_with_approval()))["workflow_id"]
        await h.wait(wf, until="approval_requested")
        await h.bus.nc.jetstream().publish(settings.subjects.event(wf, "step_ready"), b"{garbage")
        state = await h.wait(wf)
        records = await h.bus.log.read_records(wf)
    assert state.status == "failed"
    verdict = verify(records)
    assert verdict.status == "intact", verdict.problem
    assert verdict.malformed == 1
    assert verdict.summary() == f"chain intact: {len(records)} events (1 malformed)"
