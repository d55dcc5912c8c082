"""Run a whole cadre (every actor in this process) against the test server, and drive it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js.errors import NotFoundError

from cadre.actors.runtime import ActorSystem
from cadre.bus.auth import ensure_auth
from cadre.bus.events import TERMINAL_TYPES
from cadre.bus.signing import Keyring
from cadre.settings import Settings
from cadre.store.authenticity import trusted_fold, verdict
from cadre.store.records import StoredEvent
from cadre.store.state import WorkflowState
from cadre.system import KINDS, run_system
from cadre.wiring import Bus, open_bus
from tests.conftest import unique


def settings_for(nats_url: str, data_dir: Path, **overrides: Any) -> Settings:
    prefix = unique("e")
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "data_dir": data_dir,
        "subject_prefix": prefix,
        "stream_name": prefix.upper(),
        "stream_storage": "memory",
        "tool_modules": ["tests.plugin_tools"],
        "actor_ack_wait_s": 5.0,
        "actor_drain_timeout_s": 2.0,
        # Never a real provider from the environment; tests that want a model point at a fake one.
        "llm_provider": "none",
        "ledger_stream_name": prefix.upper() + "_LEDGER",
        "inference_cache_bucket": prefix.upper() + "_INFERENCE",
        "outputs_bucket": prefix.upper() + "_OUTPUTS",
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class Harness:
    bus: Bus
    settings: Settings
    system: ActorSystem | None = None

    async def submit(self, body: dict[str, Any] | bytes) -> dict[str, Any]:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = await self.bus.nc.request(self.settings.subjects.requests, payload, timeout=5)
        reply: dict[str, Any] = json.loads(resp.data)
        return reply

    @property
    def keyring(self) -> Keyring | None:
        return self.system.trust.keyring if self.system is not None else None

    async def wait(self, wf: str, *, until: str = "end", within: float = 20) -> WorkflowState:
        """Follow ``wf`` until it ends (or until an event of type ``until``); its state then, as the
        actors see it: events the keyring does not accept count for nothing."""
        async with asyncio.timeout(within):
            async for r in self.bus.log.follow(wf):
                if (
                    isinstance(r, StoredEvent)
                    and verdict(r, self.keyring).trusted
                    and (r.event.type == until or (until == "end" and r.event.type in TERMINAL_TYPES))
                ):
                    break
        return trusted_fold(wf, await self.bus.log.read_records(wf), self.keyring)

    async def run(self, body: dict[str, Any], within: float = 20) -> WorkflowState:
        reply = await self.submit(body)
        assert "workflow_id" in reply, reply
        return await self.wait(reply["workflow_id"], within=within)

    async def events(self, wf: str) -> list[StoredEvent]:
        """The workflow's events (malformed messages, which some tests inject, left out)."""
        return [r for r in await self.bus.log.read_records(wf) if isinstance(r, StoredEvent)]


def with_keys(settings: Settings) -> Settings:
    """Give the data dir a deployment's keys (as the embedded server's first start does), so the
    system signs what it writes and refuses what its keyring does not accept; the test server
    itself runs without NATS authorization."""
    ensure_auth(settings.auth_dir, settings.auth_names())
    return settings


@asynccontextmanager
async def cadre_running(
    settings: Settings,
    *,
    signed: bool = True,
    agent_pools: tuple[str | None, ...] | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> AsyncIterator[Harness]:
    """The actor ``kinds`` of ``settings`` (every one by default) in this process, its agents
    serving ``agent_pools`` (``cadre.system.run_system``)."""
    if signed:
        await asyncio.to_thread(with_keys, settings)
    async with open_bus(settings, name="test-cadre") as bus:
        try:
            async with run_system(bus, settings, kinds, agent_pools=agent_pools) as system:
                yield Harness(bus, settings, system)
        finally:
            js = bus.nc.jetstream()
            await js.delete_stream(settings.stream_name)
            for name in (
                settings.ledger_stream_name,
                "KV_" + settings.inference_cache_bucket,
                "OBJ_" + settings.outputs_bucket,
            ):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
