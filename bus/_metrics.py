"""Metrics: what the bus counts, and the means to report state on each scrape.

bus._metrics_server serves them at ``/metrics``. The bus defines the metrics it
counts itself; ``agents`` and ``ledger`` define theirs in their own
``_metrics`` modules, in the same (default) registry. docs/OBSERVABILITY.md
lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import NamedTuple

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trustbus.bus._errors import TransportError
from trustbus.bus._signals import cancel_and_wait

QUARANTINES = Counter(
    "trustbus_quarantines_total", "Messages quarantined (refused, never delivered again), by reason code.", ["reason"]
)

REDELIVERIES = Counter(
    "trustbus_redeliveries_total",
    "Verified messages handed out again: after a nak or a deferral, an ack wait that ran out, or a crash.",
)

# How long a scrape waits for the event loop to read state it owns.
_LOOP_READ_TIMEOUT_S = 2.0
# Consumer lag: how often it is read, and at most how many consumers' info is asked for in one round.
LAG_POLL_S = 5.0
LAG_READS_PER_ROUND = 100


class ConsumerLag(NamedTuple):
    """What a durable consumer has not yet done, from the server's consumer info."""

    pending: int  # stored, matching, not yet delivered
    ack_pending: int  # delivered, not yet acked
    redelivered: int  # delivered more than once, not yet acked


class LoopCollector(Collector):
    """Metrics read on each scrape by ``read()`` run on the event loop that owns the state it reads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read: Callable[[], Iterable[Metric]]) -> None:
        """``read`` runs in ``loop``'s thread; a scrape that waits on a busy loop longer than 2 s omits these."""
        self._loop = loop
        self._read = read

    def describe(self) -> Iterable[Metric]:
        """Nothing ahead of a scrape. Without it, registering (on the loop itself) would collect to learn the names:
        waiting on its own loop until the read timed out, 2 s per collector at every process start."""  # noqa: D205, D209
        return []

    def collect(self) -> Iterator[Metric]:
        """The families ``read()`` returns now."""
        done: Future[list[Metric]] = Future()

        def read() -> None:
            try:
                done.set_result(list(self._read()))
            except Exception as exc:  # reported to the scrape's thread
                done.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(read)
            yield from done.result(timeout=_LOOP_READ_TIMEOUT_S)
        except (RuntimeError, TimeoutError):  # the loop is closed or busy: this scrape goes without
            return


class ConsumerLagPoller:
    """Reads consumers' lag every :data:`LAG_POLL_S` seconds and reports it summed per group.

    At most :data:`LAG_READS_PER_ROUND` consumer infos are asked for per round,
    in turn, so a coordinator with thousands of sender consumers costs the
    server a bounded rate; a consumer not read this round counts with its last
    values. Groups are bounded names (``inbox``, ``ledger``, ``coordinator``),
    never one per consumer: consumer names carry agent names.

    Args:
        lag: reads one durable consumer's lag (``Bus.consumer_lag``).
        groups: the durable consumers to watch now, by group.
    """

    def __init__(
        self, lag: Callable[[str], Awaitable[ConsumerLag]], groups: Callable[[], Mapping[str, Sequence[str]]]
    ) -> None:
        """Nothing is read until :meth:`poll`."""
        self._lag = lag
        self._groups = groups
        self._known: dict[str, ConsumerLag] = {}
        self._turn = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Poll in a task and report on every scrape while inside."""
        task = asyncio.create_task(self.poll(asyncio.Event()))
        try:
            with collected(self.read):
                yield
        finally:
            for error in await cancel_and_wait(task):
                raise error

    async def poll(self, stop: asyncio.Event) -> None:
        """Read lags until ``stop``; a consumer whose info cannot be read keeps its last values."""
        while not stop.is_set():
            await self.round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LAG_POLL_S)

    async def round(self) -> None:
        """Read the next :data:`LAG_READS_PER_ROUND` consumers' lag, in turn; forget consumers no longer watched."""
        names = sorted({name for durables in self._groups().values() for name in durables})
        for gone in self._known.keys() - set(names):
            del self._known[gone]
        if not names:
            return
        start = self._turn % len(names)
        for name in (names[start:] + names[:start])[:LAG_READS_PER_ROUND]:
            with contextlib.suppress(TransportError):
                self._known[name] = await self._lag(name)
        self._turn = start + LAG_READS_PER_ROUND

    def read(self) -> Iterator[Metric]:
        """The lag gauges now, one series per group (for a bus.LoopCollector)."""
        families = [
            GaugeMetricFamily(
                "trustbus_consumer_pending_messages",
                "Messages stored for a group's consumers, not yet delivered.",
                labels=["consumer"],
            ),
            GaugeMetricFamily(
                "trustbus_consumer_ack_pending_messages",
                "Messages delivered to a group's consumers, not yet acked.",
                labels=["consumer"],
            ),
            GaugeMetricFamily(
                "trustbus_consumer_redelivered_messages",
                "Messages delivered more than once to a group's consumers, not yet acked.",
                labels=["consumer"],
            ),
        ]
        for group, durables in self._groups().items():
            known = [self._known[d] for d in durables if d in self._known]
            if known:  # none read yet (or none readable): no series rather than a false 0
                for family, field in zip(families, zip(*known, strict=True), strict=True):
                    family.add_metric([group], sum(field))
        yield from families


@contextlib.contextmanager
def collected(*reads: Callable[[], Iterable[Metric]]) -> Iterator[None]:
    """Report what each of ``reads`` returns on every scrape while inside (read on the running loop)."""
    loop = asyncio.get_running_loop()
    collectors = [LoopCollector(loop, read) for read in reads]
    for collector in collectors:
        REGISTRY.register(collector)
    try:
        yield
    finally:
        for collector in collectors:
            REGISTRY.unregister(collector)
