r"""The hash chain over the tenant stream: pure, so any verifier can recompute it.

For the message at stream sequence ``seq``::

    h(seq) = SHA-256( b"trustbus/v1/chain\\x00" || h(prev) || msgpack([seq, subject, headers, body]) )

where ``h(prev)`` is the hash of the previous message in the stream (32 zero
bytes before the first), ``headers`` is a msgpack array of ``[name, value]``
pairs for every header whose name starts with ``Tb-`` or is ``Nats-Msg-Id``,
sorted by name, and ``body`` is msgpack bin. Headers the server or a client
library add for their own purposes (expectations, batch markers) are left out
so the chain depends only on what was signed and what carries the signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec

CHAIN_DOMAIN = b"trustbus/v1/chain\x00"
GENESIS = bytes(32)

_encoder = msgspec.msgpack.Encoder()


def chained_headers(headers: Mapping[str, str] | None) -> list[list[str]]:
    """The headers the chain covers, as sorted ``[name, value]`` pairs."""
    if not headers:
        return []
    pairs = [[name, value] for name, value in headers.items() if name[:3] == "Tb-" or name == "Nats-Msg-Id"]
    pairs.sort()
    return pairs


def chain_hash(previous: bytes, seq: int, subject: str, headers: Mapping[str, str] | None, body: bytes) -> bytes:
    """The chain hash of one stored message, given the previous message's hash."""
    entry = _encoder.encode([seq, subject, chained_headers(headers), body])
    return hashlib.sha256(CHAIN_DOMAIN + previous + entry).digest()
