"""Which JetStream API a connection reaches its tenant's stream through: its own account's, or an import.

A user of the tenant's account (admin, coordinator, ledger, operator) calls the
JetStream API as ``$JS.API``. An agent is the one user of an account of its own
with no JetStream (:mod:`bus._nats_config`): there ``$JS.API`` is answered by the
server itself ("JetStream not enabled for account"), and the tenant's API is
imported under :data:`AGENT_API_PREFIX` instead.
"""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from trustbus.bus._permissions import AGENT_API_PREFIX
from trustbus.bus._subjects import stream_name

JETSTREAM_NOT_ENABLED = 10039  # the server's err_code for a JetStream API call in an account without JetStream


async def tenant_jetstream(nc: Client, tenant: str, **options: Any) -> JetStreamContext:
    """A JetStream context of ``nc`` that reaches ``tenant``'s stream and buckets.

    Asks for the stream's info once through ``$JS.API``; if the account has no
    JetStream, the context uses the agent's imported API instead. Any other
    outcome keeps ``$JS.API`` (the caller's own request then reports it).

    Args:
        nc: a connected client.
        tenant: the tenant whose stream the context must reach.
        options: passed to ``nc.jetstream`` (``timeout``, ``publish_async_max_pending``).
    """
    js = nc.jetstream(**options)
    try:
        await js.stream_info(stream_name(tenant))
    except nats.js.errors.APIError as exc:
        if exc.err_code == JETSTREAM_NOT_ENABLED:
            return nc.jetstream(prefix=AGENT_API_PREFIX, **options)
    except nats.errors.Error:
        pass
    return js
