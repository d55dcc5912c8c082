"""Authorization of the partition consumers: with ``CADRE_PARTITIONS`` each actor role may create,
fetch from and ack its own kind's durable per partition (``<durable>_p<i>``), no other kind's, no
partition past the count, and a client none."""

from __future__ import annotations

from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js import api

from cadre.auth_cli import bootstrap, prepare_embedded
from cadre.bus.auth import AuthNames, creds_path, permissions
from cadre.bus.embedded import start_embedded
from cadre.bus.stream import partitions_of
from cadre.settings import Settings


def test_each_role_gets_its_own_kinds_partition_durables_only() -> None:
    names = AuthNames(partitions=3)
    agent = permissions("agent", names).publish or ()
    assert "$JS.API.CONSUMER.DURABLE.CREATE.CADRE_EVENTS.cadre_agent_p2" in agent
    assert "$JS.API.CONSUMER.MSG.NEXT.CADRE_EVENTS.cadre_agent_p0" in agent
    assert "$JS.ACK.CADRE_EVENTS.cadre_agent_p1.>" in agent
    assert not any("cadre_agent_p3" in p for p in agent)  # no partition past the count
    assert not any("_validator" in p or "_planner" in p for p in agent)
    planner = permissions("planner", names).publish or ()
    assert "$JS.API.CONSUMER.MSG.NEXT.CADRE_EVENTS.cadre_planner_pool_children_p2" in planner  # its relay's
    for role in ("client", "approver", "budget"):
        assert not any("_p0" in p for p in permissions(role, names).publish or ())
    # Without partitions, the permissions are what they were (a deployment keeps its credentials).
    assert not any("_p0" in p for p in permissions("node", AuthNames()).publish or ())
    assert "partitions" not in AuthNames().to_json()


def _consumer(durable: str) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=durable,
        filter_subjects=["cadre.evt.*.step_ready.1"],
        ack_policy=api.AckPolicy.EXPLICIT,
    )


async def test_an_agent_creates_and_fetches_its_partition_durables_and_no_others(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", partitions=2)
    server = start_embedded(settings.data_dir, config=prepare_embedded(settings))
    try:
        await bootstrap(settings, server.url, settings.auth_dir)
        agent = await nats.connect(server.url, user_credentials=str(creds_path(settings.auth_dir, "agent")))
        client = await nats.connect(server.url, user_credentials=str(creds_path(settings.auth_dir, "client")))
        try:
            js = agent.jetstream(timeout=0.5)
            # The bootstrap gave the stream its partitions.
            assert partitions_of((await js.stream_info("CADRE_EVENTS")).config) == 2
            await js.add_consumer("CADRE_EVENTS", _consumer("cadre_agent_p1"))
            sub = await js.pull_subscribe_bind(durable="cadre_agent_p1", stream="CADRE_EVENTS")
            with pytest.raises(nats.errors.TimeoutError):  # allowed: no input, so the fetch times out
                await sub.fetch(1, timeout=0.3)
            for durable in ("cadre_validator_p1", "cadre_agent_p2"):  # another kind's; past the count
                with pytest.raises(nats.errors.TimeoutError):
                    await js.add_consumer("CADRE_EVENTS", _consumer(durable))
            with pytest.raises(nats.errors.TimeoutError):
                await client.jetstream(timeout=0.5).add_consumer("CADRE_EVENTS", _consumer("cadre_agent_p0"))
        finally:
            await agent.close()
            await client.close()
    finally:
        server.stop()
