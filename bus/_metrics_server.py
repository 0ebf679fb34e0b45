"""The HTTP endpoint of a long-running process: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

One small threaded HTTP server per process, on the port ``--metrics-port``
gives (the standard library's, with ``prometheus_client``'s exposition);
bus._metrics holds what it reports. docs/OBSERVABILITY.md describes both.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

from trustbus.bus._errors import PortInUse


class Health:
    """What ``/readyz`` answers: ready once the process's work runs, while its connection is up and its checks pass.

    Set from the event loop, read from the server's threads: each is one attribute
    assignment or read, and a check reads only attributes the loop assigns.
    """

    def __init__(self) -> None:
        """Not ready (``starting``) until :meth:`serving`."""
        self._connected: Callable[[], bool] = lambda: False
        self._checks: list[Callable[[], str | None]] = []
        self._state = "starting"

    def watch(self, connected: Callable[[], bool]) -> None:
        """Take ``connected()`` (e.g. ``lambda: bus.connected``) as whether the NATS connection is up."""
        self._connected = connected

    def require(self, check: Callable[[], str | None]) -> None:
        """Ready only while ``check()`` returns None; else it says why (the ``/readyz`` body)."""
        self._checks.append(check)

    def serving(self) -> None:
        """The process's consumers (or partitions) run: ready while connected."""
        self._state = ""

    def announcing(self, ready: Callable[[], None]) -> Callable[[], None]:
        """``ready``, marking the process serving first: the callback to give its run loop."""

        def serving() -> None:
            self.serving()
            ready()

        return serving

    def stopping(self) -> None:
        """The process is shutting down: not ready any more."""
        self._state = "stopping"

    def unready(self) -> str | None:
        """Why the process is not ready, or None if it is."""
        if self._state:
            return self._state
        if not self._connected():
            return "not connected to NATS"
        return next((reason for reason in (check() for check in self._checks) if reason is not None), None)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds are not worth a log line


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on one port, in a background thread.

    Args:
        port: the TCP port; 0 takes a free one (:attr:`port` says which).
        host: the address to listen on (all interfaces by default, for a scraper elsewhere).
    """

    def __init__(self, port: int, *, host: str = "0.0.0.0") -> None:
        """Bind now, so a taken port fails before the process connects; serve from :meth:`start`."""
        self.health = Health()
        metrics = make_wsgi_app(REGISTRY)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            if path == "/healthz":
                return _text(start_response, "200 OK", "ok")
            if path == "/readyz":
                reason = self.health.unready()
                if reason is None:
                    return _text(start_response, "200 OK", "ready")
                return _text(start_response, "503 Service Unavailable", reason)
            return _text(start_response, "404 Not Found", "not found: /metrics, /healthz, /readyz")

        try:
            self._server = make_server(host, port, app, _Server, handler_class=_Quiet)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"metrics port {port} is in use") from exc
            raise
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(start_response: Any, status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [f"{text}\n".encode()]
