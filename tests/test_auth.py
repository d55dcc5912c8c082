"""Authorization against a real nats-server: the embedded default and deploy/nats/node.conf on loopback.

Each check runs on both servers, with the credentials cadre generates: a client cannot write the
record or edit the streams (nor reach them through a consumer request), can still submit and follow;
each actor role may append only the event types its kind emits; the admin may append anything.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import api

from cadre.actors.intake import serve_intake
from cadre.auth_cli import bootstrap, prepare_embedded
from cadre.bus.auth import EMITS, ROLES, RUNTIME_EMITS, creds_path, ensure_auth
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.bus.embedded import server_binary, start_embedded
from cadre.bus.errors import AuthConfigError, NatsAuthError
from cadre.bus.events import EVENT_TYPES
from cadre.cli import main
from cadre.settings import Settings
from cadre.store.jetstream import JetStreamLog
from cadre.store.objects import OutputObjects, digest_of
from cadre.store.records import StoredEvent
from tests.deploy_files import read_env_file

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nats"


@dataclass
class Server:
    url: str
    auth_dir: Path
    settings: Settings

    async def as_role(self, role: str, errors: list[str] | None = None) -> NATS:
        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc))

        return await nats.connect(
            self.url, user_credentials=str(creds_path(self.auth_dir, role)), error_cb=on_error, allow_reconnect=False
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _deploy_server(tmp: Path) -> Iterator[str]:
    """deploy/nats/node.conf with `cadre auth init` next to it, one node (no routes), on loopback."""
    conf_dir = tmp / "etc"
    conf_dir.mkdir()
    (conf_dir / "node.conf").write_text((DEPLOY / "node.conf").read_text())
    (conf_dir / "cluster.conf").write_text("# single node\n")
    assert main(["auth", "init", str(conf_dir)]) == 0
    port = _free_port()
    # The node's settings come from its env file (deploy/nats/env/n1.env: loopback); a free port, a
    # temporary store, and the monitoring port left off (-m 0).
    env = read_env_file(DEPLOY / "env" / "n1.env") | {"NATS_PORT": str(port), "NATS_STORE_DIR": str(tmp / "js")}
    assert env["NATS_ADDR"] == "127.0.0.1"
    cmd = [str(server_binary()), "-c", str(conf_dir / "node.conf"), "-m", "0"]
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        cmd, env={"PATH": "/usr/bin:/bin", **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = 100
        while deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            deadline -= 1
            assert proc.poll() is None, (tmp / "server.log").read_text()
            subprocess.run(["sleep", "0.05"], check=True)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(params=["embedded", "deploy"])
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, Settings]]:
    if request.param == "embedded":
        settings = Settings.load(data_dir=tmp_path / "data")
        config = prepare_embedded(settings)
        server = start_embedded(settings.data_dir, config=config)
        try:
            yield server.url, settings.auth_dir, settings
        finally:
            server.stop()
    else:
        settings = Settings.load(data_dir=tmp_path / "data")
        for url in _deploy_server(tmp_path):
            yield url, tmp_path / "etc", settings


@pytest_asyncio.fixture
async def server(server_url: tuple[str, Path, Settings]) -> AsyncIterator[Server]:
    url, auth_dir, settings = server_url
    await bootstrap(settings, url, auth_dir)
    yield Server(url, auth_dir, settings)


async def _stored(srv: Server, filter_subject: str) -> dict[str, int]:
    admin = await srv.as_role("admin")
    try:
        await asyncio.sleep(0.05)
        info = await admin.jetstream().stream_info("CADRE_EVENTS", subjects_filter=filter_subject)
        return dict(info.state.subjects or {})
    finally:
        await admin.close()


async def test_a_client_cannot_write_or_edit_the_record(server: Server) -> None:
    errors: list[str] = []
    client = await server.as_role("client", errors)
    try:
        await client.publish("cadre.evt.wf-x.workflow_completed", b"{}")
        await client.publish("cadre.approvals", b"{}")  # only approvers may send decisions, cancels, redrives
        await barrier(client)
        js = client.jetstream(timeout=0.5)
        for attempt in (
            js.purge_stream("CADRE_EVENTS"),
            js.delete_stream("CADRE_EVENTS"),
            js.add_stream(api.StreamConfig(name="EVIL", subjects=["cadre.evt.wf-x.>"])),
            js.update_stream(api.StreamConfig(name="CADRE_EVENTS", subjects=["x.>"])),
        ):
            with pytest.raises(nats.errors.TimeoutError):
                await attempt
    finally:
        await client.close()
    assert any('permissions violation for publish to "cadre.evt.wf-x.workflow_completed"' in e for e in errors)
    assert any('permissions violation for publish to "cadre.approvals"' in e for e in errors)
    assert await _stored(server, "cadre.evt.wf-x.>") == {}
    admin = await server.as_role("admin")
    try:
        info = await admin.jetstream().stream_info("CADRE_EVENTS")
        assert info.config.subjects == ["cadre.evt.>"]
    finally:
        await admin.close()


async def test_a_client_consumer_request_cannot_reach_the_actors_durables_or_the_ledger(server: Server) -> None:
    admin = await server.as_role("admin")
    ajs = admin.jetstream()
    await ajs.add_stream(api.StreamConfig(name="CADRE_LEDGER", subjects=["cadre.ledger"]))
    await ajs.add_consumer(
        "CADRE_EVENTS",
        api.ConsumerConfig(
            durable_name="cadre_validator", filter_subject="cadre.evt.*.plan_proposed", ack_policy="explicit"
        ),
    )
    await ajs.publish("cadre.evt.wf-y.workflow_requested", b"{}")
    client = await server.as_role("client")
    try:
        # The name trick (edit a durable) and the deliver_subject trick (copy events into the ledger).
        for config in (
            {"name": "cadre_validator", "ack_policy": "explicit", "filter_subjects": ["cadre.evt.>"]},
            {"name": "copy", "deliver_subject": "cadre.ledger", "ack_policy": "none"},
        ):
            body = json.dumps({"stream_name": "CADRE_EVENTS", "config": config}).encode()
            await client.request("$JS.API.CONSUMER.CREATE.CADRE_EVENTS", body, timeout=2)
        await asyncio.sleep(0.3)
    finally:
        await client.close()
    try:
        durable = await ajs.consumer_info("CADRE_EVENTS", "cadre_validator")
        assert durable.config.filter_subject == "cadre.evt.*.plan_proposed"
        assert not durable.config.filter_subjects
        assert (await ajs.stream_info("CADRE_LEDGER")).state.messages == 0
    finally:
        await admin.close()


async def test_a_client_submits_a_request_and_follows_its_events(server: Server) -> None:
    intake = await server.as_role("intake")
    elog = JetStreamLog(intake, stream=server.settings.stream(), subjects=server.settings.subjects)
    client = await server.as_role("client")
    try:
        async with serve_intake(elog):
            await barrier(intake)
            reply = await client.request("cadre.requests", json.dumps({"request": "hello"}).encode(), timeout=5)
            wf = json.loads(reply.data)["workflow_id"]
        reader = JetStreamLog(client, stream=server.settings.stream(), subjects=server.settings.subjects)
        async with asyncio.timeout(5):
            async for r in reader.follow(wf):
                assert isinstance(r, StoredEvent)
                assert r.event.type == "workflow_requested"
                break
    finally:
        await client.close()
        await intake.close()


async def test_each_role_appends_only_the_event_types_its_kind_emits(server: Server) -> None:
    for role in (*EMITS, "admin"):
        allowed = set(EVENT_TYPES) if role == "admin" else set(EMITS[role])
        if role in ("planner", "validator", "decomposer", "agent"):
            allowed |= set(RUNTIME_EMITS)
        if role == "planner":  # hosts the intake
            allowed |= set(EMITS["intake"])
        nc = await server.as_role(role)
        try:
            for etype in EVENT_TYPES:
                await nc.publish(f"cadre.evt.wf-{role}.{etype}", b"{}")
            await barrier(nc)
        finally:
            await nc.close()
        stored = await _stored(server, f"cadre.evt.wf-{role}.>")
        assert {s.rsplit(".", 1)[1] for s in stored} == allowed, role


async def test_the_agent_stores_large_outputs_and_the_actors_read_them(server: Server) -> None:
    """The object store of outputs stored by reference (made by the bootstrap): the agent puts, the
    other actor roles read but cannot put, a client (READERS) reaches none of it."""
    data = b'{"rows": [[1], [2]], "row_count": 2}'
    digest = digest_of(data)
    roles = ("agent", "planner", "validator", "decomposer", "intake", "approvals", "client")
    conns = {r: await server.as_role(r) for r in roles}

    def store(role: str, timeout: float = 2) -> OutputObjects:
        return OutputObjects(conns[role].jetstream(timeout=timeout), "CADRE_OUTPUTS")

    try:
        await store("agent").put({digest: data})
        for role in ("planner", "validator", "decomposer", "intake", "approvals"):
            assert await store(role).get([digest]) == {digest: data}, role
        other = b'{"result": 1}'  # the planner puts the output task's result (workflow_completed)
        await store("planner").put({digest_of(other): other})
        assert await store("validator").get([digest_of(other)]) == {digest_of(other): other}
        for role in ("validator", "decomposer"):
            with pytest.raises(nats.errors.TimeoutError):  # refused: the server does not answer
                await store(role, 0.3).put({digest_of(b"{}"): b"{}"})
        # A client reads them from its account's mirror (a moment later: the mirror follows).
        mirrored = OutputObjects(conns["client"].jetstream(timeout=2), "CADRE_OUTPUTS", wait_missing_s=5)
        assert await mirrored.get([digest]) == {digest: data}
        with pytest.raises(nats.errors.TimeoutError):  # but puts nothing
            await store("client", 0.3).put({digest_of(b"{}"): b"{}"})
    finally:
        for nc in conns.values():
            await nc.close()


async def test_wrong_or_missing_credentials_are_a_clear_error(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = ensure_auth(tmp_path / "other", server.settings.auth_names())
    with pytest.raises(NatsAuthError, match="refused the credentials") as wrong:
        await connect(ConnectOptions(url=server.url, creds=other["client"].creds))
    assert wrong.value.code == "nats_auth_failed"
    with pytest.raises(NatsAuthError, match="requires credentials and none were given"):
        await connect(ConnectOptions(url=server.url))
    with pytest.raises(AuthConfigError, match="does not exist"):
        await connect(ConnectOptions(url=server.url, creds=tmp_path / "nope.creds"))
    code = await asyncio.to_thread(main, ["workflows", "--nats", server.url, "--creds", str(other["client"].creds)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("cadre: nats_auth_failed: the NATS server at")
    assert "--creds FILE" in err
    assert "Traceback" not in err


def test_generated_secrets_are_private(tmp_path: Path) -> None:
    ids = ensure_auth(tmp_path / "auth", Settings.load().auth_names())
    assert set(ids) == set(ROLES)
    secret_files = [*(tmp_path / "auth").glob("*.creds"), *(tmp_path / "auth" / "keys").glob("*.nk")]
    assert len(secret_files) == len(ROLES) + 4
    for f in secret_files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    # Kept across calls: the same keys, so running processes keep their identity.
    again = ensure_auth(tmp_path / "auth", Settings.load().auth_names())
    assert {r: i.public_key for r, i in again.items()} == {r: i.public_key for r, i in ids.items()}


def test_credentials_are_minted_again_when_a_role_emits_new_event_types(tmp_path: Path) -> None:
    """A deployment upgraded to a cadre with new event types (proposal_made, …) gets JWTs that let its
    actors publish them; the keys stay."""
    ids = ensure_auth(tmp_path / "auth", Settings.load().auth_names())
    agent_creds = creds_path(tmp_path / "auth", "agent")
    names_file = tmp_path / "auth" / "names.json"
    recorded = json.loads(names_file.read_text())
    recorded["emits"]["agent"].remove("proposal_made")  # as a version before it wrote
    names_file.write_text(json.dumps(recorded))
    again = ensure_auth(tmp_path / "auth", Settings.load().auth_names())
    assert {r: i.public_key for r, i in again.items()} == {r: i.public_key for r, i in ids.items()}
    assert json.loads(names_file.read_text())["emits"]["agent"] == list(EMITS["agent"])
    jwt = agent_creds.read_text().splitlines()[1]
    claims = base64.urlsafe_b64decode(jwt.split(".")[1] + "==").decode()
    assert ".proposal_made" in claims  # the agent may publish it
