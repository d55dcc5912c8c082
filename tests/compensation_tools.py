"""A side-effect tool whose compensating tool is slow (CADRE_TOOL_MODULES=tests.compensation_tools,
beside tests.plugin_tools), so that a process test can kill an agent while it compensates.

``test.note`` does nothing but declare ``test.unnote_slowly`` as its compensation. The compensation
runs once per idempotency key: the first call appends ``undid <tool>`` to ``undo.log`` in the
workspace, leaves a marker, then sleeps ``sleep_s`` (an input of the call it undoes); a later call
with the same key finds the marker and returns ``already_done``. A module of its own: adding it to
tests.plugin_tools would change the catalog every golden log's prompts were recorded with.
"""

from __future__ import annotations

import asyncio
import hashlib

from pydantic import BaseModel, ConfigDict

from cadre.actors.tools import ToolCall, ToolConfig, typed_impl
from cadre.planner.builtin_tools import CompensationInput
from cadre.planner.catalog import Safety, ToolSpec

UNDO_LOG = "undo.log"


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line: str
    sleep_s: float = 0.0


class Undone(BaseModel):
    model_config = ConfigDict(extra="forbid")
    already_done: bool


async def note(inputs: Note, config: ToolConfig, call: ToolCall) -> Note:
    return inputs


async def unnote_slowly(inputs: CompensationInput, config: ToolConfig, call: ToolCall) -> Undone:
    marker = config.workspace / f"undo-{hashlib.sha256(call.idempotency_key.encode()).hexdigest()[:16]}"
    if marker.exists():
        return Undone(already_done=True)
    config.workspace.mkdir(parents=True, exist_ok=True)
    with (config.workspace / UNDO_LOG).open("a") as f:
        f.write(f"undid {inputs.tool}\n")
    marker.touch()
    await asyncio.sleep(float(inputs.inputs.get("sleep_s", 0.0)))
    return Undone(already_done=False)


TOOLS = [
    (
        ToolSpec(
            "test.note",
            "notes a line (undone by test.unnote_slowly)",
            Note,
            Note,
            safety=Safety.SIDE_EFFECT,
            compensation="test.unnote_slowly",
        ),
        typed_impl("test.note", Note, note),
    ),
    (
        ToolSpec(
            "test.unnote_slowly",
            "undoes test.note, once per key, then sleeps",
            CompensationInput,
            Undone,
            safety=Safety.SIDE_EFFECT,
            timeout_s=120,
        ),
        typed_impl("test.unnote_slowly", CompensationInput, unnote_slowly),
    ),
]
