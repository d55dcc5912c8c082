"""A tool with side effects that always fails, so that a model's recovery proposes another
(CADRE_TOOL_MODULES=tests.proposal_tools, beside tests.plugin_tools). Its output is ``fs.write``'s,
so ``fs.write`` is an alternative the step's expected outputs allow. A module of its own: adding it
to tests.plugin_tools would change the catalog every golden log's prompts were recorded with.
"""

from __future__ import annotations

from cadre.actors.tools import ToolCall, ToolConfig, ToolError, typed_impl
from cadre.planner.builtin_tools import FsWriteInput, FsWriteOutput
from cadre.planner.catalog import Safety, ToolSpec

MODULES = ["tests.plugin_tools", "tests.proposal_tools"]
"""The tool modules of a deployment with the failing writer."""


async def disk_full(inputs: FsWriteInput, config: ToolConfig, call: ToolCall) -> FsWriteOutput:
    raise ToolError("test.disk_full", "io_error", "no space left on the device", retryable=True)


DISK_FULL = ToolSpec(
    "test.disk_full", "writes a file (always fails)", FsWriteInput, FsWriteOutput, safety=Safety.SIDE_EFFECT
)
TOOLS = [(DISK_FULL, typed_impl("test.disk_full", FsWriteInput, disk_full))]
