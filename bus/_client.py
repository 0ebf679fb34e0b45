"""The NATS client every bus connection uses: nats-py's, with headers parsed by :mod:`bus._headers`."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as _NatsClient
from nats.js import JetStreamContext

from trustbus.bus._headers import parse_header_lines


class _Headers:
    """What ``email.parser`` would return for a header block, as far as nats-py's message get reads it."""

    def __init__(self, raw: bytes) -> None:
        self._parsed = parse_header_lines(raw)

    def items(self) -> list[tuple[str, str]]:
        return list(self._parsed.items())


class _HeaderParser:
    """Stands in for nats-py's ``email.parser.BytesParser`` on the message-get path."""

    def parsebytes(self, raw: bytes, headersonly: bool = False) -> _Headers:
        return _Headers(raw)


class Client(_NatsClient):
    """A nats-py client whose header parsers keep repeated names visible (see :mod:`bus._headers`).

    nats-py parses delivered messages with ``_parse_header_lines`` unless the
    optional ``fast_mail_parser`` package is installed (trustbus does not
    depend on it); message gets use the JetStream context's ``_hdr_parser``.
    """

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        return parse_header_lines(raw)

    def jetstream(self, **opts: Any) -> JetStreamContext:
        """A JetStream context whose message gets parse headers the same way."""
        js = super().jetstream(**opts)
        js._hdr_parser = _HeaderParser()  # type: ignore[assignment]
        return js


async def connect(**options: Any) -> Client:
    """``nats.connect`` with a :class:`Client`."""
    client = Client()
    await client.connect(**options)
    return client
