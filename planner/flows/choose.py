"""Which flow and which path serve a request: by the flows' match rules (deterministic, no
model), or by the planner's model reading the node descriptions.

:func:`by_rules` tries the flows in name order and each flow's rules in file order; the first
that matches wins, with the rule's path (else the flow's default path, else the whole flow)
and the parameters its regex's named groups and its ``params`` give. :func:`choice_request`
is the model's consultation (kind ``plan``, schema ``choose_flow_path``): the flows, their
nodes' descriptions and parameters; :func:`choice_validator` checks the answer (a known flow,
a path that compiles with the given parameters and passes the plan validator), so the repair
round is told what was wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cadre.bus.plan import Plan
from cadre.planner.catalog import Catalog
from cadre.planner.children import is_child, with_workflow_run
from cadre.planner.flows.compile import compile_path
from cadre.planner.flows.model import Flow, FlowError
from cadre.planner.providers.base import LLMRequest
from cadre.planner.providers.structured import InvalidOutput
from cadre.planner.validation import failed, validate_plan

__all__ = ["CHOICE_SCHEMA_NAME", "Choice", "by_rules", "choice_request", "choice_validator", "path_of", "plan_choice"]

CHOICE_SCHEMA_NAME: Final = "choose_flow_path"

CHOICE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "flow": {"type": ["string", "null"], "description": "the flow's name; null when no flow serves the request"},
        "path": {"type": "array", "items": {"type": "string"}, "description": "the nodes to run, in flow order"},
        "params": {"type": "object", "description": "values of the flow's parameters that the request gives"},
        "reason": {"type": "string", "description": "why this flow and these nodes"},
    },
    "required": ["flow", "path", "params", "reason"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Choice:
    """A flow, the path through it, the parameters, how it was chosen (``by``: ``rule``, ``model``,
    ``default``) and why."""

    flow: Flow
    path: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    by: str = "rule"
    why: str = ""
    path_kind: str = ""  # "the rule's path", "the default path", "the full flow", "the model's path"


def path_of(flow: Flow, path: Sequence[str] | None) -> tuple[tuple[str, ...], str]:
    """``path`` (in flow order), else the default path, else the whole flow, and which it is."""
    if path is not None:
        return tuple(n for n in flow.names if n in set(path)), "the rule's path"
    if flow.default_path is not None:
        return tuple(n for n in flow.names if n in set(flow.default_path)), "the default path"
    return tuple(flow.names), "the full flow"


def by_rules(flows: Sequence[Flow], text: str) -> Choice | None:
    """The first flow (by name) whose match rule matches ``text`` (module docstring), or None."""
    words = set(re.findall(r"[a-z0-9_]+", text.lower()))
    for flow in sorted(flows, key=lambda f: f.name):
        for i, rule in enumerate(flow.match):
            params: dict[str, Any] = {}
            said = []
            if rule.regex is not None:
                m = re.search(rule.regex, text, re.IGNORECASE | re.DOTALL)
                if m is None:
                    continue
                params.update({k: v.strip() for k, v in m.groupdict().items() if v is not None})
                said.append(f"regex {rule.regex!r}")
            if rule.keywords:
                hit = [k for k in rule.keywords if k.lower() in words]
                if not hit:
                    continue
                said.append(f"keyword {hit[0]!r}")
            params.update(rule.params)
            path, kind = path_of(flow, rule.path)
            name = rule.name or f"match[{i}]"
            return Choice(
                flow, path, params, "rule", f"rule {name!r} of flow {flow.name!r} matched ({', '.join(said)})", kind
            )
    return None


def plan_choice(choice: Choice, text: str, catalog: Catalog) -> Plan:
    """The plan of ``choice`` for request ``text``, checked by the plan validator; FlowError if it
    cannot be made or does not pass."""
    plan = compile_path(choice.flow, choice.path, {"text": text, **choice.params})
    tools = with_workflow_run(catalog) if any(is_child(t) for t in plan.nodes) else catalog
    errors = [c for c in failed(validate_plan(plan, tools)) if c.name not in ("confidence",)]
    if errors:
        raise FlowError("; ".join(f"{c.path}: {c.message}" for c in errors[:5]))
    return plan


def _describe(flows: Sequence[Flow]) -> list[dict[str, Any]]:
    return [
        {
            "name": f.name,
            "description": f.description,
            "params": {k: {"type": p.type, "description": p.description} for k, p in f.params.items()},
            "default_path": f.default_path,
            "nodes": [
                {
                    "name": n.name,
                    "description": n.description,
                    **({"runs_flow": n.flow} if n.flow is not None else {"tool": n.tool}),
                    "next": [{"to": e.to, **({"when": e.when} if e.when else {})} for e in n.next],
                }
                for n in f.nodes
            ],
        }
        for f in sorted(flows, key=lambda f: f.name)
    ]


SYSTEM: Final = """\
You choose how a request is served by one of the deployment's flows. A flow is a graph of nodes; \
each node runs one tool and says what it does. Choose the flow that serves the request and the \
nodes it needs (the path: a sub-graph, skipping nodes the request does not need; a node left out \
whose output a later node reads must be given by a parameter that stands for it), and the values \
of the flow's parameters that the request gives or that you work out for it (for example the SQL \
a generating node renders). Answer one JSON object matching the `choose_flow_path` schema; \
"flow": null when no flow serves the request."""


def choice_request(text: str, flows: Sequence[Flow], model: str, max_output_tokens: int) -> LLMRequest:
    """The model's consultation for the flow and path of ``text``."""
    return LLMRequest(
        kind="plan",
        model=model,
        system=SYSTEM,
        prompt=(
            "The flows:\n<flows>\n"
            + json.dumps(_describe(flows), indent=1)
            + f"\n</flows>\n\nChoose the flow and path for this request:\n<request>\n{text.strip()}\n</request>"
        ),
        schema=json.loads(json.dumps(CHOICE_SCHEMA)),
        schema_name=CHOICE_SCHEMA_NAME,
        max_output_tokens=max_output_tokens,
    )


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The model's answer: a choice with its plan, or no flow (``choice`` None) and why."""

    choice: Choice | None
    plan: Plan | None
    reason: str


def choice_validator(flows: Mapping[str, Flow], text: str, catalog: Catalog) -> Callable[[dict[str, Any]], ModelChoice]:
    """Checks the model's answer (module docstring); raises InvalidOutput saying what is wrong."""

    def validate(output: dict[str, Any]) -> ModelChoice:
        name = output.get("flow")
        reason = str(output.get("reason", ""))
        if name is None:
            return ModelChoice(None, None, reason)
        if not isinstance(name, str) or name not in flows:
            raise InvalidOutput([f"$.flow: {name!r} is not a flow; the flows are: {', '.join(sorted(flows))}"])
        path = output.get("path")
        params = output.get("params") or {}
        if not isinstance(path, list) or not all(isinstance(p, str) for p in path) or not isinstance(params, dict):
            raise InvalidOutput(["$.path must be a list of node names and $.params an object"])
        flow = flows[name]
        ordered, _ = path_of(flow, path)
        unknown = [p for p in path if p not in flow.names]
        if unknown or not path:
            raise InvalidOutput([f"$.path: {unknown or 'empty'}; the nodes of {name!r} are: {', '.join(flow.names)}"])
        choice = Choice(flow, ordered, dict(params), "model", reason, "the model's path")
        try:
            plan = plan_choice(choice, text, catalog)
        except FlowError as exc:
            raise InvalidOutput([f"$.path: {exc}"]) from None
        return ModelChoice(choice, plan, reason)

    return validate
