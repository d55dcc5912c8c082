"""Flows that run flows: the checks over a deployment's flows together, when they are loaded.

A node may run another flow as a child workflow (``flow: NAME``, or tool ``workflow.run`` with
the input ``flow: NAME``: :attr:`planner.flows.model.Node.subflow`). :func:`check_nesting` checks
that each such flow is registered and can run as a child (its default path, else the whole flow,
compiles and passes the plan validator with no request parameters: :mod:`planner.flows.child`),
that flows do not run each other in a cycle, and that the deepest chain of sub-flows stays
within the deployment's child depth (``CADRE_CHILD_MAX_DEPTH``: a flow run by a request is at
depth 0, its sub-flows' workflows at 1...). Pure: the flows are given.
"""

from __future__ import annotations

from collections.abc import Mapping

from cadre.planner.catalog import Catalog
from cadre.planner.children import ChildInputError
from cadre.planner.flows.check import FlowProblem
from cadre.planner.flows.child import flow_hook
from cadre.planner.flows.model import Flow

__all__ = ["check_nesting", "subflows"]


def subflows(flow: Flow) -> dict[str, str]:
    """Node -> the flow it runs, for the nodes of ``flow`` that run one."""
    return {n.name: sub for n in flow.nodes if (sub := n.subflow) is not None}


def check_nesting(flows: Mapping[str, Flow], catalog: Catalog, max_depth: int) -> dict[str, list[FlowProblem]]:
    """The problems of each flow (by name) that runs sub-flows (module docstring); empty: none."""
    out: dict[str, list[FlowProblem]] = {}
    hook = flow_hook(flows, catalog)
    graph = {name: subflows(f) for name, f in flows.items()}
    for name, nodes in sorted(graph.items()):
        for node, sub in nodes.items():
            if sub not in flows:
                out.setdefault(name, []).append(
                    FlowProblem(
                        "unknown_flow",
                        f"the node runs flow {sub!r}, which is not registered here",
                        node,
                        "flow",
                        f"name one of: {', '.join(sorted(flows))}",
                    )
                )
                continue
            try:
                hook(sub, {})
            except ChildInputError as exc:
                out.setdefault(name, []).append(
                    FlowProblem("subflow_cannot_run", str(exc), node, "flow", "give its parameters defaults")
                )
    cycles = _cycles(graph)
    for name, cycle in cycles.items():
        out.setdefault(name, []).append(
            FlowProblem(
                "flow_cycle",
                f"flows run each other in a cycle: {' -> '.join(cycle)}",
                next((n for n, s in graph[name].items() if s == cycle[1]), None),
                "flow",
                "break the cycle: a flow may not run itself through its sub-flows",
            )
        )
    for name in sorted(graph):
        if name in cycles or not graph[name]:
            continue
        chain = _deepest(name, graph, set(flows) - set(cycles))
        if len(chain) - 1 > max_depth:
            limit = "this deployment allows no child workflows" if max_depth <= 0 else f"the limit is {max_depth}"
            out.setdefault(name, []).append(
                FlowProblem(
                    "child_depth",
                    f"its sub-flows nest {len(chain) - 1} deep ({' -> '.join(chain)}); {limit}",
                    next((n for n, s in graph[name].items() if s == chain[1]), None),
                    "flow",
                    "nest fewer flows, or raise CADRE_CHILD_MAX_DEPTH",
                )
            )
    return out


def _cycles(graph: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """Each flow on a cycle of sub-flows -> the cycle from it back to it."""
    out: dict[str, list[str]] = {}
    for start in sorted(graph):
        todo: list[list[str]] = [[start]]
        seen: set[str] = set()
        while todo and start not in out:
            path = todo.pop()
            for sub in sorted(set(graph.get(path[-1], {}).values())):
                if sub == start:
                    out[start] = [*path, start]
                    break
                if sub in graph and sub not in seen:
                    seen.add(sub)
                    todo.append([*path, sub])
    return out


def _deepest(name: str, graph: Mapping[str, Mapping[str, str]], acyclic: set[str]) -> list[str]:
    """The longest chain of sub-flows from ``name`` through the flows of ``acyclic`` (on no cycle)."""
    best = [name]
    for sub in sorted(set(graph[name].values())):
        if sub in acyclic:
            chain = [name, *_deepest(sub, graph, acyclic)]
            if len(chain) > len(best):
                best = chain
    return best
