"""``cadre flows``, ``cadre plan`` and ``cadre schema flow``: the deployment's flows, and the flow and
path a request would take, with nothing run (:mod:`cadre.flow_preview`, which also answers the
``<prefix>.plan`` subject).

Without a model the preview is the planner's deterministic choice (:func:`planner.flows.choose.by_rules`:
the flows' match rules, the rule's path, else the default path, else the whole flow), made here into
the plan the planner would propose and checked by the plan validator: nothing is started, no model
is consulted. With a model configured the choice is the model's, and the model, the budget and the
keys are the planner's: ``cadre plan`` asks the running planner on ``<prefix>.plan``, which makes the
planner's own consultation (through the budget, accounted to a preview id) and runs nothing. When
no planner answers, it says so and shows the rules' choice, the planner's fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping
from typing import Any, Final

import nats.errors

from cadre.bus.errors import CadreError
from cadre.commands import EXIT_FAILED, EXIT_OK, UsageError
from cadre.flow_preview import preview
from cadre.planner.catalog import Catalog
from cadre.planner.flows.model import Flow, flow_schema
from cadre.planner.flows.registry import FlowsInvalid
from cadre.render import json_line
from cadre.safe_text import visible
from cadre.settings import Settings
from cadre.system import catalog_for, flows_for
from cadre.wiring import open_bus

__all__ = ["flows_cmd", "plan_cmd", "schema_flow"]


def _flows(settings: Settings, catalog: Catalog) -> Mapping[str, Flow]:
    if settings.flows is None:
        raise UsageError("no flows are registered: set CADRE_FLOWS to a folder of flow files (docs/flows.md)")
    flows = flows_for(settings, catalog)
    return flows if flows is not None else {}


def describe(flow: Flow) -> dict[str, Any]:
    """A flow for ``cadre flows``: its name, description, nodes, default path and rules."""
    return {
        "name": flow.name,
        "description": flow.description,
        "nodes": [
            {
                "name": n.name,
                "tool": n.runs,
                "flow": n.subflow,
                "description": n.description,
                "next": [{"to": e.to, "when": e.when, "max": e.max} for e in n.next],
                "approval": n.approval,
            }
            for n in flow.nodes
        ],
        "default_path": flow.default_path if flow.default_path is not None else flow.names,
        "params": sorted(flow.params),
        "rules": [r.name or f"match[{i}]" for i, r in enumerate(flow.match)],
    }


def flows_cmd(settings: Settings, as_json: bool) -> int:
    """``cadre flows``: the registered flows (loading checks them: with a problem in any, every problem
    of every file, one a line, located at its node; ``--json``: ``{"error": {..., "problems": [...]}}``)."""
    try:
        flows = _flows(settings, catalog_for(settings))
    except FlowsInvalid as exc:
        if as_json:
            problems = [{"file": src, **p.to_json()} for src, ps in exc.problems.items() for p in ps]
            print(json_line({"error": {**exc.to_wire(), "problems": problems}}), flush=True)
        else:
            print(f"cadre: {sum(map(len, exc.problems.values()))} problem(s) in the flows:", file=sys.stderr)
            for src, ps in exc.problems.items():
                for p in ps:
                    print(visible(f"  {src}: {p}"), file=sys.stderr)
        return EXIT_FAILED
    for name in sorted(flows):
        d = describe(flows[name])
        if as_json:
            print(json_line(d), flush=True)
            continue
        print(visible(f"{d['name']}: {d['description']}"), flush=True)
        print(visible(f"  default path  {' -> '.join(d['default_path'])}"), flush=True)
        if d["rules"]:
            print(visible(f"  rules         {', '.join(d['rules'])}"), flush=True)
        for n in d["nodes"]:
            ways = ", ".join(
                e["to"] + (f" if {e['when']}" if e["when"] else "") + (f" (at most {e['max']}x)" if e["max"] else "")
                for e in n["next"]
            )
            gate = " [a person confirms]" if n["approval"] else ""
            runs = f"flow {n['flow']}" if n["flow"] else n["tool"]
            print(visible(f"  - {n['name']}: {runs}{gate}  {n['description']}"), flush=True)
            if ways:
                print(visible(f"      then {ways}"), flush=True)
    if not flows:
        print(f"no flow files in {settings.flows}", flush=True)
    return EXIT_OK


def _model_configured(settings: Settings) -> bool:
    from cadre.llm import provider_name

    with contextlib.suppress(CadreError):
        name = provider_name(settings)
        return name is not None and name not in ("none",)
    return False


PLANNER_WAIT_S: Final = 120.0
"""How long ``cadre plan`` waits for the planner's answer (a model consultation, its repair round)."""


async def ask_planner(settings: Settings, text: str) -> dict[str, Any] | None:
    """The running planner's preview of ``text`` (``<prefix>.plan``); None when no planner listens."""
    async with open_bus(settings, name="cadre-plan") as bus:
        try:
            reply = await bus.nc.request(
                settings.subjects.plan,
                json.dumps({"request": text}).encode(),
                timeout=max(settings.request_timeout_s, PLANNER_WAIT_S),
            )
        except nats.errors.NoRespondersError:
            return None
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


def plan_cmd(settings: Settings, text: str, as_json: bool) -> int:
    """``cadre plan "request"``: the preview (module docstring), printed."""
    if not text.strip():
        raise UsageError('give the request in words: cadre plan "..."')
    catalog = catalog_for(settings)
    flows = _flows(settings, catalog)
    p = asyncio.run(ask_planner(settings, text)) if _model_configured(settings) else None
    if p is None:
        p = preview(flows, catalog, text, model=_model_configured(settings))
        if "model" in p:
            p["model"] = (
                f"a model is configured, but no planner answered on {settings.subjects.plan} (start `cadre up`), "
                "so it was not asked: this is the rules' choice, which the planner falls back on"
            )
    if as_json:
        print(json_line(p), flush=True)
        return EXIT_FAILED if "error" in p else EXIT_OK
    if "flow" not in p:  # the planner refused the request
        print(visible(f"cannot plan: {p.get('error', {}).get('message', p)}"), flush=True)
        return EXIT_FAILED
    if isinstance(p.get("model"), dict):
        m = p["model"]
        asked = ", ".join(m["decisions"]) or "not asked"
        print(visible(f"model {asked}; {m['calls']} call(s); charged {m['charged']}"), flush=True)
    elif "model" in p:
        print(visible(f"note: {p['model']}"), flush=True)
    if p["flow"] is None:
        print(visible(p["why"]), flush=True)
        return EXIT_OK
    print(visible(f"flow  {p['flow']}  path {' -> '.join(p['path'])}  (chosen by {p['chosen_by']})"), flush=True)
    print(visible(f"why   {p['why']}"), flush=True)
    if "error" in p:
        print(visible(f"cannot plan: {p['error']['message']}"), flush=True)
        return EXIT_FAILED
    for t in p["plan"]["nodes"]:
        after = f" after {', '.join(t['depends_on'])}" if t["depends_on"] else ""
        ways = ", ".join(b["to"] + (f" if {b['when']}" if b.get("when") else "") for b in t.get("branches", []))
        print(visible(f"  - {t['id']}: {t['tool']}{after}" + (f"  then {ways}" if ways else "")), flush=True)
    print("nothing was run", flush=True)
    return EXIT_OK


def schema_flow() -> int:
    """``cadre schema flow``: the flow file's JSON Schema."""
    print(json.dumps(flow_schema(), indent=2), flush=True)
    return EXIT_OK
