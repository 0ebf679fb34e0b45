"""A component's records (decisions, quarantine records, checkpoints) are judged by their store time."""

from __future__ import annotations

import pytest

from trustbus.bus import Identity, KeyGrant, Keyring, Skew, new_envelope, open_envelope, seal, sign_grant, subjects
from trustbus.bus._errors import KeyNotYetValid, RevokedKey

T = "acme"
S = 10**9
NOW = 1_800_000_000 * S


def _world(*, revoked_at: int | None = None) -> tuple[Keyring, Identity]:
    admin, coordinator = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    grant = KeyGrant(tenant=T, key_id=coordinator.key_id, owner="coordinator", role="coordinator",
                     valid_from=NOW - 10 * S, revoked_at=revoked_at)  # fmt: skip
    keyring.add(coordinator.key_id, sign_grant(grant, admin))
    return keyring, coordinator


def _record(coordinator: Identity, *, clock_off_s: int) -> tuple[bytes, dict[str, str]]:
    record = new_envelope(tenant=T, kind="decision", sender="coordinator", to=(), payload=b"x",
                          now_ns=NOW + clock_off_s * S)  # fmt: skip
    sealed = seal(record, coordinator)
    return sealed.body, sealed.headers


@pytest.mark.parametrize("clock_off_s", [120, -120])
def test_a_decision_signed_by_a_stepped_clock_is_judged_by_its_store_time(clock_off_s: int) -> None:
    keyring, coordinator = _world()
    body, headers = _record(coordinator, clock_off_s=clock_off_s)
    with pytest.raises((Skew, KeyNotYetValid)):  # an agent's envelope is still held to the sender's clock
        open_envelope(body, headers, keyring=keyring, received_ns=NOW)
    assert subjects.judged_at_store(T, subjects.decision(T, 0))
    opened = open_envelope(body, headers, keyring=keyring, received_ns=NOW, at_store=True)
    assert opened.envelope.ts == NOW + clock_off_s * S


def test_a_record_stored_after_its_key_was_revoked_is_refused_whatever_its_clock_says() -> None:
    """The twin: judging by store time never lets a revoked key back in, by backdating or otherwise."""
    keyring, coordinator = _world(revoked_at=NOW - S)
    body, headers = _record(coordinator, clock_off_s=-120)
    with pytest.raises(RevokedKey):
        open_envelope(body, headers, keyring=keyring, received_ns=NOW, at_store=True)


def test_only_component_records_are_judged_at_store() -> None:
    assert all(subjects.judged_at_store(T, s) for s in (subjects.quarantine(T), subjects.checkpoint(T)))
    agents = (subjects.outbox(T, "a", 0), subjects.inbox(T, "a"), subjects.effect_record(T, "a", 0, "k"))
    assert not any(subjects.judged_at_store(T, s) for s in (*agents, subjects.approval(T, 0)))
