"""Orders to the approvals service (decisions, cancels, redrives) through an outage: no responders
is asked again with backoff (nothing was delivered); a timeout is not (the order may have been
recorded), and the error says how to look."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from cadre.bus.errors import CadreError
from cadre.commands import ask_approvals
from cadre.settings import Settings
from tests.conftest import unique


def settings_for(tmp_path: Path, **over: object) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", subject_prefix=unique("ap"), **over)


async def test_an_order_waits_for_an_approvals_service_that_comes_up(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, nats_retry_s=10.0)
    nc = await nats.connect(nats_url)
    service = await nats.connect(nats_url)
    try:

        async def come_up_later() -> None:
            await asyncio.sleep(0.5)

            async def answer(msg: nats.aio.msg.Msg) -> None:
                await msg.respond(b'{"by": "ada"}')

            await service.subscribe(settings.subjects.approvals, cb=answer)

        later = asyncio.create_task(come_up_later())
        started = time.monotonic()
        assert await ask_approvals(nc, settings, b"signed", "decision", "wf-1") == b'{"by": "ada"}'
        assert time.monotonic() - started >= 0.5  # it was asked again, not refused at once
        await later
    finally:
        await nc.close()
        await service.close()


async def test_no_service_at_all_gives_up_after_the_bound(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, nats_retry_s=1.0)
    nc = await nats.connect(nats_url)
    try:
        started = time.monotonic()
        with pytest.raises(CadreError, match=r"no approvals service answered on .*: is `cadre up`"):
            await ask_approvals(nc, settings, b"signed", "decision", "wf-1")
        assert 0.9 <= time.monotonic() - started < 5
    finally:
        await nc.close()


async def test_a_timeout_is_not_sent_again_and_says_how_to_look(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, nats_retry_s=10.0, request_timeout_s=0.5)
    nc = await nats.connect(nats_url)
    service = await nats.connect(nats_url)
    received: list[bytes] = []
    try:

        async def swallow(msg: nats.aio.msg.Msg) -> None:
            received.append(msg.data)  # recorded, say, but the answer is lost

        await service.subscribe(settings.subjects.approvals, cb=swallow)
        await service.flush()
        with pytest.raises(CadreError, match=r"may have been recorded all the same; see `cadre events wf-7`"):
            await ask_approvals(nc, settings, b"signed", "cancel", "wf-7")
        assert received == [b"signed"]  # once: a second would be refused as already decided
    finally:
        await nc.close()
        await service.close()
