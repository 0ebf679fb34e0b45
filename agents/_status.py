"""What the coordinators of a tenant are doing, read from the outside: who holds each partition, and the backlogs.

Read with the admin's (or any reader's) connection: the leases in the coordinator
bucket, opened as the coordinators signed them, and the coordinators' consumers'
backlogs. A lease no coordinator signed is shown as ``foreign``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from trustbus.agents._lease_plan import LEASE_S
from trustbus.agents._signed_value import open_holder
from trustbus.bus import TenantStream, discover_services, subjects


@dataclass(frozen=True)
class PartitionStatus:
    """One partition: its holder by its lease, and the backlog of its coordinator's consumers.

    Attributes:
        partition: the partition.
        holder: the coordinator instance holding it (``name/instance``), ``foreign`` or None (free).
        lease_age_s: seconds since the lease was last written (a holder renews it; past ``LEASE_S`` it is free).
        pending: messages stored for the partition and not handed to its coordinator yet.
        ack_pending: handed and not acknowledged (in work, or waiting on a dead coordinator's ack wait).
        cached: correlations its coordinator keeps in memory, as that coordinator answered service
            discovery (None: no coordinator of the tenant answered for it, e.g. under a rendered
            config, which does not permit discovery).
        capacity: how many it keeps in memory at most (``limits.correlations_in_memory``; None as above).
    """

    partition: int
    holder: str | None
    lease_age_s: float | None
    pending: int
    ack_pending: int
    cached: int | None = None
    capacity: int | None = None

    @property
    def held(self) -> bool:
        """Whether a coordinator holds it now."""
        return self.holder not in (None, "foreign") and (self.lease_age_s or 0.0) <= LEASE_S


DISCOVERY_WAIT_S = 0.5  # for the coordinators' answers to service discovery (no event says all have answered)


async def coordinator_status(
    servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None, cached: bool = False
) -> list[PartitionStatus]:
    """Each partition of ``tenant``: who holds it and how far behind its coordinator is.

    ``cached``: also ask the coordinators (service discovery, :data:`DISCOVERY_WAIT_S` more) what they keep in memory.
    """
    answers = await discover_services(servers, "STATS", wait_s=DISCOVERY_WAIT_S, nkey_seed=nkey_seed) if cached else []
    in_memory: dict[int, tuple[int, int]] = {}
    for answer in answers:
        figures = answer.get("trustbus") or {}
        if answer.get("name") != "trustbus-coordinator" or answer.get("metadata", {}).get("tenant") != tenant:
            continue
        for partition, count in (figures.get("cached_correlations") or {}).items():
            in_memory[int(partition)] = (int(count), int(figures.get("correlation_capacity") or 0))
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as stream:
        keyring = await stream.keyring()
        leases = stream.bucket(subjects.coordinator_bucket(tenant))
        lags = await stream.consumer_lag("coordinator-")
        found = []
        for partition in range(await stream.partitions()):
            key = f"partition-{partition}"
            entry = await leases.get(key)
            holder: str | None = None
            age: float | None = None
            if entry is not None:
                age = max(0.0, (time.time_ns() - entry.stored_ns) / 1e9)
                try:
                    named = open_holder(entry.value, keyring=keyring, key=key, stored_ns=entry.stored_ns)
                    holder = None if named.instance is None else f"{named.name}/{named.instance}"
                except ValueError:
                    holder = "foreign"
            mine = [lag for name, lag in lags.items() if name.split("-")[1] == str(partition)]
            count, capacity = in_memory.get(partition, (None, None))
            found.append(
                PartitionStatus(
                    partition,
                    holder,
                    age,
                    sum(lag.pending for lag in mine),
                    sum(lag.ack_pending for lag in mine),
                    count,
                    capacity,
                )
            )
        return found
