"""deploy/ as written: the NATS config boots as 3 nodes on loopback, and the files no container engine or
Kubernetes cluster can boot here are checked offline against their schemas (compose: the compose-spec
schema bundled with check-jsonschema; Kubernetes: the schemas bundled with kubernetes-validate).

The cluster test uses the shipped `deploy/nats/env/n*.env` as they are, but for the ports (free ones, so
that parallel test runs do not collide) and the stores (the test's temporary directory).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cadre.auth_cli import bootstrap
from cadre.bus.auth import creds_path
from cadre.bus.connection import connect
from cadre.bus.embedded import server_binary
from cadre.cli import main
from cadre.settings import Settings
from cadre.system import KINDS
from tests.deploy_files import read_env_file

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=1) as r:
        data: dict[str, Any] = json.load(r)
        return data


# --- NATS: three nodes on one host, from deploy/nats ----------------------------------------------------


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[tuple[list[dict[str, str]], Path]]:
    """deploy/nats/node.conf + cluster.conf + `cadre auth init`, started three times with env/n1..n3.env."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("node.conf", "cluster.conf"):
        (etc / name).write_text((DEPLOY / "nats" / name).read_text())
    assert main(["auth", "init", str(etc)]) == 0
    ports = _free_ports(9)
    envs = []
    for i in range(3):
        env = read_env_file(DEPLOY / "nats" / "env" / f"n{i + 1}.env")
        assert env["NATS_ADDR"] == "127.0.0.1"
        # The shipped routes point at the shipped route ports: move both to free ports together.
        shipped = {env[f"NATS_ROUTE_{j + 1}"] for j in range(3)}
        assert shipped == {f"nats-route://127.0.0.1:{6222 + j}" for j in range(3)}
        env |= {
            "NATS_PORT": str(ports[i]),
            "NATS_HTTP_PORT": str(ports[3 + i]),
            "NATS_CLUSTER_PORT": str(ports[6 + i]),
            "NATS_STORE_DIR": str(tmp_path / f"js{i + 1}"),
            **{f"NATS_ROUTE_{j + 1}": f"nats-route://127.0.0.1:{ports[6 + j]}" for j in range(3)},
        }
        envs.append(env)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i, env in enumerate(envs):
            log = (tmp_path / f"n{i + 1}.log").open("wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [str(server_binary()), "-c", str(etc / "node.conf")],
                    env={"PATH": "/usr/bin:/bin", **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        yield envs, etc
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for log in logs:
            log.close()


def _wait_for_routes(envs: list[dict[str, str]], deadline: float) -> dict[str, set[str]]:
    """Each node's set of remote node names, once every node sees the two others (or the deadline)."""
    seen: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        for env in envs:
            try:
                routez = _get_json(f"http://127.0.0.1:{env['NATS_HTTP_PORT']}/routez")
            except OSError:
                continue
            seen[env["NATS_NAME"]] = {r.get("remote_name", "") for r in routez.get("routes") or []}
        if len(seen) == 3 and all(len(v) == 2 for v in seen.values()):
            break
        time.sleep(0.1)
    return seen


async def test_deploy_nats_boots_as_three_nodes_on_loopback(
    three_nodes: tuple[list[dict[str, str]], Path], tmp_path: Path
) -> None:
    envs, etc = three_nodes
    deadline = time.monotonic() + 10
    for env in envs:  # what compose and Kubernetes probe
        while True:
            try:
                assert _get_json(f"http://127.0.0.1:{env['NATS_HTTP_PORT']}/healthz?js-enabled-only=true") == {
                    "status": "ok"
                }
                break
            except OSError:
                assert time.monotonic() < deadline, f"{env['NATS_NAME']} never answered /healthz"
                await asyncio.sleep(0.05)
    routes = await asyncio.to_thread(_wait_for_routes, envs, deadline)
    assert routes == {"n1": {"n2", "n3"}, "n2": {"n1", "n3"}, "n3": {"n1", "n2"}}

    # cadre's own bootstrap creates the event stream with 3 replicas, as admin (once a meta leader is elected).
    url = ",".join(f"nats://127.0.0.1:{env['NATS_PORT']}" for env in envs)
    settings = Settings.load(data_dir=tmp_path / "data", stream_replicas=3)
    while True:
        try:
            await bootstrap(settings, url, etc)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    admin = await connect(settings.connect_options(url, "test-deploy", creds_path(etc, "admin")))
    try:
        info = await admin.jetstream().stream_info(settings.stream_name)
    finally:
        await admin.close()
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert info.cluster.name == "cadre"
    members = {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])}
    assert members == {"n1", "n2", "n3"}


def test_node_conf_needs_its_variables(tmp_path: Path) -> None:
    """A node started without its env file stops at once, naming the variable (not a silent default)."""
    (tmp_path / "node.conf").write_text((DEPLOY / "nats" / "node.conf").read_text())
    (tmp_path / "auth.conf").write_text("")
    (tmp_path / "cluster.conf").write_text("")
    out = subprocess.run(
        [str(server_binary()), "-c", str(tmp_path / "node.conf")],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode != 0
    assert "variable reference for 'NATS_NAME'" in out.stderr + out.stdout


def test_env_files_name_every_variable_of_the_nats_config() -> None:
    conf = (DEPLOY / "nats" / "node.conf").read_text() + (DEPLOY / "nats" / "cluster.conf").read_text()
    used = {w.strip("$") for line in conf.splitlines() for w in line.split("#")[0].split() if w.startswith("$")}
    assert used == {
        "NATS_NAME",
        "NATS_ADDR",
        "NATS_PORT",
        "NATS_HTTP_PORT",
        "NATS_STORE_DIR",
        "NATS_CLUSTER_PORT",
        "NATS_ROUTE_1",
        "NATS_ROUTE_2",
        "NATS_ROUTE_3",
    }
    files = sorted((DEPLOY / "nats" / "env").glob("*.env"))
    assert [f.name for f in files] == ["host.env", "n1.env", "n2.env", "n3.env"]
    local = [read_env_file(f) for f in files[1:]]
    for f in files:
        assert set(read_env_file(f)) == used, f.name
    # One host: every listener of every node on its own port; the routes are the three route listeners.
    ports = [int(e[k]) for e in local for k in ("NATS_PORT", "NATS_HTTP_PORT", "NATS_CLUSTER_PORT")]
    assert len(set(ports)) == 9
    assert len({e["NATS_STORE_DIR"] for e in local}) == 3
    for e in local:
        routes = {e[f"NATS_ROUTE_{j}"] for j in (1, 2, 3)}
        assert routes == {f"nats-route://127.0.0.1:{x['NATS_CLUSTER_PORT']}" for x in local}


# --- systemd: one metrics port per instance --------------------------------------------------------------


def _unit_lines(name: str, key: str) -> list[str]:
    text = (DEPLOY / "systemd" / name).read_text()
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_systemd_gives_each_instance_its_own_metrics_port() -> None:
    systemd = DEPLOY / "systemd"
    assert "CADRE_METRICS_PORT" not in read_env_file(systemd / "cadre.env")
    assert _unit_lines("cadre-actor@.service", "EnvironmentFile") == [
        "/etc/cadre/cadre.env",
        "-/etc/cadre/instances/%i.env",
    ]
    assert _unit_lines("cadre-pool@.service", "EnvironmentFile") == [
        "/etc/cadre/cadre.env",
        "-/etc/cadre/instances/pool-%i.env",
    ]
    policy = tomllib.loads((DEPLOY / "policy.toml").read_text())
    instances = [f"{k}.env" for k in KINDS] + [f"pool-{p}.env" for p in policy["pools"]]
    assert sorted(f.name for f in (systemd / "instances").glob("*.env")) == sorted(instances)
    ports = [int(read_env_file(systemd / "instances" / name)["CADRE_METRICS_PORT"]) for name in instances]
    assert len(set(ports)) == len(ports), dict(zip(instances, ports, strict=True))
    assert _unit_lines("nats@.service", "EnvironmentFile") == ["/etc/nats/%i.env"]


# --- compose -----------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The schema check can fail: a misspelt key in a copy of the file is an error."""
    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("healthcheck:", "healthchek:", 1))
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "healthchek" in out.stdout


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def test_compose_waits_for_healthy_nats_restarts_and_checks_health() -> None:
    services = _compose()["services"]
    nats = [f"nats-{i}" for i in (1, 2, 3)]
    for name in nats:
        svc = services[name]
        assert svc["image"].startswith("nats:2.12-alpine"), "the healthcheck needs a shell and wget"
        assert "/healthz?js-enabled-only=true" in " ".join(svc["healthcheck"]["test"])
        assert svc["restart"] == "unless-stopped"
        env = read_env_file(DEPLOY / svc["env_file"][0].removeprefix("./")) | svc.get("environment", {})
        assert env["NATS_NAME"] == f"n{name[-1]}"
        assert str(env["NATS_HTTP_PORT"]) in " ".join(svc["healthcheck"]["test"])
    for kind in KINDS:
        svc = services[kind]
        assert svc["restart"] == "unless-stopped"
        assert {d: c["condition"] for d, c in svc["depends_on"].items()} == {
            **dict.fromkeys(nats, "service_healthy"),
            "bootstrap": "service_completed_successfully",
        }
        assert "/metrics" in " ".join(svc["healthcheck"]["test"])
        # Its own credentials (its NATS user and signing key) and the public keyring, nothing else.
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"] if m.startswith("./")}
        assert mounts == {
            "/run/cadre/nats.creds": f"./nats/{kind}.creds",
            "/run/cadre/keyring.json": "./nats/keyring.json",
        }
    boot = services["bootstrap"]
    assert {d: c["condition"] for d, c in boot["depends_on"].items()} == dict.fromkeys(nats, "service_healthy")
    assert "cadre auth bootstrap" in boot["command"][0]
    assert "sleep" in boot["command"][0], "it retries until the new cluster has a leader"
