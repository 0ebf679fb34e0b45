"""Recording foreign KV values: once per value, in memory bounded by a count, the duplicate window behind it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nats.js.api import PubAck

from tests.conftest import Tenant
from trustbus.bus import Bus, Envelope, Sealed, subjects
from trustbus.bus._quarantiner import Quarantiner


@dataclass
class CountingSigner:
    """The reader's own Bus, counting the records it is asked to publish."""

    bus: Bus
    published: int = 0

    @property
    def tenant(self) -> str:
        return self.bus.tenant

    @property
    def name(self) -> str:
        return self.bus.name

    @property
    def stream(self) -> str:
        return self.bus.stream

    @property
    def clock(self) -> Callable[[], int]:
        return self.bus.clock

    def seal(self, envelope: Envelope) -> Sealed:
        return self.bus.seal(envelope)

    async def publish(self, subject: str, sealed: Sealed, *, headers: Mapping[str, str] | None = None) -> PubAck:
        self.published += 1
        return await self.bus.publish(subject, sealed, headers=headers)


async def test_foreign_values_remembered_stay_bounded_and_each_is_still_recorded_once(tenant: Tenant) -> None:
    signer = CountingSigner(await tenant.bus("reader"))
    quarantiner = Quarantiner(signer, remember_foreign=8)

    async def met(i: int) -> None:
        subject = f"$KV.mem_{tenant.name}.reader.k{i}"
        await quarantiner.record_foreign_value(subject, 1, b"not a signed value", None, detail="foreign")

    for i in range(20):
        await met(i)
    assert quarantiner.foreign_remembered == 8 and signer.published == 20

    # Inside the bound: a value met again is not recorded again.
    await met(19)
    assert signer.published == 20
    # Past the bound, forgotten: published again, and the stream's duplicate window drops the copy.
    await met(0)
    assert signer.published == 21 and quarantiner.foreign_remembered == 8
    records = [m async for m in signer.bus.log(subjects.quarantine(tenant.name)).read()]
    assert len(records) == 20
    assert len({m.headers["Nats-Msg-Id"] for m in records}) == 20
