"""Grounding on the whole cadre: a deployment's documents and a tool's own documentation reach
the planning prompt (the fake model API sees them), the steps record the documents they were
grounded in, the audit lists them, and the run replays from its record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from cadre.audit_html import render
from cadre.audit_text import lines
from cadre.bus.effects import Grounded
from cadre.bus.events import PlanProposed, StepsProposed
from cadre.replay_cli import replayer_for
from cadre.store.audit import audit
from cadre.store.records import StoredEvent
from tests.doc_tools import MODULES
from tests.fake_llm import ok
from tests.scenarios import MODEL_PLAN, NOVEL_REQUEST
from tests.system_harness import Harness
from tests.test_llm_planning import cadre_with_model
from tests.test_replay import golden

CUSTOMERS_DOC = """\
# Customers

The customers table holds one row per customer of the shop; count them with COUNT(*).

# Invoices

Invoices are issued monthly.
"""

DISTANCE_REQUEST = "how far is Turin from Lyon in km"
DISTANCE_PLAN: dict[str, Any] = {
    "nodes": [
        {
            "id": "far",
            "description": "Distance from Lyon to Turin",
            "tool": "geo.distance",
            "inputs": {"origin": "Lyon", "destination": "Turin"},
        }
    ],
    "output": "far",
}


async def replays(h: Harness, wf: str) -> None:
    records = await h.bus.log.read_records(wf)
    result = replayer_for(h.settings).replay(records)
    assert result.ok, "\n".join(result.lines())
    assert result.reproduced == result.events == len(records)


async def test_documents_ground_the_plan_and_the_steps_and_the_audit_lists_them(nats_url: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "shop.md").write_text(CUSTOMERS_DOC)
    extra = {"docs_dir": docs, "tool_modules": MODULES}
    async with cadre_with_model("anthropic", nats_url, tmp_path, ok(MODEL_PLAN), ok(DISTANCE_PLAN), **extra) as (
        cadre,
        api,
    ):
        state = await cadre.run({"request": NOVEL_REQUEST})
        assert state.status == "completed", state.failure
        prompt = str(api.requests[0])
        assert '<passage ref=\\\\"shop.md#Customers\\\\">' in prompt or '<passage ref="shop.md#Customers">' in prompt
        assert "one row per customer" in prompt
        records = [r for r in await cadre.events(state.workflow_id) if isinstance(r, StoredEvent)]
        [proposed] = [r for r in records if isinstance(r.event.data, PlanProposed)]
        assert isinstance(proposed.event.data, PlanProposed)
        reason = proposed.event.data.reason
        assert "grounded in 3 past plan(s) (count-rows, " in reason  # examples/plans, by similarity
        assert "1 passage(s) (shop.md#Customers)" in reason
        assert "<example name=" in prompt
        assert [e.call for e in proposed.event.effects if isinstance(e, Grounded)] == ["plan"]
        [steps] = [r.event.data for r in records if isinstance(r.event.data, StepsProposed)]
        assert isinstance(steps, StepsProposed)
        assert steps.steps[0].documentation_references[0] == "shop.md#Customers"
        report = audit(await cadre.bus.log.read_records(state.workflow_id))
        assert [(d.step_id, d.documents[0]) for d in report.step_documents] == [("count.s1", "shop.md#Customers")]
        assert report.totals.steps_with_documents == report.totals.steps_proposed == 1
        assert [(g.call, g.documents[0]) for g in report.groundings] == [
            ("plan", "shop.md#Customers"),
            ("steps", "shop.md#Customers"),
        ]
        text = "\n".join(lines(report))
        assert "grounding (1 of 1 step(s) with documents)" in text
        assert "step count.s1 (sql.query) used: shop.md#Customers" in text
        page = render(report)
        assert "<h2>Grounding</h2><p>1 of 1 step(s) with documents.</p>" in page
        assert "<code>shop.md#Customers</code>" in page
        await replays(cadre, state.workflow_id)
        assert cadre.system is not None
        sample = cadre.system.metrics.registry.get_sample_value
        assert sample("cadre_steps_proposed_total", {"referenced": "yes"}) == 1

        # a tool's own documentation: first for its steps, in the prompt too
        state = await cadre.run({"request": DISTANCE_REQUEST})
        assert state.status == "completed", state.failure
        assert state.result == {"km": 221.0}
        assert "city names as the atlas spells them" in str(api.requests[1])  # the passage the request matches
        report = audit(await cadre.bus.log.read_records(state.workflow_id))
        [step] = report.step_documents
        assert step.documents[:3] == (  # the step's tool's documentation first, whole
            "tool:geo.distance#geo.distance",
            "tool:geo.distance#geo.distance > Inputs",
            "tool:geo.distance#geo.distance > Pitfalls",
        )
        await replays(cadre, state.workflow_id)


def test_the_golden_grounded_run_holds_its_grounding_and_a_changed_one_diverges() -> None:
    """The golden log of the grounded path replays (tests/test_replay.py); here: what it holds,
    and that a record whose grounding was changed no longer reproduces (the prompt built from it
    is not the one the recorded consultation's cache key and model call's digest are of)."""
    settings, records = golden("grounded_plan")
    events = [r for r in records if isinstance(r, StoredEvent)]
    [plan] = [r for r in events if isinstance(r.event.data, PlanProposed)]
    [grounded] = [e for e in plan.event.effects if isinstance(e, Grounded)]
    assert grounded.references == ("tool:geo.distance#geo.distance > Inputs",)
    assert audit(records).step_documents[0].documents[0] == "tool:geo.distance#geo.distance"
    assert replayer_for(settings).replay(records).ok

    changed = msgspec.structs.replace(grounded, passages=())
    effects = tuple(changed if e is grounded else e for e in plan.event.effects)
    tampered = msgspec.structs.replace(plan, event=msgspec.structs.replace(plan.event, effects=effects))
    result = replayer_for(settings).replay([tampered if r is plan else r for r in records])
    assert not result.ok
    assert "the handler asked budget plan:" in "\n".join(result.lines())  # its cache key is of the prompt
