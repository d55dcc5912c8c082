"""Connecting to NATS: fail fast when nobody answers, then reconnect patiently.

nats-py uses one setting, ``max_reconnect_attempts``, both for the first connect and for
reconnects, and its defaults keep a first connect to a dead server trying for about two
minutes (``../shared/SDK-FACTS.md`` §3.1). cadre wants the opposite: a command pointed at
the wrong URL says so within a second or two, while a running actor rides out a server
restart. So the first connect runs with a small attempt budget, and once connected the
client's options are switched to the reconnect policy.

A service started before its NATS server (``cadre actor KIND --nats URL`` in a deployment
that boots everything at once) may instead wait for it: ``ConnectOptions.wait_s`` bounds
the total wait, with a "waiting for NATS at ..." log line and exponential backoff.

A server that answers but cannot run cadre stops every process at once with one line
(:class:`ServerUnsupported`): cadre needs nats-server ``MIN_SERVER_VERSION`` (per-subject
expected-sequence checks need 2.11, the event stream's atomic batches 2.12) with JetStream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from cadre.bus.errors import (
    AuthConfigError,
    JetStreamUnavailable,
    NatsAuthError,
    NatsUnavailable,
    ServerUnsupported,
)
from cadre.bus.nats_client import Client

log = logging.getLogger("cadre.bus")

# The oldest nats-server cadre runs on: `Nats-Expected-Last-Subject-Sequence-Subject` (the
# per-workflow optimistic concurrency of store/jetstream.py) needs 2.11, and the event stream
# allows atomic batches (`allow_atomic`, ADR-50), which need 2.12.
MIN_SERVER_VERSION = (2, 12, 0)
_WHY_VERSION = "per-workflow expected-sequence checks need 2.11, atomic batches 2.12"
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How to reach NATS. ``url`` may list several servers separated by commas."""

    url: str = "nats://127.0.0.1:4222"
    name: str = "cadre"
    connect_timeout: float = 2.0
    connect_attempts: int = 2  # tries per server on the first connect, then NatsUnavailable
    reconnect_wait: float = 0.5
    max_reconnect_attempts: int = -1  # once connected: -1 = keep trying forever
    ping_interval: float = 20.0
    creds: Path | None = None  # a NATS creds file (user JWT + seed); None = connect without credentials
    wait_s: float = 0.0  # first connect: how long to keep waiting for a server to come up; 0 = fail at once


def server_problem(info: Mapping[str, Any], url: str) -> str | None:
    """Why the server that sent ``info`` (its INFO line) cannot run cadre, or None if it can."""
    found = str(info.get("version") or "unknown")
    m = _VERSION.match(found)
    if m is None or tuple(int(g) for g in m.groups()) < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        return (
            f"the NATS server at {url} is nats-server {found}; cadre needs nats-server {need} or newer "
            f"({_WHY_VERSION}): upgrade it, or leave --nats / CADRE_NATS_URL unset to run the bundled one"
        )
    if not info.get("jetstream"):
        return (
            f"the NATS server at {url} (nats-server {found}) runs without JetStream; cadre keeps its events "
            "in JetStream: start the server with -js, or `jetstream {}` in its config"
        )
    return None


async def connect(opts: ConnectOptions, *, nats_py: bool = False) -> NATS:
    """Connect (waiting up to ``opts.wait_s`` for a server to come up), then check the server.

    ``nats_py``: with nats-py's own client instead of cadre's (:mod:`cadre.bus.nats_client`), as a
    user's program would connect: the benchmarks' raw baselines.

    Raises :class:`NatsUnavailable` when no server answered in time, :class:`NatsAuthError`
    when it refused the credentials and :class:`ServerUnsupported` when it cannot run cadre.
    """
    deadline = time.monotonic() + max(0.0, opts.wait_s)
    delay = 0.25
    while True:
        try:
            nc = await _connect_once(opts, nats_py)
            break
        except NatsUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                if opts.wait_s > 0:
                    raise NatsUnavailable(opts.url, f"{exc.reason}; waited {opts.wait_s:g} s") from None
                raise
            pause = min(delay, left)
            log.warning(
                "waiting for NATS at %s (%s); retrying in %.2g s, giving up in %.1f s",
                opts.url,
                exc.reason,
                pause,
                left,
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, 5.0)
    problem = server_problem(nc._server_info, opts.url)
    if problem is not None:
        await nc.close()
        raise ServerUnsupported(problem)
    if opts.wait_s > 0:
        try:
            await _wait_for_jetstream(nc, opts, deadline)
        except BaseException:
            await nc.close()
            raise
    return nc


async def _jetstream_problem(nc: NATS, within: float) -> str | None:
    """Why JetStream does not serve this connection right now (``$JS.API.INFO``), or None."""
    try:
        msg = await nc.request("$JS.API.INFO", b"", timeout=within)
    except nats.errors.NoRespondersError:
        return "no JetStream responded"
    except (TimeoutError, nats.errors.TimeoutError):
        return f"JetStream did not answer within {within:.2g} s"
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return f"JetStream answered {msg.data[:80]!r}"
    error = reply.get("error") if isinstance(reply, dict) else None
    if isinstance(error, dict):
        return f"JetStream: {error.get('description', 'error')} ({error.get('code', '?')})"
    return None


async def _wait_for_jetstream(nc: NATS, opts: ConnectOptions, deadline: float) -> None:
    """A service's wait for JetStream itself: a cluster accepts connections before its meta
    leader is elected, and until then every JetStream call times out or answers 503."""
    delay = 0.25
    while True:
        within = min(opts.connect_timeout, max(0.1, deadline - time.monotonic()))
        reason = await _jetstream_problem(nc, within)
        if reason is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise JetStreamUnavailable(
                f"JetStream at {opts.url} did not become ready ({reason}; waited {opts.wait_s:g} s): a cluster "
                "still electing its leader, or JetStream off for this account; see the servers' logs, or raise "
                "CADRE_CONNECT_WAIT_S"
            )
        pause = min(delay, left)
        log.warning(
            "waiting for JetStream at %s (%s); retrying in %.2g s, giving up in %.1f s", opts.url, reason, pause, left
        )
        await asyncio.sleep(pause)
        delay = min(delay * 2, 5.0)


async def _connect_once(opts: ConnectOptions, nats_py: bool = False) -> NATS:
    """Connect, or raise :class:`NatsUnavailable` quickly when no server answers."""
    servers = [u.strip() for u in opts.url.split(",") if u.strip()]
    holder: list[NATS] = []
    refused: list[str] = []  # the server's authorization errors during the first connect
    if opts.creds is not None and not opts.creds.is_file():
        raise AuthConfigError(
            f"NATS credentials file {opts.creds} does not exist or is not a file; pass the right --creds FILE / "
            "CADRE_NATS_CREDS (a deployment's files are made by `cadre auth init DIR`)"
        )

    def closing() -> bool:
        return bool(holder) and (holder[0].is_closed or holder[0].is_draining)

    async def on_error(exc: Exception) -> None:
        if not holder:  # the first connect: its failure is said once, by the error it raises
            if "authorization violation" in str(exc).lower():
                refused.append(str(exc))
            return
        if not closing():
            log.warning("nats: %s: %s", type(exc).__name__, exc)

    async def on_disconnected() -> None:
        if not closing():
            log.warning("nats: disconnected from %s; reconnecting", opts.url)

    async def on_reconnected() -> None:
        log.info("nats: reconnected")

    try:
        options: dict[str, Any] = {  # nats-py annotates the timeouts as int; they are floats
            "name": opts.name,
            "connect_timeout": opts.connect_timeout,
            "max_reconnect_attempts": max(1, opts.connect_attempts),
            "reconnect_time_wait": 0.1,
            "ping_interval": opts.ping_interval,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "user_credentials": str(opts.creds) if opts.creds is not None else None,
        }
        nc = NATS() if nats_py else _new_client()
        await nc.connect(servers, **options)
    except (TimeoutError, nats.errors.NoServersError, OSError, nats.errors.Error) as exc:
        if refused or "authorization violation" in str(exc).lower():
            raise _auth_error(opts) from None
        if not isinstance(exc, TimeoutError | nats.errors.NoServersError | OSError):
            raise
        raise NatsUnavailable(opts.url, f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    holder.append(nc)
    # Connected: from now on a lost connection is retried with the reconnect policy. nats-py
    # reads these options on every reconnect attempt, so switching them here is safe.
    nc.options["max_reconnect_attempts"] = opts.max_reconnect_attempts
    nc.options["reconnect_time_wait"] = opts.reconnect_wait
    return nc


def _new_client() -> NATS:
    """cadre's nats-py client (:mod:`cadre.bus.nats_client`: cheaper headers, direct append replies).
    ``bench/with_nats_py_client.py`` replaces this function to measure against nats-py's own."""
    return Client()


def _auth_error(opts: ConnectOptions) -> NatsAuthError:
    if opts.creds is None:
        return NatsAuthError(
            f"the NATS server at {opts.url} requires credentials and none were given; pass --creds FILE / "
            "CADRE_NATS_CREDS (the embedded server's are in <data dir>/auth/, a deployment's are made by "
            "`cadre auth init DIR`)"
        )
    return NatsAuthError(
        f"the NATS server at {opts.url} refused the credentials in {opts.creds} (authorization violation: "
        "not a user of this server, or minted for another deployment); pass the right --creds FILE / "
        "CADRE_NATS_CREDS, or make this deployment's with `cadre auth init DIR`"
    )


async def barrier(nc: NATS) -> None:
    """Wait until the server has processed everything this client sent so far.

    On nats-py's own client ``nc.flush()`` alone is not a barrier: it writes PING straight to
    the socket while SUB/PUB commands may still sit in the client's pending buffer (SDK-FACTS
    §6.1). Yield to the flusher task until the buffer is empty, then PING/PONG. On cadre's client
    (:func:`connect`) ``flush`` is already a barrier (``cadre.bus.nats_client``); this works on both.
    """
    await asyncio.sleep(0)
    # The flusher task empties the buffer within a loop iteration or two; there is no event
    # to wait on, so yield until it has.
    while nc.pending_data_size > 0:  # noqa: ASYNC110
        await asyncio.sleep(0)
    await nc.flush()
