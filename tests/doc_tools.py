"""A tool that ships documentation (CADRE_TOOL_MODULES=tests.doc_tools, beside tests.plugin_tools).

A module of its own: adding it to tests.plugin_tools would change the catalog every golden log's
planning prompt was recorded with.
"""

from __future__ import annotations

from pydantic import BaseModel

from cadre.actors.tools import ToolCall, ToolConfig, typed_impl
from cadre.planner.catalog import ToolSpec

MODULES = ["tests.plugin_tools", "tests.doc_tools"]
"""The tool modules of a deployment with the documented tool."""

DOCS = """\
# geo.distance

Great-circle distance between two cities, in kilometres.

## Inputs

`origin` and `destination`: city names as the atlas spells them (e.g. "Lyon", "Turin").

## Pitfalls

The atlas knows capitals and large cities only; a village gives `unknown_city`.
"""

KM = {("Lyon", "Turin"): 221.0, ("Paris", "Lyon"): 392.0}


class Route(BaseModel):
    origin: str
    destination: str


class Distance(BaseModel):
    km: float


async def distance(inputs: Route, config: ToolConfig, call: ToolCall) -> Distance:
    return Distance(km=KM.get((inputs.origin, inputs.destination), 0.0))


TOOLS = [
    (
        ToolSpec("geo.distance", "distance between two cities in km", Route, Distance, docs=DOCS),
        typed_impl("geo.distance", Route, distance),
    )
]
