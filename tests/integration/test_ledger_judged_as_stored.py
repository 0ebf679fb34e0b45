"""The ledger is judged as it stood: a key's role as of each message's store time, not today's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Tenant
from trustbus.bus import Bus, KeyGrant, TenantStream, new_envelope, sign_grant, subjects
from trustbus.ledger import VerifyReport, export_bundle, verify_bundle, verify_stream


async def _decide(tenant: Tenant, coordinator: Bus, note: bytes) -> int:
    """A decision record signed by ``coordinator``, stored on partition 0's log; its sequence."""
    record = new_envelope(tenant=tenant.name, kind="decision", sender=coordinator.name, to=[], payload=note)
    sealed = coordinator.seal(record)
    return (await tenant.js.publish(subjects.decision(tenant.name, 0), sealed.body, headers=sealed.headers)).seq


async def _demote(tenant: Tenant, owner: str) -> None:
    """The admin re-grants ``owner``'s coordinator key as a mere agent key, from now on."""
    grant = tenant.keyring.keyring.resolve(tenant.identities[owner].key_id)
    demoted = KeyGrant(
        tenant=grant.tenant, key_id=grant.key_id, owner=grant.owner, role="agent", valid_from=grant.valid_from
    )
    await tenant.keyring.put(sign_grant(demoted, tenant.admin))


@pytest.fixture
async def demoted(tenant: Tenant) -> tuple[list[int], int]:
    """Three decisions by a coordinator key, its demotion, then one more decision by it; (before, after)."""
    await tenant.add("coord", role="coordinator")
    coordinator = await tenant.bus("coord")
    before = [await _decide(tenant, coordinator, b"decided %d" % i) for i in range(3)]
    await _demote(tenant, "coord")
    after = await _decide(tenant, coordinator, b"decided after the demotion")
    return before, after


async def _export(tenant: Tenant, out: Path) -> None:
    """Export the tenant's bundle, its export checkpoint signed by a ledger key."""
    await tenant.add("ledger", role="ledger")
    await export_bundle(
        TenantStream(tenant.js, tenant.name), out, signer=tenant.identities["ledger"], signer_name="ledger"
    )


def _judged(report: VerifyReport, before: list[int], after: int) -> None:
    assert [(b.seq, b.reason) for b in report.breaks] == [(after, "signer")], report.breaks
    assert "agent key" in report.breaks[0].detail
    assert report.count == len(before) + 1 and report.last_seq == after


async def test_demoting_the_coordinators_key_leaves_its_past_decisions_valid_on_the_live_stream(
    tenant: Tenant, demoted: tuple[list[int], int]
) -> None:
    """Only the decision stored after the demotion is a forgery; the three before it stood in their role."""
    _judged(await verify_stream([tenant.url], tenant.name), *demoted)


async def test_demoting_the_coordinators_key_leaves_its_past_decisions_valid_in_an_exported_bundle(
    tenant: Tenant, demoted: tuple[list[int], int], tmp_path: Path
) -> None:
    await _export(tenant, tmp_path / "bundle")
    _judged(verify_bundle(tmp_path / "bundle", admin_key=tenant.admin.key_id), *demoted)


async def test_decisions_of_a_coordinator_key_never_demoted_all_verify(tenant: Tenant, tmp_path: Path) -> None:
    """The twin: the same history without the demotion verifies, live and as a bundle."""
    await tenant.add("coord", role="coordinator")
    coordinator = await tenant.bus("coord")
    for i in range(4):
        await _decide(tenant, coordinator, b"decided %d" % i)
    live = await verify_stream([tenant.url], tenant.name)
    assert live.ok and live.verified == live.count == 4, live.breaks
    await _export(tenant, tmp_path / "bundle")
    offline = verify_bundle(tmp_path / "bundle", admin_key=tenant.admin.key_id)
    assert offline.ok and offline.verified == 4, offline.breaks
