"""Shared fixtures: a real nats-server for the session, a connection and a fresh event log per test."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from hypothesis import settings
from nats.aio.client import Client as NATS

from cadre.bus import ConnectOptions, StreamSpec, Subjects, connect
from cadre.bus.embedded import server_binary
from cadre.bus.events import Envelope, Event, WorkflowRequested, make_event
from cadre.store import JetStreamLog

# Hypothesis' per-example deadline (200 ms) measures the machine's load, not the property: on 2
# busy cores it failed examples that pass alone. The properties hold or not whatever the time.
settings.register_profile("cadre", deadline=None)
settings.load_profile("cadre")

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One nats-server with JetStream for the whole session (started without an event loop)."""
    binary = str(server_binary())
    for _ in range(3):  # the free-port probe can race with another process; try a new port
        port, store = _free_port(), tmp_path_factory.mktemp("js")
        logfile = store / "server.log"
        proc = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store), "-l", str(logfile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        if proc.poll() is None:
            break
    else:
        raise RuntimeError("could not start nats-server: " + logfile.read_text(errors="replace")[-2000:])
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest_asyncio.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    c = await connect(ConnectOptions(url=nats_url, name="cadre-tests"))
    yield c
    await c.drain()


def run_bench(script: str, *args: str, timeout: float) -> tuple[dict[str, Any], str]:
    """``python bench/SCRIPT ARGS...`` from the repository's root: its JSON result (stdout) and its
    progress (stderr); a failed run fails the test with the end of its stderr."""
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr


def unique(prefix: str = "t") -> str:
    return prefix + uuid.uuid4().hex[:10]


async def until(cond: Callable[[], bool], within: float) -> None:
    """Poll ``cond`` every 50 ms until it holds, at most ``within`` seconds: for what another
    process, a timer or a file changes, which offers nothing to await on."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 (nothing to await on: see above)
            await asyncio.sleep(0.05)


@pytest.fixture
def spec_and_subjects() -> tuple[StreamSpec, Subjects]:
    """A stream and subject prefix of this test's own, so tests sharing the server never meet."""
    prefix = unique("t")
    return StreamSpec(name=prefix.upper(), subjects=f"{prefix}.evt.>", storage="memory"), Subjects(prefix)


@pytest_asyncio.fixture
async def log(nc: NATS, spec_and_subjects: tuple[StreamSpec, Subjects]) -> AsyncIterator[JetStreamLog]:
    spec, subjects = spec_and_subjects
    jlog = JetStreamLog(nc, stream=spec, subjects=subjects)
    await jlog.ensure_stream()
    yield jlog
    await nc.jetstream().delete_stream(spec.name)


async def with_partitions(log: JetStreamLog, partitions: int) -> JetStreamLog:
    """``log``'s stream given ``partitions`` (as a process with ``CADRE_PARTITIONS`` set brings it up
    to date at start-up), and a log of that setting on it."""
    plog = JetStreamLog(log.nc, stream=dataclasses.replace(log.spec, partitions=partitions), subjects=log.subjects)
    await plog.ensure_stream()
    return plog


def ev(data: Event, wf: str, *, cause: str | None = None, i: int = 0, actor: str = "test") -> Envelope:
    """An event at a fixed time, with its id derived from (cause, actor, i)."""
    return make_event(data, workflow_id=wf, actor=actor, at=T0 + timedelta(milliseconds=i), causation_id=cause, index=i)


def unchained(events: list[Envelope]) -> list[Envelope]:
    """The events without the ``prev`` the log chained them with (to compare with what was appended)."""
    return [msgspec.structs.replace(e, prev="") for e in events]


def requested(wf: str, text: str = "do something") -> Envelope:
    return ev(WorkflowRequested(request=text), wf, actor="intake")


@pytest.fixture(autouse=True)
def _a_data_dir_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the checkout's ``.cadre``: `make demo` before `make test` leaves the embedded
    server's keys there, and a CLI call without ``--data-dir`` would then check the tests'
    unsigned events against them. A test that wants another data dir sets its own."""
    monkeypatch.setenv("CADRE_DATA_DIR", str(tmp_path_factory.mktemp("default-data")))
    # The requests stream of every deployment a test makes reserves its byte bound in the test
    # server's memory (streams of memory storage); keep that small, or a session runs out.
    monkeypatch.setenv("CADRE_INTAKE_MAX_BYTES", str(1024 * 1024))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "cadre-data"
