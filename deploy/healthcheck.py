"""Health check of a trustbus process in its container: does it hold a connection to a NATS node?

Run by docker-compose.yml's healthcheck in the container of a coordinator,
ledger service or agent. The container's network namespace is the process's
own, so its TCP table (/proc/net/tcp, tcp6) lists exactly that process's
sockets: the check passes when one of them is an established connection to
the port of a server in NATS_URL. It says the process is alive and connected
(nats-py reconnects within milliseconds when a node goes), not that it is
making progress: the ledger's checkpoints and the coordinator's decisions in
the stream say that.

Exit 0 when connected, 1 (with the reason on stderr) when not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

ESTABLISHED = "01"
DEFAULT_PORT = 4222


def server_ports(urls: str) -> set[int]:
    """The ports of the servers in a NATS_URL (comma-separated URLs)."""
    ports = set()
    for url in urls.split(","):
        url = url.strip()
        if url:
            ports.add(urlsplit(url if "://" in url else f"nats://{url}").port or DEFAULT_PORT)
    return ports


def established_remote_ports(tables: list[str]) -> set[int]:
    """Remote ports of the established connections in /proc/net/tcp-format tables."""
    ports = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == ESTABLISHED:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def main() -> int:
    """Check the container's TCP table against NATS_URL."""
    wanted = server_ports(os.environ.get("NATS_URL", ""))
    if not wanted:
        print("NATS_URL is not set", file=sys.stderr)
        return 1
    tables = [p.read_text() for p in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")) if p.exists()]
    if established_remote_ports(tables) & wanted:
        return 0
    print(f"no established connection to a NATS server (ports {sorted(wanted)})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
