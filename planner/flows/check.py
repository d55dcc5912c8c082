"""A flow checked when it is loaded: every problem, each located at its node, with a fix.

:func:`check_flow` reads the flow as data and the catalog it will run against: names and
ways on (targets exist, conditions parse as CEL over ``output`` and name fields the node's
tool outputs, a way without a condition comes last), loops (each way back has a ``max``
between 1 and :data:`~planner.flows.model.MAX_LOOP`; a cycle without one is refused; loops do
not overlap; no node after a loop reads a node inside it), reachability from the start,
request parameters (declared; ``stands_for`` names a node), match rules (regexes compile,
paths name nodes), and then the whole flow, its default path and each rule's path made into
plans (:func:`planner.flows.compile.compile_path`, with the parameters' examples) and run
through the plan validator (:func:`planner.validation.validate_plan`): tools exist, inputs fit
their schemas, references resolve to the full path against the output schemas.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from cadre.bus.plan import Plan, Task
from cadre.planner import conditions
from cadre.planner.catalog import Catalog, json_schema
from cadre.planner.children import with_workflow_run
from cadre.planner.flows.compile import compile_path, forward_edges, loops_of, request_refs
from cadre.planner.flows.model import MAX_LOOP, NAME_PATTERN, Flow, FlowError
from cadre.planner.refs import find_refs
from cadre.planner.scheduler import find_cycle
from cadre.planner.validation import failed, schema_path_problem, validate_plan

__all__ = ["FlowProblem", "check_flow", "example_params", "tools_for"]

_OUTPUT_FIELD = re.compile(r"\boutput((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class FlowProblem:
    """One problem of a flow: where (``node``: a node's name, or None for the flow as a whole;
    ``field``: which part), a stable ``code``, what is wrong and how to fix it."""

    code: str
    message: str
    node: str | None = None
    field: str = ""
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "node": self.node, "field": self.field, "message": self.message, "fix": self.fix}

    def __str__(self) -> str:
        where = (
            f"node {self.node!r}" + (f" {self.field}" if self.field else "") if self.node else (self.field or "flow")
        )
        return f"{where}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


_EXAMPLES: Mapping[str, Any] = {"string": "example", "integer": 1, "number": 1.0, "boolean": True}


def example_params(flow: Flow) -> dict[str, Any]:
    """A value for every parameter (its example, else its default, else one of its type), and ``text``."""
    out: dict[str, Any] = {"text": "example request"}
    for name, p in flow.params.items():
        out[name] = (
            p.example
            if p.example is not msgspec.UNSET
            else p.default
            if p.default is not msgspec.UNSET
            else _EXAMPLES[p.type]
        )
    return out


def tools_for(flow: Flow, catalog: Catalog) -> Catalog:
    """``catalog``, with ``workflow.run`` when a node of ``flow`` runs a sub-flow."""
    return with_workflow_run(catalog) if any(n.subflow is not None for n in flow.nodes) else catalog


def check_flow(flow: Flow, catalog: Catalog) -> list[FlowProblem]:
    """Every problem of ``flow`` against ``catalog`` (module docstring); empty: the flow may be used."""
    problems = _names(flow)
    if problems:
        return problems  # the rest reads nodes by name
    problems += _ways(flow, catalog)
    problems += _loops(flow)
    if any(p.code in ("cycle_without_max", "loop_not_back", "loops_overlap") for p in problems):
        return problems
    problems += _reachable(flow)
    problems += _params(flow)
    problems += _rules(flow)
    if not any(p.code in ("unknown_parameter", "unknown_node") for p in problems):
        problems += _plans(flow, catalog)  # every tool, input and reference, even beside other problems
    return problems


def _names(flow: Flow) -> list[FlowProblem]:
    out = []
    if not _NAME.match(flow.name):
        out.append(
            FlowProblem(
                "invalid_name",
                f"the flow's name {flow.name!r} is not of the form {NAME_PATTERN}",
                field="name",
                fix="use lower case letters, digits and _",
            )
        )
    if not flow.nodes:
        out.append(FlowProblem("no_nodes", "the flow has no nodes", field="nodes", fix="add at least one node"))
    seen: set[str] = set()
    for n in flow.nodes:
        if not _NAME.match(n.name):
            out.append(
                FlowProblem(
                    "invalid_name",
                    f"the name {n.name!r} is not of the form {NAME_PATTERN}",
                    n.name,
                    "name",
                    "use lower case letters, digits and _",
                )
            )
        if n.name in seen:
            out.append(
                FlowProblem("duplicate_node", f"two nodes are named {n.name!r}", n.name, "name", "rename one of them")
            )
        seen.add(n.name)
        if bool(n.tool) == (n.flow is not None):
            out.append(
                FlowProblem(
                    "node_runs",
                    f"the node gives {'both a tool and a flow' if n.tool else 'neither a tool nor a flow'}",
                    n.name,
                    "tool",
                    "give the tool it runs, or the flow it runs as a sub-flow (flow: NAME)",
                )
            )
        elif n.flow is not None and n.inputs:
            out.append(
                FlowProblem(
                    "subflow_inputs",
                    "a sub-flow node takes no inputs: the sub-flow runs its default path with its own",
                    n.name,
                    "inputs",
                    "remove inputs; give the sub-flow's parameters defaults",
                )
            )
        if n.subflow is not None and n.approval:
            out.append(
                FlowProblem(
                    "subflow_approval",
                    "a sub-flow node runs a child workflow, which has no step of its own for a person to confirm",
                    n.name,
                    "approval",
                    "set approval on a node of the sub-flow instead",
                )
            )
        if not n.description.strip():
            out.append(
                FlowProblem(
                    "no_description",
                    "the node has no description (the planner's model reads it)",
                    n.name,
                    "description",
                    "say what the node does and when a request needs it",
                )
            )
    if flow.start is not None and flow.start not in seen:
        out.append(
            FlowProblem(
                "unknown_node",
                f"start names {flow.start!r}, which is not a node",
                field="start",
                fix=f"name one of: {', '.join(flow.names)}",
            )
        )
    for n in flow.nodes:
        for i, e in enumerate(n.next):
            if e.to not in seen:
                out.append(
                    FlowProblem(
                        "unknown_node",
                        f"next[{i}] leads to {e.to!r}, which is not a node",
                        n.name,
                        f"next[{i}].to",
                        f"name one of: {', '.join(flow.names)}",
                    )
                )
    return out


def _ways(flow: Flow, catalog: Catalog) -> list[FlowProblem]:
    out = []
    catalog = tools_for(flow, catalog)
    for n in flow.nodes:
        if n.runs not in catalog:
            continue  # the plan check says so, with the names it may use
        schema = json_schema(catalog[n.runs].output_model)
        for field in n.outputs:
            problem = schema_path_problem(schema, field.split("."))
            if problem is not None:
                out.append(
                    FlowProblem(
                        "unknown_output",
                        f"outputs names {field!r}, but {problem} (tool {n.runs!r})",
                        n.name,
                        "outputs",
                        "see the output schema in `cadre tools`",
                    )
                )
        for i, e in enumerate(n.next):
            if e.when is None:
                if i < len(n.next) - 1:
                    out.append(
                        FlowProblem(
                            "unreachable_way",
                            f"next[{i}] has no condition, so the ways after it are never taken",
                            n.name,
                            f"next[{i}]",
                            "put the way without a condition last",
                        )
                    )
                continue
            problem = conditions.problem(e.when, ("output",))
            if problem is not None:
                out.append(
                    FlowProblem(
                        "invalid_condition",
                        problem,
                        n.name,
                        f"next[{i}].when",
                        "write a CEL expression over output, e.g. output.row_count > 0",
                    )
                )
                continue
            for m in _OUTPUT_FIELD.finditer(e.when):
                path = m[1].lstrip(".").split(".")
                path = [p for p in path if p not in ("size",)]
                problem = schema_path_problem(schema, path[:1])
                if problem is not None:
                    out.append(
                        FlowProblem(
                            "unknown_output",
                            f"next[{i}].when reads output.{path[0]}, but {problem} (tool {n.runs!r})",
                            n.name,
                            f"next[{i}].when",
                            "name a field of the tool's output",
                        )
                    )
    return out


def _loops(flow: Flow) -> list[FlowProblem]:
    out = []
    stand_in = Plan(nodes=tuple(Task(id=k, depends_on=tuple(v)) for k, v in _reverse(forward_edges(flow)).items()))
    cycle = find_cycle(stand_in)
    if cycle is not None:
        out.append(
            FlowProblem(
                "cycle_without_max",
                f"the ways {' -> '.join(reversed(cycle))} go round without a bound",
                cycle[0],
                "next",
                "give the way back a max (a loop), or remove it",
            )
        )
        return out
    taken: dict[str, str] = {}
    for lp in loops_of(flow):
        where = f"next (to {lp.target!r})"
        if lp.max < 1 or lp.max > MAX_LOOP:
            out.append(
                FlowProblem(
                    "loop_bound",
                    f"the loop back to {lp.target!r} has max {lp.max}; it must be 1 to {MAX_LOOP}",
                    lp.source,
                    where,
                    f"set max between 1 and {MAX_LOOP}",
                )
            )
        if not lp.body:
            out.append(
                FlowProblem(
                    "loop_not_back",
                    f"the way to {lp.target!r} has a max but does not lead back "
                    f"({lp.target!r} does not lead to {lp.source!r})",
                    lp.source,
                    where,
                    "remove max, or lead back to an earlier node",
                )
            )
            continue
        for n in lp.body:
            if n in taken:
                out.append(
                    FlowProblem(
                        "loops_overlap",
                        f"the node is inside two loops ({taken[n]} and {lp.target}..{lp.source})",
                        n,
                        "next",
                        "make the loops separate",
                    )
                )
            taken[n] = f"{lp.target}..{lp.source}"
        inside = set(lp.body)
        for other in flow.nodes:
            if other.name in inside:
                continue
            for ref in find_refs(other.inputs):
                if ref.task_id in inside:
                    out.append(
                        FlowProblem(
                            "reads_inside_loop",
                            f"inputs read {ref.text} at {ref.where}, a node inside the loop "
                            f"{lp.target}..{lp.source}, whose passes differ",
                            other.name,
                            ref.where,
                            "read it inside the loop, or from a node before it",
                        )
                    )
    return out


def _reverse(graph: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Node -> the nodes leading to it (a plan's depends_on)."""
    out: dict[str, list[str]] = {n: [] for n in graph}
    for src, targets in graph.items():
        for t in targets:
            out.setdefault(t, []).append(src)
    return out


def _reachable(flow: Flow) -> list[FlowProblem]:
    graph = {n.name: [e.to for e in n.next] for n in flow.nodes}
    seen, todo = set(), [flow.entry]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, ()))
    return [
        FlowProblem(
            "unreachable_node",
            f"no way leads to the node from the start ({flow.entry!r})",
            n,
            "",
            "lead a way to it, or remove it",
        )
        for n in flow.names
        if n not in seen
    ]


def _params(flow: Flow) -> list[FlowProblem]:
    out = []
    declared = {*flow.params, "text"}
    for n in flow.nodes:
        for name in sorted(request_refs(n.inputs) - declared):
            out.append(
                FlowProblem(
                    "unknown_parameter",
                    f"inputs read ${{request.{name}}}, which the flow does not declare",
                    n.name,
                    "inputs",
                    f"declare {name!r} under params, or read one of: {', '.join(sorted(declared))}",
                )
            )
    for name, p in flow.params.items():
        if p.stands_for is not None and flow.node(p.stands_for.partition(".")[0]) is None:
            out.append(
                FlowProblem(
                    "unknown_node",
                    f"parameter {name!r} stands for {p.stands_for!r}, which is not a node's output",
                    field=f"params.{name}.stands_for",
                    fix=f"name one of: {', '.join(flow.names)}",
                )
            )
    return out


def _rules(flow: Flow) -> list[FlowProblem]:
    out = []
    paths: list[tuple[str, list[str]]] = []
    if flow.default_path is not None:
        paths.append(("default_path", flow.default_path))
    for i, rule in enumerate(flow.match):
        if rule.regex is not None:
            try:
                groups = set(re.compile(rule.regex).groupindex)
            except re.error as exc:
                out.append(
                    FlowProblem(
                        "invalid_regex",
                        f"match[{i}].regex does not compile: {exc}",
                        field=f"match[{i}].regex",
                        fix="write a Python regular expression",
                    )
                )
                continue
            for g in sorted(groups - set(flow.params)):
                out.append(
                    FlowProblem(
                        "unknown_parameter",
                        f"match[{i}].regex names group {g!r}, which the flow does not declare",
                        field=f"match[{i}].regex",
                        fix=f"declare {g!r} under params",
                    )
                )
        if rule.regex is None and not rule.keywords:
            out.append(
                FlowProblem(
                    "empty_rule",
                    f"match[{i}] has neither regex nor keywords, so it matches every request",
                    field=f"match[{i}]",
                    fix="give a regex or keywords",
                )
            )
        for k in sorted(set(rule.params) - set(flow.params)):
            out.append(
                FlowProblem(
                    "unknown_parameter",
                    f"match[{i}].params sets {k!r}, which the flow does not declare",
                    field=f"match[{i}].params",
                    fix=f"declare {k!r} under params",
                )
            )
        if rule.path is not None:
            paths.append((f"match[{i}].path", rule.path))
    for where, path in paths:
        unknown = [p for p in path if flow.node(p) is None]
        if unknown or not path:
            out.append(
                FlowProblem(
                    "unknown_node",
                    f"{where} names {', '.join(map(repr, unknown)) or 'no node'}",
                    field=where,
                    fix=f"name nodes of: {', '.join(flow.names)}",
                )
            )
    return out


def _plans(flow: Flow, catalog: Catalog) -> list[FlowProblem]:
    """The whole flow, the default path and the rules' paths as plans, through the plan validator."""
    out: list[FlowProblem] = []
    example = example_params(flow)
    paths: list[tuple[str, list[str], dict[str, Any]]] = [("nodes", flow.names, example)]
    if flow.default_path is not None:
        paths.append(("default_path", flow.default_path, example))
    for i, rule in enumerate(flow.match):
        if rule.path is not None:
            paths.append((f"match[{i}].path", rule.path, {**example, **rule.params}))
    seen: set[str] = set()
    for where, path, params in paths:
        try:
            plan = compile_path(flow, path, params)
        except FlowError as exc:
            out.append(
                FlowProblem(
                    "path_incomplete",
                    str(exc),
                    field=where,
                    fix="declare a parameter that stands for the node left out, or add it to the path",
                )
            )
            continue
        for c in failed(validate_plan(plan, tools_for(flow, catalog))):
            if c.name == "plan_output" or c.name == "confidence":
                continue
            node = _node_of(plan, c.path)
            key = f"{node}:{c.message}"
            if key in seen:
                continue
            seen.add(key)
            field = (c.path or "").split(".", 1)[1] if c.path and "." in c.path else ""
            out.append(
                FlowProblem(
                    c.name, c.message + (f" (in {where})" if where != "nodes" else ""), node, field, c.fix or ""
                )
            )
    return out


def _node_of(plan: Plan, path: str | None) -> str | None:
    """The node a plan check's ``nodes[i]…`` path is about (a loop's later pass: its node)."""
    m = re.match(r"nodes\[(\d+)\]", path or "")
    if m is None:
        return None
    tid: str = plan.nodes[int(m[1])].id
    return tid.split("-", 1)[0]
