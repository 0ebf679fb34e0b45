"""An acked message is on disk: every config trustbus runs a kept store with fsyncs each write.

nats-server's default syncs its files every 2 minutes, so an acked message
can live only in the page cache that long. Each server is asked through its
monitoring endpoint (``/varz``) what it actually does.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from trustbus.bus import ConfigError, EmbeddedServer, Identity, render_bootstrap_config

NATS_CONF = Path(__file__).resolve().parents[2] / "nats.conf"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _syncs_every_write(**options: object) -> bool:
    """Start a server with ``options`` and read back whether it fsyncs every JetStream write."""
    monitor = _free_port()
    with EmbeddedServer(port=0, monitor_port=monitor, **options) as server:
        with urllib.request.urlopen(f"http://{server.host}:{monitor}/varz", timeout=5) as response:
            config = json.load(response)["jetstream"]["config"]
    return bool(config.get("sync_always", False))


def test_an_embedded_server_with_a_kept_store_syncs_every_write(tmp_path: Path) -> None:
    assert _syncs_every_write(data_dir=tmp_path / "js") is True


def test_a_temporary_store_keeps_the_servers_default(tmp_path: Path) -> None:
    # Nothing outlives a store removed at stop, so its writes are not synced one by one.
    assert _syncs_every_write() is False
    assert _syncs_every_write(data_dir=tmp_path / "js", sync_always=False) is False


def test_the_development_config_syncs_every_write() -> None:
    assert _syncs_every_write(config=NATS_CONF) is True


def test_a_rendered_config_syncs_every_write(tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.conf"
    config.write_text(render_bootstrap_config("acme", Identity.generate().key_id))
    assert _syncs_every_write(config=config, data_dir=tmp_path / "js") is True


def test_a_config_file_decides_for_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sync_interval: always"):
        EmbeddedServer(port=0, config=NATS_CONF, sync_always=True)


@pytest.mark.parametrize("node", ["nats-1.conf", "nats-2.conf", "nats-3.conf"])
def test_each_cluster_node_of_the_deployment_syncs_every_write(node: str) -> None:
    # The compose cluster cannot run here (no container engine); its node files must say it.
    text = (Path(__file__).resolve().parents[2] / "deploy" / "nats" / node).read_text()
    block = text[text.index("jetstream {") : text.index("}", text.index("jetstream {"))]
    assert "sync_interval: always" in block
