"""A tool whose implementation is broken until a setting is changed (CADRE_TOOL_MODULES=tests.redrive_tools,
beside tests.plugin_tools), for dead letters and ``cadre redrive``.

``test.fragile`` raises a plain ``RuntimeError`` (a bug, not a tool failure: the agent's handler raises,
so the runtime retries the input and then dead-letters it) unless the environment variable
``CADRE_TEST_FRAGILE`` is ``fixed`` (the fix being deployed); then it echoes its input. A module of
its own: adding it to tests.plugin_tools would change the catalog the golden logs were recorded with.
"""

from __future__ import annotations

import os
from typing import Final

from pydantic import BaseModel, ConfigDict

from cadre.actors.tools import ToolCall, ToolConfig, typed_impl
from cadre.planner.catalog import ToolSpec

FIX: Final = "CADRE_TEST_FRAGILE"


class Value(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str


async def fragile(inputs: Value, config: ToolConfig, call: ToolCall) -> Value:
    if os.environ.get(FIX) != "fixed":
        raise RuntimeError(f"test.fragile is broken until {FIX}=fixed")
    return inputs


TOOLS = [
    (
        ToolSpec("test.fragile", "echoes its value, once the deployment is fixed", Value, Value),
        typed_impl("test.fragile", Value, fragile),
    ),
]
