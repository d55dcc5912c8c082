"""``cadre budget``, run in-process as a user runs it, against a ledger written by a real budget."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator

import pytest
from nats.js.errors import NotFoundError

from cadre.actors.budget import BudgetClient, serve_budget
from cadre.budget_config import budget_config, ledger_spec
from cadre.bus import ConnectOptions, connect
from cadre.bus.ledger import Consultation, Settlement
from cadre.cli import main
from cadre.settings import Settings
from tests.conftest import unique

KEY = "00112233445566778899aabbccddeeff"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, nats_url: str) -> Iterator[Settings]:
    """CADRE_* settings pointing the CLI at the test server, with streams of this test's own."""
    prefix = unique("k")
    env = {
        "CADRE_NATS_URL": nats_url,
        "CADRE_SUBJECT_PREFIX": prefix,
        "CADRE_STREAM_NAME": prefix.upper(),
        "CADRE_STREAM_STORAGE": "memory",
        "CADRE_LEDGER_STREAM_NAME": prefix.upper() + "_LEDGER",
        "CADRE_INFERENCE_CACHE_BUCKET": prefix.upper() + "_CACHE",
        "CADRE_BUDGET_DAILY_USD": "2.5",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings.load()
    yield s
    asyncio.run(_delete(s))


async def _delete(s: Settings) -> None:
    nc = await connect(ConnectOptions(url=s.nats_url or ""))
    js = nc.jetstream()
    for name in (s.stream_name, s.ledger_stream_name, "KV_" + s.inference_cache_bucket):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)
    await nc.drain()


def seed(s: Settings) -> None:
    """A paid call and a cache hit in wf1, a denial and an open reservation in wf2."""

    def ask(cid: str, wf: str, **fields: object) -> Consultation:
        base: dict[str, object] = {
            "id": cid,
            "workflow_id": wf,
            "kind": "plan",
            "provider": "anthropic",
            "model": "claude-haiku-4-5",
            "est_input_tokens": 1000,
            "max_output_tokens": 1000,
        }
        return Consultation(**{**base, **fields})  # type: ignore[arg-type]

    async def go() -> None:
        nc = await connect(ConnectOptions(url=s.nats_url or ""))
        async with serve_budget(
            nc,
            s.subjects,
            budget_config(s),
            ledger=ledger_spec(s),
            cache_bucket=s.inference_cache_bucket,
            cache_ttl_s=60,
        ):
            client = BudgetClient(nc, s.subjects)
            assert (await client.consult(ask("a1", "wf1", cache_key=KEY))).outcome == "granted"
            settled = await client.settle(
                Settlement(
                    reservation_id="a1",
                    workflow_id="wf1",
                    model="claude-haiku-4-5",
                    input_tokens=1200,
                    output_tokens=300,
                    cache_key=KEY,
                    cache_value={"plan": "p"},
                )
            )
            assert settled is not None
            assert (await client.consult(ask("a2", "wf1", cache_key=KEY))).outcome == "cached"
            assert (await client.consult(ask("b1", "wf2", kind="adapt"))).reason == "not_allowed"
            assert (await client.consult(ask("b2", "wf2", kind="decompose"))).outcome == "granted"
        await nc.drain()

    asyncio.run(go())


def test_budget_prints_spend_denials_cache_hits_and_open_reservations(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(settings)
    assert main(["budget"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"budget ledger {settings.ledger_stream_name}: 5 entries"
    assert re.fullmatch(
        r"today \d{4}-\d\d-\d\d \(UTC, every workflow\): settled \$0\.0027 \+ reserved \$0\.0065 "
        r"of the \$2\.5000 daily cap \(0\.4%\)",
        lines[1],
    )
    assert "spend by workflow" in lines
    assert re.search(r"^  wf1 +1 +1,200 +300 +0\.0027 +0\.5000$", out, re.MULTILINE)
    assert re.search(r"^  anthropic +1 +1,200 +300 +0\.0027$", out, re.MULTILINE)
    assert re.search(r"^  not_allowed +1$", out, re.MULTILINE)
    assert "cache hits: 1" in lines
    assert "open reservations: 1" in lines
    assert re.search(r"^  b2 +wf2 +decompose +anthropic +claude-haiku-4-5 +0\.0065  \d{4}-", out, re.MULTILINE)


def test_budget_json_for_one_workflow(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    seed(settings)
    assert main(["budget", "--workflow", "wf2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["workflow_id"] == "wf2"
    assert report["by_workflow"] == {}
    assert report["denials"] == {"not_allowed": 1}
    assert [o["reservation_id"] for o in report["open_reservations"]] == ["b2"]
    assert report["today"]["cap_usd"] == 2.5
    assert report["today"]["settled_usd"] == pytest.approx(0.0027)  # the day is global


def test_budget_without_a_ledger_reports_nothing(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["entries"], report["spend_usd"], report["open_reservations"]) == (0, 0.0, [])


def test_budget_refuses_an_invalid_workflow_id(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "--workflow", "not a token"]) == 2
    assert re.fullmatch(
        r"cadre: invalid_name: workflow id 'not a token' is not a valid subject token: .*\n", capsys.readouterr().err
    )
