"""The pure projection: one stored message -> rows of each table, verified or not; the projector's position."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import msgspec
import pytest

from trustbus.bus import (
    Decision,
    Dropped,
    EffectRecord,
    Identity,
    Keyring,
    countersign,
    encode_decision,
    encode_decision_group,
    encode_effect,
    new_envelope,
    seal,
    sign_grant,
    subjects,
)
from trustbus.bus._keyring import KeyGrant
from trustbus.bus._quarantine import encode_quarantine_record, quarantine_record
from trustbus.ledger import GENESIS, StoredMessage, chain_hash
from trustbus.ledger._checkpointing import CheckpointSchedule, checkpoint_envelope
from trustbus.ledger._merkle import message_leaf_hash, root_of
from trustbus.ledger._projection import channel_of, project_message
from trustbus.ledger._projector import Position, Projector
from trustbus.ledger._rows import (
    CheckpointRow,
    DecisionRow,
    EffectRow,
    EnvelopeRow,
    KeyRow,
    MemoryProposalRow,
    QuarantineRow,
    Rows,
)
from trustbus.ledger._schema import TABLES

T = "acme"
CHAIN = bytes(range(32))


@dataclass
class World:
    keyring: Keyring
    ids: dict[str, Identity] = field(default_factory=dict)
    seq: int = 0

    def stored(self, subject: str, body: bytes, headers: dict[str, str]) -> StoredMessage:
        self.seq += 1
        return StoredMessage(self.seq, subject, time.time_ns(), headers, body)

    def sealed(self, owner: str, subject: str, **fields: object) -> StoredMessage:
        fields.setdefault("kind", "event")
        fields.setdefault("to", ("bob",))
        envelope = new_envelope(tenant=T, sender=owner, **fields)  # type: ignore[arg-type]
        s = seal(envelope, self.ids[owner])
        return self.stored(subject, s.body, dict(s.headers))


@pytest.fixture
def world() -> World:
    admin = Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    w = World(keyring)
    for owner, role in [("alice", "agent"), ("bob", "agent"), ("coordinator", "coordinator"), ("ledger", "ledger")]:
        identity = Identity.generate()
        grant = KeyGrant(tenant=T, key_id=identity.key_id, owner=owner, role=role, valid_from=0)  # type: ignore[arg-type]
        keyring.add(identity.key_id, sign_grant(grant, admin))
        w.ids[owner] = identity
    return w


def project(world: World, message: StoredMessage) -> Rows:
    return Projector(T, world.keyring).apply(message)


def only(rows: Rows) -> EnvelopeRow:
    assert len(rows.envelopes) == 1
    return rows.envelopes[0]


def test_row_structs_have_exactly_the_schema_columns_in_order() -> None:
    structs = {
        "envelopes": EnvelopeRow, "decisions": DecisionRow, "effects": EffectRow,
        "memory_proposals": MemoryProposalRow, "quarantine": QuarantineRow, "checkpoints": CheckpointRow,
        "keys": KeyRow,
    }  # fmt: skip
    assert set(structs) == set(TABLES)
    for table, struct in structs.items():
        assert list(struct.__struct_fields__) == list(TABLES[table]), table


@pytest.mark.parametrize(
    ("subject", "channel"),
    [
        ("tb.acme.out.alice", "outbox"), ("tb.acme.in.bob", "inbox"), ("tb.acme.topic.news", "topic"),
        ("tb.acme.decision", "decision"), ("tb.acme.effect.alice.k1", "effect"), ("tb.acme.approval", "approval"),
        ("tb.acme.quarantine", "quarantine"), ("tb.acme.ledger.checkpoint", "checkpoint"),
        ("tb.acme.ledger.other", "other"), ("tb.other.out.alice", "other"), ("x", "other"),
    ],
)  # fmt: skip
def test_channel_of_subject(subject: str, channel: str) -> None:
    assert channel_of(T, subject) == channel


def test_a_verified_outbox_envelope_is_one_envelopes_row(world: World) -> None:
    message = world.sealed("alice", "tb.acme.out.alice", taint=("web",), payload=b'{"a":1}', hop=2)
    row = only(project(world, message))
    assert row.verified and row.reject_reason is None and row.record_error is None
    assert (row.seq, row.channel, row.sender, row.kind, row.recipients, row.taint) == (
        1, "outbox", "alice", "event", ("bob",), ("web",),
    )  # fmt: skip
    assert row.payload_size == 7 and row.body_size == len(message.body) and row.hop == 2
    assert row.key_id == world.ids["alice"].key_id and row.role == "agent"
    assert row.chain == chain_hash(GENESIS, 1, message.subject, message.headers, message.body).hex()


def test_a_flipped_byte_is_projected_unverified_with_what_it_claims(world: World) -> None:
    message = world.sealed("alice", "tb.acme.out.alice", payload=b'{"order": 42}')
    body = bytearray(message.body)
    body[body.rindex(b"42")] ^= 0x01
    forged = msgspec.structs.replace(message, body=bytes(body))
    rows = project(world, forged)
    row = only(rows)
    assert not row.verified and row.reject_reason == "bad_signature" and row.reject_detail
    assert row.sender == "alice" and row.id is not None  # claimed, not vouched for
    assert row.role is None


def test_garbage_is_projected_malformed_with_no_claimed_fields(world: World) -> None:
    row = only(project(world, world.stored("tb.acme.out.alice", b"\xc1garbage", {})))
    assert not row.verified and row.reject_reason == "malformed"
    assert row.id is None and row.sender is None and row.recipients is None and row.key_id is None
    assert row.body_size == 8


def _decision(**changes: object) -> Decision:
    fields: dict[str, object] = dict(
        envelope_id="e1", source_seq=7, sender="alice", kind="instruction", correlation_id="c1", causation_id=None,
        verdict="accept", reasons=("fanout",), deliver_to=("bob",), dropped=(Dropped("carol", "fanout"),), hop=1,
        declared_taint=(), effective_taint=("web",), decided_ns=123,
    )  # fmt: skip
    fields.update(changes)
    return Decision(**fields)  # type: ignore[arg-type]


def test_a_decision_is_a_decisions_row(world: World) -> None:
    payload = encode_decision(_decision())
    message = world.sealed(
        "coordinator", "tb.acme.decision", kind="decision", to=(), payload=payload, content_type="application/msgpack"
    )
    rows = project(world, message)
    (d,) = rows.decisions
    assert d.decision_id == only(rows).id and d.seq == 1 and d.coordinator == "coordinator"
    assert (d.envelope_id, d.source_seq, d.verdict) == ("e1", 7, "accept")
    assert (d.reasons, d.deliver_to) == (("fanout",), ("bob",))
    assert [(x.recipient, x.reason) for x in d.dropped] == [("carol", "fanout")]
    assert d.effective_taint == ("web",) and d.decided_ns == 123


def test_a_groups_record_is_a_decisions_row_each_named_by_record_and_position(world: World) -> None:
    group = [_decision(), _decision(envelope_id="e2", source_seq=8, verdict="reject", reasons=("budget",))]
    payload = encode_decision_group([encode_decision(d) for d in group])
    message = world.sealed(
        "coordinator", "tb.acme.decision", kind="decision", to=(), payload=payload, content_type="application/msgpack"
    )
    rows = project(world, message)
    record = only(rows)
    assert record.verified and record.record_error is None
    assert [(d.decision_id, d.seq, d.envelope_id, d.verdict) for d in rows.decisions] == [
        (f"{record.id}.0", 1, "e1", "accept"),
        (f"{record.id}.1", 1, "e2", "reject"),
    ]


def test_a_group_with_one_unreadable_decision_is_no_decision_at_all(world: World) -> None:
    payload = encode_decision_group([encode_decision(_decision()), msgspec.msgpack.encode({"envelope_id": "e2"})])
    message = world.sealed(
        "coordinator", "tb.acme.decision", kind="decision", to=(), payload=payload, content_type="application/msgpack"
    )
    rows = project(world, message)
    assert rows.decisions == [] and (only(rows).record_error or "").startswith("unreadable record")


def test_a_decision_signed_by_an_agent_is_no_decision(world: World) -> None:
    payload = encode_decision(_decision())
    message = world.sealed("alice", "tb.acme.decision", kind="decision", to=(), payload=payload)
    rows = project(world, message)
    assert rows.decisions == [] and only(rows).record_error == "decision signed by a key of role 'agent'"


def test_an_unreadable_record_is_named_not_dropped(world: World) -> None:
    message = world.sealed("coordinator", "tb.acme.decision", kind="decision", to=(), payload=b"\x01")
    rows = project(world, message)
    assert rows.decisions == [] and only(rows).verified
    assert (only(rows).record_error or "").startswith("unreadable record")


def test_an_effect_record_is_an_effects_row(world: World) -> None:
    record = EffectRecord(
        phase="completed", tool="refund", idempotency_key="k1", args=b"{}", result=b"{}",
        effect_class="reversible", compensating_tool="charge", taint=("web",),
    )  # fmt: skip
    message = world.sealed(
        "alice", subjects.effect_record(T, "alice", 0, "k1"), kind="effect", to=(), payload=encode_effect(record),
        correlation_id="c9", causation_id="e0",
    )  # fmt: skip
    (e,) = project(world, message).effects
    assert (e.agent, e.idempotency_key, e.phase, e.tool, e.effect_class, e.compensating_tool) == (
        "alice", "k1", "completed", "refund", "reversible", "charge",
    )  # fmt: skip
    assert (e.correlation_id, e.causation_id, e.taint, e.error) == ("c9", "e0", ("web",), None)


def test_an_effect_record_on_another_agents_subject_is_no_effect(world: World) -> None:
    record = EffectRecord(phase="requested", tool="t", idempotency_key="k1", args=b"{}", effect_class="read")
    message = world.sealed(
        "alice", subjects.effect_record(T, "bob", 0, "k1"), kind="effect", to=(), payload=encode_effect(record)
    )
    rows = project(world, message)
    assert rows.effects == [] and "bob" in (only(rows).record_error or "")


def test_a_memory_write_is_a_memory_proposals_row(world: World) -> None:
    payload = json.dumps({"key": "tier", "value": {"x": 1}, "expected_revision": 3}).encode()
    message = world.sealed("alice", "tb.acme.out.alice", kind="memory_write", to=("alice",), payload=payload)
    (m,) = project(world, message).memory_proposals
    assert (m.agent, m.key, m.expected_revision, m.seq) == ("alice", "tier", 3, 1)


def test_a_rollback_revert_is_projected_under_the_namespace_it_writes(world: World) -> None:
    payload = json.dumps({"key": "tier", "value": "silver", "expected_revision": 5, "reverts": ["e1"]}).encode()
    message = world.sealed("bob", "tb.acme.out.bob", kind="memory_write", to=("alice",), payload=payload)
    (m,) = project(world, message).memory_proposals
    assert (m.agent, m.key, m.expected_revision) == ("alice", "tier", 5)


def test_a_quarantine_record_is_a_quarantine_row(world: World) -> None:
    record = quarantine_record(
        b"\xc1bad", {"Tb-Key": "Ux"}, reason="malformed", detail="nope", subject="tb.acme.out.bob", stream_seq=4
    )
    message = world.sealed(
        "coordinator", subjects.quarantine(T), to=("topic:quarantine",), payload=encode_quarantine_record(record),
        content_type="application/msgpack",
    )  # fmt: skip
    (q,) = project(world, message).quarantine
    assert (q.rejected_by, q.reason, q.subject, q.stream_seq, q.key_id, q.body_size) == (
        "coordinator", "malformed", "tb.acme.out.bob", 4, "Ux", 4,
    )  # fmt: skip
    assert q.claimed_sender is None and len(q.body_sha256) == 64


def test_a_checkpoint_is_a_checkpoints_row_only_from_a_ledger_key(world: World) -> None:
    position = Position(last_seq=9, head=CHAIN, count=9)
    signed = {owner: seal(checkpoint_envelope(T, owner, position), world.ids[owner]) for owner in ("ledger", "alice")}
    by_agent = project(world, world.stored(subjects.checkpoint(T), signed["alice"].body, signed["alice"].headers))
    assert by_agent.checkpoints == [] and only(by_agent).record_error == "checkpoint signed by a key of role 'agent'"
    rows = project(world, world.stored(subjects.checkpoint(T), signed["ledger"].body, signed["ledger"].headers))
    (c,) = rows.checkpoints
    assert (c.through_seq, c.head, c.count, c.signer, c.stream) == (9, CHAIN.hex(), 9, "ledger", "TB_acme")
    assert c.key_id == world.ids["ledger"].key_id and only(rows).kind == "checkpoint"


def test_a_mediated_delivery_names_its_recipient_and_decision(world: World) -> None:
    s = seal(new_envelope(tenant=T, kind="event", sender="alice", to=("bob",)), world.ids["alice"])
    csig = countersign(
        s.body, recipient="bob", decision_id="d1", effective_taint=(), coordinator=world.ids["coordinator"]
    )
    headers = {**s.headers, **csig}
    row = only(project(world, world.stored("tb.acme.in.bob", s.body, headers)))
    assert row.verified and (row.channel, row.recipient, row.decision_id) == ("inbox", "bob", "d1")
    unmediated = only(project(world, world.stored("tb.acme.in.bob", s.body, dict(s.headers))))
    assert not unmediated.verified and unmediated.reject_reason == "not_mediated"


def test_project_message_is_a_function_of_its_inputs(world: World) -> None:
    message = world.sealed("alice", "tb.acme.out.alice")
    opened = Projector(T, world.keyring)._open(message)
    assert project_message(message, opened, tenant=T, chain=CHAIN) == project_message(
        message, opened, tenant=T, chain=CHAIN
    )


def test_projector_chains_counts_and_never_projects_a_sequence_twice(world: World) -> None:
    projector = Projector(T, world.keyring)
    messages = [world.sealed("alice", "tb.acme.out.alice") for _ in range(3)]
    head = GENESIS
    leaves = []
    for m in messages:
        assert len(projector.apply(m).envelopes) == 1
        head = chain_hash(head, m.seq, m.subject, m.headers, m.body)
        leaves.append(message_leaf_hash(m.seq, m.subject, m.headers, m.body))
    frontier = projector.position.frontier
    assert projector.position == Position(
        last_seq=3, head=head, count=3, last_stored_ns=messages[-1].stored_ns, frontier=frontier
    )
    assert len(projector.apply(messages[1])) == 0 and projector.position.last_seq == 3
    resumed = Projector(T, world.keyring, position=projector.position)
    nxt = world.sealed("alice", "tb.acme.out.alice")
    assert resumed.apply(nxt).envelopes[0].chain == chain_hash(head, 4, nxt.subject, nxt.headers, nxt.body).hex()
    leaves.append(message_leaf_hash(4, nxt.subject, nxt.headers, nxt.body))
    tree = resumed.position.tree()
    assert tree is not None and tree.root() == root_of(leaves)  # the tree resumes from the frontier


def test_a_replay_under_a_fresh_message_id_is_caught_across_a_restart(world: World) -> None:
    first = world.sealed("alice", "tb.acme.out.alice")
    projector = Projector(T, world.keyring)
    projector.apply(first)
    replay = world.stored(first.subject, first.body, {**first.headers, "Nats-Msg-Id": "fresh"})
    restarted = Projector(T, world.keyring, position=projector.position)
    opened = Projector(T, world.keyring)._open(first)
    assert not isinstance(opened, Exception)
    restarted.remember(first.subject, first.seq, opened.envelope)
    row = only(restarted.apply(replay))
    assert not row.verified and row.reject_reason == "replayed"


def test_checkpoint_schedule_counts_new_messages_but_not_checkpoints() -> None:
    schedule = CheckpointSchedule(every_n=3, every_s=10.0, last_at=100.0)
    assert not schedule.due(1000.0)  # nothing new: never due
    schedule.observe("checkpoint")
    assert not schedule.due(1000.0) and schedule.seconds_until_due(100.0) is None
    schedule.observe("outbox")
    assert not schedule.due(105.0) and schedule.seconds_until_due(105.0) == 5.0
    assert schedule.due(110.0)
    schedule.observe("inbox")
    schedule.observe("decision")
    assert schedule.due(100.0)  # three new
    schedule.published(111.0)
    assert schedule.since == 0 and not schedule.due(500.0)


def test_a_checkpoint_that_could_not_be_published_is_due_again_after_its_pause_not_before() -> None:
    schedule = CheckpointSchedule(every_n=2, every_s=10.0, last_at=100.0)
    schedule.observe("outbox")
    assert schedule.due(111.0)
    schedule.failed(111.0, 5.0)
    assert not schedule.due(115.9) and schedule.seconds_until_due(113.0) == 3.0
    assert schedule.due(116.0)
    schedule.published(116.0)
    schedule.observe("outbox")
    schedule.observe("outbox")
    assert schedule.due(116.5)  # published: no pause left over


def test_checks_made_on_every_core_project_exactly_as_checks_made_in_line(world: World) -> None:
    from trustbus.ledger._parallel import CHUNK, open_all

    messages = []
    for i in range(CHUNK + 50):
        messages.append(world.sealed("alice", "tb.acme.out.alice", payload=b'{"order": %d}' % (40 + i % 3)))
    replayed = messages[5]
    messages.append(world.stored(replayed.subject, replayed.body, {**replayed.headers, "Nats-Msg-Id": "x"}))
    body = bytearray(messages[7].body)
    body[body.rindex(b"4")] ^= 0x01
    messages.append(world.stored("tb.acme.out.alice", bytes(body), messages[7].headers))
    s = seal(new_envelope(tenant=T, kind="event", sender="alice", to=("bob",)), world.ids["alice"])
    coordinator = world.ids["coordinator"]
    csig = countersign(s.body, recipient="bob", decision_id="d", effective_taint=(), coordinator=coordinator)
    delivered = world.stored("tb.acme.in.bob", s.body, {**s.headers, **csig})
    unmediated = world.stored("tb.acme.in.bob", s.body, dict(s.headers))
    messages += [delivered, unmediated, world.stored("tb.acme.in.carol", s.body, dict(s.headers))]

    in_line, parallel = Projector(T, world.keyring), Projector(T, world.keyring)
    expected, got = Rows(), Rows()
    for m in messages:
        expected.extend(in_line.apply(m))
    for m, outcome in zip(messages, open_all(messages, world.keyring, T, workers=2), strict=True):
        got.extend(parallel.apply(m, checked=outcome))
    assert got == expected and parallel.position == in_line.position
    reasons = [r.reject_reason for r in got.envelopes if not r.verified]
    # The unmediated copy in bob's inbox is a replay first (open_envelope's order); in carol's it is not mediated.
    assert reasons == ["replayed", "bad_signature", "replayed", "not_mediated"]


def test_an_unsigned_decision_header_on_an_outbox_envelope_is_not_projected(world: World) -> None:
    """An agent adds ``Tb-Decision`` naming another envelope's decision: no row joins its envelope to it."""
    s = seal(new_envelope(tenant=T, kind="event", sender="alice", to=("bob",)), world.ids["alice"])
    outbox = only(project(world, world.stored("tb.acme.out.alice", s.body, {**s.headers, "Tb-Decision": "d-other"})))
    assert outbox.verified and outbox.decision_id is None
    forged = only(project(world, world.stored("tb.acme.out.alice", b"\x00garbage", {"Tb-Decision": "d-other"})))
    assert not forged.verified and forged.decision_id is None
    # On a delivery, a decision header the countersignature does not cover is refused, and not projected either.
    csig = countersign(
        s.body, recipient="bob", decision_id="d1", effective_taint=(), coordinator=world.ids["coordinator"]
    )
    swapped = {**s.headers, **csig, "Tb-Decision": "d-other"}
    delivery = only(project(world, world.stored("tb.acme.in.bob", s.body, swapped)))
    assert not delivery.verified and delivery.reject_reason == "bad_countersignature"
    assert delivery.decision_id is None


def test_a_verified_delivery_keeps_the_decision_its_countersignature_names(world: World) -> None:
    s = seal(new_envelope(tenant=T, kind="event", sender="alice", to=("bob",)), world.ids["alice"])
    csig = countersign(
        s.body, recipient="bob", decision_id="d1", effective_taint=(), coordinator=world.ids["coordinator"]
    )
    row = only(project(world, world.stored("tb.acme.in.bob", s.body, {**s.headers, **csig})))
    assert row.verified and row.decision_id == "d1" and row.key_id == world.ids["alice"].key_id
