"""Wiring: from settings to a connected event log, starting the embedded server when needed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from cadre.auth_cli import acting_role, bootstrap, creds_for, ensure_outputs, local_auth, prepare_embedded
from cadre.bus.auth import READERS_ROLES
from cadre.bus.connection import connect
from cadre.bus.embedded import EmbeddedServer, start_embedded
from cadre.bus.requests_stream import ensure_intake_streams
from cadre.settings import Settings
from cadre.store.jetstream import JetStreamLog
from cadre.store.objects import OutputObjects


@dataclass(frozen=True)
class Bus:
    """A live connection, the event log on it, and the embedded server if one is in use."""

    url: str
    nc: NATS
    log: JetStreamLog
    server: EmbeddedServer | None


@asynccontextmanager
async def open_bus(
    settings: Settings, *, name: str = "cadre", role: str = "client", service: bool = False
) -> AsyncIterator[Bus]:
    """Connect to ``settings.nats_url``, or to the embedded server of ``settings.data_dir``
    (reusing a running one, else starting it with its authorization), as ``role`` (``bus/auth.py``),
    and make sure the event stream exists.

    On the embedded server the role's credentials are the data dir's and the streams are bootstrapped
    as ``admin``; elsewhere ``--creds`` (if any) is used, and only an admin (or a server without
    authorization) creates the stream: the others find it made by ``cadre auth bootstrap``.
    On exit the connection is drained, and an embedded server this call started is stopped.
    A ``service`` (an actor process) waits for the server up to ``settings.connect_wait_s``.
    """
    server: EmbeddedServer | None = None
    url = settings.nats_url
    auth_dir = local_auth(settings, url)
    if url is None:
        config = await asyncio.to_thread(prepare_embedded, settings)
        server = await asyncio.to_thread(start_embedded, settings.data_dir, port=settings.embedded_port, config=config)
        url = server.url
    try:
        if auth_dir is not None:
            await bootstrap(settings, url, auth_dir)
        creds = creds_for(settings, role, auth_dir)
        nc = await connect(settings.connect_options(url, name, creds, service=service))
        try:
            acting = acting_role(settings, role)
            js = nc.jetstream(timeout=settings.request_timeout_s)
            # A READERS user (a client, an approver) reads the outputs stored by reference from its
            # account's mirror of the object store, which may lag the event stream's mirror a little.
            readers = creds is not None and acting in READERS_ROLES
            objects = OutputObjects(js, settings.outputs_bucket, wait_missing_s=2.0 if readers else 0.0)
            log = JetStreamLog(
                nc,
                stream=settings.stream(),
                subjects=settings.subjects,
                timeout=settings.request_timeout_s,
                retry=settings.retry_policy(),
                objects=objects,
                inline_max_bytes=settings.tool_output_inline_max_bytes,
            )
            if auth_dir is None and (creds is None or acting == "admin"):
                await log.ensure_stream()
                await ensure_intake_streams(log.js, settings.intake())
                await ensure_outputs(objects, settings)
            yield Bus(url, nc, log, server)
        finally:
            if not nc.is_closed:
                await nc.drain()
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
