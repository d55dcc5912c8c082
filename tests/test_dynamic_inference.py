"""Dynamic inference in the agent (recover, interpret, decide) and the decomposer (decompose).

Three layers:

* the prompt builders and validators of ``planner/providers/agent_prompts.py``, called
  directly (pure functions);
* the handlers, each run once on a folded state with a real :class:`Context`, real tools,
  a :class:`RecordedProvider` answering in order and the real budget actor (a ledger of
  each test's own on the test server);
* end to end: the whole cadre on the test server, the real anthropic SDK against the local
  fake of its API (``tests/fake_llm.py``), the real budget actor.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from cadre.actors import agent, decomposer, validator
from cadre.actors.answers import LiveAnswers
from cadre.actors.budget import BudgetClient, serve_budget
from cadre.actors.budget.rules import BudgetConfig
from cadre.actors.context import Budget, Context, Outside
from cadre.actors.inference import LLM, Inferred, Policy
from cadre.actors.outcome import Defer
from cadre.actors.runtime import ActorSpec
from cadre.actors.tool_port import ToolRunner
from cadre.actors.tools import ToolBox, ToolCall, ToolConfig, ToolError, builtin_impls
from cadre.bus.effects import BudgetDecided, CallSettled, ModelCalled, ToolCalled
from cadre.bus.events import (
    Event,
    PlanProposed,
    PlanValidated,
    ProposalMade,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsProposed,
    StepsRejected,
    TaskReady,
    WorkflowRequested,
)
from cadre.bus.plan import ErrorInfo, Plan, StepIntent, Task
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.catalog import Catalog
from cadre.planner.decompose import decompose
from cadre.planner.providers.agent_prompts import (
    FailedCall,
    decide_request,
    decide_validator,
    decompose_request,
    decompose_validator,
    interpret_request,
    interpret_validator,
    missing_outputs,
    recover_request,
    recover_validator,
)
from cadre.planner.providers.base import LLMRequest, LLMResponse, Usage
from cadre.planner.providers.pricing import ModelPrice, Prices
from cadre.planner.providers.structured import InvalidOutput, problems_of
from cadre.settings import Settings
from cadre.store.records import StoredEvent
from cadre.store.state import WorkflowState, fold
from tests import plugin_tools
from tests.conftest import ev, unique
from tests.fake_llm import FakeAPI, anthropic_api, ok
from tests.scripted_provider import RecordedProvider
from tests.system_harness import Harness, cadre_running, settings_for

CATALOG = Catalog([*builtin_catalog().values(), *(spec for spec, _ in plugin_tools.TOOLS)])
WF = "wf-dyn"
HOUR = timedelta(hours=1)
FLAKY = "test.flaky failed: unavailable: the flaky service is down"


def problems(exc: pytest.ExceptionInfo[Exception]) -> list[str]:
    assert isinstance(exc.value, InvalidOutput | ValidationError)
    return problems_of(exc.value)


# -- the budget: the real service, a ledger of each test's own ---------------------------------


@pytest.fixture
async def budget(nc: NATS) -> AsyncIterator[BudgetClient]:
    """The budget actor on the test server with its own subjects and ledger (consultation ids
    derive from event ids, which these tests share, so no two tests may share a ledger)."""
    prefix = unique("b")
    subjects = Subjects(prefix)
    ledger = StreamSpec(name=f"{prefix.upper()}_LEDGER", subjects=subjects.ledger, storage="memory")
    config = BudgetConfig(
        workflow_usd=1.0,
        daily_usd=10.0,
        reservation_timeout_s=60.0,
        rate_limits={},
        prices=Prices(default=ModelPrice(input=1.0, output=5.0)),
    )
    try:
        async with serve_budget(nc, subjects, config, ledger=ledger, cache_bucket=None, cache_ttl_s=0.0):
            yield BudgetClient(nc, subjects)
    finally:
        await nc.jetstream().delete_stream(ledger.name)


class KeyedTools:
    """The real toolbox, remembering each call's tool and idempotency key."""

    def __init__(self, workspace: Path) -> None:
        impls = {**builtin_impls(), **{spec.name: impl for spec, impl in plugin_tools.TOOLS}}
        self.runner = ToolRunner(ToolBox(CATALOG, impls, ToolConfig(workspace=workspace)))
        self.keys: list[str] = []

    async def run(self, tool: str, inputs: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        self.keys.append(idempotency_key)
        return await self.runner.run(tool, inputs, idempotency_key)


def answer(output: dict[str, Any]) -> LLMResponse:
    return LLMResponse(
        provider="recorded",
        model="m",
        output=output,
        text=json.dumps(output),
        usage=Usage(input_tokens=100, output_tokens=20),
        stop_reason="tool_use",
        latency_ms=1.0,
    )


# -- folded workflows and one handler call ---------------------------------------------------


def history(*payloads: Event) -> list[StoredEvent]:
    out = []
    for seq, data in enumerate(payloads, start=1):
        env = ev(data, WF, i=seq)
        out.append(StoredEvent(seq, f"t.evt.{WF}.{env.type}", env, b""))
    return out


def history_after(events: list[StoredEvent], *payloads: Event) -> list[StoredEvent]:
    """``payloads`` stored after ``events``."""
    out = []
    for seq, data in enumerate(payloads, start=len(events) + 1):
        env = ev(data, WF, i=seq)
        out.append(StoredEvent(seq, f"t.evt.{WF}.{env.type}", env, b""))
    return out


def to_step(plan: Plan, task_id: str, *, level: str, mode: str = "adaptive") -> list[StoredEvent]:
    """A workflow whose task ``task_id`` was decomposed by the rules; its first step is ready."""
    task = next(t for t in plan.nodes if t.id == task_id)
    steps = decompose(task, CATALOG)
    return history(
        WorkflowRequested(plan=plan, intelligence=level, mode=mode),
        PlanProposed(plan=plan),
        PlanValidated(revision=1),
        TaskReady(task=task),
        StepsProposed(task_id=task_id, steps=tuple(steps)),
        StepReady(step=steps[0]),
    )


def one_task(tool: str, inputs: dict[str, Any], **extra: Any) -> Plan:
    return Plan(nodes=(Task(id="x", tool=tool, inputs=inputs, **extra),))


E = TypeVar("E", BudgetDecided, ModelCalled, CallSettled, ToolCalled)


class Run:
    """One handler call's world: tools, budget, recorded answers; what it emitted and recorded."""

    def __init__(
        self, tmp_path: Path, budget: Budget | None, answers: Sequence[LLMResponse] = (), *, model: bool = True
    ) -> None:
        self.tools = KeyedTools(tmp_path)
        self.provider = RecordedProvider(answers)
        llm = LLM(provider=self.provider, models={"default": "m"}) if model else None
        self.outside = Outside(tools=self.tools, budget=budget, llm=llm, policy=Policy())
        self.ctx: Context | None = None
        self.recorded: list[Any] = []  # the effects of every handler call, in order
        self.emitted: list[Event] = []  # what every handler call emitted, in order

    async def handle(self, spec: ActorSpec, events: list[StoredEvent]) -> list[Event]:
        state: WorkflowState = fold(WF, events)
        last = events[-1]
        self.ctx = Context(kind=spec.kind, stored=last, now=last.event.at, answers=LiveAnswers(self.outside))
        out = await spec.handler(self.ctx, events[-1], state)
        assert not isinstance(out, Defer)
        self.recorded += self.ctx.effects
        self.emitted += out
        return list(out)

    async def agent(
        self, events: list[StoredEvent], catalog: Catalog | None = CATALOG, *, checked_by: Catalog = CATALOG
    ) -> Event:
        """The agent's answer to the last event; a model's proposal goes through the validator
        (over ``checked_by``) and the agent's answer to its verdict is returned instead."""
        [out] = await self.handle(agent.make_spec(HOUR, catalog=catalog), events)
        if isinstance(out, ProposalMade):
            events = [*events, *history_after(events, out)]
            [verdict] = await self.handle(validator.make_spec(checked_by), events)
            events = [*events, *history_after(events, verdict)]
            [out] = await self.handle(agent.make_spec(HOUR, catalog=catalog), events)
        return out

    @property
    def requests(self) -> list[LLMRequest]:
        return self.provider.requests

    def effects(self, kind: type[E]) -> list[E]:
        return [e for e in self.recorded if isinstance(e, kind)]

    @property
    def asked(self) -> list[str]:
        """The kinds of consultation the budget was asked for, in order."""
        return [e.call for e in self.effects(BudgetDecided)]


async def without_model(tmp_path: Path, events: list[StoredEvent]) -> Event:
    """What the agent emits with no model at all (the behaviour before dynamic inference)."""
    return await Run(tmp_path, None, model=False).agent(events)


# == prompts and validators (pure) ===========================================================

STEP = StepIntent(
    id="top.s1",
    task_id="top",
    tool="sql.query",
    operation="the three best customers",
    inputs={"sql": "SELECT name FROM customers"},
    expected_outputs=("rows",),
    fallback_tools=("fs.read",),
)
SQL_FAILED = FailedCall("sql.query", ErrorInfo(code="sql_error", message="no such table: customers"))


def test_recover_prompt_is_deterministic_and_lists_tried_tools_then_allowed_alternatives() -> None:
    first = recover_request(STEP, STEP.inputs, [SQL_FAILED], CATALOG, skippable=False)
    again = recover_request(STEP, dict(STEP.inputs), [SQL_FAILED], CATALOG, skippable=False)
    assert first == again
    assert first.kind == "recover"
    assert (first.model, first.max_output_tokens) == ("", 0)  # the context fills both in
    tried, alternatives = first.system.split("\nTried:\n")[1].split("\nAlternatives:\n")
    assert [json.loads(line)["name"] for line in tried.splitlines()] == ["sql.query"]
    names = [json.loads(line)["name"] for line in alternatives.splitlines()]
    assert names == sorted(names)
    assert "sql.query" not in names
    assert "no such table: customers" in first.prompt
    assert "NOT allowed" in first.prompt
    assert "Skipping this step is allowed" in recover_request(STEP, {}, [SQL_FAILED], CATALOG, skippable=True).prompt


def test_recover_prompt_leaves_out_prohibited_and_approval_tools() -> None:
    catalog = CATALOG.with_policy(prohibited=["http.get"], approval=["fs.write"])
    request = recover_request(STEP, STEP.inputs, [SQL_FAILED], catalog, skippable=False)
    alternatives = request.system.split("\nAlternatives:\n")[1]
    assert '"http.get"' not in alternatives
    assert '"fs.write"' not in alternatives
    assert '"text.render"' in alternatives


def test_recover_validator_accepts_each_valid_action() -> None:
    validate = recover_validator(CATALOG, STEP, ["sql.query", "fs.read"], skippable=True)
    assert validate({"action": "fail", "reason": "the table is gone"}).action == "fail"
    assert validate({"action": "skip", "reason": "unused"}).action == "skip"
    retry = validate({"action": "retry", "tool": None, "inputs": None, "reason": "transient"})
    assert (retry.tool, retry.inputs) == ("sql.query", None)
    changed = validate({"action": "retry", "inputs": {"sql": "SELECT name FROM customer"}, "reason": "typo"})
    assert changed.inputs == {"sql": "SELECT name FROM customer"}
    echo_step = msgspec.structs.replace(STEP, expected_outputs=("value",))
    alt = recover_validator(CATALOG, echo_step, ["sql.query"], skippable=False)(
        {"action": "alternative", "tool": "test.echo", "inputs": {"value": "x"}, "reason": "same value"}
    )
    assert (alt.action, alt.tool, alt.inputs) == ("alternative", "test.echo", {"value": "x"})


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ({"action": "wait", "reason": "r"}, [r"^\$\.action: Input should be 'retry', 'alternative', 'skip' or 'fail'"]),
        ({"action": "fail"}, [r"^\$\.reason: Field required$"]),
        ({"action": "skip", "reason": "r"}, [r"^\$\.action: skipping is not allowed for this step"]),
        ({"action": "retry", "tool": "test.echo", "reason": "r"}, [r"^\$\.tool: 'test\.echo' was not tried"]),
        (
            {"action": "retry", "inputs": {"sqll": "x"}, "reason": "r"},
            [r"^\$\.inputs\.sql: Field required$", r"^\$\.inputs\.sqll: Extra inputs are not permitted"],
        ),
        ({"action": "alternative", "inputs": {}, "reason": "r"}, [r"^\$\.tool: an alternative needs a tool: one of "]),
        (
            {"action": "alternative", "tool": "text.rendr", "inputs": {"template": "x"}, "reason": "r"},
            [r"^\$\.tool: 'text\.rendr' is not in the catalog; did you mean 'text\.render'\? use one of "],
        ),
        (
            {"action": "alternative", "tool": "sql.query", "inputs": {"sql": "x"}, "reason": "r"},
            [r"^\$\.tool: 'sql\.query' was tried already; to run it again, answer \"retry\"$"],
        ),
        (
            {"action": "alternative", "tool": "test.echo", "reason": "r"},
            [r"^\$\.tool: 'test\.echo' does not output rows", r"^\$\.inputs: an alternative needs inputs"],
        ),
        (
            {"action": "alternative", "tool": "sql.schema", "inputs": {"x": "${top.rows}"}, "reason": "r"},
            [
                r"^\$\.tool: 'sql\.schema' does not output rows",
                r"^\$\.inputs\.x: \$\{top\.rows\} is a reference, but inputs given here are used as written",
                r"^\$\.inputs\.x: Extra inputs are not permitted",
            ],
        ),
    ],
)
def test_recover_validator_locates_each_problem(output: dict[str, Any], expected: list[str]) -> None:
    validate = recover_validator(CATALOG, STEP, ["sql.query"], skippable=False)
    with pytest.raises((InvalidOutput, ValidationError)) as exc:
        validate(output)
    found = problems(exc)
    assert len(found) == len(expected), found
    for line, pattern in zip(found, expected, strict=True):
        assert re.match(pattern, line), (line, pattern)


def test_recover_validator_leaves_the_policy_to_the_validator() -> None:
    """A prohibited or approval-gated alternative is a valid answer: it becomes a proposal, and the
    validator's recorded verdict refuses it or makes it wait (tests/test_proposals.py)."""
    catalog = CATALOG.with_policy(prohibited=["fs.read"], approval=["fs.write"])
    step = msgspec.structs.replace(STEP, expected_outputs=())
    validate = recover_validator(catalog, step, ["sql.query"], skippable=False)
    read = validate({"action": "alternative", "tool": "fs.read", "inputs": {"path": "a"}, "reason": "r"})
    write = validate(
        {"action": "alternative", "tool": "fs.write", "inputs": {"path": "a", "content": "b"}, "reason": "r"}
    )
    assert (read.action, read.tool, write.tool) == ("alternative", "fs.read", "fs.write")


def test_interpret_prompt_schema_and_validator() -> None:
    spec = CATALOG["test.count"]
    step = StepIntent(id="c.s1", task_id="c", tool="test.count", inputs={"value": "abc"}, expected_outputs=("unit",))
    request = interpret_request(step, step.inputs, spec, {"count": 3}, "test.count returned no unit")
    assert request == interpret_request(step, {"value": "abc"}, spec, {"count": 3}, "test.count returned no unit")
    assert request.kind == "interpret"
    assert request.schema["required"] == ["count", "unit"]  # the tool's own, then what the step expects
    assert '<output>\n{"count":3}\n</output>' in request.prompt
    validate = interpret_validator(spec, step.expected_outputs)
    assert validate({"count": 3, "unit": "letters"}) == {"count": 3, "unit": "letters"}
    with pytest.raises(InvalidOutput, match=r"^\$\.unit: missing; the step expects this field$"):
        validate({"count": 3})
    with pytest.raises(ValidationError) as exc:
        validate({"count": "three", "units": "letters"})
    assert [p.split(":")[0] for p in problems_of(exc.value)] == ["$.count", "$.units"]
    assert missing_outputs({"count": 3, "unit": None}, ["count", "unit", "other"]) == ["unit", "other"]


def test_decide_prompt_schema_and_validator() -> None:
    options = ("test.sloppy", "test.echo")
    request = decide_request(STEP, STEP.inputs, SQL_FAILED, options, CATALOG)
    assert request == decide_request(STEP, STEP.inputs, SQL_FAILED, options, CATALOG)
    assert request.schema["properties"]["choice"]["enum"] == ["test.sloppy", "test.echo"]
    assert [json.loads(line)["name"] for line in request.system.strip().splitlines()[-2:]] == [
        "test.echo",
        "test.sloppy",
    ]
    validate = decide_validator(options)
    assert validate({"choice": "test.echo", "reason": "it works"}).choice == "test.echo"
    with pytest.raises(InvalidOutput, match=r"^\$\.choice: 'test\.ech' is not an option; did you mean 'test\.echo'\?"):
        validate({"choice": "test.ech", "reason": "r"})
    with pytest.raises(ValidationError, match="reason"):
        validate({"choice": "test.echo"})


REPORT = Task(id="report", description="render the rows as a report", capabilities=("write",), depends_on=("top",))
TOP_OUTPUT = {"columns": ["name"], "rows": [["Ada"]], "row_count": 1, "truncated": False}


def test_decompose_prompt_is_deterministic_and_names_the_step_ids_of_the_attempt() -> None:
    request = decompose_request(REPORT, CATALOG, attempt=2, upstream={"top": TOP_OUTPUT}, reason="it names no tool")
    assert request == decompose_request(
        REPORT, CATALOG, attempt=2, upstream={"top": TOP_OUTPUT}, reason="it names no tool"
    )
    assert request.kind == "decompose"
    assert '"report.a2.s1"' in request.prompt
    assert '- top: {"columns":["name"],"rows":[["Ada"]],"row_count":1,"truncated":false}' in request.prompt
    prohibited = CATALOG.with_policy(prohibited=["http.get"])
    assert '"name":"http.get"' not in decompose_request(REPORT, prohibited, attempt=1, upstream={}).system


def test_decompose_validator_builds_steps_with_the_rules_ids_and_the_catalogs_approval() -> None:
    catalog = CATALOG.with_policy(approval=["fs.write"])
    validate = decompose_validator(
        REPORT, catalog, attempt=2, upstream_ids={"top"}, upstream_outputs={"top": TOP_OUTPUT}
    )
    steps = validate(
        {
            "steps": [
                {
                    "tool": "text.render",
                    "inputs": {"template": "{t!t}", "values": {"t": "${top}"}},
                    "operation": "render the table",
                },
                {
                    "tool": "fs.write",
                    "inputs": {"path": "r.md", "content": "${report.a2.s1.text}"},
                    "operation": "save it",
                    "expected_outputs": ["path"],
                },
            ]
        }
    )
    assert [s.id for s in steps] == ["report.a2.s1", "report.a2.s2"]
    assert [s.requires_approval for s in steps] == [False, True]
    assert [s.expected_outputs for s in steps] == [("text",), ("path",)]  # default: the required output fields
    assert steps[1].rollback is not None  # a side effect says how to undo it


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([], [r"^\$\.steps: List should have at least 1 item"]),
        ([{"tool": "text.render", "inputs": {}}], [r"^\$\.steps\[0\]\.operation: Field required$"]),
        (
            [{"tool": "text.rendr", "inputs": {}, "operation": "o"}],
            [r"^\$\.steps\[0\]\.tool: 'text\.rendr' is not in the catalog; did you mean 'text\.render'\?"],
        ),
        (
            [{"tool": "text.render", "inputs": {"template": "${other.x}"}, "operation": "o"}],
            [r"^\$\.steps\[0\]\.inputs\.template: step 'report\.s1' references \$\{other\.x\} .* not upstream"],
        ),
        (
            [{"tool": "fs.write", "inputs": {"path": "a", "content": "b", "x": 1}, "operation": "o"}],
            [r"^\$\.steps\[0\]\.inputs: step 'report\.s1': inputs do not match FsWriteInput"],
        ),
        (
            [{"tool": "text.render", "inputs": {"template": "t"}, "operation": "o", "expected_outputs": ["txt"]}],
            [r"^\$\.steps\[0\]\.expected_outputs\[0\]: 'text\.render' has no output field 'txt'$"],
        ),
    ],
)
def test_decompose_validator_locates_each_problem(steps: list[dict[str, Any]], expected: list[str]) -> None:
    validate = decompose_validator(REPORT, CATALOG, attempt=1, upstream_ids={"top"})
    with pytest.raises((InvalidOutput, ValidationError)) as exc:
        validate({"steps": steps})
    found = problems(exc)
    assert len(found) == len(expected), found
    for line, pattern in zip(found, expected, strict=True):
        assert re.match(pattern, line), (line, pattern)


def test_skippable_only_when_nothing_uses_the_output() -> None:
    a = Task(id="a", tool="test.echo", inputs={"value": "a"})
    b = Task(id="b", tool="test.echo", inputs={"value": "b"})
    c = Task(id="c", tool="test.echo", depends_on=("a",), inputs={"value": "${a.value}"})
    two = (
        StepIntent(id="b.s1", task_id="b", tool="test.echo", inputs={"value": "1"}),
        StepIntent(id="b.s2", task_id="b", tool="test.echo", inputs={"value": "2"}),
    )
    reading = msgspec.structs.replace(two[1], inputs={"value": "${b.s1.value}"})

    def state(plan: Plan, steps: tuple[StepIntent, ...]) -> WorkflowState:
        tasks = [TaskReady(task=t) for t in plan.nodes]
        return fold(WF, history(PlanProposed(plan=plan), *tasks, StepsProposed(task_id="b", steps=steps)))

    leaf = Plan(nodes=(a, b), output="a")
    assert agent.skippable(state(leaf, two[:1]), two[0])  # the last step of a task nobody uses
    assert not agent.skippable(state(Plan(nodes=(a, b)), two[:1]), two[0])  # b is the result (the last task)
    assert agent.skippable(state(Plan(nodes=(a, b, c)), two), two[0])  # an earlier step nobody reads
    assert not agent.skippable(state(Plan(nodes=(a, b, c)), (two[0], reading)), two[0])
    assert not agent.skippable(state(Plan(nodes=(b, a, c), output="b"), two), two[1])


def test_fallback_order_moves_the_choice_first() -> None:
    assert agent.fallback_order(("a", "b", "c"), "c") == ("c", "a", "b")
    assert agent.fallback_order(("a", "b"), "a") == ("a", "b")


async def test_declined_means_the_model_was_not_for_this_workflow(tmp_path: Path, budget: BudgetClient) -> None:
    """``Inferred.declined``: no model here, or the level/mode does not allow the kind; a cap
    or an invalid answer is a miss the caller reports, not a decline."""

    async def decide(run: Run, n: int, **policy: Any) -> Inferred[Any]:
        wf = f"{WF}-{n}"  # a workflow of its own: its own cap and consultation ids
        env = ev(WorkflowRequested(request="r"), wf, i=n)
        stored = StoredEvent(n, f"t.evt.{wf}.{env.type}", env, b"")
        ctx = Context(kind="agent", stored=stored, now=stored.event.at, answers=LiveAnswers(run.outside))
        request = decide_request(STEP, STEP.inputs, SQL_FAILED, ("fs.read", "http.get"), CATALOG)
        return await ctx.infer("decide", request, decide_validator(("fs.read", "http.get")), Policy(**policy))

    bad = answer({"choice": "nothing of the kind", "reason": "?"})
    no_model = await decide(Run(tmp_path, budget, model=False), 1, intelligence="intelligent")
    basic = await decide(Run(tmp_path, budget), 2, intelligence="basic")
    capped = await decide(Run(tmp_path, budget), 3, intelligence="intelligent", budget_usd=0.0)
    invalid = await decide(Run(tmp_path, budget, [bad, bad]), 4, intelligence="intelligent")
    assert no_model.reason.startswith("no_provider")
    assert basic.reason.startswith("denied: not_allowed")
    assert capped.reason.startswith("denied: over_workflow_cap")
    assert invalid.reason == "invalid_output_after_repair"
    assert no_model.declined
    assert basic.declined
    assert not capped.declined
    assert not invalid.declined


async def test_fallback_providers_are_asked_in_turn_and_replayed(budget: BudgetClient) -> None:
    """Each provider of the list after a transient failure: its own consultation, call and
    settlement; a replay of the recorded effects takes the same turns and calls nothing."""
    from cadre.actors.answers import RecordedAnswers
    from cadre.planner.providers.base import ProviderError

    def down(name: str) -> ProviderError:
        return ProviderError("overloaded", "the API is overloaded (HTTP 529)", provider=name, status=529)

    good = answer({"choice": "fs.read", "reason": "the file tool reads it"})
    first, second, third = (
        RecordedProvider([down("a")], name="a"),
        RecordedProvider([down("b")], name="b"),
        RecordedProvider([good], name="c"),
    )
    chain = tuple(LLM(provider=p, models={"default": f"m-{p.name}"}) for p in (second, third))
    llm = LLM(provider=first, models={"default": "m-a"}, fallbacks={"decide": chain})
    env = ev(WorkflowRequested(request="r"), f"{WF}-fb", i=1)
    stored = StoredEvent(1, f"t.evt.{WF}-fb.{env.type}", env, b"")
    request = decide_request(STEP, STEP.inputs, SQL_FAILED, ("fs.read", "http.get"), CATALOG)
    validate = decide_validator(("fs.read", "http.get"))
    policy = Policy(intelligence="intelligent")
    live = Context(
        kind="agent", stored=stored, now=stored.event.at, answers=LiveAnswers(Outside(budget=budget, llm=llm))
    )
    got = await live.infer("decide", request, validate, policy)
    assert (got.ok, got.provider, got.model, got.calls, got.fallbacks) == (True, "c", "m-c", 3, 2)
    assert "after 2 fallback(s) between providers" in got.describe()
    decided = [e for e in live.effects if isinstance(e, BudgetDecided)]
    assert [(d.asked.provider, d.asked.attempt) for d in decided if d.asked] == [("a", 0), ("b", 1), ("c", 2)]
    assert len([e for e in live.effects if isinstance(e, CallSettled)]) == 3

    replay = Context(kind="agent", stored=stored, now=stored.event.at, answers=RecordedAnswers(live.effects))
    again = await replay.infer("decide", request, validate, policy)
    assert (again.value, again.provider, again.calls, again.fallbacks) == (got.value, "c", 3, 2)
    assert replay.effects == live.effects

    # a list that runs out: every provider asked once, the caller falls back to its rules
    ran_out = LLM(
        provider=RecordedProvider([down("a")], name="a"),
        models={"default": "m-a"},
        fallbacks={"decide": (LLM(provider=RecordedProvider([down("b")], name="b"), models={"default": "m-b"}),)},
    )
    env = ev(WorkflowRequested(request="r"), f"{WF}-out", i=2)
    stored = StoredEvent(2, f"t.evt.{WF}-out.{env.type}", env, b"")
    ctx = Context(
        kind="agent", stored=stored, now=stored.event.at, answers=LiveAnswers(Outside(budget=budget, llm=ran_out))
    )
    out = await ctx.infer("decide", request, validate, policy)
    assert (out.ok, out.reason, out.calls, out.fallbacks) == (False, "provider_error: overloaded", 2, 1)


async def test_a_refused_output_travels_on_the_tool_error(tmp_path: Path) -> None:
    async def returns_a_dict(inputs: Any, config: ToolConfig, call: ToolCall) -> Any:
        return {"value": 1}

    async def returns_an_object(inputs: Any, config: ToolConfig, call: ToolCall) -> Any:
        return object()

    impls = {"test.echo": returns_a_dict, "test.sloppy": returns_an_object}
    box = ToolBox(CATALOG, impls, ToolConfig(workspace=tmp_path))
    with pytest.raises(ToolError, match=r"^test\.echo returned dict, not Value$") as exc:
        await box.call("test.echo", {"value": "v"}, ToolCall(idempotency_key="k"))
    assert (exc.value.code, exc.value.output) == ("invalid_output", {"value": 1})
    with pytest.raises(ToolError, match=r"^test\.sloppy returned object, not Count$") as exc:
        await box.call("test.sloppy", {"value": "v"}, ToolCall(idempotency_key="k"))
    assert exc.value.output is None  # not JSON data: nothing to interpret


# == the agent, one handler call at a time ===================================================


RECOVER_WITH_ECHO = {"action": "alternative", "tool": "test.echo", "inputs": {"value": "v"}, "reason": "echo works"}


async def test_recover_runs_an_alternative_tool_that_succeeds(tmp_path: Path, budget: BudgetClient) -> None:
    run = Run(tmp_path, budget, [answer(RECOVER_WITH_ECHO)])
    done = await run.agent(to_step(one_task("test.flaky", {"value": "v"}), "x", level="adaptive"))
    assert isinstance(done, StepCompleted)
    assert (done.tool, done.planned_tool, done.output, done.attempts) == ("test.echo", "test.flaky", {"value": "v"}, 2)
    assert done.deviations[0] == FLAKY
    assert re.fullmatch(
        r"recovery: ran alternative tool test\.echo with new inputs, as the model advised: echo works; "
        r"answered by recorded/m in 1 call\(s\) \(\$\d+\.\d{4}\)",
        done.deviations[1],
    )
    assert run.tools.keys == [f"{WF}/x.s1:test.flaky", f"{WF}/x.s1:test.echo#alt"]
    assert run.asked == ["recover"]
    assert [r.kind for r in run.requests] == ["recover"]
    assert "the flaky service is down" in run.requests[0].prompt
    assert [e.decision.outcome for e in run.effects(BudgetDecided)] == ["granted"]
    assert len(run.effects(CallSettled)) == 1


async def test_recover_denied_at_basic_fails_exactly_as_without_a_model(tmp_path: Path, budget: BudgetClient) -> None:
    events = to_step(one_task("test.flaky", {"value": "v"}), "x", level="basic")
    run = Run(tmp_path, budget, [answer(RECOVER_WITH_ECHO)])
    failed = await run.agent(events)
    assert failed == await without_model(tmp_path, events)
    assert failed == await Run(tmp_path, None, model=False).agent(events, catalog=None)  # the agent before it all
    assert isinstance(failed, StepFailed)
    assert failed.error == ErrorInfo(code="unavailable", message="the flaky service is down")
    assert run.requests == []
    assert run.asked == ["recover"]
    assert run.effects(BudgetDecided)[0].decision.reason == "not_allowed"


async def test_recover_retries_with_new_inputs(tmp_path: Path, budget: BudgetClient) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    fix = {"action": "retry", "tool": None, "inputs": {"path": "notes.txt"}, "reason": "the file is notes.txt"}
    run = Run(tmp_path, budget, [answer(fix)])
    done = await run.agent(to_step(one_task("fs.read", {"path": "note.txt"}), "x", level="adaptive"))
    assert isinstance(done, StepCompleted)
    assert done.output["content"] == "hello"
    assert done.deviations[1].startswith("recovery: retried fs.read with new inputs, as the model advised: ")
    assert run.tools.keys == [f"{WF}/x.s1:fs.read", f"{WF}/x.s1:fs.read#retry"]


async def test_a_failed_retry_fails_the_step_and_says_what_was_tried(tmp_path: Path, budget: BudgetClient) -> None:
    retry = {"action": "retry", "reason": "it may be back"}
    run = Run(tmp_path, budget, [answer(retry)])
    failed = await run.agent(to_step(one_task("test.flaky", {"value": "v"}), "x", level="adaptive"))
    assert isinstance(failed, StepFailed)
    assert failed.tried == ("test.flaky", "test.flaky")
    assert failed.error.message == (
        "the flaky service is down (after the model's recovery, retry with test.flaky: it may be back)"
    )
    assert run.tools.keys[-1] == f"{WF}/x.s1:test.flaky#retry"


async def test_recover_skips_a_step_nothing_uses(tmp_path: Path, budget: BudgetClient) -> None:
    plan = Plan(
        nodes=(Task(id="x", tool="test.flaky", inputs={"value": "v"}), Task(id="y", tool="test.echo")), output="y"
    )
    run = Run(tmp_path, budget, [answer({"action": "skip", "reason": "only a side note"})])
    done = await run.agent(to_step(plan, "x", level="adaptive"))
    assert isinstance(done, StepCompleted)
    assert (done.output, done.tool, done.attempts) == ({}, "test.flaky", 1)
    assert done.deviations[-1].startswith("step skipped on the model's advice, with an empty output: only a side note")
    assert "Skipping this step is allowed" in run.requests[0].prompt


async def test_an_unsafe_skip_is_repaired_into_a_failure(tmp_path: Path, budget: BudgetClient) -> None:
    answers = [answer({"action": "skip", "reason": "meh"}), answer({"action": "fail", "reason": "nothing else works"})]
    run = Run(tmp_path, budget, answers)
    failed = await run.agent(to_step(one_task("test.flaky", {"value": "v"}), "x", level="adaptive"))
    assert isinstance(failed, StepFailed)
    assert re.fullmatch(
        r"the flaky service is down \(recovery: the model advised failing the step: nothing else works; "
        r"answered by recorded/m in 2 call\(s\), after one repair round \(\$\d+\.\d{4}\)\)",
        failed.error.message,
    )
    repair = run.requests[1]
    assert repair.repair_of is not None
    assert "$.action: skipping is not allowed for this step" in repair.prompt


async def test_invalid_recoveries_fall_back_and_the_failure_says_so(tmp_path: Path, budget: BudgetClient) -> None:
    bad = {"action": "alternative", "tool": "test.nope", "inputs": {}, "reason": "r"}
    events = to_step(one_task("test.flaky", {"value": "v"}), "x", level="adaptive")
    run = Run(tmp_path, budget, [answer(bad), answer(bad)])
    failed = await run.agent(events)
    before = await without_model(tmp_path, events)
    assert isinstance(failed, StepFailed)
    assert isinstance(before, StepFailed)
    assert failed.error.message == before.error.message + (
        " (recovery was tried: model not used (invalid_output_after_repair))"
    )
    assert failed.tried == before.tried
    assert len(run.requests) == 2
    assert run.tools.keys == [f"{WF}/x.s1:test.flaky"]  # nothing ran on an invalid answer


async def test_a_policy_refusal_is_not_worked_around(tmp_path: Path, budget: BudgetClient) -> None:
    events = to_step(one_task("fs.read", {"path": "../etc/passwd"}), "x", level="autonomous", mode="creative")
    run = Run(tmp_path, budget, [answer(RECOVER_WITH_ECHO)])
    failed = await run.agent(events)
    assert isinstance(failed, StepFailed)
    assert failed.error.code == "outside_workspace"
    assert failed == await without_model(tmp_path, events)
    assert run.asked == []


async def test_interpret_fixes_an_output_its_schema_refuses(tmp_path: Path, budget: BudgetClient) -> None:
    run = Run(tmp_path, budget, [answer({"count": 5})])
    done = await run.agent(to_step(one_task("test.sloppy", {"value": "three"}), "x", level="intelligent"))
    assert isinstance(done, StepCompleted)
    assert (done.tool, done.output) == ("test.sloppy", {"count": 5, "unit": None})
    assert re.fullmatch(
        r"output interpreted by the model: test\.sloppy returned output its schema refuses: count: Field required; "
        r"value: Extra inputs are not permitted; answered by recorded/m in 1 call\(s\) \(\$\d+\.\d{4}\)",
        done.deviations[0],
    )
    assert '<output>\n{"value":"three"}\n</output>' in run.requests[0].prompt
    [tool] = run.effects(ToolCalled)
    assert (tool.retryable, tool.refused) == (False, {"value": "three"})  # the refused output is recorded


async def test_interpret_not_allowed_fails_the_call_as_before(tmp_path: Path, budget: BudgetClient) -> None:
    events = to_step(one_task("test.sloppy", {"value": "three"}), "x", level="adaptive", mode="strict")
    run = Run(tmp_path, budget, [answer({"count": 5})])
    failed = await run.agent(events)
    assert isinstance(failed, StepFailed)
    assert failed.error.code == "invalid_output"
    assert failed == await without_model(tmp_path, events)
    assert run.asked == ["interpret", "recover"]  # both asked, both denied
    assert run.requests == []


async def test_interpret_supplies_a_field_the_step_expects(tmp_path: Path, budget: BudgetClient) -> None:
    plan = one_task("test.count", {"value": "abc"})
    events = to_step(plan, "x", level="intelligent")
    step = msgspec.structs.replace(events[-1].event.data.step, expected_outputs=("count", "unit"))  # type: ignore[union-attr]
    events = history(
        *(e.event.data for e in events[:-2]), StepsProposed(task_id="x", steps=(step,)), StepReady(step=step)
    )
    run = Run(tmp_path, budget, [answer({"count": 3, "unit": "letters"})])
    done = await run.agent(events)
    assert isinstance(done, StepCompleted)
    assert done.output == {"count": 3, "unit": "letters"}
    assert done.deviations[0].startswith(
        "output interpreted by the model: test.count returned no unit, which the step expects; answered by"
    )
    # Without a model the call fails: the step promised a field its output does not have.
    failed = await without_model(tmp_path, events)
    assert isinstance(failed, StepFailed)
    assert failed.error == ErrorInfo(
        code="missing_output", message="test.count returned no unit, which the step expects"
    )


DECIDE_PLAN = one_task("test.flaky", {"value": "v"}, fallback_tools=("fs.read", "test.echo"))


async def test_decide_reorders_the_fallbacks(tmp_path: Path, budget: BudgetClient) -> None:
    run = Run(tmp_path, budget, [answer({"choice": "test.echo", "reason": "fs.read takes no value"})])
    done = await run.agent(to_step(DECIDE_PLAN, "x", level="intelligent"))
    assert isinstance(done, StepCompleted)
    assert (done.tool, done.attempts) == ("test.echo", 2)
    assert done.deviations[0] == FLAKY
    assert done.deviations[1].startswith(
        "fallback tool test.echo tried first, as the model decided: fs.read takes no value; answered by recorded/m"
    )
    assert done.deviations[2] == "used fallback tool test.echo instead of test.flaky"
    assert run.tools.keys == [f"{WF}/x.s1:test.flaky", f"{WF}/x.s1:test.echo"]  # fs.read never ran
    assert run.requests[0].schema["properties"]["choice"]["enum"] == ["fs.read", "test.echo"]


async def test_decide_without_a_valid_answer_keeps_the_planned_order_and_says_so(
    tmp_path: Path, budget: BudgetClient
) -> None:
    bad = answer({"choice": "test.nope", "reason": "r"})
    run = Run(tmp_path, budget, [bad, bad])
    done = await run.agent(to_step(DECIDE_PLAN, "x", level="intelligent"))
    assert isinstance(done, StepCompleted)
    assert done.tool == "test.echo"
    assert done.deviations[1] == "fallback tools tried in planned order: model not used (invalid_output_after_repair)"
    assert done.deviations[2].startswith("fs.read failed: invalid_input: ")
    assert "$.choice: 'test.nope' is not an option" in run.requests[1].prompt


async def test_decide_not_allowed_leaves_no_trace(tmp_path: Path, budget: BudgetClient) -> None:
    events = to_step(DECIDE_PLAN, "x", level="adaptive")
    run = Run(tmp_path, budget)
    done = await run.agent(events)
    assert done == await without_model(tmp_path, events)
    assert run.asked == ["decide"]


# == the decomposer ==========================================================================

UP = Task(id="up", tool="test.echo", inputs={"value": "hello"})
TOOLLESS = Task(id="d", description="say it twice", capabilities=("echo",), depends_on=("up",))
TOOLLESS_PLAN = Plan(nodes=(UP, TOOLLESS))
ECHO_STEPS = {
    "steps": [
        {"tool": "test.echo", "inputs": {"value": "${up.value}"}, "operation": "echo the greeting"},
        {"tool": "test.echo", "inputs": {"value": "${d.s1.value}"}, "operation": "echo it again"},
    ]
}


def to_task(level: str, *, attempt: int = 1, task: Task = TOOLLESS) -> list[StoredEvent]:
    up_step = decompose(UP, CATALOG)[0]
    plan = Plan(nodes=(UP, task))
    return history(
        WorkflowRequested(plan=plan, intelligence=level),
        PlanProposed(plan=plan),
        PlanValidated(revision=1),
        TaskReady(task=UP),
        StepsProposed(task_id="up", steps=(up_step,)),
        StepReady(step=up_step),
        StepCompleted(
            task_id="up", step_id="up.s1", tool="test.echo", planned_tool="test.echo", output={"value": "hi"}
        ),
        TaskReady(task=task, attempt=attempt),
    )


async def test_decomposer_turns_a_toolless_task_into_steps(tmp_path: Path, budget: BudgetClient) -> None:
    run = Run(tmp_path, budget, [answer(ECHO_STEPS)])
    [proposed] = await run.handle(decomposer.make_spec(CATALOG), to_task("adaptive"))
    assert isinstance(proposed, StepsProposed)
    assert [(s.id, s.tool, s.inputs) for s in proposed.steps] == [
        ("d.s1", "test.echo", {"value": "${up.value}"}),
        ("d.s2", "test.echo", {"value": "${d.s1.value}"}),
    ]
    assert proposed.steps[0].expected_outputs == ("value",)
    request = run.requests[0]
    assert request.kind == "decompose"
    assert '- up: {"value":"hi"}' in request.prompt  # the upstream output, to reference
    assert "it names no tool (it asks for capabilities: echo)" in request.prompt


async def test_decomposer_offers_the_model_only_the_tools_of_the_tasks_agent_pool(
    tmp_path: Path, budget: BudgetClient
) -> None:
    run = Run(tmp_path, budget, [answer(ECHO_STEPS)])
    pooled = msgspec.structs.replace(TOOLLESS, pool="echo")
    spec = decomposer.make_spec(CATALOG, {"echo": frozenset({"test.echo"})})
    [proposed] = await run.handle(spec, to_task("adaptive", task=pooled))
    assert isinstance(proposed, StepsProposed)
    system = run.requests[0].system
    assert '"name":"test.echo"' in system
    assert '"name":"sql.query"' not in system  # in the catalog, not in the pool


async def test_decomposer_ids_follow_the_attempt(tmp_path: Path, budget: BudgetClient) -> None:
    run = Run(tmp_path, budget, [answer({"steps": [ECHO_STEPS["steps"][0]]})])
    [proposed] = await run.handle(decomposer.make_spec(CATALOG), to_task("adaptive", attempt=2))
    assert isinstance(proposed, StepsProposed)
    assert [s.id for s in proposed.steps] == ["d.a2.s1"]


async def test_decomposer_repairs_once_then_rejects_and_says_why(tmp_path: Path, budget: BudgetClient) -> None:
    bad = answer({"steps": [{"tool": "test.echo", "inputs": {"value": "${elsewhere.x}"}, "operation": "o"}]})
    run = Run(tmp_path, budget, [bad, bad])
    [rejected] = await run.handle(decomposer.make_spec(CATALOG), to_task("adaptive"))
    assert isinstance(rejected, StepsRejected)
    [check] = rejected.checks
    assert check.name == "decomposable"
    assert re.fullmatch(
        r"cannot decompose task 'd': it names no tool .*; decomposition by the model: "
        r"model not used \(invalid_output_after_repair\)",
        check.message,
    )
    assert "$.steps[0].inputs.value: step 'd.s1': cannot resolve ${elsewhere.x}" in run.requests[1].prompt


async def test_decomposer_denied_at_basic_rejects_without_asking(tmp_path: Path, budget: BudgetClient) -> None:
    run = Run(tmp_path, budget, [answer(ECHO_STEPS)])
    [rejected] = await run.handle(decomposer.make_spec(CATALOG), to_task("basic"))
    assert isinstance(rejected, StepsRejected)
    assert "decomposition by the model: model not used (denied: not_allowed: " in rejected.checks[0].message
    assert run.requests == []


# == end to end: the real SDK against the fake API, the real budget ===========================


def with_model(nats_url: str, tmp_path: Path, api: FakeAPI, **extra: Any) -> Settings:
    """Settings of a cadre whose model is the fake Anthropic API. The inference cache is off:
    its bucket is shared by the session, and equal prompts of two tests would meet there."""
    return settings_for(
        nats_url,
        tmp_path,
        anthropic_api_key="k",
        anthropic_base_url=api.base_url,
        llm_provider="anthropic",
        llm_max_retries=0,
        inference_cache_ttl_s=0.0,
        **extra,
    )


def plan_body(*nodes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"plan": {"nodes": list(nodes)}, **extra}


async def events_of(h: Harness, wf: str, kind: type[Event]) -> list[Any]:
    return [e.event.data for e in await h.events(wf) if isinstance(e.event.data, kind)]


async def test_e2e_basic_level_fails_as_before_and_sends_nothing(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api(ok(RECOVER_WITH_ECHO)) as api:
        settings = with_model(nats_url, tmp_path, api, intelligence="basic")
        async with cadre_running(settings) as h:
            state = await h.run(plan_body({"id": "x", "tool": "test.flaky", "inputs": {"value": "v"}}))
        assert api.requests == []
    assert state.failure is not None
    assert state.failure.message == "task 'x' failed after 1 attempt(s): unavailable: the flaky service is down"


async def test_e2e_recover_runs_an_alternative(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api(ok(RECOVER_WITH_ECHO)) as api:
        settings = with_model(nats_url, tmp_path, api)
        async with cadre_running(settings) as h:
            state = await h.run(plan_body({"id": "x", "tool": "test.flaky", "inputs": {"value": "v"}}))
            [done] = await events_of(h, state.workflow_id, StepCompleted)
        assert len(api.requests) == 1
    assert state.status == "completed", state.failure
    assert state.result == {"value": "v"}
    assert done.tool == "test.echo"
    assert done.deviations[1].startswith("recovery: ran alternative tool test.echo with new inputs")


async def test_e2e_interpret_fixes_an_invalid_output(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api(ok({"count": 5})) as api:
        settings = with_model(nats_url, tmp_path, api, intelligence="intelligent")
        async with cadre_running(settings) as h:
            state = await h.run(plan_body({"id": "x", "tool": "test.sloppy", "inputs": {"value": "three"}}))
        assert len(api.requests) == 1
    assert state.status == "completed", state.failure
    assert state.result == {"count": 5, "unit": None}


async def test_e2e_decide_reorders_fallbacks(nats_url: str, tmp_path: Path) -> None:
    async with anthropic_api(ok({"choice": "test.echo", "reason": "fs.read takes no value"})) as api:
        settings = with_model(nats_url, tmp_path, api, intelligence="intelligent")
        async with cadre_running(settings) as h:
            task = {
                "id": "x",
                "tool": "test.flaky",
                "inputs": {"value": "v"},
                "fallback_tools": ["fs.read", "test.echo"],
            }
            state = await h.run(plan_body(task))
            [done] = await events_of(h, state.workflow_id, StepCompleted)
        assert len(api.requests) == 1
    assert state.status == "completed", state.failure
    assert done.attempts == 2
    assert done.deviations[1].startswith("fallback tool test.echo tried first, as the model decided")


async def test_e2e_decomposer_turns_a_toolless_task_into_steps(nats_url: str, tmp_path: Path) -> None:
    steps = {"steps": [{"tool": "test.echo", "inputs": {"value": "${up.value}"}, "operation": "echo"}]}
    async with anthropic_api(ok(steps)) as api:
        settings = with_model(nats_url, tmp_path, api)
        async with cadre_running(settings) as h:
            state = await h.run(
                plan_body(
                    {"id": "up", "tool": "test.echo", "inputs": {"value": "hello"}},
                    {"id": "d", "description": "say it again", "capabilities": ["echo"], "depends_on": ["up"]},
                )
            )
        assert len(api.requests) == 1
    assert state.status == "completed", state.failure
    assert state.result == {"value": "hello"}
    assert state.tasks["d"].step_ids == ["d.s1"]


async def test_e2e_invalid_output_is_repaired_once_then_the_step_fails_as_planned(
    nats_url: str, tmp_path: Path
) -> None:
    bad = {"action": "alternative", "tool": "test.nope", "inputs": {}, "reason": "r"}
    async with anthropic_api(ok(bad), ok(bad)) as api:
        settings = with_model(nats_url, tmp_path, api)
        async with cadre_running(settings) as h:
            state = await h.run(plan_body({"id": "x", "tool": "test.flaky", "inputs": {"value": "v"}}))
        assert len(api.requests) == 2
    assert state.failure is not None
    assert state.failure.message == (
        "task 'x' failed after 1 attempt(s): unavailable: the flaky service is down "
        "(recovery was tried: model not used (invalid_output_after_repair))"
    )
