"""Health check of a trustbus process in its container: is it ready (``/readyz``)?

Run by docker-compose.yml's healthcheck in the container of a coordinator,
ledger service or agent, each started with ``TRUSTBUS_METRICS_PORT`` set (the
default of ``--metrics-port``). The process answers ``/readyz`` with 200 once
its work runs (an agent's consumer, the coordinator's lease rounds, the
ledger's reader) and while its NATS connection is up, its coordinator leases
renewed and its ledger projection caught up with the stream's end at start,
else 503 and why (docs/OBSERVABILITY.md). It does not say the process is making progress: the
decisions and checkpoints in the stream, and the metrics, say that.

Exit 0 when ready, 1 (with the reason on stderr) when not.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def readiness(port: int) -> str | None:
    """Why the process on ``port`` is not ready, or None if it is."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=TIMEOUT_S):
            return None
    except urllib.error.HTTPError as exc:
        return f"not ready: {exc.read().decode().strip() or exc.code}"
    except OSError as exc:
        return f"no answer on port {port}: {exc}"


def main() -> int:
    """Ask the process's ``/readyz`` on ``TRUSTBUS_METRICS_PORT``."""
    port = os.environ.get("TRUSTBUS_METRICS_PORT", "")
    if not port.isdigit():
        print("TRUSTBUS_METRICS_PORT is not set to a port", file=sys.stderr)
        return 1
    reason = readiness(int(port))
    if reason is None:
        return 0
    print(reason, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
