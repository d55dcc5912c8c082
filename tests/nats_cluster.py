"""Three nats-server nodes on loopback from deploy/nats as shipped (node.conf, cluster.conf, env/n1..n3.env),
with `cadre auth init` for their authorization; each node can be killed (-9) and started again from the same
config and store dir. Free ports replace the shipped ones so that parallel test runs do not collide."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

from cadre.bus.embedded import server_binary
from cadre.cli import main
from tests.deploy_files import read_env_file

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class NodeCluster:
    """The nodes n1, n2, n3; ``etc`` holds the config and every role's creds (``<role>.creds``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.etc.mkdir(parents=True)
        for name in ("node.conf", "cluster.conf"):
            (self.etc / name).write_text((DEPLOY / "nats" / name).read_text())
        assert main(["auth", "init", str(self.etc)]) == 0
        ports = free_ports(9)
        self.envs: list[dict[str, str]] = []
        for i in range(3):
            env = read_env_file(DEPLOY / "nats" / "env" / f"n{i + 1}.env")
            env |= {
                "NATS_PORT": str(ports[i]),
                "NATS_HTTP_PORT": str(ports[3 + i]),
                "NATS_CLUSTER_PORT": str(ports[6 + i]),
                "NATS_STORE_DIR": str(root / f"js{i + 1}"),
                **{f"NATS_ROUTE_{j + 1}": f"nats-route://127.0.0.1:{ports[6 + j]}" for j in range(3)},
            }
            self.envs.append(env)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def names(self) -> list[str]:
        return [env["NATS_NAME"] for env in self.envs]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what CADRE_NATS_URL takes)."""
        return ",".join(f"nats://127.0.0.1:{env['NATS_PORT']}" for env in self.envs)

    def creds(self, role: str) -> Path:
        return self.etc / f"{role}.creds"

    def start(self, name: str | None = None) -> None:
        """Start one node (every node when ``name`` is None), from the same config and store dir."""
        for env in self.envs:
            if name is not None and env["NATS_NAME"] != name:
                continue
            with (self.root / f"{env['NATS_NAME']}.log").open("ab") as log:
                self.procs[env["NATS_NAME"]] = subprocess.Popen(
                    [str(server_binary()), "-c", str(self.etc / "node.conf")],
                    env={"PATH": "/usr/bin:/bin", **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def kill(self, name: str) -> None:
        """kill -9 the node."""
        p = self.procs[name]
        p.send_signal(signal.SIGKILL)
        p.wait(5)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
