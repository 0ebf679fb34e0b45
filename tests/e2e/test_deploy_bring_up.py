"""docker-compose.yml's bring-up, without Docker: the same script, commands, environment and secrets.

docs/DEPLOY.md's order on a local three-node cluster: ``provision.sh
bootstrap`` (no server); the nodes, each run from its deploy/nats config with
only loopback addresses, free ports and a temp store put in; ``provision.sh
provision`` with the provision service's environment (R3); a reload of every
node; then the coordinator, ledger and agents, each run with its service's
command and environment and only its own secret, laid out where the compose
file mounts it; then a rally between the agents, stopped by the hop limit.
The seeds the script makes are exactly the files the compose file's secrets
point at.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from tests.processes import TRUSTBUS, one_shot, ready, supervised
from trustbus._supervisor import Process, ProcessFailed, Supervisor
from trustbus.bus import Identity, find_server_binary, reload_until_wired, subjects

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
SCRIPT = ROOT / "deploy" / "provision.sh"
PROCESSES = ("coordinator", "ledger", "ping", "pong")  # in the order their depends_on starts them
T = "demo"


def service_env(service: str) -> dict[str, str]:
    return {key: str(value) for key, value in SERVICES[service]["environment"].items()}


def host_path(compose_path: str) -> Path:
    """A host path of the compose file (``./deploy/...``), in this checkout."""
    return (ROOT / compose_path).resolve()


class Container:
    """A service's container paths laid out under a host directory: its secrets, configs and volumes."""

    def __init__(self, service: str, root: Path, *, keys: Path) -> None:
        self.spec = SERVICES[service]
        self.root = root
        self.mounts: list[str] = []
        for secret in self.spec.get("secrets", []):
            target = self._materialise(secret["target"])
            seed = host_path(COMPOSE["secrets"][secret["source"]]["file"])
            shutil.copyfile(keys / seed.relative_to(host_path("./deploy/keys")), target)
            target.chmod(0o600)
        for config in self.spec.get("configs", []):
            shutil.copyfile(
                host_path(COMPOSE["configs"][config["source"]]["file"]), self._materialise(config["target"])
            )
        for volume in self.spec.get("volumes", []):
            self._materialise(volume.split(":")[1]).mkdir()

    def _materialise(self, target: str) -> Path:
        self.mounts.append(target)
        path = self.root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, value: str) -> str:
        """``value`` with a container path under a mount replaced by where it lies here."""
        for mount in self.mounts:
            if value == mount or value.startswith(mount + "/") or mount.startswith(value + "/"):
                return str(self.root / value.lstrip("/"))
        return value

    def spawn(self, processes: Supervisor, service: str, urls: str, err: Path) -> Process:
        """Run the service's command (the image's entrypoint is `trustbus`, its workdir holds examples/)."""
        own = {key: self.path(str(value)) for key, value in self.spec["environment"].items()}
        env = {**os.environ, **own, "NATS_URL": urls}
        env["TRUSTBUS_METRICS_PORT"] = "0"  # a container has its port to itself; here they share one host
        env.pop("TRUSTBUS_NKEY", None)
        args = [self.path(arg) for arg in self.spec["command"]]
        return processes.start(service, [*TRUSTBUS, *args], env=env, log=err)


def secret_files() -> set[Path]:
    return {host_path(secret["file"]) for secret in COMPOSE["secrets"].values()}


def provision(*args: str, env: dict[str, str]) -> str:
    result = one_shot(["sh", str(SCRIPT), *args], env=env, timeout_s=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


class Node:
    """A nats-server run with nothing but its config file (``nats-server -c FILE``), as in its container."""

    def __init__(self, processes: Supervisor, config: Path, *, port: int, monitor_port: int) -> None:
        self.config, self.port, self.monitor_port = config, port, monitor_port
        self.url = f"nats://127.0.0.1:{port}"
        self.process = processes.start(config.stem, [str(find_server_binary()), "-c", str(config)])

    def wait_meta_leader(self, timeout_s: float) -> None:
        """Until its log (stderr) names a cluster metadata leader; AssertionError if it exits or takes longer."""
        deadline = time.monotonic() + timeout_s
        while self.process.returncode is None and time.monotonic() < deadline:
            log = self.process.log.read_text(errors="replace")
            if "JetStream cluster new metadata leader" in log or "Self is new JetStream cluster metadata leader" in log:
                return
            time.sleep(0.1)  # the server's log announces the leader by no event: it is polled for
        raise AssertionError("\n".join(self.process.tail(10)))


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def local_configs(directory: Path) -> list[tuple[Path, int, int]]:
    """deploy/nats/nats-N.conf, each as it is but for addresses, ports and store (beside ``directory/tenants``)."""
    ports = free_ports(9)
    client, route, monitor = ports[0:3], ports[3:6], ports[6:9]
    configs = []
    for n in (1, 2, 3):
        text = (ROOT / "deploy" / "nats" / f"nats-{n}.conf").read_text()
        for m in (1, 2, 3):
            text = text.replace(f"nats-route://nats-{m}:6222", f"nats-route://127.0.0.1:{route[m - 1]}")
        replaced = {
            "port: 4222\n": f"host: 127.0.0.1\nport: {client[n - 1]}\n",
            "http_port: 8222\n": f"http_port: {monitor[n - 1]}\n",
            "store_dir: /data/jetstream\n": f"store_dir: {directory / f'js-{n}'}\n",
            "  port: 6222\n": f"  host: 127.0.0.1\n  port: {route[n - 1]}\n",
        }
        for old, new in replaced.items():
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        config = directory / f"nats-{n}.conf"
        config.write_text(text)
        configs.append((config, client[n - 1], monitor[n - 1]))
    return configs


@pytest.mark.slow
def test_compose_bring_up_on_a_local_three_node_cluster(tmp_path: Path) -> None:
    keys, accounts = tmp_path / "keys", tmp_path / "nats" / "tenants"
    keys.mkdir()
    accounts.mkdir(parents=True)
    env = {
        **os.environ,
        **service_env("provision"),
        "TRUSTBUS_KEYS": str(keys),  # the provision service's bind mounts: ./deploy/keys, ./deploy/nats/tenants
        "TRUSTBUS_ACCOUNTS": str(accounts),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("TRUSTBUS_NKEY", None)
    assert env["TRUSTBUS_REPLICAS"] == "3"

    provision("bootstrap", env=env)
    assert [p.relative_to(keys).as_posix() for p in keys.rglob("*.seed")] == [f"{T}/admin.seed"]
    account = (accounts / f"{T}.conf").read_text()
    assert "accounts {" not in account and account.count("nkey: ") == 1
    assert "exists" in provision("bootstrap", env=env)  # a second bootstrap leaves the account alone

    with supervised(tmp_path / "logs") as processes:
        configs = local_configs(tmp_path / "nats")
        nodes = [
            Node(processes, config, port=port, monitor_port=monitor_port) for config, port, monitor_port in configs
        ]
        for node in nodes:
            node.wait_meta_leader(30)
            health = urllib.request.urlopen(  # what the compose healthcheck asks
                f"http://127.0.0.1:{node.monitor_port}/healthz?js-enabled-only=true", timeout=5
            )
            assert health.status == 200
            health.close()
        urls = ",".join(node.url for node in nodes)
        env["NATS_URL"] = urls
        provision("provision", env=env)

        # The seeds made are the admin's and exactly those the compose file hands out as secrets.
        made = {p.resolve() for p in keys.rglob("*.seed")}
        expected = {keys / path.relative_to(host_path("./deploy/keys")) for path in secret_files()}
        assert made == {keys / T / "admin.seed", *expected}
        assert all(p.stat().st_mode & 0o077 == 0 for p in made)
        # Provisioning again changes nothing.
        again = provision("provision", env=env)
        assert "created" not in again and {p.resolve() for p in keys.rglob("*.seed")} == made

        # docker compose kill -s SIGHUP nats-1 nats-2 nats-3, twice: the agents' accounts are new (docs/DEPLOY.md)
        pong = Identity.load(keys / T / "pong.seed")
        for node in nodes:
            asyncio.run(reload_until_wired(node.process.pid, node.url, tenant=T, agent=pong, agent_name="pong"))

        services = []
        for service in PROCESSES:
            container = Container(service, tmp_path / "containers" / service, keys=keys)
            services.append(container.spawn(processes, service, urls, tmp_path / f"{service}.err"))
            line = ready(services[-1])
            assert line["ready"]
            # what the compose healthcheck runs, against the port this process took
            check_env = {**os.environ, "TRUSTBUS_METRICS_PORT": str(line["metrics_port"])}
            checked = one_shot([sys.executable, str(ROOT / "deploy" / "healthcheck.py")], env=check_env)
            assert checked.returncode == 0, checked.stderr

        # What a person runs: docker compose run --rm admin send ... (the admin service's entrypoint).
        admin_args = [a.replace("/keys", str(keys)) for a in SERVICES["admin"]["entrypoint"][1:]]
        admin_env = {**env, **service_env("admin"), "TRUSTBUS_KEYS": str(keys), "NATS_URL": urls}
        sent = one_shot(
            [*TRUSTBUS, *admin_args, "send", "--as", "ping", "--to", "pong", "--payload", '{"serve": 1}'], env=admin_env
        )
        assert sent.returncode == 0, sent.stderr
        tail = processes.start(
            "tail",
            [*TRUSTBUS, *admin_args, "tail", "--json", "--subject", subjects.decision(T, 0), "--idle-timeout", "20"],
            env=admin_env,
        )
        stopped = None
        with contextlib.suppress(ProcessFailed):  # it ended (or fell silent) without one
            while stopped is None:
                for decision in tail.line(60)["envelope"]["decisions"]:
                    if "hop_limit" in decision["reasons"]:
                        stopped = decision
        tail.stop(20)
        assert stopped is not None and stopped["verdict"] == "reject"

        async def replicas() -> dict[str, int]:
            nc = await nats.connect(urls.split(","), nkeys_seed_str=Identity.load(keys / T / "admin.seed").nkey_seed)
            try:
                js = nc.jetstream()
                names = (
                    subjects.stream_name(T),
                    f"KV_{subjects.keyring_bucket(T)}",
                    f"KV_{subjects.memory_bucket(T)}",
                )
                return {name: (await js.stream_info(name)).config.num_replicas or 0 for name in names}
            finally:
                await nc.close()

        assert set(asyncio.run(replicas()).values()) == {3}
        processes.stop(services, 30)
        assert [service.returncode for service in services] == [0] * len(services)
        for service in PROCESSES:
            assert "Permissions Violation" not in (tmp_path / f"{service}.err").read_text(), service
