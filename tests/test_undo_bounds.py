"""fs.write's undo records are bounded (issue 13, item 4): what a write replaces is kept inline up to
the inline limit, by reference (under its digest, checked on restore) above it, and not at all above
the hard cap, where a write of a workflow that compensates is refused before anything changes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from cadre.actors import agent
from cadre.actors.tool_port import ToolRunner
from cadre.actors.tools import ToolBox, ToolCall, ToolConfig, ToolError
from cadre.actors.tools.builtin import builtin_impls
from cadre.actors.tools.fs import fs_restore, fs_write
from cadre.bus.events import StepCompleted, StepFailed, WorkflowRequested
from cadre.bus.plan import Plan, Task
from cadre.planner.builtin_tools import CompensationInput, FsWriteInput
from cadre.planner.safety import MARKER_DIR
from cadre.store.records import StoredEvent
from tests.test_dynamic_inference import CATALOG, HOUR, Run, to_step


def config(ws: Path, *, inline: int = 1000, cap: int | None = 5000) -> ToolConfig:
    return ToolConfig(workspace=ws, max_output_bytes=cap, undo_inline_max_bytes=inline)


async def write(cfg: ToolConfig, key: str, content: str, *, compensable: bool = False) -> None:
    inputs = FsWriteInput(path="f.txt", content=content)  # type: ignore[call-arg]
    await fs_write(inputs, cfg, ToolCall(key, compensable=compensable))


async def restore(cfg: ToolConfig, key: str) -> str:
    out = await fs_restore(CompensationInput(tool="fs.write", key=key), cfg, ToolCall(f"{key}:compensate"))
    return out.restored


def undo_record(ws: Path) -> dict[str, object]:
    [path] = (ws / MARKER_DIR).glob("*.undo.json")
    body: dict[str, object] = json.loads(path.read_text())
    return body


async def test_a_small_replaced_content_is_kept_inline(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "f.txt").write_text("before")
    await write(cfg, "k", "after")
    assert "content_b64" in undo_record(tmp_path)
    assert await restore(cfg, "k") == "content"
    assert (tmp_path / "f.txt").read_text() == "before"


async def test_a_large_replaced_content_is_kept_by_reference_and_checked(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    before = "x" * 3000  # above the inline limit, below the cap
    (tmp_path / "f.txt").write_text(before)
    await write(cfg, "k", "after")
    record = undo_record(tmp_path)
    assert "content_b64" not in record
    assert record["bytes"] == 3000
    ref = str(record["content_ref"])
    kept = tmp_path / MARKER_DIR / f"{ref.removeprefix('sha256:')}.undone"
    assert kept.read_text() == before
    assert await restore(cfg, "k") == "content"
    assert (tmp_path / "f.txt").read_text() == before

    # Kept content that no longer matches its digest is refused, not restored.
    (tmp_path / "f.txt").write_text(before)
    await write(cfg, "k2", "again")
    kept.write_text("y" * 3000)
    with pytest.raises(ToolError) as refused:
        await restore(cfg, "k2")
    assert refused.value.code == "corrupt_marker"


async def test_above_the_cap_a_compensable_write_is_refused_before_anything_changes(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "f.txt").write_text("z" * 6000)
    with pytest.raises(ToolError) as refused:
        await write(cfg, "k", "after", compensable=True)
    assert refused.value.code == "undo_too_large"
    assert "6000 bytes, above the 5000-byte cap" in refused.value.message
    assert (tmp_path / "f.txt").read_text() == "z" * 6000
    assert not list((tmp_path / MARKER_DIR).glob("*.undo.json"))


async def test_above_the_cap_another_write_goes_ahead_and_restore_says_it_cannot(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "f.txt").write_text("z" * 6000)
    await write(cfg, "k", "after")
    assert (tmp_path / "f.txt").read_text() == "after"
    assert undo_record(tmp_path)["too_large"] == 6000
    with pytest.raises(ToolError) as refused:
        await restore(cfg, "k")
    assert refused.value.code == "undo_too_large"
    assert (tmp_path / "f.txt").read_text() == "after"


async def test_the_agent_calls_a_compensating_workflows_tools_compensable(tmp_path: Path) -> None:
    plan = Plan(nodes=(Task(id="w", tool="fs.write", inputs={"path": "f.txt", "content": "after"}),))
    for on_failure, expected in (("compensate", StepFailed), ("fail", StepCompleted)):
        ws = tmp_path / on_failure
        ws.mkdir()
        (ws / "f.txt").write_text("z" * 6000)
        run = Run(ws, None, model=False)
        run.outside = replace(run.outside, tools=ToolRunner(ToolBox(CATALOG, builtin_impls(), config(ws))))
        events = to_step(plan, "w", level="adaptive")
        events[0] = with_on_failure(events[0], on_failure)
        [out] = await run.handle(agent.make_spec(HOUR, catalog=CATALOG), events)
        assert isinstance(out, expected), out
        if isinstance(out, StepFailed):
            assert out.error.code == "undo_too_large"
            assert (ws / "f.txt").read_text() == "z" * 6000
        else:
            assert (ws / "f.txt").read_text() == "after"


def with_on_failure(rec: StoredEvent, on_failure: str) -> StoredEvent:
    """The request ``rec`` asking for ``on_failure``."""
    assert isinstance(rec.event.data, WorkflowRequested)
    data = msgspec.structs.replace(rec.event.data, on_failure=on_failure)
    return StoredEvent(rec.seq, rec.subject, msgspec.structs.replace(rec.event, data=data), b"")
