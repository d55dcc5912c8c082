"""Tools for the tests, loaded like any user's tool module (CADRE_TOOL_MODULES=tests.plugin_tools)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict

from cadre.actors.tools import ToolCall, ToolConfig, ToolError, typed_impl
from cadre.actors.tools.fs import fs_write
from cadre.planner.builtin_tools import FsWriteInput, FsWriteOutput
from cadre.planner.catalog import Safety, ToolSpec


class Value(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str


class Seconds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float


class SlowAppend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    line: str
    sleep_s: float = 0.0


async def flaky(inputs: Value, config: ToolConfig, call: ToolCall) -> Value:
    raise ToolError("test.flaky", "unavailable", "the flaky service is down", retryable=True)


async def echo(inputs: Value, config: ToolConfig, call: ToolCall) -> Value:
    return Value(value=inputs.value)


async def sleep(inputs: Seconds, config: ToolConfig, call: ToolCall) -> Seconds:
    await asyncio.sleep(inputs.seconds)
    return inputs


async def slow_append(inputs: SlowAppend, config: ToolConfig, call: ToolCall) -> FsWriteOutput:
    """Append a line exactly once per step (fs.write's guarantee), then linger, so a test can
    kill the agent after the side effect and before the step's result is stored."""
    out = await fs_write(FsWriteInput(path=inputs.path, content=inputs.line + "\n", mode="append"), config, call)
    if not out.already_done:
        await asyncio.sleep(inputs.sleep_s)
    return out


TOOLS = [
    (ToolSpec("test.flaky", "always fails (retryable)", Value, Value), typed_impl("test.flaky", Value, flaky)),
    (ToolSpec("test.echo", "returns its input", Value, Value), typed_impl("test.echo", Value, echo)),
    (ToolSpec("test.sleep", "sleeps", Seconds, Seconds, timeout_s=30), typed_impl("test.sleep", Seconds, sleep)),
    (
        ToolSpec(
            "test.slow_append",
            "appends a line once, then sleeps",
            SlowAppend,
            FsWriteOutput,
            safety=Safety.SIDE_EFFECT,
            timeout_s=60,
        ),
        typed_impl("test.slow_append", SlowAppend, slow_append),
    ),
]


# Appended for tests/test_dynamic_inference.py: a tool whose output its own schema refuses, and one
# whose output leaves an optional field out (a step may expect it).


class Count(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int
    unit: str | None = None


async def sloppy(inputs: Value, config: ToolConfig, call: ToolCall) -> BaseModel:
    """Answers ``{"value": <input>}`` where its schema wants ``{"count": <int>}`` (an ``invalid_output``)."""
    return Value(value=inputs.value)


async def count(inputs: Value, config: ToolConfig, call: ToolCall) -> Count:
    """Counts the letters of its input, leaving the optional ``unit`` out."""
    return Count(count=len(inputs.value))


TOOLS.append(
    (
        ToolSpec("test.sloppy", "counts things, but answers in the wrong shape", Value, Count),
        typed_impl("test.sloppy", Value, sloppy),
    )
)
TOOLS.append(
    (ToolSpec("test.count", "counts the letters of a value", Value, Count), typed_impl("test.count", Value, count))
)
