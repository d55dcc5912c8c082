"""A tool that must never run in a dry run (CADRE_TOOL_MODULES=tests.dry_run_tools, beside tests.plugin_tools).

It leaves a marker in the workspace (the input's value, a line each call), then fails, so a test
sees it ran whichever way it looks. A module of its own: adding it to tests.plugin_tools would
change the catalog every golden log's planning prompt was recorded with.
"""

from __future__ import annotations

from cadre.actors.tools import ToolCall, ToolConfig, ToolError, typed_impl
from cadre.planner.catalog import Safety, ToolSpec
from tests.plugin_tools import Value

TRIPWIRE_MARKER = "tripwire-ran"
MODULES = ["tests.plugin_tools", "tests.dry_run_tools"]
"""The tool modules of a deployment with the tripwire."""


async def tripwire(inputs: Value, config: ToolConfig, call: ToolCall) -> Value:
    marker = config.workspace / TRIPWIRE_MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    with marker.open("a") as f:
        f.write(inputs.value + "\n")
    raise ToolError("test.tripwire", "unavailable", "the tripwire was called: this tool must not run here")


TOOLS = [
    (
        ToolSpec(
            "test.tripwire", "writes a marker, then fails (must not run)", Value, Value, safety=Safety.SIDE_EFFECT
        ),
        typed_impl("test.tripwire", Value, tripwire),
    )
]
