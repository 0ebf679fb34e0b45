"""docker-compose.yml and deploy/, checked without Docker.

The compose file against the Compose Specification schema (vendored in
deploy/schema/), every file it refers to, the agreement between its services,
the Dockerfile and deploy/provision.sh, and every NATS node config through
``nats-server -t``. The bring-up itself runs in tests/e2e/test_deploy_bring_up.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from trustbus.bus import MetricsServer, find_server_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMA = json.loads((DEPLOY / "schema" / "compose-spec.json").read_text())
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
NODES = ("nats-1", "nats-2", "nats-3")
# Made by deploy/provision.sh (docs/DEPLOY.md), never committed nor sent to a build.
GENERATED = ("deploy/keys/", "deploy/nats/tenants/")


def validation_errors(document: object) -> list[str]:
    validator = jsonschema.Draft201909Validator(SCHEMA)  # the draft the schema declares
    return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(document)]


def host_path(compose_path: str) -> Path:
    return (ROOT / compose_path).resolve()


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() + ("/" if path.is_dir() else "")


def is_generated(path: Path) -> bool:
    return any(relative(path).startswith(prefix) or f"{relative(path)}/".startswith(prefix) for prefix in GENERATED)


# -- (1) the Compose Specification -------------------------------------------


def test_vendored_schema_is_a_valid_json_schema_with_its_licence_beside_it() -> None:
    jsonschema.Draft201909Validator.check_schema(SCHEMA)
    assert SCHEMA["title"] == "Compose Specification"
    assert "Apache License" in (DEPLOY / "schema" / "LICENSE").read_text()
    assert "compose-spec.json" in (DEPLOY / "schema" / "README.md").read_text()


def test_compose_file_is_valid_under_the_compose_specification() -> None:
    assert validation_errors(COMPOSE) == []


def _typo_in_a_service(doc: dict[str, Any]) -> None:
    doc["services"]["coordinator"]["secret"] = doc["services"]["coordinator"].pop("secrets")


def _unknown_condition(doc: dict[str, Any]) -> None:
    doc["services"]["ping"]["depends_on"] = {"coordinator": {"condition": "service_ready"}}


def _healthcheck_not_a_command(doc: dict[str, Any]) -> None:
    doc["services"]["nats-1"]["healthcheck"] = {**doc["services"]["nats-1"]["healthcheck"], "test": 5}


def _unknown_secret_field(doc: dict[str, Any]) -> None:
    doc["services"]["pong"]["secrets"] = [{"source": "pong_seed", "path": "/run/secrets/x"}]


def _unknown_top_level_key(doc: dict[str, Any]) -> None:
    doc["service"] = doc.pop("services")


def _ports_not_a_list(doc: dict[str, Any]) -> None:
    doc["services"]["nats-2"]["ports"] = "4223:4222"


@pytest.mark.parametrize(
    "breakage",
    [
        _typo_in_a_service,
        _unknown_condition,
        _healthcheck_not_a_command,
        _unknown_secret_field,
        _unknown_top_level_key,
        _ports_not_a_list,
    ],
)
def test_validator_rejects_a_broken_compose_file(breakage: Any) -> None:
    broken = copy.deepcopy(COMPOSE)
    breakage(broken)
    assert validation_errors(broken) != []


# -- (2) every file it refers to -------------------------------------------


def test_build_context_and_dockerfile_exist_and_every_service_builds_the_one_image() -> None:
    trustbus = {name: spec for name, spec in SERVICES.items() if name not in NODES}
    assert {spec["image"] for spec in trustbus.values()} == {"trustbus:local"}
    for spec in trustbus.values():
        context = host_path(spec["build"]["context"])
        assert context == ROOT and (context / spec["build"]["dockerfile"]).is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \. ", dockerfile, re.M)


def test_every_file_the_dockerfile_copies_exists_and_what_compose_runs_from_the_image_is_copied() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    destinations = []
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, destination = line.split()
        destinations.append(destination)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not is_generated(ROOT / source), source
    images_paths = [
        arg
        for spec in SERVICES.values()
        if spec.get("image") == "trustbus:local"
        for arg in [*spec.get("entrypoint", []), *spec["healthcheck"].get("test", [])]
        if arg.startswith("/usr/local/lib/trustbus/")
    ]
    assert images_paths, "the health check and provisioning run from the image"
    assert "/usr/local/lib/trustbus/" in destinations
    for path in images_paths:
        assert (DEPLOY / Path(path).name).is_file(), path


def test_every_bind_mount_config_and_secret_exists_or_is_generated_and_ignored() -> None:
    referenced: list[Path] = []
    for spec in SERVICES.values():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                referenced.append(host_path(source))
            else:
                assert source in COMPOSE["volumes"], f"named volume {source} is declared"
        for env_file in spec.get("env_file", []):
            referenced.append(host_path(env_file))
    referenced += [host_path(c["file"]) for c in COMPOSE.get("configs", {}).values()]
    secrets = [host_path(s["file"]) for s in COMPOSE["secrets"].values()]
    assert secrets and all(is_generated(secret) for secret in secrets)
    for path in referenced:
        assert path.exists() or is_generated(path), path
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    docker_ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for prefix in GENERATED:
        assert prefix in ignored and prefix in docker_ignored, prefix
    assert {"**/*.seed", ".venv/", "tests/"} <= docker_ignored


def test_each_process_gets_only_its_own_seed_where_its_keys_directory_says() -> None:
    """A service running with --nkey-auth has one secret, at $TRUSTBUS_KEYS/<tenant>/<owner>.seed.

    And the provisioning script is told to issue a key to exactly those owners.
    """
    owners: dict[str, str] = {}
    for name, spec in SERVICES.items():
        command = spec.get("command", [])
        if "--nkey-auth" not in command:
            assert "secrets" not in spec, name
            continue
        env = spec["environment"]
        named = [command[i + 1] for i, arg in enumerate(command) if arg in ("--id", "--name")]
        owner = named[0] if named else command[0]  # `coordinator run` and `ledger run` default to their role
        [secret] = spec["secrets"]
        assert secret["target"] == f"{env['TRUSTBUS_KEYS']}/{env['TRUSTBUS_TENANT']}/{owner}.seed", name
        assert COMPOSE["secrets"][secret["source"]]["file"] == f"./deploy/keys/{env['TRUSTBUS_TENANT']}/{owner}.seed"
        owners[owner] = command[0]  # the role: agent, coordinator or ledger
    assert set(owners) == {"coordinator", "ledger", "ping", "pong"}
    issued = dict(pair.split(":") for pair in SERVICES["provision"]["environment"]["TRUSTBUS_OWNERS"].split())
    assert issued == owners
    assert SERVICES["provision"]["environment"]["TRUSTBUS_REPLICAS"] == "3"


def test_nats_nodes_run_their_own_config_on_a_volume_with_a_pinned_image() -> None:
    for name in NODES:
        spec = SERVICES[name]
        image, _, tag = spec["image"].partition(":")
        assert image == "nats" and re.fullmatch(r"\d+\.\d+(\.\d+)?-alpine", tag), spec["image"]
        assert spec["command"] == ["nats-server", "--config", f"/etc/nats/{name}.conf"]
        assert "./deploy/nats:/etc/nats:ro" in spec["volumes"] and f"{name}-data:/data" in spec["volumes"]
        assert (DEPLOY / "nats" / f"{name}.conf").is_file()
        assert spec["healthcheck"]["test"][-1] == "http://127.0.0.1:8222/healthz?js-enabled-only=true"
    depends = {name: set(spec.get("depends_on", {})) for name, spec in SERVICES.items()}
    assert depends["coordinator"] == depends["ledger"] == set(NODES)
    assert depends["ping"] == depends["pong"] == {"coordinator"}


# -- (3) the NATS node configs ---------------------------------------------


def nats_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_server_binary()), "-c", str(config), "-t"], capture_output=True, text=True, timeout=30
    )


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/nats with the tenant's account bootstrapped the documented way (provision.sh, no server)."""
    nats = tmp_path_factory.mktemp("deploy") / "nats"
    shutil.copytree(DEPLOY / "nats", nats, ignore=shutil.ignore_patterns("tenants"))
    (nats / "tenants").mkdir()
    env = {
        **os.environ,
        "TRUSTBUS_TENANT": "demo",
        "TRUSTBUS_KEYS": str(nats.parent / "keys"),
        "TRUSTBUS_ACCOUNTS": str(nats / "tenants"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        ["sh", str(DEPLOY / "provision.sh"), "bootstrap"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return nats


@pytest.mark.parametrize("node", NODES)
def test_node_config_passes_nats_server_check(bootstrapped: Path, node: str) -> None:
    config = bootstrapped / f"{node}.conf"
    result = nats_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert f"server_name: {node}" in text and "store_dir: /data/jetstream" in text
    routes = set(re.findall(r"nats-route://(nats-\d):6222", text))
    assert routes == set(NODES) - {node}


def test_every_config_in_deploy_is_a_node_of_the_compose_file() -> None:
    assert sorted(p.name for p in (DEPLOY / "nats").glob("*.conf")) == [f"{node}.conf" for node in NODES]


def test_nats_server_check_rejects_a_broken_node_config(bootstrapped: Path) -> None:
    broken = bootstrapped / "broken.conf"
    broken.write_text((bootstrapped / "nats-1.conf").read_text().replace("cluster {", "cluster {{", 1))
    assert nats_check(broken).returncode != 0
    missing = bootstrapped / "missing-tenant.conf"
    missing.write_text((bootstrapped / "nats-1.conf").read_text().replace("tenants/demo.conf", "tenants/nobody.conf"))
    assert nats_check(missing).returncode != 0


# -- the trustbus processes' health check ------------------------------------


def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_passes_only_when_the_process_is_ready(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check = healthcheck()
    monkeypatch.delenv("TRUSTBUS_METRICS_PORT", raising=False)
    assert check.main() == 1 and "TRUSTBUS_METRICS_PORT is not set" in capsys.readouterr().err
    with MetricsServer(0) as server:
        monkeypatch.setenv("TRUSTBUS_METRICS_PORT", str(server.port))
        assert check.main() == 1 and "not ready: starting" in capsys.readouterr().err
        server.health.watch(lambda: True)
        server.health.serving()
        assert check.main() == 0
        server.health.watch(lambda: False)
        assert check.main() == 1 and "not ready: not connected to NATS" in capsys.readouterr().err
    assert check.main() == 1 and f"no answer on port {server.port}" in capsys.readouterr().err


def test_compose_runs_every_long_running_process_with_its_metrics_port() -> None:
    env = COMPOSE["x-trustbus-env"]
    assert env["TRUSTBUS_METRICS_PORT"].isdigit()
    for name in ("coordinator", "ledger", "ping", "pong"):
        assert SERVICES[name]["environment"]["TRUSTBUS_METRICS_PORT"] == env["TRUSTBUS_METRICS_PORT"]
