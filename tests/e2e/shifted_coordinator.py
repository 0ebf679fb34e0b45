"""A coordinator process whose clock is stepped: ``python -m tests.e2e.shifted_coordinator OFFSET_S POLICY TENANT``.

What ``trustbus coordinator run`` does, with the library's injected clock set
``OFFSET_S`` seconds off the host's, so everything it signs (decisions,
quarantine records) carries a ``ts`` that far from the server's store time.
Reads ``NATS_URL`` and ``TRUSTBUS_KEYS``; prints the same ready line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from trustbus.agents._process import serve_coordinator
from trustbus.bus import KeyDirectory


def main() -> None:
    offset_s, policy, tenant = float(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    offset_ns = int(offset_s * 1e9)
    asyncio.run(
        serve_coordinator(
            policy,
            servers=[os.environ["NATS_URL"]],
            tenant=tenant,
            name="coordinator",
            keys=KeyDirectory(Path(os.environ["TRUSTBUS_KEYS"])),
            nkey_auth=False,
            ready=lambda: print(json.dumps({"ready": "coordinator", "clock_offset_s": offset_s}), flush=True),
            clock=lambda: time.time_ns() + offset_ns,
        )
    )


if __name__ == "__main__":
    main()
