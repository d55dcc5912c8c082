"""A path through a flow, made into the plan a workflow runs: pure, no I/O.

A *path* is the nodes of a flow a request needs (a sub-DAG: the planner's model chooses it, a
rule names it, or it is the flow's default path or the whole flow). :func:`compile_path` makes
it a :class:`~bus.plan.Plan`: one task per node, depending on the nodes of the path that lead
to it, its ways on as ``Task.branches`` (the planner takes one of them at run time, on the
node's output: :mod:`planner.flows.branching`), its ``${request.*}`` inputs replaced by the
request's values, and its references to nodes the path leaves out served by the parameters
that stand for them (``Param.stands_for``). A node with ``flow: NAME`` becomes a ``workflow.run``
task with inputs ``{"flow": NAME}``: a child workflow runs that flow (:mod:`planner.flows.child`).

Loops are unrolled: a way back from node ``b`` to node ``a`` with ``max: m`` repeats the nodes
between ``a`` and ``b`` ``m`` more times (``a-2`` … ``b-2``, up to ``-(m+1)``), each pass's way
back leading to the next pass, and the last pass's way back marked ``exhausted`` (never taken:
the loop stopped at its maximum). The plan stays a DAG that the validator, the scheduler and
replay already understand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from cadre.bus.plan import Branch, Plan, Task
from cadre.planner.flows.model import Flow, FlowError, Node
from cadre.planner.refs import parse_ref

__all__ = ["REQUEST", "Loop", "compile_path", "forward_edges", "loops_of", "pass_name", "request_refs"]

REQUEST: Final = "request"
"""The reference root of request parameters: ``${request.name}``."""

_REQUEST_REF = re.compile(r"\$\{request\.([A-Za-z0-9_-]+)\}")


def pass_name(node: str, k: int) -> str:
    """A loop node's task id on pass ``k`` (the first pass keeps the node's name)."""
    return node if k == 1 else f"{node}-{k}"


@dataclass(frozen=True, slots=True)
class Loop:
    """A way back from ``source`` to ``target`` taken at most ``max`` times; ``body``: the nodes on
    the way from ``target`` to ``source`` (both included), in flow order."""

    source: str
    target: str
    max: int
    body: tuple[str, ...]


def forward_edges(flow: Flow) -> dict[str, list[str]]:
    """Node -> the nodes its ways on lead to, loops' ways back (``max``) left out."""
    return {n.name: [e.to for e in n.next if e.max is None] for n in flow.nodes}


def _reach(graph: Mapping[str, Sequence[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(graph.get(n, ()))
    return seen


def loops_of(flow: Flow) -> list[Loop]:
    """The flow's loops (ways with ``max``), each with its body (empty when the way is not back)."""
    graph = forward_edges(flow)
    reverse: dict[str, list[str]] = {n: [] for n in graph}
    for src, targets in graph.items():
        for t in targets:
            reverse.setdefault(t, []).append(src)
    out = []
    for n in flow.nodes:
        for e in n.next:
            if e.max is None:
                continue
            inside = _reach(graph, e.to) & _reach(reverse, n.name)
            body = tuple(x for x in flow.names if x in inside)
            out.append(Loop(source=n.name, target=e.to, max=e.max, body=body))
    return out


def request_refs(value: Any) -> set[str]:
    """The request parameters a value reads (``${request.name}``, whole strings only)."""
    found: set[str] = set()
    if isinstance(value, str):
        m = _REQUEST_REF.fullmatch(value)
        if m:
            found.add(m[1])
    elif isinstance(value, list):
        for v in value:
            found |= request_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            found |= request_refs(v)
    return found


def _substitute(
    value: Any, node: str, params: Mapping[str, Any], outside: Mapping[str, Any], rename: Mapping[str, str]
) -> Any:
    """``value`` with request parameters put in, references to nodes the path leaves out served by the
    parameters standing for them, and references to a loop's nodes renamed to this pass's."""
    if isinstance(value, list):
        return [_substitute(v, node, params, outside, rename) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, node, params, outside, rename) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    m = _REQUEST_REF.fullmatch(value)
    if m:
        if m[1] not in params:
            raise FlowError(f"node {node!r} reads ${{request.{m[1]}}}, and the request gives no {m[1]!r}")
        return params[m[1]]
    ref = parse_ref(value)
    if ref is None:
        return value
    if ref.task_id in outside:
        return _stand_in(ref.task_id, ref.path, node, outside[ref.task_id])
    if ref.task_id in rename:
        return "${" + ".".join((rename[ref.task_id], *ref.path)) + "}"
    return value


def _stand_in(target: str, path: tuple[str, ...], node: str, given: Any) -> Any:
    """The value of ``${target.path}`` from what the request gives for ``target`` (missing: FlowError)."""
    if given is _MISSING:
        raise FlowError(
            f"node {node!r} reads the output of {target!r}, which the path leaves out, and no request "
            f"parameter stands for it (declare one with stands_for: {target}{'.' + path[0] if path else ''})"
        )
    value = given
    for seg in path:
        if isinstance(value, dict) and seg in value:
            value = value[seg]
        elif isinstance(value, list) and seg.isdigit() and int(seg) < len(value):
            value = value[int(seg)]
        else:
            raise FlowError(f"node {node!r} reads {target}.{'.'.join(path)}, which the request's value does not hold")
    return value


class _Missing:
    pass


_MISSING: Final = _Missing()


def _stand_ins(flow: Flow, left_out: set[str], params: Mapping[str, Any]) -> dict[str, Any]:
    """For each node the path leaves out, the output its standing-in parameters give (nested by field)."""
    out: dict[str, Any] = {n: _MISSING for n in left_out}
    for name, p in flow.params.items():
        if p.stands_for is None or name not in params:
            continue
        target, _, field = p.stands_for.partition(".")
        if target not in left_out:
            continue
        if not field:
            out[target] = params[name]
        else:
            current = out[target] if isinstance(out[target], dict) else {}
            out[target] = {**current, field: params[name]}
    return out


def _check_path(flow: Flow, path: Sequence[str]) -> None:
    if not path:
        raise FlowError(
            f"flow {flow.name!r}: the path is empty; name at least one of its nodes: {', '.join(flow.names)}"
        )
    unknown = [p for p in path if flow.node(p) is None]
    if unknown:
        raise FlowError(
            f"flow {flow.name!r} has no node {', '.join(map(repr, unknown))}; its nodes: {', '.join(flow.names)}"
        )
    twice = sorted({p for p in path if path.count(p) > 1})
    if twice:
        raise FlowError(f"flow {flow.name!r}: the path names {', '.join(map(repr, twice))} more than once")


def _branches(
    node: Node, passes: Mapping[str, int], k: int, loops: Mapping[tuple[str, str], int]
) -> tuple[Branch, ...]:
    """The node's ways on, on pass ``k`` of its loop (1 outside loops)."""
    out = []
    for e in node.next:
        if e.max is not None and (node.name, e.to) in loops:
            m = loops[(node.name, e.to)]
            if k <= m:
                out.append(Branch(to=pass_name(e.to, k + 1), when=e.when))
            else:
                out.append(Branch(to=e.to, when=e.when, exhausted=m))
        elif e.to in passes and passes[e.to] > 1 and node.name in passes:
            out.append(Branch(to=pass_name(e.to, k), when=e.when))  # inside the loop: this pass
        else:
            out.append(Branch(to=e.to, when=e.when))
    return tuple(out)


def compile_path(flow: Flow, path: Sequence[str], params: Mapping[str, Any]) -> Plan:
    """The plan that runs ``path`` of ``flow`` for a request with ``params`` (module docstring);
    :class:`FlowError` when the path has unknown nodes, or a node reads a value the request does
    not give."""
    _check_path(flow, path)
    on_path = set(path)
    ordered = [n for n in flow.nodes if n.name in on_path]
    values = {name: p.default for name, p in flow.params.items() if p.default is not msgspec.UNSET}
    values.update(params)
    outside = _stand_ins(flow, set(flow.names) - on_path, values)
    loops = {(lp.source, lp.target): lp for lp in loops_of(flow) if lp.source in on_path and lp.target in on_path}
    passes: dict[str, int] = {}  # node -> passes its loop makes
    for lp in loops.values():
        for n in lp.body:
            if n in on_path:
                passes[n] = max(passes.get(n, 1), lp.max + 1)
    loop_max = {key: lp.max for key, lp in loops.items()}

    tasks: list[Task] = []
    incoming: dict[str, list[str]] = {}
    for node in ordered:
        for k in range(1, passes.get(node.name, 1) + 1):
            tid = pass_name(node.name, k)
            rename = {n: pass_name(n, k) for n in passes} if k > 1 else {}
            inputs = _substitute(node.inputs, node.name, values, outside, rename)
            if node.flow is not None:  # a sub-flow: a child workflow that runs it (planner.children)
                inputs = {"flow": node.flow}
            branches = _branches(node, passes, k, loop_max)
            for b in branches:
                if not b.exhausted:
                    incoming.setdefault(b.to, []).append(tid)
            tasks.append(
                Task(
                    id=tid,
                    description=node.description if k == 1 else f"{node.description} (pass {k} of its loop)",
                    tool=node.runs,
                    inputs=inputs,
                    retries=node.retries,
                    branches=branches,
                    approval=node.approval,
                )
            )
    ids = {t.id for t in tasks}
    order = {t.id: i for i, t in enumerate(tasks)}
    nodes = tuple(
        msgspec.structs.replace(
            t, depends_on=tuple(sorted({s for s in incoming.get(t.id, ()) if s in ids}, key=order.__getitem__))
        )
        for t in tasks
    )
    return Plan(nodes=nodes, rationale=f"flow {flow.name!r}, path {' -> '.join(path)}")
