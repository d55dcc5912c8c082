"""A tool that uses the CPU, for ``bench/partitions.py`` (loaded as ``_cpu_tools``, like ``_tools``).

``bench.burn`` hashes ``rounds`` times in the agent's process (about 1 ms per 3 000 rounds on this
machine): a tool whose time is the process's CPU, so that more agent processes add capacity.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict

from cadre.actors.tools import ToolCall, ToolConfig, typed_impl
from cadre.planner.catalog import ToolSpec


class Burn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str
    rounds: int = 5000


class Burned(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str
    digest: str


async def burn(inputs: Burn, config: ToolConfig, call: ToolCall) -> Burned:
    """Hashes its input ``rounds`` times, holding the process's CPU (as a CPU-bound tool does)."""
    h = inputs.value.encode()
    for _ in range(inputs.rounds):
        h = hashlib.sha256(h).digest()
    return Burned(value=inputs.value, digest=h.hex()[:16])


TOOLS = [
    (ToolSpec("bench.burn", "hashes its input many times (CPU)", Burn, Burned), typed_impl("bench.burn", Burn, burn)),
]
