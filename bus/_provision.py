"""Provisioning: a tenant's append-only stream and its KV buckets, idempotently."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from trustbus.bus._envelope import MAX_MSG_SIZE
from trustbus.bus._errors import ConfigError, TransportError
from trustbus.bus._seal import DEFAULT_SKEW_NS
from trustbus.bus._subjects import (
    all_subjects,
    check_partitions,
    coordinator_bucket,
    given_up_advisories,
    given_up_stream,
    keyring_bucket,
    memory_bucket,
    state_bucket,
    stream_name,
)

ADMIN_KEY_METADATA = "trustbus.admin_key"
PARTITIONS_METADATA = "trustbus.partitions"
# Twice the skew window: within it the server drops a resent id; beyond it the
# envelope's ts fails the skew check. Together they stop every resend.
DUPLICATE_WINDOW_S = 2 * DEFAULT_SKEW_NS / 1e9
KV_HISTORY = 64
# Stored correlations (and partition snapshots) a coordinator has not rewritten for this long expire. Past the
# longest correlation_idle_s a policy may set (14 days), with room for an outage: an envelope that waited
# longer than the difference in a backlog may find its (unexpired) correlation already gone.
STATE_TTL_S = 30 * 86_400.0


@dataclass
class ProvisionReport:
    """What provisioning did: names created, names that already matched, names updated; replicas and partitions."""

    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    replicas: int = 1
    partitions: int = 1


def tenant_stream_config(
    tenant: str, *, admin_key_id: str, replicas: int = 1, partitions: int = 1, purgeable: bool = False
) -> StreamConfig:
    """The stream ``TB_<tenant>``: every tenant subject, file storage, append-only, direct gets allowed.

    ``purgeable``: the admin may purge history that is archived (docs/OPERATIONS.md, "Retention"); messages
    are never deleted one by one. Decided when the stream is made: nats-server cannot lift ``deny_purge``.
    """
    return StreamConfig(
        name=stream_name(tenant),
        subjects=[all_subjects(tenant)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=MAX_MSG_SIZE,
        deny_delete=True,
        deny_purge=not purgeable,
        allow_rollup_hdrs=False,
        # Direct gets name the subject in the API subject, so a user can be allowed to
        # read back only its own records (an agent: its effect records, by idempotency key).
        allow_direct=True,
        allow_atomic=True,  # SubjectLog.append_batch: all or none (decisions are one record per batch now)
        metadata={ADMIN_KEY_METADATA: admin_key_id, PARTITIONS_METADATA: str(check_partitions(partitions))},
    )


def given_up_stream_config(tenant: str, *, replicas: int = 1) -> StreamConfig:
    """The stream ``TBADV_<tenant>``: the server's advisories of messages it gave up redelivering, kept until the
    ledger service has recorded each in the tenant stream (work queue: it removes what is acked)."""  # noqa: D205, D209
    return StreamConfig(
        name=given_up_stream(tenant),
        subjects=[given_up_advisories(tenant)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


_COMPARED = (
    "subjects",
    "storage",
    "duplicate_window",
    "max_msg_size",
    "deny_delete",
    "deny_purge",
    "allow_rollup_hdrs",
    "allow_direct",
    "allow_atomic",
    "num_replicas",
)


async def provision(
    js: JetStreamContext,
    tenant: str,
    *,
    admin_key_id: str,
    replicas: int = 1,
    partitions: int | None = None,
    purgeable: bool | None = None,
) -> ProvisionReport:
    """Create the tenant's stream and KV buckets; running it again changes nothing.

    The admin key id is pinned in the stream's metadata as the keyring's trust
    anchor. Provisioning refuses to re-pin it to another key. So is the number
    of partitions (default 1; None keeps the existing tenant's), which can never
    change: it decides which coordinator holds each correlation's state. A stream or bucket
    with another number of replicas is changed to ``replicas`` (the server moves
    the data), so provisioning an R1 tenant again on a cluster makes it R3.
    ``purgeable`` (see :func:`tenant_stream_config`; None: as the existing stream is, else no) can be
    switched off later, never on.
    """
    if replicas < 1:
        raise ConfigError(f"replicas must be at least 1, not {replicas}")
    report = ProvisionReport(replicas=replicas)
    name = stream_name(tenant)
    try:
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            wanted = tenant_stream_config(
                tenant,
                admin_key_id=admin_key_id,
                replicas=replicas,
                partitions=partitions or 1,
                purgeable=bool(purgeable),
            )
            await js.add_stream(wanted)
            report.created.append(name)
            report.partitions = partitions or 1
        else:
            current = info.config
            pinned = (current.metadata or {}).get(ADMIN_KEY_METADATA)
            if pinned != admin_key_id:
                raise ConfigError(
                    f"stream {name} is pinned to admin key {pinned}, not {admin_key_id}: "
                    "use the tenant's existing admin seed"
                )
            existing = _partitions(current.metadata)
            if partitions is not None and partitions != existing:
                raise ConfigError(
                    f"tenant {tenant!r} has {existing} partition(s); the count cannot change (it places "
                    "every correlation's state): provision a new tenant for another count"
                )
            report.partitions = existing
            if purgeable and current.deny_purge:
                raise ConfigError(
                    f"stream {name} denies purges and nats-server cannot lift that: archive its history "
                    "(trustbus ledger archive) without purging, or provision a new tenant with purges allowed"
                )
            keep = not current.deny_purge if purgeable is None else purgeable
            wanted = tenant_stream_config(
                tenant, admin_key_id=admin_key_id, replicas=replicas, partitions=existing, purgeable=keep
            )
            drift = [name for name in _COMPARED if getattr(current, name) != getattr(wanted, name)]
            if drift:
                await js.update_stream(wanted)
                report.updated.append(f"{wanted.name} ({', '.join(drift)})")
            else:
                report.unchanged.append(wanted.name or "")
        await _provision_given_up_stream(js, given_up_stream_config(tenant, replicas=replicas), report)
        for bucket in (keyring_bucket(tenant), memory_bucket(tenant), coordinator_bucket(tenant), state_bucket(tenant)):
            try:
                backing = (await js.stream_info(f"KV_{bucket}")).config
            except nats.js.errors.NotFoundError:
                await js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket,
                        history=KV_HISTORY,
                        storage=StorageType.FILE,
                        replicas=replicas,
                        direct=True,
                        ttl=_bucket_ttl(bucket, tenant),
                    )
                )
                report.created.append(bucket)
                continue
            ttl = _bucket_ttl(bucket, tenant) or 0.0
            drift = [
                name
                for name, differs in (
                    ("num_replicas", backing.num_replicas != replicas),
                    ("max_age", backing.max_age != ttl),
                )
                if differs
            ]
            if drift:
                await js.update_stream(dataclasses.replace(backing, num_replicas=replicas, max_age=ttl))
                report.updated.append(f"{bucket} ({', '.join(drift)})")
            else:
                report.unchanged.append(bucket)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise TransportError(f"provisioning tenant {tenant!r} failed: {exc}") from exc
    return report


def _bucket_ttl(bucket: str, tenant: str) -> float | None:
    """How long a key of ``bucket`` lives unwritten (None: for ever); only the state bucket's expire."""
    return STATE_TTL_S if bucket == state_bucket(tenant) else None


async def _provision_given_up_stream(js: JetStreamContext, wanted: StreamConfig, report: ProvisionReport) -> None:
    name = wanted.name or ""
    try:
        current = (await js.stream_info(name)).config
    except nats.js.errors.NotFoundError:
        await js.add_stream(wanted)
        report.created.append(name)
        return
    if current.num_replicas != wanted.num_replicas:
        await js.update_stream(dataclasses.replace(current, num_replicas=wanted.num_replicas))
        report.updated.append(f"{name} (num_replicas)")
    else:
        report.unchanged.append(name)


async def _metadata(js: JetStreamContext, tenant: str) -> dict[str, str]:
    """The tenant stream's metadata; ConfigError if the tenant is not provisioned."""
    name = stream_name(tenant)
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError as exc:
        raise ConfigError(f"tenant {tenant!r} is not provisioned: run `trustbus init --tenant {tenant}`") from exc
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise TransportError(f"cannot read stream {name}: {exc}") from exc
    return info.config.metadata or {}


async def pinned_admin_key(js: JetStreamContext, tenant: str) -> str:
    """The admin key id pinned in the tenant's stream; ConfigError if the tenant is not provisioned."""
    pinned = (await _metadata(js, tenant)).get(ADMIN_KEY_METADATA)
    if not pinned:
        raise ConfigError(f"stream {stream_name(tenant)} has no pinned admin key: it was not made by `trustbus init`")
    return pinned


async def tenant_partitions(js: JetStreamContext, tenant: str) -> int:
    """The tenant's partition count, from its stream's metadata (1 for a stream provisioned without one)."""
    return _partitions(await _metadata(js, tenant))


def _partitions(metadata: dict[str, str] | None) -> int:
    raw = (metadata or {}).get(PARTITIONS_METADATA, "1")
    try:
        return check_partitions(int(raw))
    except ValueError:
        raise ConfigError(f"the stream's {PARTITIONS_METADATA} is {raw!r}, not a partition count") from None
