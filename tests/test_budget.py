"""The budget actor: the gate, caps, rate limits, the inference cache, the ledger, replicas.

Service tests run against the session's nats-server with a prefix, a ledger stream and a
cache bucket of their own (memory storage); pure tests call ``actors.budget.rules`` and
``actors.budget.report`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from cadre.actors.budget import BudgetClient, BudgetService, LedgerError, read_ledger, rules, serve_budget
from cadre.actors.budget import commit as budget_commit
from cadre.actors.budget import report as budget_report
from cadre.actors.budget import view as budget_view
from cadre.actors.budget.requests import Ask, Request, Settle
from cadre.actors.budget.rules import BudgetConfig, BudgetState
from cadre.actors.metrics import Metrics
from cadre.bus import ConnectOptions, StreamSpec, Subjects, connect
from cadre.bus.ledger import (
    CacheHitEntry,
    Consultation,
    Decision,
    DeniedEntry,
    ExpiredEntry,
    LedgerEntry,
    ReservedEntry,
    SettledEntry,
    Settlement,
)
from cadre.planner.providers.pricing import ModelPrice, Prices, model_price
from tests.conftest import unique

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MODEL = "m-cheap-1"  # priced by the prefix "m-cheap": $1 in, $5 out per million tokens
PRICES = Prices(default=ModelPrice(15.0, 75.0), by_model={"m-cheap": model_price(1.0, 5.0)})
KINDS = ("plan", "decompose", "recover", "interpret", "decide", "adapt")


def config(**overrides: Any) -> BudgetConfig:
    base: dict[str, Any] = {
        "workflow_usd": 1.0,
        "daily_usd": 100.0,
        "reservation_timeout_s": 900.0,
        "rate_limits": {"p": (1000, 10**9)},
        "prices": PRICES,
    }
    base.update(overrides)
    return BudgetConfig(**base)


def ask(cid: str, wf: str = "wf1", **fields: Any) -> Consultation:
    base: dict[str, Any] = {
        "id": cid,
        "workflow_id": wf,
        "kind": "plan",
        "provider": "p",
        "model": MODEL,
        "est_input_tokens": 1000,
        "max_output_tokens": 1000,
    }
    base.update(fields)
    return Consultation(**base)


def worst(est_input: int = 1000, max_output: int = 1000, price: ModelPrice = PRICES.by_model["m-cheap"]) -> float:
    """The worst case the budget must reserve, computed here independently of the rules."""
    return (math.ceil(est_input * 1.5) * price.input + max_output * price.output) / 1e6


def paid(reservation: str, wf: str = "wf1", inputs: int = 800, outputs: int = 300, **fields: Any) -> Settlement:
    return Settlement(
        reservation_id=reservation, workflow_id=wf, model=MODEL, input_tokens=inputs, output_tokens=outputs, **fields
    )


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Env:
    """Names of one test's own: subjects, ledger stream, cache bucket."""

    nc: NATS
    subjects: Subjects
    ledger: StreamSpec
    bucket: str

    def serve(
        self,
        cfg: BudgetConfig | None = None,
        *,
        nc: NATS | None = None,
        clock: Callable[[], datetime] | None = None,
        cache_ttl_s: float = 0.0,
        metrics: Metrics | None = None,
    ) -> AbstractAsyncContextManager[BudgetService]:
        extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
        return serve_budget(
            nc or self.nc,
            self.subjects,
            cfg or config(),
            ledger=self.ledger,
            cache_bucket=self.bucket,
            cache_ttl_s=cache_ttl_s,
            metrics=metrics,
            **extra,
        )

    def client(self, nc: NATS | None = None, timeout: float = 2.0) -> BudgetClient:
        return BudgetClient(nc or self.nc, self.subjects, timeout=timeout)

    async def entries(self) -> list[LedgerEntry]:
        return await read_ledger(self.nc, self.ledger.name)


@pytest_asyncio.fixture
async def env(nc: NATS) -> AsyncIterator[Env]:
    prefix = unique("b")
    subjects = Subjects(prefix)
    ledger = StreamSpec(name=prefix.upper() + "_LEDGER", subjects=subjects.ledger, storage="memory")
    yield Env(nc, subjects, ledger, prefix.upper() + "_CACHE")
    js = nc.jetstream()
    for name in (ledger.name, f"KV_{prefix.upper()}_CACHE"):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)


def snapshot(state: BudgetState) -> tuple[Any, ...]:
    """Everything of a state but the ledger sequence (which a fold of entries does not know)."""
    return (state.workflows, state.caps, state.days, state.open, state.windows, state.decisions)


# -- the gate, through the service ---------------------------------------------------------------

ALLOWED = {
    ("basic", "strict"): set(),
    ("basic", "adaptive"): set(),
    ("basic", "creative"): set(),
    ("adaptive", "strict"): {"plan", "decompose"},
    ("adaptive", "adaptive"): {"plan", "decompose", "recover"},
    ("adaptive", "creative"): {"plan", "decompose", "recover"},
    ("intelligent", "strict"): {"plan", "decompose", "decide"},
    ("intelligent", "adaptive"): {"plan", "decompose", "recover", "interpret", "decide"},
    ("intelligent", "creative"): {"plan", "decompose", "recover", "interpret", "decide"},
    ("autonomous", "strict"): {"plan", "decompose", "decide"},
    ("autonomous", "adaptive"): {"plan", "decompose", "recover", "interpret", "decide"},
    ("autonomous", "creative"): set(KINDS),
}


@pytest.mark.parametrize(("intelligence", "mode"), sorted(ALLOWED))
async def test_every_level_and_mode_allows_exactly_its_kinds(env: Env, intelligence: str, mode: str) -> None:
    async with env.serve():
        client = env.client()
        decisions = {
            kind: await client.consult(ask(f"{kind}-1", kind=kind, intelligence=intelligence, mode=mode))
            for kind in KINDS
        }
    granted = {kind for kind, d in decisions.items() if d.outcome == "granted"}
    assert granted == ALLOWED[(intelligence, mode)]
    for kind, d in decisions.items():
        if kind not in granted:
            assert d.reason == "not_allowed"
            assert re.fullmatch(
                rf"intelligence level '{intelligence}' with mode '{mode}' does not allow '{kind}' \(allowed: .*\)",
                d.message,
            )
    assert rules.allowed_kinds(intelligence, mode) == ALLOWED[(intelligence, mode)]


# -- caps ----------------------------------------------------------------------------------------


async def test_zero_budget_denies_every_consultation(env: Env) -> None:
    async with env.serve() as service:
        client = env.client()
        decisions = [await client.consult(ask(f"c{i}", budget_usd=0.0, kind=k)) for i, k in enumerate(KINDS[:3])]
        assert service.state.open == {}
    assert [d.reason for d in decisions] == ["over_workflow_cap"] * 3
    assert all(d.outcome == "denied" and d.reservation_id is None for d in decisions)
    assert re.fullmatch(r"workflow 'wf1': settled \$0\.0000 .* over the cap of \$0\.0000", decisions[0].message)
    assert [type(e) for e in await env.entries()] == [DeniedEntry] * 3


async def test_grant_then_settle_reserves_the_worst_case_and_releases_the_rest(env: Env) -> None:
    async with env.serve() as service:
        client = env.client()
        d = await client.consult(ask("c1", est_input_tokens=2000, max_output_tokens=500))
        w = worst(2000, 500)
        assert d.outcome == "granted"
        assert d.reservation_id == "c1"
        assert d.reserved_usd == pytest.approx(w)
        assert service.state.workflows["wf1"].reserved_usd == pytest.approx(w)
        s = await client.settle(paid("c1", inputs=1800, outputs=400))
        assert s is not None
        cost = (1800 * 1.0 + 400 * 5.0) / 1e6
        assert s.cost_usd == pytest.approx(cost)
        assert s.released_usd == pytest.approx(w - cost)
        assert not s.already_settled
        await service.recorded()  # the answer comes before the ledger append; the release after it
        spend = service.state.workflows["wf1"]
        assert (spend.settled_usd, spend.reserved_usd) == (pytest.approx(cost), pytest.approx(0.0))
        today = service.state.days[datetime.now(UTC).date()]
        assert (today.settled_usd, today.reserved_usd) == (pytest.approx(cost), pytest.approx(0.0))
        assert service.state.open == {}


async def test_an_open_worst_case_blocks_a_call_that_would_overflow_the_cap(env: Env) -> None:
    cap = worst() * 1.5  # one worst case fits, two do not
    async with env.serve() as service:
        client = env.client()
        first = await client.consult(ask("c1", budget_usd=cap))
        second = await client.consult(ask("c2", budget_usd=cap))
        assert first.outcome == "granted"
        assert (second.outcome, second.reason) == ("denied", "over_workflow_cap")
        assert re.fullmatch(
            r"workflow 'wf1': settled \$0\.0000 \+ reserved \$0\.0065 \+ this call's worst case \$0\.0065 "
            r"= \$0\.0130, over the cap of \$0\.0097",
            second.message,
        )
        await client.settle(paid("c1", inputs=100, outputs=100))  # cheap: most of it comes back
        third = await client.consult(ask("c3", budget_usd=cap))
        assert third.outcome == "granted"
        assert service.state.workflows["wf1"].settled_usd + service.state.workflows["wf1"].reserved_usd <= cap


async def test_fifty_workflows_at_once_never_settle_more_than_the_daily_cap(env: Env) -> None:
    w = worst()
    cap = 20.5 * w  # about 20 worst cases
    rng = random.Random(7)
    async with env.serve(config(daily_usd=cap)) as service:
        client = env.client()

        async def workflow(n: int) -> list[Decision]:
            out = []
            for k in range(4):
                c = ask(f"w{n}-{k}", wf=f"wf{n}")
                d = await client.consult(c)
                out.append(d)
                if d.outcome == "granted":
                    usage = paid(c.id, wf=c.workflow_id, inputs=rng.randint(0, 1500), outputs=rng.randint(0, 1000))
                    assert await client.settle(usage) is not None
            return out

        results = await asyncio.gather(*(workflow(n) for n in range(50)))
        state = service.state
    decisions = [d for r in results for d in r]
    assert {d.outcome for d in decisions} == {"granted", "denied"}
    assert {d.reason for d in decisions if d.outcome == "denied"} == {"over_global_cap"}
    assert sum(d.outcome == "granted" for d in decisions) >= 20
    day = state.days[datetime.now(UTC).date()]
    assert day.settled_usd <= cap
    assert day.reserved_usd == pytest.approx(0.0)
    assert sum(s.settled_usd for s in state.workflows.values()) == pytest.approx(day.settled_usd)
    entries = await env.entries()
    assert snapshot(rules.fold(entries)) == snapshot(state)
    settled = sum(e.cost_usd for e in entries if isinstance(e, SettledEntry | ExpiredEntry))
    assert settled <= cap


# -- restart and replicas ------------------------------------------------------------------------


async def test_a_restarted_budget_keeps_spend_open_reservations_and_caps(env: Env) -> None:
    async with env.serve() as first:
        client = env.client()
        assert (await client.consult(ask("open-1"))).outcome == "granted"
        assert (await client.consult(ask("paid-1"))).outcome == "granted"
        assert await client.settle(paid("paid-1")) is not None
        assert (await client.consult(ask("small-1", wf="small", budget_usd=worst() * 1.2))).outcome == "granted"
        before = snapshot(first.state)
        seq = first.state.seq
    async with env.serve() as second:
        assert snapshot(second.state) == before
        assert second.state.seq == seq
        client = env.client()
        # The cap of "small" was fixed by its first consultation; a larger budget_usd now changes nothing.
        again = await client.consult(ask("small-2", wf="small", budget_usd=100.0))
        assert (again.outcome, again.reason) == ("denied", "over_workflow_cap")
        s = await client.settle(paid("open-1"))
        assert s is not None
        assert not s.already_settled
        await second.recorded()
        assert second.state.workflows["wf1"].reserved_usd == pytest.approx(0.0)


async def test_two_replicas_at_once_never_grant_over_the_cap(env: Env, nats_url: str) -> None:
    w = worst()
    cap = 10.5 * w
    other = await connect(ConnectOptions(url=nats_url, name="budget-replica-2"))
    try:
        async with env.serve(config(daily_usd=cap)) as a, env.serve(config(daily_usd=cap), nc=other) as b:
            client = env.client()
            decisions = await asyncio.gather(*(client.consult(ask(f"c{i}", wf=f"wf{i % 7}")) for i in range(80)))
            assert sum(d.outcome == "granted" for d in decisions) == 10
            assert {d.reason for d in decisions if d.outcome == "denied"} == {"over_global_cap"}
            assert a.groups > 0
            assert b.groups > 0
            entries = await env.entries()
            folded = rules.fold(entries)
            day = folded.days[datetime.now(UTC).date()]
            assert day.reserved_usd + day.settled_usd <= cap
            assert len(folded.open) == 10
            granted = {d.reservation_id for d in decisions if d.outcome == "granted"}
            assert set(folded.open) == granted
            assert a.conflicts + b.conflicts > 0  # they did write over each other's shoulders
            # Asked again (either replica may answer), every consultation gets its first answer.
            again = await asyncio.gather(*(client.consult(ask(f"c{i}", wf=f"wf{i % 7}")) for i in range(80)))
            assert again == decisions
            assert await env.entries() == entries
            settled = await asyncio.gather(*(client.settle(paid(r, wf=f"wf{int(r[1:]) % 7}")) for r in granted))
            assert all(s is not None and not s.already_settled for s in settled)
            await a.recorded()
            await b.recorded()
            final = rules.fold(await env.entries())
            assert final.open == {}
            assert final.days[datetime.now(UTC).date()].settled_usd <= cap
    finally:
        await other.drain()


async def test_replicas_follow_each_others_writes_once_they_meet(
    env: Env, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two replicas on one ledger, asked on prefixes of their own so that the test picks who answers.
    other = await connect(ConnectOptions(url=nats_url, name="budget-replica-2"))
    env_b = Env(other, Subjects(env.subjects.prefix + "b"), env.ledger, env.bucket)
    try:
        async with env.serve() as a, env_b.serve() as b:
            ask_a, ask_b = env.client(), env_b.client(env.nc)
            assert (await ask_a.consult(ask("x1"))).outcome == "granted"
            assert not b.following
            assert (await ask_b.consult(ask("y1"))).outcome == "granted"  # stale: a conflict, then it follows
            assert (b.conflicts, b.following) == (1, True)
            assert (await ask_a.consult(ask("x2"))).outcome == "granted"
            assert (a.conflicts, a.following) == (1, True)
            async with asyncio.timeout(5):
                await b.folded(a.state.seq)  # b's feed brings a's grant of x2
            assert snapshot(b.state) == snapshot(a.state)
            assert (await ask_b.consult(ask("y2"))).outcome == "granted"
            assert b.conflicts == 1  # b knew: no second conflict
            async with asyncio.timeout(5):
                await a.folded(b.state.seq)
            assert (await ask_a.settle(paid("y2"))) is not None  # a settles b's grant
            await a.recorded()
            assert a.conflicts == 1
            monkeypatch.setattr(budget_view, "FOLLOW_IDLE_S", -1.0)  # nobody else wrote "lately": stop following
            assert (await ask_a.consult(ask("x3"))).outcome == "granted"
            assert not a.following
    finally:
        await other.drain()


async def test_a_foreign_message_on_the_ledger_is_skipped_by_the_budget_and_reported_by_the_reader(env: Env) -> None:
    async with env.serve():
        assert (await env.client().consult(ask("c1"))).outcome == "granted"
    await env.nc.jetstream().publish(env.ledger.subjects, b"not entries")
    async with env.serve() as service:
        assert service.state.seq == 2
        assert (await env.client().consult(ask("c2"))).outcome == "granted"
    with pytest.raises(LedgerError, match=r"^ledger message 2 of '\w+' is not a list of entries: JSON is malformed"):
        await env.entries()
    bad: list[int] = []
    entries = await read_ledger(env.nc, env.ledger.name, on_malformed=lambda seq, _: bad.append(seq))
    assert (len(entries), bad) == (2, [2])


# -- rate limits ---------------------------------------------------------------------------------


async def test_rate_limit_denies_the_fourth_call_in_a_minute_then_recovers(env: Env) -> None:
    clock = FakeClock()
    async with env.serve(config(rate_limits={"p": (3, 10**9)}), clock=clock):
        client = env.client()
        for i in range(3):
            assert (await client.consult(ask(f"c{i}"))).outcome == "granted"
            clock.advance(1)
        fourth = await client.consult(ask("c3"))
        assert (fourth.outcome, fourth.reason) == ("denied", "rate_limited")
        assert fourth.retry_after_s == pytest.approx(57.0)
        assert re.fullmatch(
            r"provider 'p' had 3 grants in the last 60 s \(limit 3 requests per minute\); retry in 57 s", fourth.message
        )
        clock.advance(61)
        assert (await client.consult(ask("c4"))).outcome == "granted"


# -- the inference cache -------------------------------------------------------------------------

KEY = "0123456789abcdef0123456789abcdef"


async def test_a_settled_value_is_served_from_the_cache_at_no_cost(env: Env) -> None:
    async with env.serve(cache_ttl_s=60) as service:
        client = env.client()
        assert (await client.consult(ask("c1", cache_key=KEY))).outcome == "granted"
        assert await client.settle(paid("c1", cache_key=KEY, cache_value={"answer": 42})) is not None
        hit = await client.consult(ask("c2", cache_key=KEY))
        assert (hit.outcome, hit.cached_answer, hit.reservation_id) == ("cached", {"answer": 42}, None)
        assert "c2" not in service.state.open
        # A retried consultation is answered from the cache again, without a second ledger entry.
        assert await client.consult(ask("c2", cache_key=KEY)) == hit
    entries = await env.entries()
    assert [type(e) for e in entries] == [ReservedEntry, SettledEntry, CacheHitEntry]
    assert isinstance(entries[-1], CacheHitEntry)
    assert entries[-1].consultation_id == "c2"


async def test_ttl_zero_means_no_cache(env: Env) -> None:
    async with env.serve(cache_ttl_s=0):
        client = env.client()
        assert (await client.consult(ask("c1", cache_key=KEY))).outcome == "granted"
        assert await client.settle(paid("c1", cache_key=KEY, cache_value={"answer": 42})) is not None
        assert (await client.consult(ask("c2", cache_key=KEY))).outcome == "granted"
    with pytest.raises(NotFoundError):
        await env.nc.jetstream().stream_info(f"KV_{env.bucket}")


# -- idempotency and expiry ----------------------------------------------------------------------


async def test_a_retried_consultation_and_settlement_count_once(env: Env) -> None:
    async with env.serve() as service:
        client = env.client()
        first = await client.consult(ask("c1"))
        assert await client.consult(ask("c1")) == first
        s1 = await client.settle(paid("c1"))
        s2 = await client.settle(paid("c1"))
        assert s1 is not None
        assert s2 is not None
        assert not s1.already_settled
        assert (s2.already_settled, s2.cost_usd, s2.released_usd) == (True, 0.0, 0.0)
        assert service.state.workflows["wf1"].settled_usd == pytest.approx(s1.cost_usd)
        unknown = await client.settle(paid("never-granted"))
        assert unknown is not None
        assert unknown.already_settled
    assert [type(e) for e in await env.entries()] == [ReservedEntry, SettledEntry]


async def test_an_unsettled_reservation_expires_at_its_worst_case(env: Env) -> None:
    clock = FakeClock()
    async with env.serve(config(reservation_timeout_s=30), clock=clock) as service:
        client = env.client()
        assert (await client.consult(ask("c1"))).outcome == "granted"
        clock.advance(31)
        late = await client.settle(paid("c1"))
        assert late is not None
        assert late.already_settled
        assert service.state.open == {}
        assert service.state.workflows["wf1"].settled_usd == pytest.approx(worst())
    expired = [e for e in await env.entries() if isinstance(e, ExpiredEntry)]
    assert len(expired) == 1
    assert expired[0].cost_usd == pytest.approx(worst())
    assert expired[0].at == T0 + timedelta(seconds=31)


# -- settlements answered before their ledger append ------------------------------------------------


class HeldAppends:
    """Stands in for the service's ledger append: holds each append until ``release`` (then
    appends for real), or fails it with ``LedgerError`` when ``fail`` is set."""

    def __init__(self, service: BudgetService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = service.ledger.append
        self.waiting = asyncio.Event()  # an append is being held
        self.release = asyncio.Event()
        self.fail = False
        monkeypatch.setattr(service.ledger, "append", self.append)

    async def append(self, expected: int, entries: list[LedgerEntry]) -> int:
        self.waiting.set()
        await self.release.wait()
        if self.fail:
            raise LedgerError("injected: the ledger append failed")
        return await self.real(expected, entries)


async def test_a_settlement_is_answered_before_its_append_and_released_only_once_appended(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = worst() * 1.5  # one worst case fits, two do not
    async with env.serve() as service:
        client = env.client()
        assert (await client.consult(ask("c1", budget_usd=cap))).outcome == "granted"
        held = HeldAppends(service, monkeypatch)
        s = await client.settle(paid("c1", inputs=100, outputs=100))  # answered while its append is held
        assert s is not None
        assert (s.already_settled, s.cost_usd) == (False, pytest.approx((100 * 1.0 + 100 * 5.0) / 1e6))
        assert held.waiting.is_set()
        # Not durable yet: the reservation is still held in memory, and a consultation that
        # needs its release waits for the append (it needs the lock the settlement holds).
        assert "c1" in service.state.open
        assert service.state.workflows["wf1"].reserved_usd == pytest.approx(worst())
        after = asyncio.create_task(client.consult(ask("c2", budget_usd=cap)))
        await asyncio.sleep(0.05)
        assert not after.done()
        held.release.set()
        assert (await after).outcome == "granted"  # decided after the release was folded
        assert "c1" not in service.state.open
        assert service.state.workflows["wf1"].settled_usd == pytest.approx(s.cost_usd)
    assert [type(e) for e in await env.entries()] == [ReservedEntry, SettledEntry, ReservedEntry]


async def test_a_restarted_budget_shows_a_settlement_whose_append_was_in_flight_when_it_stopped(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with env.serve() as first:
        client = env.client()
        assert (await client.consult(ask("c1"))).outcome == "granted"
        held = HeldAppends(first, monkeypatch)
        s = await client.settle(paid("c1"))
        assert s is not None
        assert "c1" in first.state.open
        asyncio.get_running_loop().call_later(0.05, held.release.set)
    # Leaving the block drained the service: the settlement's append completed first.
    async with env.serve() as second:
        assert second.state.open == {}
        spend = second.state.workflows["wf1"]
        assert (spend.settled_usd, spend.reserved_usd) == (pytest.approx(s.cost_usd), pytest.approx(0.0))
        again = await env.client().settle(paid("c1"))
        assert again is not None
        assert again.already_settled


async def test_a_settlement_whose_append_fails_leaves_its_reservation_to_expire_at_its_worst_case(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cap = worst() * 1.5
    clock = FakeClock()
    async with env.serve(clock=clock) as service:
        client = env.client()
        assert (await client.consult(ask("c1", budget_usd=cap))).outcome == "granted"
        held = HeldAppends(service, monkeypatch)
        held.fail = True
        held.release.set()
        s = await client.settle(paid("c1", inputs=100, outputs=100))
        assert s is not None
        assert not s.already_settled  # the caller was told the cost before the append failed
        await service.recorded()
        # Never released in memory: the reservation stays open at its worst case.
        assert "c1" in service.state.open
        spend = service.state.workflows["wf1"]
        assert (spend.settled_usd, spend.reserved_usd) == (0.0, pytest.approx(worst()))
        monkeypatch.setattr(service.ledger, "append", held.real)
        denied = await client.consult(ask("c2", budget_usd=cap))  # conservative: the release never happened
        assert (denied.outcome, denied.reason) == ("denied", "over_workflow_cap")
    assert re.search(r"settlement of c1 was answered but not recorded: its reservation stays open", caplog.text)
    assert [type(e) for e in await env.entries()] == [ReservedEntry, DeniedEntry]
    async with env.serve(clock=clock) as restarted:
        assert "c1" in restarted.state.open  # the ledger never released it either
        clock.advance(901)  # past the reservation timeout: it is charged at its worst case
        late = await env.client().settle(paid("c1", inputs=100, outputs=100))
        assert late is not None
        assert late.already_settled
        assert restarted.state.open == {}
        assert restarted.state.workflows["wf1"].settled_usd == pytest.approx(worst())
    expired = [e for e in await env.entries() if isinstance(e, ExpiredEntry)]
    assert [(e.reservation_id, e.cost_usd) for e in expired] == [("c1", pytest.approx(worst()))]


async def test_two_settlements_of_one_reservation_at_once_count_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async with env.serve() as service:
        client = env.client()
        assert (await client.consult(ask("c1"))).outcome == "granted"
        held = HeldAppends(service, monkeypatch)
        busy = asyncio.create_task(client.consult(ask("c0")))  # holds the lock in its append
        async with asyncio.timeout(5):
            await held.waiting.wait()
        both = asyncio.gather(client.settle(paid("c1")), client.settle(paid("c1")))
        await asyncio.sleep(0.05)  # most likely queued as one group behind the held append
        held.release.set()
        first, second = await both
        assert (await busy).outcome == "granted"
        await service.recorded()
    assert first is not None
    assert second is not None
    assert sorted([first.already_settled, second.already_settled]) == [False, True]
    cost = max(first.cost_usd, second.cost_usd)
    assert min(first.cost_usd, second.cost_usd) == 0.0
    entries = await env.entries()
    assert [e.reservation_id for e in entries if isinstance(e, SettledEntry)] == ["c1"]
    assert rules.fold(entries).workflows["wf1"].settled_usd == pytest.approx(cost)


def test_a_request_about_a_reservation_settled_earlier_in_the_group_waits_for_the_next_round() -> None:
    no_msg = cast(Msg, None)  # _split reads only the requests

    def consult(cid: str) -> Ask:
        return Ask(msg=no_msg, request=ask(cid), cached=None, started=0.0)

    def settle(rid: str) -> Settle:
        return Settle(msg=no_msg, request=paid(rid), started=0.0)

    group: list[Request] = [consult("a"), settle("a"), settle("b"), settle("a"), consult("a"), consult("c")]
    now, later = budget_commit._split(group)
    assert now == [group[0], group[1], group[2], group[5]]
    assert later == [group[3], group[4]]  # served next, in order, once the settlement of "a" is folded
    assert budget_commit._split(later) == ([group[3]], [group[4]])


# -- invalid requests and no budget ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "payload", "code", "message"),
    [
        ("consult", b"not json", "invalid_consultation", r"JSON is malformed: .*"),
        ("consult", b'{"id": "c1"}', "invalid_consultation", r"Object missing required field `workflow_id`"),
        (
            "consult",
            msgspec.json.encode({**msgspec.to_builtins(ask("c1")), "bogus": 1}),
            "invalid_consultation",
            r"Object contains unknown field `bogus`",
        ),
        (
            "consult",
            msgspec.json.encode({**msgspec.to_builtins(ask("c1")), "est_input_tokens": -5}),
            "invalid_consultation",
            r"Expected `int` >= 0 - at `\$\.est_input_tokens`",
        ),
        (
            "consult",
            msgspec.json.encode({**msgspec.to_builtins(ask("c1")), "cache_key": "Not Hex"}),
            "invalid_consultation",
            r"Expected `str` matching regex .* - at `\$\.cache_key`",
        ),
        (
            "settle",
            b'{"reservation_id": 3}',
            "invalid_settlement",
            r"Expected `str`, got `int` - at `\$\.reservation_id`",
        ),
    ],
)
async def test_an_invalid_request_gets_a_structured_error(
    env: Env, subject: str, payload: bytes, code: str, message: str
) -> None:
    async with env.serve():
        target = env.subjects.budget if subject == "consult" else env.subjects.budget_settle
        reply = msgspec.json.decode((await env.nc.request(target, payload, timeout=2)).data)
    assert reply["error"]["code"] == code
    assert re.fullmatch(message, reply["error"]["message"])


async def test_a_settlement_of_another_workflows_reservation_is_refused(env: Env) -> None:
    async with env.serve():
        client = env.client()
        assert (await client.consult(ask("c1", wf="wf1"))).outcome == "granted"
        reply = await env.nc.request(env.subjects.budget_settle, msgspec.json.encode(paid("c1", wf="wf2")), timeout=2)
        assert msgspec.json.decode(reply.data) == {
            "error": {"code": "invalid_settlement", "message": "reservation 'c1' belongs to workflow 'wf1', not 'wf2'"}
        }
        assert await client.settle(paid("c1", wf="wf2")) is None


async def test_without_a_budget_actor_a_consultation_is_denied_within_the_timeout(env: Env) -> None:
    """Nobody listens: asked again within the timeout (a budget may be restarting), then denied."""
    client = env.client(timeout=0.5)
    started = time.perf_counter()
    d = await client.consult(ask("c1"))
    assert 0.4 < time.perf_counter() - started < 1.5
    assert (d.outcome, d.reason) == ("denied", "budget_unavailable")
    assert re.fullmatch(r"no budget actor listens on b\w+\.budget\.consult", d.message)
    assert await client.settle(paid("c1")) is None


async def test_decisions_are_counted_in_the_metrics(env: Env) -> None:
    metrics = Metrics.create()
    async with env.serve(metrics=metrics):
        client = env.client()
        await client.consult(ask("c1"))
        await client.consult(ask("c2", kind="adapt"))
        await client.settle(paid("c1"))
    value = metrics.registry.get_sample_value
    assert value("cadre_budget_decisions_total", {"kind": "plan", "outcome": "granted", "reason": ""}) == 1
    assert value("cadre_budget_decisions_total", {"kind": "adapt", "outcome": "denied", "reason": "not_allowed"}) == 1
    assert value("cadre_budget_decision_seconds_count", {"operation": "settle"}) == 1


# -- pure rules ----------------------------------------------------------------------------------


def test_gate_names_the_valid_values_of_unknown_inputs() -> None:
    assert rules.gate("plan", "genius", "adaptive") == (
        "unknown intelligence level 'genius'; expected one of basic, adaptive, intelligent, autonomous"
    )
    assert (
        rules.gate("plan", "adaptive", "wild")
        == "unknown execution mode 'wild'; expected one of strict, adaptive, creative"
    )
    assert rules.gate("dream", "autonomous", "creative") == (
        "unknown consultation kind 'dream'; expected one of plan, decompose, recover, interpret, decide, adapt"
    )
    assert rules.gate("plan", "basic", "creative") == (
        "intelligence level 'basic' with mode 'creative' does not allow 'plan' (allowed: none)"
    )


def test_worst_case_uses_the_safety_factor_and_the_longest_price_prefix() -> None:
    cfg = config()
    assert rules.worst_case_usd(ask("c", est_input_tokens=1001, max_output_tokens=10), cfg) == (
        1502,
        pytest.approx((1502 * 1.0 + 10 * 5.0) / 1e6),
    )
    unknown = rules.worst_case_usd(ask("c", model="mystery"), cfg)
    assert unknown[1] == pytest.approx((1500 * 15.0 + 1000 * 75.0) / 1e6)  # the deliberately high default


def test_decide_and_fold_agree_and_apply_can_be_taken_back() -> None:
    cfg = config()
    state = BudgetState()
    entries: list[LedgerEntry] = []
    for i in range(5):
        d, e = rules.decide(state, cfg, ask(f"c{i}", wf=f"wf{i % 2}"), T0 + timedelta(seconds=i))
        assert d.outcome == "granted"
        assert e is not None
        rules.apply(state, e)
        entries.append(e)
    _, e = rules.settle(state, cfg, paid("c0", wf="wf0"), T0 + timedelta(seconds=9))
    assert e is not None
    rules.apply(state, e)
    entries.append(e)
    assert snapshot(rules.fold(entries)) == snapshot(state)
    before = rules.fold(entries)
    undo: rules.Undo = []
    for entry in rules.expire(state, T0 + timedelta(days=1)):
        rules.apply(state, entry, undo)
    d, e = rules.decide(state, cfg, ask("c9", wf="wf9", budget_usd=5.0), T0 + timedelta(days=1))
    assert e is not None
    rules.apply(state, e, undo)
    assert state.open.keys() == {"c9"}
    for take_back in reversed(undo):
        take_back()
    assert snapshot(state) == snapshot(before)
    assert list(state.open) == ["c1", "c2", "c3", "c4"]  # still in order of expiry


def test_fold_counts_a_duplicated_reservation_once() -> None:
    _, e = rules.decide(BudgetState(), config(), ask("c1"), T0)
    assert e is not None
    state = rules.fold([e, e])
    assert state.workflows["wf1"].reserved_usd == pytest.approx(worst())


def test_tokens_per_minute_are_counted_over_the_window() -> None:
    cfg = config(rate_limits={"p": (100, 5000)})
    state = BudgetState()
    for i in range(2):
        d, e = rules.decide(state, cfg, ask(f"c{i}"), T0 + timedelta(seconds=10 * i))
        assert e is not None
        rules.apply(state, e)
    d, _ = rules.decide(state, cfg, ask("c2"), T0 + timedelta(seconds=30))
    assert (d.reason, d.retry_after_s) == ("rate_limited", 30.0)
    assert d.message.startswith("provider 'p' had 4000 tokens granted in the last 60 s; this call's 2000 would exceed")
    d, _ = rules.decide(state, cfg, ask("c3"), T0 + timedelta(seconds=61))
    assert d.outcome == "granted"  # the first grant left the window
    d, _ = rules.decide(state, config(rate_limits={"p": (0, 5000)}), ask("c4"), T0)
    assert (d.reason, d.retry_after_s) == ("rate_limited", None)


def test_a_settlement_of_another_workflows_reservation_raises() -> None:
    state = BudgetState()
    _, e = rules.decide(state, config(), ask("c1"), T0)
    assert e is not None
    rules.apply(state, e)
    with pytest.raises(rules.InvalidSettlement, match=r"^reservation 'c1' belongs to workflow 'wf1', not 'wf2'$"):
        rules.settle(state, config(), paid("c1", wf="wf2"), T0)


def test_the_report_sums_spend_denials_cache_hits_and_open_reservations() -> None:
    cfg = config(rate_limits={"p": (1000, 10**9)})
    state = BudgetState()
    entries: list[LedgerEntry] = []

    def record(e: LedgerEntry | None) -> None:
        assert e is not None
        rules.apply(state, e)
        entries.append(e)

    record(rules.decide(state, cfg, ask("a1", wf="a"), T0)[1])
    record(rules.settle(state, cfg, paid("a1", wf="a", inputs=1000, outputs=200), T0)[1])
    record(rules.decide(state, cfg, ask("a2", wf="a", kind="adapt"), T0)[1])
    record(rules.decide(state, cfg, ask("b1", wf="b", kind="decompose"), T0)[1])
    record(rules.decide(state, cfg, ask("b2", wf="b"), T0, cached={"x": 1})[1])
    r = budget_report.report(entries, today=T0.date(), daily_cap_usd=10.0)
    assert r.spend_usd == pytest.approx(0.002)
    assert r.by_workflow["a"].calls == 1
    assert r.by_workflow["a"].cap_usd == 1.0
    assert r.by_kind["plan"].input_tokens == 1000
    assert r.denials == {"not_allowed": 1}
    assert r.cache_hits == 1
    assert [o.reservation_id for o in r.open_reservations] == ["b1"]
    assert r.today is not None
    assert (r.today.settled_usd, r.today.reserved_usd, r.today.cap_usd) == (
        pytest.approx(0.002),
        pytest.approx(worst()),
        10.0,
    )
    only_b = budget_report.report(entries, "b")
    assert (only_b.by_workflow, only_b.denials, only_b.cache_hits) == ({}, {}, 1)


def test_what_a_workflow_leaves_in_the_state_is_its_spend_and_cap_and_nothing_else_grows() -> None:
    """Many workflows that each consult once and settle leave one spend and one cap each (which
    enforce their caps if they come back); decisions, open reservations, rate windows and days
    stay bounded."""
    cfg = config(decision_memory=50)
    state = BudgetState(decision_memory=cfg.decision_memory)
    n = 500
    for i in range(n):
        now = T0 + timedelta(minutes=i)
        d, e = rules.decide(state, cfg, ask(f"c{i}", wf=f"wf{i}"), now)
        assert d.outcome == "granted"
        assert e is not None
        rules.apply(state, e)
        _, s = rules.settle(state, cfg, paid(f"c{i}", wf=f"wf{i}"), now)
        assert s is not None
        rules.apply(state, s)
    assert (len(state.workflows), len(state.caps)) == (n, n)
    assert len(state.decisions) == 50
    assert not state.open
    assert state.windows.keys() == {"p"}
    assert len(state.windows["p"].grants) == 1  # one grant a minute: the older ones left the window
    assert len(state.days) == 1
    assert not state.overruns


def test_a_workflow_that_comes_back_after_a_year_of_others_cannot_pass_its_cap() -> None:
    """A workflow idle for a long time (by the ledger's times) keeps its spend: coming back, it
    gets only what is left under its cap (pruning it would have let it spend its cap again)."""
    cfg = config(decision_memory=10, daily_usd=1000.0)
    cap = 2.5 * worst()
    state = BudgetState(decision_memory=cfg.decision_memory)
    for i in range(2):
        d, e = rules.decide(state, cfg, ask(f"old{i}", wf="wf-old", budget_usd=cap), T0)
        assert d.outcome == "granted"
        assert e is not None
        rules.apply(state, e)
        _, s = rules.settle(state, cfg, paid(f"old{i}", wf="wf-old", inputs=1500, outputs=1000), T0)
        assert s is not None
        rules.apply(state, s)
    for i in range(200):  # others come and go for a year
        now = T0 + timedelta(days=1 + i)
        _, e = rules.decide(state, cfg, ask(f"c{i}", wf=f"wf{i}"), now)
        assert e is not None
        rules.apply(state, e)
    later = T0 + timedelta(days=365)
    for i in range(2, 4):
        d, e = rules.decide(state, cfg, ask(f"old{i}", wf="wf-old", budget_usd=10 * cap), later)
        assert e is not None
        rules.apply(state, e)
    assert (d.outcome, d.reason) == ("denied", "over_workflow_cap")  # the cap of its first consultation holds
    spend = state.workflows["wf-old"]
    assert spend.settled_usd + spend.reserved_usd <= cap
    assert state.caps["wf-old"] == cap


async def test_a_ledger_append_nobody_answers_is_sent_again(env: Env, nats_url: str) -> None:
    """The ledger's stream between leaders ("no responders"): the budget sends its append again with
    backoff, and the consultation is granted once, with one entry in the ledger."""
    service_nc = await nats.connect(nats_url)
    real_request = service_nc.request
    sends = 0

    async def electing(subject: str, payload: bytes = b"", **kw: Any) -> Any:
        nonlocal sends
        if subject == env.subjects.ledger:
            sends += 1
            if sends <= 2:
                raise nats.errors.NoRespondersError
        return await real_request(subject, payload, **kw)

    service_nc.request = electing  # type: ignore[method-assign]
    try:
        async with env.serve(nc=service_nc):
            d = await env.client().consult(ask("c1"))
    finally:
        await service_nc.close()
    assert d.outcome == "granted", d
    assert sends == 3
    assert [type(e).__name__ for e in await env.entries()] == ["ReservedEntry"]
