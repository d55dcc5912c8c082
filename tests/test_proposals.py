"""A model's decisions are proposals the validator checks before anything of them runs (issue 13).

The agent, the validator and the agent again, each handler run once on the folded workflow with
a real :class:`Context`, the real tools in a temporary workspace, a recorded model and the real
budget actor. The model's ``recover`` picks ``fs.write`` with inputs it made up: nothing is
written until the validator has cleared the proposal and a person has approved it; under a
policy that prohibits ``fs.write`` the proposal is refused and nothing is written at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadre.actors import agent, validator
from cadre.actors.answers import LiveAnswers
from cadre.actors.budget import BudgetClient
from cadre.actors.context import Context, Outside
from cadre.actors.inference import LLM, Policy
from cadre.actors.outcome import Defer
from cadre.actors.tool_port import ToolRunner
from cadre.actors.tools import ToolBox, ToolConfig, builtin_impls
from cadre.bus.events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    Event,
    PlanProposed,
    PlanValidated,
    ProposalMade,
    ProposalRejected,
    ProposalValidated,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsProposed,
    TaskReady,
    WorkflowRequested,
)
from cadre.bus.plan import ErrorInfo, Plan, Task
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.catalog import Catalog
from cadre.planner.decompose import decompose
from cadre.planner.proposals import check_proposal
from cadre.planner.validation import Limits
from cadre.store.records import StoredEvent
from cadre.store.state import fold
from tests import proposal_tools
from tests.proposal_tools import DISK_FULL
from tests.scripted_provider import RecordedProvider
from tests.test_dynamic_inference import CATALOG as DYN_CATALOG
from tests.test_dynamic_inference import HOUR, WF, Run, answer, history, history_after, to_step
from tests.test_dynamic_inference import budget as budget

CATALOG = Catalog([*builtin_catalog().values(), DISK_FULL])
MADE_UP = {"path": "made-up.txt", "content": "words the model invented"}
PICK_FS_WRITE = {"action": "alternative", "tool": "fs.write", "inputs": MADE_UP, "reason": "write it elsewhere"}
PLAN = Plan(nodes=(Task(id="x", tool="test.disk_full", inputs={"path": "report.txt", "content": "the report"}),))


class Flow:
    """A workflow's events so far, and the handlers run on them one at a time."""

    def __init__(self, tmp_path: Path, budget: BudgetClient, catalog: Catalog, limits: Limits | None = None) -> None:
        impls = {**builtin_impls(), **{spec.name: impl for spec, impl in proposal_tools.TOOLS}}
        self.runner = ToolRunner(ToolBox(catalog, impls, ToolConfig(workspace=tmp_path)))
        self.keys: list[str] = []
        llm = LLM(provider=RecordedProvider([answer(PICK_FS_WRITE)]), models={"default": "m"})
        self.outside = Outside(tools=self, budget=budget, llm=llm, policy=Policy())
        self.agent = agent.make_spec(HOUR, catalog=catalog)
        self.validator = validator.make_spec(catalog, limits or Limits())
        [step] = decompose(PLAN.nodes[0], catalog)
        self.events: list[StoredEvent] = history(
            WorkflowRequested(plan=PLAN, intelligence="adaptive"),
            PlanProposed(plan=PLAN),
            PlanValidated(revision=1),
            TaskReady(task=PLAN.nodes[0]),
            StepsProposed(task_id="x", steps=(step,)),
            StepReady(step=step),
        )

    async def run(self, tool: str, inputs: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        self.keys.append(idempotency_key)
        return await self.runner.run(tool, inputs, idempotency_key)

    async def step(self, who: str) -> Event:
        """Run ``who`` (agent or validator) on the last event; store and return its one output."""
        spec = self.agent if who == "agent" else self.validator
        last = self.events[-1]
        ctx = Context(kind=spec.kind, stored=last, now=last.event.at, answers=LiveAnswers(self.outside))
        out = await spec.handler(ctx, last, fold(WF, self.events))
        assert not isinstance(out, Defer)
        [event] = out
        self.add(event)
        return event

    def add(self, event: Event) -> None:
        self.events += history_after(self.events, event)


async def test_the_models_fs_write_waits_for_approval_and_writes_nothing_before(
    tmp_path: Path, budget: BudgetClient
) -> None:
    flow = Flow(tmp_path, budget, CATALOG)
    proposal = await flow.step("agent")
    assert isinstance(proposal, ProposalMade)
    assert (proposal.source, proposal.action, proposal.tool, proposal.inputs) == (
        "recover",
        "alternative",
        "fs.write",
        MADE_UP,
    )
    assert (proposal.tried, proposal.error.code) == (("test.disk_full",), "io_error")
    verdict = await flow.step("validator")
    assert isinstance(verdict, ProposalValidated)
    assert verdict.proposal_id == flow.events[-2].event.id
    assert {c.name for c in verdict.checks} >= {"tool_allowed", "inputs_valid", "inputs_size", "model_side_effect"}
    assert verdict.approval == ("the model chose fs.write, which has side effects, with inputs it wrote",)
    asked = await flow.step("agent")
    assert isinstance(asked, ApprovalRequested)
    assert (asked.step.tool, asked.step.inputs) == ("fs.write", MADE_UP)  # what the approver sees
    assert not (tmp_path / "made-up.txt").exists()
    assert flow.keys == [f"{WF}/x.s1:test.disk_full"]
    assert fold(WF, flow.events).steps["x.s1"].status == "awaiting_approval"

    flow.add(ApprovalGranted(step_id="x.s1", by="alice"))
    done = await flow.step("agent")
    assert isinstance(done, StepCompleted)
    assert (done.tool, done.planned_tool, done.attempts) == ("fs.write", "test.disk_full", 2)
    assert (tmp_path / "made-up.txt").read_text() == MADE_UP["content"]
    assert flow.keys[-1] == f"{WF}/x.s1:fs.write#alt"
    assert done.deviations[-1].startswith("recovery: ran alternative tool fs.write with new inputs")


async def test_a_denied_proposal_fails_the_step_and_writes_nothing(tmp_path: Path, budget: BudgetClient) -> None:
    flow = Flow(tmp_path, budget, CATALOG)
    for who in ("agent", "validator", "agent"):
        await flow.step(who)
    flow.add(ApprovalDenied(step_id="x.s1", by="alice", reason="not that file"))
    failed = await flow.step("agent")
    assert isinstance(failed, StepFailed)
    assert failed.error.code == "approval_denied"
    assert not (tmp_path / "made-up.txt").exists()
    assert flow.keys == [f"{WF}/x.s1:test.disk_full"]


async def test_a_prohibited_fs_write_is_refused_and_nothing_is_written(tmp_path: Path, budget: BudgetClient) -> None:
    flow = Flow(tmp_path, budget, CATALOG.with_policy(prohibited=["fs.write"]))
    assert isinstance(await flow.step("agent"), ProposalMade)
    verdict = await flow.step("validator")
    assert isinstance(verdict, ProposalRejected)
    [bad] = [c for c in verdict.checks if not c.passed and c.severity == "error"]
    assert (bad.name, bad.message) == ("tool_allowed", "step 'x.s1' uses tool 'fs.write', which is prohibited")
    failed = await flow.step("agent")
    assert isinstance(failed, StepFailed)
    assert failed.error.code == "io_error"  # the planned failure, as without the model
    assert failed.error.message == (
        "no space left on the device (the model's recovery, alternative with fs.write, was refused by the "
        "validator: step 'x.s1' uses tool 'fs.write', which is prohibited)"
    )
    assert failed.tried == ("test.disk_full",)
    assert not (tmp_path / "made-up.txt").exists()
    assert flow.keys == [f"{WF}/x.s1:test.disk_full"]


async def test_a_deployment_may_let_model_side_effects_run_without_approval(
    tmp_path: Path, budget: BudgetClient
) -> None:
    flow = Flow(tmp_path, budget, CATALOG, Limits(model_side_effects_need_approval=False))
    await flow.step("agent")
    verdict = await flow.step("validator")
    assert isinstance(verdict, ProposalValidated)
    assert verdict.approval == ()
    done = await flow.step("agent")
    assert isinstance(done, StepCompleted)
    assert (tmp_path / "made-up.txt").exists()


async def test_inputs_over_the_size_limit_are_refused(tmp_path: Path, budget: BudgetClient) -> None:
    flow = Flow(tmp_path, budget, CATALOG, Limits(max_inputs_bytes=20))
    await flow.step("agent")
    verdict = await flow.step("validator")
    assert isinstance(verdict, ProposalRejected)
    assert [c.name for c in verdict.checks if not c.passed and c.severity == "error"] == ["inputs_size"]
    assert isinstance(await flow.step("agent"), StepFailed)
    assert not (tmp_path / "made-up.txt").exists()


async def test_a_verdict_on_a_superseded_proposal_changes_nothing(tmp_path: Path, budget: BudgetClient) -> None:
    flow = Flow(tmp_path, budget, CATALOG)
    await flow.step("agent")
    stale = ProposalValidated(step_id="x.s1", proposal_id="not-the-proposal", approval=())
    flow.add(stale)
    assert fold(WF, flow.events).steps["x.s1"].status == "validating"
    last = flow.events[-1]
    ctx = Context(kind="agent", stored=last, now=last.event.at, answers=LiveAnswers(flow.outside))
    assert await flow.agent.handler(ctx, last, fold(WF, flow.events)) == []


def test_a_skip_is_checked_against_what_the_workflow_uses() -> None:
    task = PLAN.nodes[0]
    error = ErrorInfo(code="io_error", message="no space left on the device")
    proposal = ProposalMade(
        task_id="x", step_id="x.s1", source="recover", action="skip", tool=task.tool or "", error=error
    )
    ok, _ = check_proposal(proposal, task, CATALOG, {}, Limits(), skippable=True)
    refused, _ = check_proposal(proposal, task, CATALOG, {}, Limits(), skippable=False)
    assert [(c.name, c.passed) for c in ok] == [("skip_allowed", True)]
    assert [(c.name, c.passed) for c in refused] == [("skip_allowed", False)]


# -- interpret: the model's replacement of an output is a proposal too ---------------------------


SLOPPY = Plan(nodes=(Task(id="c", tool="test.sloppy", inputs={"value": "three"}, fallback_tools=("test.count",)),))


async def interpret_flow(tmp_path: Path, budget: BudgetClient, limits: Limits) -> tuple[Run, list[Event]]:
    """test.sloppy answers in the wrong shape; the model's interpretation goes to the validator."""
    run = Run(tmp_path, budget, [answer({"count": 5})])
    events = to_step(SLOPPY, "c", level="intelligent")
    spec = agent.make_spec(HOUR, catalog=DYN_CATALOG)
    [proposal] = await run.handle(spec, events)
    assert isinstance(proposal, ProposalMade)
    assert (proposal.source, proposal.action, proposal.tool, proposal.output) == (
        "interpret",
        "output",
        "test.sloppy",
        {"count": 5, "unit": None},
    )
    assert (proposal.error.code, proposal.remaining) == ("invalid_output", None)
    events += history_after(events, proposal)
    [verdict] = await run.handle(validator.make_spec(DYN_CATALOG, limits), events)
    events += history_after(events, verdict)
    [out] = await run.handle(spec, events)
    return run, [proposal, verdict, out]


async def test_a_cleared_interpretation_completes_the_step(tmp_path: Path, budget: BudgetClient) -> None:
    run, [_, verdict, done] = await interpret_flow(tmp_path, budget, Limits())
    assert isinstance(verdict, ProposalValidated)
    assert [c.name for c in verdict.checks] == ["output_valid", "output_expected", "output_size"]
    assert isinstance(done, StepCompleted)
    assert (done.tool, done.output) == ("test.sloppy", {"count": 5, "unit": None})
    assert run.tools.keys == [f"{WF}/c.s1:test.sloppy"]


async def test_a_refused_interpretation_fails_the_call_and_the_run_goes_on(
    tmp_path: Path, budget: BudgetClient
) -> None:
    run, [_, verdict, done] = await interpret_flow(tmp_path, budget, Limits(max_inputs_bytes=10))
    assert isinstance(verdict, ProposalRejected)
    [bad] = [c for c in verdict.checks if not c.passed]
    assert (bad.name, bad.message) == (
        "output_size",
        "the model's output for step 'c.s1' (test.sloppy) takes 23 bytes as JSON; the limit is 10",
    )
    assert isinstance(done, StepCompleted)  # the planned fallback, as without the model
    assert (done.tool, done.output) == ("test.count", {"count": 5, "unit": None})
    assert run.tools.keys == [f"{WF}/c.s1:test.sloppy", f"{WF}/c.s1:test.count"]
    assert "the model's interpretation was refused by the validator: the model's output" in done.deviations[1]
