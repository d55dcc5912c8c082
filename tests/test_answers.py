"""The answers port: what a live context records, a recorded one serves back identically.

The same questions (two tool calls, one failing; a library search; a consultation of the
model that needs a repair round; one the budget denies; one with no model in the process)
go through a :class:`Context` over :class:`LiveAnswers` (the real toolbox, the
real budget actor on the test server, a scripted model), then through a context over
:class:`RecordedAnswers` of what the live one recorded, stored and read back through the
codec. The recorded run must give the handler the same answers and record the same effects,
and a recorded run asked anything else must refuse.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from cadre.actors.answers import LiveAnswers, RecordedAnswers, ReplayDivergence
from cadre.actors.budget import BudgetClient, serve_budget
from cadre.actors.budget.rules import BudgetConfig
from cadre.actors.context import Answers, Context, Outside, ToolFailure
from cadre.actors.inference import LLM, Policy
from cadre.actors.tool_port import ToolRunner
from cadre.actors.tools import ToolBox, ToolConfig, builtin_impls
from cadre.bus import decode, encode
from cadre.bus.effects import BudgetDecided, CallSettled, LibraryHit, LibrarySearched, ModelCalled, ToolCalled
from cadre.bus.events import EffectsRecorded, WorkflowRequested, make_event
from cadre.bus.plan import Plan, Task
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects
from cadre.planner.builtin_tools import builtin_catalog
from cadre.planner.catalog import Catalog
from cadre.planner.providers.agent_prompts import decide_request, decide_validator
from cadre.planner.providers.base import LLMResponse, Usage
from cadre.planner.providers.pricing import ModelPrice, Prices
from cadre.store.records import StoredEvent
from tests import plugin_tools
from tests.conftest import ev, unique
from tests.scripted_provider import RecordedProvider
from tests.test_dynamic_inference import SQL_FAILED, STEP

CATALOG = Catalog([*builtin_catalog().values(), *(spec for spec, _ in plugin_tools.TOOLS)])
OPTIONS = ("fs.read", "http.get")
HIT = LibraryHit(name="top", source="library/top.json", score=0.9, threshold=0.5, plan=Plan(nodes=(Task(id="a"),)))


@pytest.fixture
async def budget(nc: NATS) -> AsyncIterator[BudgetClient]:
    prefix = unique("a")
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


class OneHit:
    """A plan library that knows one plan."""

    async def search(self, request: str) -> LibraryHit | None:
        return HIT if "customers" in request else None


def answer(output: dict[str, Any]) -> LLMResponse:
    return LLMResponse(
        provider="scripted",
        model="m",
        output=output,
        text=json.dumps(output),
        usage=Usage(input_tokens=100, output_tokens=20),
        stop_reason="tool_use",
        latency_ms=1.0,
    )


async def questions(ctx: Context) -> list[Any]:
    """What a handler might ask, and what it is told (the answers, as the handler sees them)."""
    told: list[Any] = [await ctx.call_tool("test.echo", {"value": "v"}, idempotency_key="k1")]
    try:
        await ctx.call_tool("test.flaky", {"value": "v"}, idempotency_key="k2")
    except ToolFailure as failure:
        told.append((failure.tool, failure.error, failure.retryable, failure.output))
    told.append(await ctx.search_library("the best customers"))
    told.append(await ctx.search_library("something else"))
    request = decide_request(STEP, STEP.inputs, SQL_FAILED, OPTIONS, CATALOG)
    for policy in (Policy(intelligence="intelligent"), Policy(intelligence="basic")):
        inferred = await ctx.infer("decide", request, decide_validator(OPTIONS), policy)
        told.append((inferred.value, inferred.source, inferred.reason, inferred.calls, inferred.cost_usd))
    return told


def context(answers: Answers, at: StoredEvent) -> Context:
    return Context(kind="agent", stored=at, now=at.event.at, answers=answers)


def stored(wf: str) -> StoredEvent:
    env = ev(WorkflowRequested(request="r"), wf)
    return StoredEvent(1, f"t.evt.{wf}.{env.type}", env, b"")


async def test_what_live_answers_record_recorded_answers_serve_back(tmp_path: Path, budget: BudgetClient) -> None:
    impls = {**builtin_impls(), **{spec.name: impl for spec, impl in plugin_tools.TOOLS}}
    tools = ToolRunner(ToolBox(CATALOG, impls, ToolConfig(workspace=tmp_path)))
    provider = RecordedProvider(
        [answer({"choice": "nothing", "reason": "?"}), answer({"choice": "fs.read", "reason": "r"})]
    )
    llm = LLM(provider=provider, models={"default": "m"})
    at = stored(unique("wf-answers"))
    live = context(LiveAnswers(Outside(tools=tools, budget=budget, library=OneHit(), llm=llm)), at)
    told_live = await questions(live)

    # what the live run was told: a repaired, granted and settled call, then a denial
    assert told_live[0] == {"value": "v"}
    assert told_live[1][1].code == "unavailable"
    assert told_live[2:4] == [HIT, None]
    assert told_live[4][:4] == (decide_validator(OPTIONS)({"choice": "fs.read", "reason": "r"}), "model", "", 2)
    assert told_live[5][1] == "fallback"
    assert told_live[5][2].startswith("denied: not_allowed")
    kinds = [type(e) for e in live.effects]
    assert kinds == [
        ToolCalled,
        ToolCalled,
        LibrarySearched,
        LibrarySearched,
        BudgetDecided,
        ModelCalled,
        CallSettled,
        BudgetDecided,
        ModelCalled,
        CallSettled,
        BudgetDecided,
    ]

    # stored and read back, then served: the same answers, the same effects
    env = make_event(
        EffectsRecorded(input_id=at.event.id, effects=tuple(live.effects)),
        workflow_id=at.event.workflow_id,
        actor="agent",
        at=at.event.at,
        causation_id=at.event.id,
    )
    read = decode(encode(env))
    assert isinstance(read.data, EffectsRecorded)
    assert read.data.effects == tuple(live.effects)
    served = RecordedAnswers(read.data.effects)
    replayed = context(served, at)
    assert await questions(replayed) == told_live
    assert replayed.effects == live.effects
    assert served.next == len(served.recorded)
    assert provider.remaining == 0  # the recorded run called nobody


async def test_without_a_model_the_recorded_answers_have_none_either() -> None:
    at = stored("wf-none")
    request = decide_request(STEP, STEP.inputs, SQL_FAILED, OPTIONS, CATALOG)
    live = context(LiveAnswers(Outside()), at)
    inferred = await live.infer("decide", request, decide_validator(OPTIONS), Policy())
    assert (inferred.declined, [e.outcome for e in live.effects if isinstance(e, ModelCalled)]) == (
        True,
        ["no_provider"],
    )
    replayed = context(RecordedAnswers(tuple(live.effects)), at)
    again = await replayed.infer("decide", request, decide_validator(OPTIONS), Policy())
    assert (again, replayed.effects) == (inferred, live.effects)


async def test_recorded_answers_refuse_what_was_not_recorded() -> None:
    at = stored("wf-refuse")
    recorded = (ToolCalled(tool="test.echo", inputs=ToolCalled.digest_of({"value": "v"}), output={"value": "v"}),)
    ctx = context(RecordedAnswers(recorded), at)
    with pytest.raises(ReplayDivergence, match=r"^the handler asked tool test\.echo:[0-9a-f]{16}, the record has tool"):
        await ctx.call_tool("test.echo", {"value": "w"}, idempotency_key="k")
    ctx = context(RecordedAnswers(recorded), at)
    assert await ctx.call_tool("test.echo", {"value": "v"}, idempotency_key="k") == {"value": "v"}
    with pytest.raises(ReplayDivergence, match=r"the record has nothing more \(all 1 recorded answers were used\)$"):
        await ctx.search_library("more")


def test_an_effect_is_its_own_key() -> None:
    """Each kind builds its key in one place: the question's key is the answer's."""
    effect = msgspec.convert(
        {"kind": "budget", "call": "plan", "cache_key": "ab", "decision": {"outcome": "denied"}}, BudgetDecided
    )
    assert effect.key == BudgetDecided.key_of("plan", "ab") == "plan:ab"
    assert ToolCalled(tool="t", inputs=ToolCalled.digest_of({"a": 1})).key == ToolCalled.key_of("t", {"a": 1})
