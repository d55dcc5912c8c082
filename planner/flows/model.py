"""The flow file: a flow described node by node (YAML or JSON), as typed structs.

A flow names its nodes; each node runs one tool of the catalog with ``inputs`` that may
reference earlier nodes' outputs (``"${node.field}"``, the plans' reference syntax) and the
request's parameters (``"${request.name}"``; ``${request.text}`` is the request itself), says
what it outputs, and where the flow goes on after it (``next``: tried in order, the first way
whose ``when``, a CEL condition over the node's ``output``, holds is taken; a way without
``when`` always holds). A way back to an earlier node (or the node itself) is a loop and
carries ``max``, the times it may be taken. ``match`` rules choose the flow (and a path)
without a model; ``default_path`` is the path run when neither a rule nor a model names one
(absent: the whole flow). docs/flows.md is the contract; ``cadre schema flow`` its JSON Schema.

    CadreError
     └─ FlowError                     a flow file that cannot be read or used (code "invalid_flow")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import yaml  # type: ignore[import-untyped]

from cadre.bus.errors import CadreError
from cadre.planner.children import WORKFLOW_RUN

__all__ = [
    "MAX_LOOP",
    "NAME_PATTERN",
    "Edge",
    "Flow",
    "FlowError",
    "Node",
    "Param",
    "Rule",
    "flow_schema",
    "load_flow",
    "parse_flow",
]

NAME_PATTERN: Final = r"^[a-z][a-z0-9_]*$"
"""A flow's and a node's name: lower case, digits and ``_`` (a loop's later passes are ``name-2``...)."""

MAX_LOOP: Final = 10
"""The most times a loop's way back may be taken."""

ParamType = Literal["string", "integer", "number", "boolean"]


class FlowError(CadreError):
    """A flow file that cannot be read, or a path that cannot be planned from a flow."""

    code = "invalid_flow"


class Param(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request parameter the flow's nodes read as ``${request.<name>}``.

    ``default``: its value when neither a rule nor the model gives one (absent: the parameter
    is required by every path whose nodes read it). ``example``: a value of the right kind for
    the load-time check. ``stands_for``: ``node.field`` (or ``node``) whose output this
    parameter gives when the chosen path leaves that node out ("fix this SQL: …" gives the SQL
    the generating node would have written)."""

    description: str = ""
    type: ParamType = "string"
    default: Any = msgspec.UNSET
    example: Any = msgspec.UNSET
    stands_for: str | None = None


class Edge(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A way on from a node: to node ``to`` when ``when`` holds (CEL over ``output``; absent: always);
    ``max``: a loop's way back, taken at most that many times."""

    to: str
    when: str | None = None
    max: int | None = None


class Node(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node: what it does (``description``, read by the planner's model), the tool it runs and
    its inputs (or ``flow``: another registered flow it runs as a child workflow, whose output is
    ``{workflow_id, result}``), the output fields later nodes and conditions use, and where the flow
    goes on. ``approval``: a person confirms the node's step before it runs."""

    name: str
    description: str
    tool: str = ""
    flow: str | None = None
    inputs: dict[str, Any] = {}
    outputs: list[str] = []
    next: list[Edge] = []
    approval: bool = False
    retries: int = 0

    @property
    def subflow(self) -> str | None:
        """The flow this node runs as a child: ``flow``, or a ``workflow.run`` tool's ``flow`` input."""
        if self.flow is not None:
            return self.flow
        given = self.inputs.get("flow") if self.tool == WORKFLOW_RUN else None
        return given if isinstance(given, str) else None

    @property
    def runs(self) -> str:
        """The tool the node's task runs (``workflow.run`` for a sub-flow)."""
        return WORKFLOW_RUN if self.flow is not None else self.tool


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A deterministic choice of this flow for a request, without a model: the request matches when
    ``regex`` (Python syntax, case-insensitive, searched) finds a match, if given, and holds one of
    ``keywords`` as a word, if given. Named groups of the regex and ``params`` give parameters;
    ``path`` is the path to run (absent: the flow's default path)."""

    name: str = ""
    regex: str | None = None
    keywords: list[str] = []
    path: list[str] | None = None
    params: dict[str, Any] = {}


class Flow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A flow file (module docstring). ``start``: the first node (absent: the first listed)."""

    name: str
    description: str
    nodes: list[Node]
    params: dict[str, Param] = {}
    start: str | None = None
    default_path: list[str] | None = None
    match: list[Rule] = []
    version: int = 1

    @property
    def entry(self) -> str:
        return self.start or (self.nodes[0].name if self.nodes else "")

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]


def parse_flow(raw: bytes | str, source: str) -> Flow:
    """A flow from the text of a file (JSON, or YAML: JSON is YAML too); :class:`FlowError` saying
    where it is malformed."""
    try:
        data = json.loads(raw) if source.endswith(".json") else yaml.safe_load(raw)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FlowError(f"{source}: not valid {'JSON' if source.endswith('.json') else 'YAML'}: {exc}") from None
    try:
        return msgspec.convert(data, Flow)
    except msgspec.ValidationError as exc:
        raise FlowError(f"{source}: {exc} (see `cadre schema flow`)") from None


def load_flow(path: Path) -> Flow:
    """The flow of one file (``.yaml``, ``.yml`` or ``.json``)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FlowError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return parse_flow(raw, str(path))


def flow_schema() -> dict[str, Any]:
    """The flow file's JSON Schema (``cadre schema flow``)."""
    schema = msgspec.json.schema(Flow)
    schema["title"] = "cadre flow"
    return schema
