"""actors.pull.fetch with ``reuse`` (a partition's fetch loop): it waits on the subscription's pull
request while that is open instead of sending another, where a plain fetch sends one or two per call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from cadre.actors import pull
from tests.conftest import unique


async def _requests_for_three_inputs(nc: NATS, monkeypatch: pytest.MonkeyPatch, reuse: bool) -> int:
    sent: list[dict[str, Any]] = []
    request = pull._request

    async def counted(psub: Any, req: dict[str, Any]) -> None:
        sent.append(req)
        await request(psub, req)

    monkeypatch.setattr(pull, "_request", counted)
    js = nc.jetstream()
    name = unique("PULL").upper()
    await js.add_stream(api.StreamConfig(name=name, subjects=[f"{name}.>"], storage=api.StorageType.MEMORY))
    try:
        await js.add_consumer(name, api.ConsumerConfig(durable_name="d", ack_policy=api.AckPolicy.EXPLICIT))
        sub = await js.pull_subscribe_bind(durable="d", stream=name)
        for i in range(3):  # one input at a time, as a partition's come
            fetch = asyncio.create_task(pull.fetch(sub, 5, 2.0, reuse=reuse))
            await asyncio.sleep(0.1)
            await js.publish(f"{name}.x", str(i).encode())
            (m,) = await fetch
            assert m.data == str(i).encode()
            await m.ack()
        if reuse:  # the one request, still open for the rest of its batch
            assert (await js.consumer_info(name, "d")).num_waiting == 1
        await sub.unsubscribe()
        return len(sent)
    finally:
        await js.delete_stream(name)


async def test_a_reusing_fetch_sends_no_request_while_its_last_is_open(
    nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await _requests_for_three_inputs(nc, monkeypatch, reuse=True) == 1
    assert await _requests_for_three_inputs(nc, monkeypatch, reuse=False) >= 3
