"""What the ledger service reports on ``/metrics`` (bus._metrics serves it): lag, checkpoints.

The stream's last sequence costs a request, so it is read every
:data:`STREAM_POLL_S` seconds, not on each scrape; the rest is read from the
service's own state when scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from trustbus.bus import TransportError, unless_stopped

STREAM_POLL_S = 5.0

CHECKPOINTS = Counter(
    "trustbus_ledger_checkpoints_total", "Checkpoints the ledger service tried to publish, by outcome.", ["outcome"]
)


class Observed(Protocol):
    """What the gauges read of a ledger service."""

    def projected_seq(self) -> int:
        """The last stream sequence projected."""
        ...

    def checkpoint_age_s(self) -> float:
        """Seconds since the last checkpoint published (or since the service started)."""
        ...

    def uncheckpointed(self) -> int:
        """Messages projected since the last checkpoint."""
        ...


class LedgerGauges:
    """The ledger's lag behind the stream and its checkpoint's age, for a bus.LoopCollector."""

    def __init__(self, service: Observed, last_seq: Callable[[], Coroutine[Any, Any, int]]) -> None:
        """``last_seq``: a coroutine function giving the stream's last sequence (``Bus.last_seq``)."""
        self._service = service
        self._last_seq = last_seq
        self._stream_last = 0

    async def poll(self, stop: asyncio.Event) -> None:
        """Read the stream's last sequence every :data:`STREAM_POLL_S` until ``stop``; a failed read keeps the last."""
        while not stop.is_set():
            with contextlib.suppress(TransportError):  # a read waits out an unreachable server: stop cuts it short
                self._stream_last = await unless_stopped(self._last_seq(), stop) or self._stream_last
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STREAM_POLL_S)

    def read(self) -> Iterator[Metric]:
        """The gauges now."""
        projected = self._service.projected_seq()
        yield GaugeMetricFamily("trustbus_ledger_projected_seq", "The last stream sequence projected.", projected)
        yield GaugeMetricFamily(
            "trustbus_ledger_lag_messages",
            f"Messages in the stream not yet projected (stream end read every {STREAM_POLL_S:g} s).",
            max(0, self._stream_last - projected),
        )
        yield GaugeMetricFamily(
            "trustbus_ledger_checkpoint_age_seconds",
            "Seconds since the last checkpoint this service published (or since it started).",
            self._service.checkpoint_age_s(),
        )
        yield GaugeMetricFamily(
            "trustbus_ledger_uncheckpointed_messages",
            "Messages projected since the last checkpoint.",
            self._service.uncheckpointed(),
        )
