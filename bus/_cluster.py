"""An embedded JetStream cluster: several :class:`~bus.EmbeddedServer` nodes on loopback, routed to each other."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

from trustbus.bus._errors import ConfigError, PortInUse, ServerError
from trustbus.bus._server import ClusterMembership, EmbeddedServer, _port_is_free

CLUSTER_NAME = "trustbus"
_POLL_S = 0.05


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports the OS calls free now (all probes held open together, so none repeats)."""
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((host, 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


class EmbeddedCluster:
    """A JetStream cluster of ``size`` nats-server processes on one host.

    Each node has its own server name (``n1``, ``n2``, …), client port, cluster
    port, monitoring port and store dir (``<data_dir>/<name>``), and every node
    lists every node's route. :meth:`start` returns once the cluster has formed:
    the JetStream meta leader counts every node as a current peer (read from its
    ``/jsz``), so an R3 stream can be placed right away (a meta leader alone is
    not enough: it may not have added the last peer yet).
    A node can be killed and started again (:meth:`kill`, :meth:`restart`): it
    comes back on the same ports with the same store and catches up.

    Args:
        size: number of nodes (3 for quorum-based R3 streams).
        port: the first node's client port, the others count up from it; 0 picks free ports.
        data_dir: the parent of the nodes' store dirs; a temporary one, removed on stop, if None.
        config: a nats-server config file every node loads (its ``cluster`` and
            ``server_name`` are overridden, like host, port and store dir).
        host: listen address of every client and cluster port.
        name: the cluster name.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        name: str = CLUSTER_NAME,
    ) -> None:
        """Configure; nothing runs until :meth:`start`."""
        if size < 2:
            raise ConfigError(
                f"a cluster needs at least 2 nodes, not {size} (for one server: EmbeddedServer, `up` alone)"
            )
        self.size = size
        self.host = host
        self.name = name
        self.config = Path(config) if config else None
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else None
        self._first_port = port
        self._exits: queue.SimpleQueue[EmbeddedServer] = queue.SimpleQueue()
        self.nodes: list[EmbeddedServer] = []

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, in node order."""
        return [node.url for node in self.nodes]

    @property
    def pids(self) -> list[int | None]:
        """Every node's process id (None for a node that is not running)."""
        return [node.pid for node in self.nodes]

    def node(self, which: int | str) -> EmbeddedServer:
        """A node by index or by server name."""
        if isinstance(which, int):
            return self.nodes[which]
        for node in self.nodes:
            if node.server_name == which:
                return node
        raise ConfigError(f"no node named {which!r} in cluster {self.name}: {[n.server_name for n in self.nodes]}")

    def start(self, *, timeout: float = 30.0) -> list[str]:
        """Start every node and wait until each knows the JetStream meta leader; returns the client URLs."""
        if self.nodes:
            raise ServerError(f"cluster {self.name} is already started")
        if self._first_port:
            ports = self._client_ports()
            chosen = _free_ports(self.host, 2 * self.size)
        else:
            chosen = _free_ports(self.host, 3 * self.size)
            ports, chosen = chosen[: self.size], chosen[self.size :]
        cluster_ports, monitor_ports = chosen[: self.size], chosen[self.size :]
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="trustbus-cluster-"))
        routes = tuple(f"nats://{self.host}:{p}" for p in cluster_ports)
        self.nodes = [
            EmbeddedServer(
                port=client_port,
                data_dir=self.data_dir / f"n{index + 1}",
                config=self.config,
                host=self.host,
                server_name=f"n{index + 1}",
                cluster=ClusterMembership(name=self.name, port=cluster_port, routes=routes),
                monitor_port=monitor_port,
                on_exit=self._exits.put,
                sync_always=None if self.config is not None else not self._own_data_dir,
            )
            for index, (client_port, cluster_port, monitor_port) in enumerate(
                zip(ports, cluster_ports, monitor_ports, strict=True)
            )
        ]
        try:
            for node in self.nodes:
                node.start(timeout=timeout)
            self._wait_until_formed(timeout)
        except BaseException:
            self.stop()
            raise
        return self.urls

    def _client_ports(self) -> list[int]:
        ports = [self._first_port + i for i in range(self.size)]
        taken = [p for p in ports if not _port_is_free(self.host, p)]
        if taken:
            raise PortInUse(
                f"port(s) {', '.join(map(str, taken))} on {self.host} in use: the cluster takes "
                f"{self._first_port}..{ports[-1]}; stop the other server, or pass --port 0 to pick free ports"
            )
        return ports

    def formed(self) -> bool:
        """Whether every node names the same meta leader, which counts every node as a current peer."""
        metas = {node.server_name: node.jetstream_meta() for node in self.nodes}
        leaders = {meta.get("leader") if meta else None for meta in metas.values()}
        if len(leaders) != 1:
            return False
        leader = leaders.pop()
        view = metas.get(leader) if isinstance(leader, str) else None
        if view is None:
            return False
        peers = view.get("replicas") or []
        assert isinstance(peers, list)
        current = {peer.get("name") for peer in peers if peer.get("current") and not peer.get("offline")}
        return view.get("cluster_size") == self.size and current | {leader} == set(metas)

    def _wait_until_formed(self, timeout: float) -> None:
        """Poll the nodes' ``/jsz`` until :meth:`formed` (the server announces no such event)."""
        deadline = time.monotonic() + timeout
        while not self.formed():
            if time.monotonic() > deadline:
                tails = "\n".join(f"{n.server_name}: {n.jetstream_meta()}" for n in self.nodes)
                raise ServerError(f"cluster {self.name} did not form within {timeout}s; meta groups seen:\n{tails}")
            time.sleep(_POLL_S)

    def kill(self, which: int | str) -> EmbeddedServer:
        """SIGKILL one node (a crash); its store is kept. Returns the node."""
        node = self.node(which)
        node.kill()
        return node

    def restart(self, which: int | str, *, timeout: float = 30.0) -> EmbeddedServer:
        """Start a stopped or killed node again on its ports and store; returns once the cluster has formed again.

        Its streams' replicas may still be catching up then (see ``stream_info().cluster``).
        """
        node = self.node(which)
        node.start(timeout=timeout)
        self._wait_until_formed(timeout)
        return node

    def next_exit(self, timeout: float | None = None) -> EmbeddedServer | None:
        """Block until a node's process exits (killed, stopped or crashed) and return it; None at the timeout.

        Every exit is reported once, in order; its code is the node's ``exit_code``.
        """
        try:
            return self._exits.get(timeout=timeout)
        except queue.Empty:
            return None

    def terminate(self) -> None:
        """Send every running node SIGTERM without waiting (safe from a signal handler)."""
        for node in self.nodes:
            node.send_signal(signal.SIGTERM)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after ``timeout``) and remove a temporary store."""
        for node in self.nodes:
            node.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop(timeout=timeout)
        self.nodes = []
        if self._own_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
