"""A registered flow as a child workflow (``workflow.run`` with ``{"flow": NAME}``,
:mod:`planner.children`): the child runs the flow's default path, else the whole flow, compiled
and checked as the planner compiles a flow it chose by its rules. No model is asked: what a child
runs is decided when its parent's plan is, and the parent's validator checks it then."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cadre.bus.plan import Plan
from cadre.planner.catalog import Catalog
from cadre.planner.children import ChildInputError, FlowHook
from cadre.planner.flows.choose import Choice, path_of, plan_choice
from cadre.planner.flows.model import Flow, FlowError


def flow_hook(flows: Mapping[str, Flow], catalog: Catalog) -> FlowHook:
    """The hook :mod:`planner.children` asks for a ``flow`` input's plan: None for a flow not
    registered here; :class:`ChildInputError` for one whose path does not compile or pass."""

    def plan_for(name: str, inputs: Mapping[str, Any]) -> Plan | None:
        flow = flows.get(name)
        if flow is None:
            return None
        path, kind = path_of(flow, None)
        choice = Choice(flow, path, {}, "default", f"child flow {name!r}: {kind}", kind)
        try:
            return plan_choice(choice, f"flow {name}", catalog)
        except FlowError as exc:
            raise ChildInputError(f"flow {name!r} cannot run as a child ({kind}): {exc}") from None

    return plan_for
