"""Tools for tests/test_stop.py (CADRE_TOOL_MODULES=tests.stop_tools): they keep a handler busy where
cancelling it cannot stop it, in a worker thread (as sql.query and http.get run) or on the event loop
itself (CPU-bound code). A module of their own: adding them to tests.plugin_tools would change the
catalog the golden logs were recorded with."""

from __future__ import annotations

import asyncio
import time

from cadre.actors.tools import ToolCall, ToolConfig, typed_impl
from cadre.planner.catalog import ToolSpec
from tests.plugin_tools import Seconds


async def block_thread(inputs: Seconds, config: ToolConfig, call: ToolCall) -> Seconds:
    await asyncio.to_thread(time.sleep, inputs.seconds)
    return inputs


async def block_loop(inputs: Seconds, config: ToolConfig, call: ToolCall) -> Seconds:
    time.sleep(inputs.seconds)  # noqa: ASYNC251 (the point: a handler that holds the loop)
    return inputs


TOOLS = [
    (
        ToolSpec("test.block_thread", "sleeps in a worker thread", Seconds, Seconds, timeout_s=120),
        typed_impl("test.block_thread", Seconds, block_thread),
    ),
    (
        ToolSpec("test.block_loop", "sleeps holding the event loop", Seconds, Seconds, timeout_s=120),
        typed_impl("test.block_loop", Seconds, block_loop),
    ),
]
