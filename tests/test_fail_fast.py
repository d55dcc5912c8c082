"""Fail fast on what cannot work: an old or JetStream-less server, NATS not up yet, bad settings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cadre.bus import ConnectOptions, connect
from cadre.bus.connection import server_problem
from cadre.bus.embedded import server_binary
from cadre.bus.errors import JetStreamUnavailable, NatsUnavailable, ServerUnsupported
from cadre.cli import main
from cadre.settings import Settings
from cadre.settings_errors import InvalidSettings
from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parent.parent


class FakeServer:
    """Speaks just enough NATS for a client to connect: an INFO line, then PONG for each PING.

    Stands in for an old nats-server (Debian's package is 2.9.10) without installing one.
    """

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        for writer in self.writers:
            writer.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        info = {"server_id": "FAKE", "host": "127.0.0.1", "port": self.port, "max_payload": 1048576, **self.info}
        writer.write(f"INFO {json.dumps(info)}\r\n".encode())
        await writer.drain()
        try:
            while line := await reader.readline():
                if line.startswith(b"PING"):
                    writer.write(b"PONG\r\n")
                    await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


DEBIAN = {"version": "2.9.10", "proto": 1, "headers": True, "jetstream": False, "go": "go1.19.8"}


@pytest.fixture
def old_server() -> Iterator[FakeServer]:
    with FakeServer(DEBIAN) as server:
        yield server


def test_server_problem_names_the_version_needed_and_found() -> None:
    url = "nats://n:4222"
    for version in ("2.9.10", "2.11.4", "v2.10.0", "1.4.1", "", "nonsense"):
        problem = server_problem({"version": version, "jetstream": True}, url)
        assert problem is not None
        assert "cadre needs nats-server 2.12.0 or newer" in problem
        assert f"is nats-server {version or 'unknown'};" in problem
    no_js = server_problem({"version": "2.15.1", "jetstream": False}, url)
    assert no_js is not None
    assert "without JetStream" in no_js
    assert "-js" in no_js
    assert server_problem({"version": "2.12.0", "jetstream": True}, url) is None
    assert server_problem({"version": "2.15.1-beta.2", "jetstream": True}, url) is None
    assert server_problem({"version": "3.0.0", "jetstream": True}, url) is None


async def test_connect_refuses_an_old_server(old_server: FakeServer) -> None:
    with pytest.raises(ServerUnsupported, match=r"is nats-server 2\.9\.10; cadre needs nats-server 2\.12\.0 or newer"):
        await connect(ConnectOptions(url=old_server.url))


async def test_connect_refuses_a_server_without_jetstream() -> None:
    with (
        FakeServer({**DEBIAN, "version": "2.15.1"}) as server,
        pytest.raises(ServerUnsupported, match="without JetStream"),
    ):
        await connect(ConnectOptions(url=server.url))


async def test_connect_accepts_the_test_server(nats_url: str) -> None:
    nc = await connect(ConnectOptions(url=nats_url))
    await nc.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["events", "wf-1"],
        ["workflows"],
        ["submit", "report revenue per month"],
        ["run", "report revenue per month"],
        ["budget"],
        ["actor", "validator"],
    ],
)
def test_every_command_stops_on_an_old_server(
    argv: list[str], old_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    rc = main([*argv, "--nats", old_server.url, "--data-dir", str(tmp_path)])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert rc == 1, err
    assert took < 5, took
    last = err.strip().splitlines()[-1]
    assert last.startswith("cadre: nats_server_unsupported: the NATS server at nats://127.0.0.1:")
    assert "is nats-server 2.9.10; cadre needs nats-server 2.12.0 or newer" in last
    assert "Traceback" not in err
    assert "concurrency" not in err


def test_commands_for_people_do_not_wait(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    os.environ["CADRE_CONNECT_WAIT_S"] = "30"  # a service setting: people's commands ignore it
    try:
        started = time.monotonic()
        rc = main(["status", "--nats", url, "--data-dir", str(tmp_path)])
    finally:
        del os.environ["CADRE_CONNECT_WAIT_S"]
    assert rc == 1
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "no NATS server answered" in err
    assert "waiting for NATS" not in err + caplog.text


async def test_a_service_waits_then_gives_up() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(NatsUnavailable, match=r"waited 1\.5 s"):
        await connect(ConnectOptions(url=url, wait_s=1.5))
    assert 1.4 < time.monotonic() - started < 5


def _actor(url: str, data_dir: Path, wait: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")} | {
        "CADRE_CONNECT_WAIT_S": wait,
        "CADRE_DATA_DIR": str(data_dir),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cadre.cli", "actor", "validator", "--nats", url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_an_actor_started_before_nats_gives_up_cleanly(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    proc = _actor(url, tmp_path, "2")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert f"waiting for NATS at {url}" in err
    assert err.strip().splitlines()[-1].startswith(f"cadre: nats_unavailable: no NATS server answered at {url}")
    assert "waited 2 s" in err
    assert "Traceback" not in err


def test_an_actor_started_before_nats_connects_when_it_comes_up(tmp_path: Path) -> None:
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = _actor(url, tmp_path / "actor", "30")
    server: subprocess.Popen[bytes] | None = None
    try:
        assert proc.stderr is not None
        assert proc.stdout is not None
        line = proc.stderr.readline()
        assert line.startswith(f"waiting for NATS at {url}"), line
        store = tmp_path / "js"
        server = subprocess.Popen(
            [str(server_binary()), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        up = proc.stdout.readline()  # blocks until the actor is up (or has exited)
        assert f"up: NATS at {url}" in up, up + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server is not None:
            server.terminate()
            server.wait(10)


def _cluster_node(name: str, ports: list[int], i: int, store: Path) -> subprocess.Popen[bytes]:
    """Node ``i`` of a 3-node cluster whose client ports are ``ports[0:3]`` and route ports ``ports[3:6]``."""
    routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(ports[3:]) if j != i)
    args = ["-js", "-a", "127.0.0.1", "-p", str(ports[i]), "-sd", str(store), "--server_name", name]
    args += ["--cluster_name", "c", "--cluster", f"nats://127.0.0.1:{ports[3 + i]}", "--routes", routes]
    return subprocess.Popen([str(server_binary()), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def lone_node(tmp_path: Path) -> Iterator[tuple[list[int], Path]]:
    """One node of a 3-node cluster, alone: it accepts connections, JetStream has no leader."""
    ports = [_free_port() for _ in range(6)]
    node = _cluster_node("n1", ports, 0, tmp_path / "n1")
    try:
        _wait_port(ports[0])
        yield ports, tmp_path
    finally:
        node.terminate()
        node.wait(10)


async def test_a_service_waits_for_jetstream_then_gives_up(lone_node: tuple[list[int], Path]) -> None:
    url = f"nats://127.0.0.1:{lone_node[0][0]}"
    started = time.monotonic()
    with pytest.raises(JetStreamUnavailable, match=r"did not become ready \(.*; waited 1\.5 s\)"):
        await connect(ConnectOptions(url=url, wait_s=1.5))
    assert time.monotonic() - started < 5


def test_an_actor_started_before_the_cluster_is_ready_waits_for_it(lone_node: tuple[list[int], Path]) -> None:
    ports, tmp_path = lone_node
    url = f"nats://127.0.0.1:{ports[0]}"
    proc = _actor(url, tmp_path / "actor", "30")
    second: subprocess.Popen[bytes] | None = None
    try:
        assert proc.stderr is not None
        assert proc.stdout is not None
        line = proc.stderr.readline()
        assert line.startswith(f"waiting for JetStream at {url}"), line
        second = _cluster_node("n2", ports, 1, tmp_path / "n2")  # two of three: a leader is elected
        up = proc.stdout.readline()
        assert f"up: NATS at {url}" in up, up + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if second is not None:
            second.terminate()
            second.wait(10)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"CADRE_HTTP_ALLOW": "[https://x"},
            "CADRE_HTTP_ALLOW='[https://x': value error, not a JSON list",
        ),
        ({"CADRE_EMBEDDED_PORT": "abc"}, "CADRE_EMBEDDED_PORT='abc': input should be a valid integer"),
        ({"CADRE_POOLS": "files"}, "CADRE_POOLS: not valid JSON"),
        ({"CADRE_STREAM_STORAGE": "disk"}, "expected one of file, memory, e.g. CADRE_STREAM_STORAGE=file"),
        ({"CADRE_LIMITS": '{"max_tasks": 0}'}, "CADRE_LIMITS (at max_tasks=0): input should be greater than"),
        ({"CADRE_CONNECT_WAIT_S": "soon"}, "expected a number, e.g. CADRE_CONNECT_WAIT_S="),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["tools"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("cadre: invalid_settings: "), err
    assert expected in err
    assert " e.g. " in err
    assert "Traceback" not in err


def test_a_list_setting_takes_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADRE_HTTP_ALLOW", "https://a.example/, https://b.example/")
    monkeypatch.setenv("CADRE_PROHIBITED_TOOLS", '["fs.write", "http.get"]')
    monkeypatch.setenv("CADRE_APPROVAL_TOOLS", "")
    s = Settings.load()
    assert s.http_allow == ["https://a.example/", "https://b.example/"]
    assert s.prohibited_tools == ["fs.write", "http.get"]
    assert s.approval_tools == []


def test_a_bad_flag_is_named_too() -> None:
    with pytest.raises(InvalidSettings, match=r"^the flag for embedded_port=0: input should be greater than"):
        Settings.load(embedded_port=0)
