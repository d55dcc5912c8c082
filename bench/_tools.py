"""Instant tools for the pipeline bench, loaded like any user's tool module (``TOOLS``).

``bench/pipeline.py`` runs cadre with ``tool_modules=["_tools"]``: ``bench/`` is first on
``sys.path`` when a bench script runs, so this module imports as ``_tools``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from cadre.actors.tools import ToolCall, ToolConfig, typed_impl
from cadre.planner.catalog import ToolSpec


class Value(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str


async def echo(inputs: Value, config: ToolConfig, call: ToolCall) -> Value:
    """Returns its input at once: the pipeline bench measures cadre, not tools."""
    return Value(value=inputs.value)


TOOLS = [(ToolSpec("bench.echo", "returns its input at once", Value, Value), typed_impl("bench.echo", Value, echo))]
