"""Rejections recorded in aggregate: what a summary excuses for the verifier, what the projection counts,
and the suspension that follows a sender over its threshold (pure parts)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import msgspec
import pytest

from trustbus.bus import Identity, Keyring, new_envelope, open_envelope, seal, sign_grant, subjects
from trustbus.bus._keyring import KeyGrant
from trustbus.bus._quarantine import encode_quarantine_record, quarantine_record
from trustbus.bus._rejections import (
    RejectedItem,
    RejectionSample,
    RejectionSummary,
    decode_quarantine_payload,
    encode_rejection_summary,
)
from trustbus.ledger import StoredMessage, verify_messages
from trustbus.ledger._excuses import quarantine_excuses
from trustbus.ledger._projection import project_message
from trustbus.ledger._rows import Rows

T = "acme"


@dataclass
class World:
    keyring: Keyring
    ids: dict[str, Identity] = field(default_factory=dict)
    messages: list[StoredMessage] = field(default_factory=list)

    def store(self, subject: str, body: bytes, headers: dict[str, str]) -> StoredMessage:
        message = StoredMessage(len(self.messages) + 1, subject, time.time_ns(), headers, body)
        self.messages.append(message)
        return message

    def forged(self, owner: str) -> StoredMessage:
        """An envelope on ``owner``'s outbox whose signature does not hold (one payload byte flipped)."""
        sealed = seal(new_envelope(tenant=T, kind="event", sender=owner, to=("bob",), payload=b"1"), self.ids[owner])
        body = sealed.body.replace(b"1", b"2")
        return self.store(subjects.outbox(T, owner, 0), body, dict(sealed.headers))

    def summary(self, signer: str, listed: list[tuple[StoredMessage, bytes | None, str | None]]) -> StoredMessage:
        """A summary by ``signer`` listing each message (with another SHA-256 or subject if given)."""
        subject_names: list[str] = []
        items = []
        for message, digest, subject in listed:
            name = subject or message.subject
            if name not in subject_names:
                subject_names.append(name)
            sha = digest or hashlib.sha256(message.body).digest()
            items.append(RejectedItem(message.seq, subject_names.index(name), 0, len(message.body), sha, 1))
        summary = RejectionSummary(
            owner="mallory",
            subjects=tuple(subject_names),
            reasons=("bad_signature",),
            counts={"bad_signature": len(items)},
            items=tuple(items),
            details=("", "signature does not verify"),
            sample=RejectionSample(
                seq=listed[0][0].seq,
                reason="bad_signature",
                detail="signature does not verify",
                claimed_sender="mallory",
                claimed_id=None,
                key_id=None,
                body=listed[0][0].body[:512],
            ),
        )
        envelope = new_envelope(
            tenant=T,
            kind="event",
            sender=signer,
            to=("topic:quarantine",),
            content_type="application/msgpack",
            payload=encode_rejection_summary(summary),
        )
        sealed = seal(envelope, self.ids[signer])
        return self.store(subjects.quarantine(T), sealed.body, dict(sealed.headers))


@pytest.fixture
def world() -> World:
    admin = Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    w = World(keyring)
    for owner, role in [("mallory", "agent"), ("bob", "agent"), ("coordinator", "coordinator")]:
        identity = Identity.generate()
        grant = KeyGrant(tenant=T, key_id=identity.key_id, owner=owner, role=role, valid_from=0)  # type: ignore[arg-type]
        keyring.add(identity.key_id, sign_grant(grant, admin))
        w.ids[owner] = identity
    return w


def test_forgeries_listed_by_a_coordinators_summary_are_recorded_rejections(world: World) -> None:
    forged = [world.forged("mallory") for _ in range(50)]
    world.summary("coordinator", [(m, None, None) for m in forged])
    report = verify_messages(world.messages, world.keyring, T)
    assert report.ok, report.first_break
    assert report.recorded_rejections == 50


def test_a_summary_cannot_excuse_a_message_it_did_not_see(world: World) -> None:
    seen, unseen, moved = world.forged("mallory"), world.forged("mallory"), world.forged("mallory")
    world.summary(
        "coordinator",
        [(seen, None, None), (unseen, hashlib.sha256(b"another body").digest(), None), (moved, None, "tb.acme.x")],
    )
    report = verify_messages(world.messages, world.keyring, T)
    assert report.recorded_rejections == 1
    assert sorted(b.seq for b in report.breaks) == [unseen.seq, moved.seq]


def test_a_summary_signed_by_an_agent_excuses_nothing(world: World) -> None:
    forged = world.forged("mallory")
    world.summary("mallory", [(forged, None, None)])
    assert quarantine_excuses(world.messages, world.keyring, T) == {}
    assert [b.seq for b in verify_messages(world.messages, world.keyring, T).breaks] == [forged.seq]


def test_the_projection_counts_every_message_a_summary_lists(world: World) -> None:
    forged = [world.forged("mallory") for _ in range(3)]
    record = world.summary("coordinator", [(m, None, None) for m in forged])
    rows = Rows()
    opened = open_envelope(record.body, record.headers, keyring=world.keyring, received_ns=record.stored_ns)
    project_message(record, opened, tenant=T, chain=bytes(32), into=rows)
    assert [(r.reason, r.stream_seq, r.claimed_sender) for r in rows.quarantine] == [
        ("bad_signature", m.seq, "mallory") for m in forged
    ]
    assert {r.detail for r in rows.quarantine} == {"signature does not verify"}
    assert rows.quarantine[0].claimed_sender == "mallory" and rows.quarantine[1].key_id is None
    assert rows.envelopes[0].record_error is None


def test_a_summary_costs_well_under_100_bytes_a_rejected_message(world: World) -> None:
    forged = [world.forged("mallory") for _ in range(512)]
    record = world.summary("coordinator", [(m, None, None) for m in forged])
    stored = len(record.subject) + sum(len(k) + len(v) + 4 for k, v in record.headers.items()) + len(record.body)
    assert stored / 512 <= 60


def test_a_single_quarantine_record_still_decodes_as_one() -> None:
    record = quarantine_record(b"x", {}, reason="malformed", detail="d", subject="tb.acme.out.a.0", stream_seq=3)
    assert decode_quarantine_payload(encode_quarantine_record(record)) == record
    with pytest.raises(msgspec.DecodeError):
        decode_quarantine_payload(b"\x81\xa1x\x01")
