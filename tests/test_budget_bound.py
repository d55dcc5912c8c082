"""The budget's hard bound: a reservation the real cost cannot exceed, and what an overrun does.

The service tests run real Anthropic provider clients against the fake Messages API of
:mod:`tests.fake_llm`, which bills each call the most its prompt allows (every byte it received
as an input token, half of them at the cache-write rate, plus the hidden tool-use system prompt
and every allowed output token), through two budget replicas on the session's nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from cadre.actors.budget import BudgetClient, read_ledger, rules, serve_budget
from cadre.actors.budget.rules import BudgetConfig, BudgetState
from cadre.actors.metrics import Metrics
from cadre.actors.replay.whatif import WhatIf, redecide
from cadre.bus import ConnectOptions, StreamSpec, Subjects, connect
from cadre.bus.effects import Asked
from cadre.bus.ledger import Consultation, Decision, LedgerEntry, ReservedEntry, SettledEntry, Settlement
from cadre.planner.providers import LLMRequest, ProviderConfig
from cadre.planner.providers.anthropic import AnthropicProvider
from cadre.planner.providers.base import Usage
from cadre.planner.providers.pricing import (
    DEFAULT_PRICE,
    DEFAULT_PRICES,
    FRAMING_MARGIN_TOKENS,
    Prices,
    bound_usd,
    cost_usd,
    estimate_input_tokens,
    input_token_bound,
)
from tests.conftest import unique
from tests.fake_llm import Tokens, anthropic_api, billing

MODEL = "claude-haiku-4-5"  # $1 in, $5 out, cache writes $1.25 per million tokens
PRICES = Prices(default=DEFAULT_PRICE, by_model=DEFAULT_PRICES)
TOOL_SYSTEM_PROMPT = 346  # tokens Anthropic adds for tool use (its documented figure, the larger one)
WORDS = ("budget", "ledger", "Übergröße", "naïve", "東京都", "データ", "😀🚀", "ünïcödé", "plan", '{"a": 1}')
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def config(**overrides: Any) -> BudgetConfig:
    base: dict[str, Any] = {
        "workflow_usd": 1.0,
        "daily_usd": 100.0,
        "reservation_timeout_s": 900.0,
        "rate_limits": {"anthropic": (10_000, 10**9)},
        "prices": PRICES,
    }
    base.update(overrides)
    return BudgetConfig(**base)


def request(rng: random.Random, size: int) -> LLMRequest:
    """A request whose prompt is ``size`` words of mixed scripts (1 to 4 UTF-8 bytes a character)."""
    prompt = " ".join(rng.choice(WORDS) for _ in range(size))
    return LLMRequest(
        kind="plan",
        model=MODEL,
        system="You answer in JSON. Système: 答え.",
        prompt=prompt,
        schema=SCHEMA,
        schema_name="emit_answer",
        max_output_tokens=512,
    )


def consultation(cid: str, wf: str, r: LLMRequest, *, bound: bool = True) -> Consultation:
    """The consultation :meth:`actors.context.Context.infer` sends for ``r`` (``bound`` False: one
    from before the bound, reserved by the older estimate rule)."""
    return Consultation(
        id=cid,
        workflow_id=wf,
        kind=r.kind,
        provider="anthropic",
        model=r.model,
        est_input_tokens=estimate_input_tokens(r),
        max_output_tokens=r.max_output_tokens,
        max_input_tokens=input_token_bound(r) if bound else None,
    )


def largest(extra: int = 0) -> Callable[[dict[str, Any]], Tokens]:
    """The most a Messages API request body allows: a token per byte of what was sent (system,
    messages, the tool definition as JSON) plus the hidden tool-use system prompt, half of it
    billed as a cache write (the dearer rate), and every allowed output token; ``extra`` more
    input tokens make a provider that bills beyond any bound."""

    def usage(body: dict[str, Any]) -> Tokens:
        sent = [body.get("system", ""), *(m["content"] for m in body["messages"])]
        sent += [json.dumps(t, ensure_ascii=False) for t in body.get("tools", [])]
        n = sum(len(part.encode("utf-8")) for part in sent) + TOOL_SYSTEM_PROMPT + extra
        return Tokens(input=n - n // 2, cache_write=n // 2, output=body["max_tokens"])

    return usage


def settlement(c: Consultation, usage: Usage) -> Settlement:
    return Settlement(
        reservation_id=c.id,
        workflow_id=c.workflow_id,
        model=c.model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )


@dataclass
class Env:
    nc: NATS
    subjects: Subjects
    ledger: StreamSpec
    bucket: str

    def serve(self, cfg: BudgetConfig, *, nc: NATS | None = None, metrics: Metrics | None = None) -> Any:
        return serve_budget(
            nc or self.nc,
            self.subjects,
            cfg,
            ledger=self.ledger,
            cache_bucket=self.bucket,
            cache_ttl_s=0.0,
            metrics=metrics,
        )

    def client(self) -> BudgetClient:
        return BudgetClient(self.nc, self.subjects, timeout=5.0)

    async def entries(self) -> list[LedgerEntry]:
        return await read_ledger(self.nc, self.ledger.name)


@pytest_asyncio.fixture
async def env(nc: NATS) -> AsyncIterator[Env]:
    prefix = unique("bb")
    subjects = Subjects(prefix)
    ledger = StreamSpec(name=prefix.upper() + "_LEDGER", subjects=subjects.ledger, storage="memory")
    yield Env(nc, subjects, ledger, prefix.upper() + "_CACHE")
    js = nc.jetstream()
    for name in (ledger.name, f"KV_{prefix.upper()}_CACHE"):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)


# -- pure: the bound -------------------------------------------------------------------------------


def test_the_input_bound_is_the_requests_utf8_bytes_plus_the_framing_margin() -> None:
    r = LLMRequest(
        kind="plan", model=MODEL, system="sys", prompt="東京 😀", schema={"a": 1}, schema_name="e", max_output_tokens=9
    )
    # 3 + (3+3+1+4) + len('{"a": 1}') + 1
    assert input_token_bound(r) == 3 + 11 + 8 + 1 + FRAMING_MARGIN_TOKENS
    assert input_token_bound(r) > estimate_input_tokens(r)


def test_a_reservation_covers_any_billing_of_up_to_the_bound_at_any_split_of_rates() -> None:
    rng = random.Random(12)
    cfg = config()
    for i in range(300):
        r = request(rng, rng.randint(0, 400))
        c = consultation(f"c{i}", "wf", r)
        tokens, reserved = rules.worst_case_usd(c, cfg)
        assert tokens == input_token_bound(r)
        assert reserved == bound_usd(PRICES, MODEL, tokens, r.max_output_tokens)
        write = rng.randint(0, tokens)
        read = rng.randint(0, tokens - write)
        usage = Usage(
            input_tokens=tokens - write - read,
            output_tokens=r.max_output_tokens,
            cache_read_tokens=read,
            cache_write_tokens=write,
        )
        assert cost_usd(usage, MODEL, PRICES) <= reserved
        # The old rule reserved the estimate x 1.5 at the input price: billed at the bound, it overran.
        old = msgspec.structs.replace(c, max_input_tokens=None)
        assert (
            cost_usd(Usage(input_tokens=tokens, output_tokens=r.max_output_tokens), MODEL, PRICES)
            > rules.worst_case_usd(old, cfg)[1]
        )


def test_a_consultation_without_a_bound_is_reserved_by_the_older_rule() -> None:
    c = Consultation(
        id="c", workflow_id="wf", kind="plan", provider="anthropic", model=MODEL, est_input_tokens=1001,
        max_output_tokens=10,
    )  # fmt: skip
    assert rules.worst_case_usd(c, config()) == (1502, pytest.approx((1502 * 1.0 + 10 * 5.0) / 1e6))


# -- pure: an overrun ------------------------------------------------------------------------------


def test_an_overrun_is_recorded_and_stops_the_workflows_grants_and_can_be_taken_back() -> None:
    cfg = config(workflow_usd=1.0)
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    r = request(random.Random(1), 20)
    state = BudgetState()
    c1 = consultation("c1", "wf", r)
    d, e = rules.decide(state, cfg, c1, now)
    assert d.outcome == "granted"
    assert isinstance(e, ReservedEntry)
    rules.apply(state, e)
    over = Usage(input_tokens=input_token_bound(r) + 5_000, output_tokens=r.max_output_tokens)
    settled, s = rules.settle(state, cfg, settlement(c1, over), now)
    assert s is not None
    assert s.reason == "overrun"
    assert s.overrun_usd == pytest.approx(settled.cost_usd - e.reserved_usd)
    assert s.overrun_usd > 0
    undo: rules.Undo = []
    rules.apply(state, s, undo)
    assert state.overruns == {"wf": pytest.approx(s.overrun_usd)}
    d2, e2 = rules.decide(state, cfg, consultation("c2", "wf", r), now)
    assert (d2.outcome, d2.reason) == ("denied", "over_workflow_cap")
    assert "no further grants" in d2.message
    assert e2 is not None
    # Another workflow is not stopped (the day's settled spend still holds the overrun).
    assert rules.decide(state, cfg, consultation("c3", "other", r), now)[0].outcome == "granted"
    # The fold of the ledger agrees, and the journal takes it back.
    assert rules.fold([e, s]).overruns == state.overruns
    for take_back in reversed(undo):
        take_back()
    assert state.overruns == {}
    assert "c1" in state.open


def test_an_overrun_that_passes_the_daily_cap_stops_every_workflow_that_day() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    r = request(random.Random(2), 20)
    c1 = consultation("c1", "wf", r)
    reserve = rules.worst_case_usd(c1, config())[1]
    cfg = config(daily_usd=reserve * 1.5, workflow_usd=1.0)
    state = BudgetState()
    _, e = rules.decide(state, cfg, c1, now)
    assert isinstance(e, ReservedEntry)
    rules.apply(state, e)
    _, s = rules.settle(state, cfg, settlement(c1, Usage(input_tokens=10**6, output_tokens=0)), now)
    assert s is not None
    rules.apply(state, s)
    assert state.days[now.date()].settled_usd > cfg.daily_usd  # recorded at its real cost
    d, _ = rules.decide(state, cfg, consultation("c2", "other", r), now)
    assert (d.outcome, d.reason) == ("denied", "over_global_cap")


# -- the service: fifty workflows, two replicas, a provider billing the most it may ------------------


async def run_fifty(env: Env, nats_url: str, *, bound: bool) -> tuple[float, float, int, int, list[LedgerEntry]]:
    """50 workflows of 4 calls each at once over two budget replicas, each granted call made to a
    fake Anthropic API billing the largest usage its prompt allows. Returns (settled, daily cap,
    granted, denied, the ledger)."""
    rng = random.Random(50)
    requests = [[request(rng, rng.randint(50, 600)) for _ in range(4)] for _ in range(50)]
    typical = bound_usd(PRICES, MODEL, input_token_bound(requests[0][0]), 512)
    cap = 60 * typical  # room for about a third of the 200 calls
    cfg = config(daily_usd=cap, workflow_usd=3 * typical)
    other = await connect(ConnectOptions(url=nats_url, name="budget-bound-replica-2"))
    try:
        async with anthropic_api(*(billing({"answer": "ok"}, largest()) for _ in range(200))) as api:
            provider = AnthropicProvider(
                ProviderConfig(api_key="k", models={"default": MODEL}, base_url=api.base_url, max_retries=0)
            )
            async with env.serve(cfg) as a, env.serve(cfg, nc=other) as b:
                client = env.client()

                async def workflow(n: int) -> list[str]:
                    out = []
                    for k, r in enumerate(requests[n]):
                        c = consultation(f"w{n}-{k}", f"wf{n}", r, bound=bound)
                        d = await client.consult(c)
                        out.append(d.outcome)
                        if d.outcome == "granted":
                            response = await provider.complete(r)
                            assert await client.settle(settlement(c, response.usage)) is not None
                    return out

                outcomes = [o for w in await asyncio.gather(*(workflow(n) for n in range(50))) for o in w]
                await a.recorded()
                await b.recorded()
                assert a.groups > 0
                assert b.groups > 0
            await provider.aclose()
        entries = await env.entries()
    finally:
        await other.drain()
    state = rules.fold(entries)
    assert state.open == {}
    day = state.days[datetime.now(UTC).date()]
    return day.settled_usd, cap, outcomes.count("granted"), outcomes.count("denied"), entries


async def test_fifty_workflows_billed_the_most_their_prompts_allow_never_settle_over_the_cap(
    env: Env, nats_url: str
) -> None:
    settled, cap, granted, denied, entries = await run_fifty(env, nats_url, bound=True)
    print(f"bound: settled ${settled:.4f} of a ${cap:.4f} cap; {granted} granted, {denied} denied")
    assert settled <= cap
    assert granted >= 20
    assert denied > 0
    settlements = [e for e in entries if isinstance(e, SettledEntry)]
    assert len(settlements) == granted
    assert all(e.overrun_usd == 0 and e.cost_usd <= e.reserved_usd for e in settlements)
    assert all(e.cache_write_tokens > 0 for e in settlements)  # the fake billed the dearer rate too
    folded = rules.fold(entries)
    assert all(s.settled_usd <= folded.caps[wf] for wf, s in folded.workflows.items())


async def test_the_older_estimate_rule_is_overrun_by_the_same_billing_and_stops_those_workflows(
    env: Env, nats_url: str
) -> None:
    """The same run reserved by the estimate (4 characters a token, x1.5): the fake's billing
    overruns reservations (which the bound prevents, above), and a workflow that overran gets no
    grant after its overrun is in the ledger."""
    settled, cap, granted, denied, entries = await run_fifty(env, nats_url, bound=False)
    overran = [e for e in entries if isinstance(e, SettledEntry) and e.overrun_usd > 0]
    print(
        f"estimate: settled ${settled:.4f} of a ${cap:.4f} cap; {granted} granted, {denied} denied, "
        f"{len(overran)} overruns"
    )
    assert overran
    for e in overran:
        after = entries[entries.index(e) + 1 :]
        assert not any(isinstance(x, ReservedEntry) and x.workflow_id == e.workflow_id for x in after)


async def test_a_provider_billing_beyond_the_bound_is_recorded_stopped_counted_and_logged(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics.create()
    rng = random.Random(3)
    r = request(rng, 40)
    async with (
        anthropic_api(billing({"answer": "ok"}, largest(extra=50_000))) as api,
        env.serve(config(workflow_usd=5.0), metrics=metrics) as service,
    ):
        provider = AnthropicProvider(
            ProviderConfig(api_key="k", models={"default": MODEL}, base_url=api.base_url, max_retries=0)
        )
        client = env.client()
        c1 = consultation("o1", "wf-over", r)
        assert (await client.consult(c1)).outcome == "granted"
        response = await provider.complete(r)
        await provider.aclose()
        with caplog.at_level(logging.WARNING, logger="cadre.budget"):
            settled = await client.settle(settlement(c1, response.usage))
            await service.recorded()
        assert settled is not None
        after = await client.consult(consultation("o2", "wf-over", r))
        assert (after.outcome, after.reason) == ("denied", "over_workflow_cap")
        assert "billed" in after.message
        assert "no further grants" in after.message
        assert (await client.consult(consultation("o3", "wf-fine", r))).outcome == "granted"
    entries = await env.entries()
    overrun = [e for e in entries if isinstance(e, SettledEntry) and e.overrun_usd > 0]
    assert len(overrun) == 1
    assert overrun[0].reason == "overrun"
    assert overrun[0].cost_usd == pytest.approx(settled.cost_usd)
    assert overrun[0].overrun_usd == pytest.approx(settled.cost_usd - overrun[0].reserved_usd)
    value = metrics.registry.get_sample_value
    assert value("cadre_budget_overruns_total", {"provider": "anthropic", "kind": "plan"}) == 1
    assert any("overrun" in m and "wf-over" in m for m in caplog.messages)
    assert rules.fold(entries).overruns.keys() == {"wf-over"}


# -- what-if: a refusal is re-decided by the rule it was asked under --------------------------------


def test_what_if_prices_a_recorded_refusal_by_the_rule_it_was_asked_under() -> None:
    r = request(random.Random(9), 30)
    now = consultation("c-1", "wf-1", r)  # what a replay's handler asks today: with the bound
    assert now.max_input_tokens is not None
    refused = Decision(outcome="denied", reason="not_allowed", message="level")
    whatif = WhatIf(budget=config(), intelligence="autonomous")
    old_ask = Asked(
        provider="anthropic", model=MODEL, est_input_tokens=now.est_input_tokens, max_output_tokens=512,
        intelligence="basic",
    )  # fmt: skip
    before = redecide(refused, old_ask, now, whatif, 0.0)  # recorded before the bound: the older rule
    assert before.outcome == "granted"
    assert before.reserved_usd == pytest.approx((math.ceil(now.est_input_tokens * 1.5) * 1.0 + 512 * 5.0) / 1e6)
    new_ask = msgspec.structs.replace(old_ask, max_input_tokens=now.max_input_tokens)
    after = redecide(refused, new_ask, now, whatif, 0.0)
    assert after.outcome == "granted"
    assert after.reserved_usd == pytest.approx(bound_usd(PRICES, MODEL, now.max_input_tokens, 512))
    assert after.reserved_usd > before.reserved_usd
