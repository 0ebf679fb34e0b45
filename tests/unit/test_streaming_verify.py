"""The streaming verifier: the same verdicts as verify_messages, in memory bounded by a window, not the stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from trustbus.bus import (
    EffectRecord,
    Identity,
    KeyGrant,
    Keyring,
    Limits,
    StoredMessage,
    decode_checkpoint,
    encode_checkpoint,
    encode_effect,
    new_envelope,
    seal,
    sign_grant,
    subjects,
)
from trustbus.bus._keyring import encode_signed_grant
from trustbus.bus._quarantine import encode_quarantine_record, quarantine_record
from trustbus.ledger import BundleEntry, verify_bundle, verify_messages
from trustbus.ledger._anchors import sign_checkpoint
from trustbus.ledger._bundle import Bundle, KeyringRevision, write_bundle
from trustbus.ledger._chain import GENESIS, chain_hash
from trustbus.ledger._checkpointing import checkpoint_envelope
from trustbus.ledger._merkle import TreeBuilder, message_leaf_hash
from trustbus.ledger._projector import Position
from trustbus.ledger._streaming import StreamVerifier, collect_anchors

T = "acme"
MS = 1_000_000
OUTBOX = subjects.outbox(T, "alice", 0)


@dataclass
class Log:
    """A stream built in memory; stored times ``step_ns`` apart, envelopes stamped at their store time."""

    step_ns: int = MS
    ids: dict[str, Identity] = field(default_factory=dict)
    revisions: list[tuple[str, bytes]] = field(default_factory=list)
    messages: list[StoredMessage] = field(default_factory=list)
    tree: TreeBuilder = field(default_factory=TreeBuilder)
    head: bytes = GENESIS
    now: int = 1_800_000_000 * 1_000_000_000

    def __post_init__(self) -> None:
        admin = Identity.generate()
        self.keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
        for owner, role in [("alice", "agent"), ("coordinator", "coordinator"), ("ledger", "ledger")]:
            identity = Identity.generate()
            grant = KeyGrant(tenant=T, key_id=identity.key_id, owner=owner, role=role, valid_from=0)  # type: ignore[arg-type]
            signed = sign_grant(grant, admin)
            self.keyring.add(identity.key_id, signed)
            self.revisions.append((identity.key_id, encode_signed_grant(signed)))
            self.ids[owner] = identity

    def store(self, subject: str, body: bytes, headers: dict[str, str]) -> StoredMessage:
        self.now += self.step_ns
        m = StoredMessage(len(self.messages) + 1, subject, self.now, headers, body)
        self.messages.append(m)
        self.head = chain_hash(self.head, m.seq, subject, headers, body)
        self.tree.append(message_leaf_hash(m.seq, subject, headers, body))
        return m

    def sealed(self, owner: str, subject: str = OUTBOX, **fields: object) -> StoredMessage:
        fields.setdefault("kind", "event")
        fields.setdefault("to", ("bob",))
        s = seal(new_envelope(tenant=T, sender=owner, now_ns=self.now + self.step_ns, **fields), self.ids[owner])  # type: ignore[arg-type]
        return self.store(subject, s.body, dict(s.headers))

    def forged(self) -> StoredMessage:
        """alice's envelope with a payload byte flipped after signing, and the coordinator's record of it."""
        s = seal(new_envelope(tenant=T, kind="event", sender="alice", to=("bob",), payload=b'"42"',
                              now_ns=self.now + self.step_ns), self.ids["alice"])  # fmt: skip
        body = bytearray(s.body)
        body[body.rindex(b"42")] ^= 1
        m = self.store(OUTBOX, bytes(body), dict(s.headers))
        record = quarantine_record(m.body, m.headers, reason="bad_signature", detail="", subject=OUTBOX,
                                   stream_seq=m.seq)  # fmt: skip
        self.sealed("coordinator", subjects.quarantine(T), to=("topic:quarantine",),
                    payload=encode_quarantine_record(record), content_type="application/msgpack")  # fmt: skip
        return m

    def effect(self, key: str) -> None:
        record = EffectRecord(phase="requested", tool="t", idempotency_key=key, args=b"{}", effect_class="read")
        self.sealed("alice", subjects.effect_record(T, "alice", 0, key), kind="effect", to=(),
                    payload=encode_effect(record), content_type="application/msgpack")  # fmt: skip

    def checkpoint(self, *, root: bytes | None = None) -> None:
        seq = len(self.messages)
        position = Position(last_seq=seq, head=self.head, count=seq, frontier=self.tree.frontier)
        envelope = checkpoint_envelope(T, "ledger", position, now_ns=self.now + self.step_ns)
        if root is not None:  # a checkpoint that lies about the tree
            lie = msgspec.structs.replace(decode_checkpoint(envelope.payload), tree_root=root)
            envelope = msgspec.structs.replace(envelope, payload=encode_checkpoint(lie))
        s = seal(envelope, self.ids["ledger"])
        self.store(subjects.checkpoint(T), s.body, dict(s.headers))


def streamed(log: Log, *, chunk: int = 7, limits: Limits = Limits(), check_from: int = 1) -> StreamVerifier:
    anchors = collect_anchors(log.messages, log.keyring, T)
    verifier = StreamVerifier(log.keyring, T, anchors, limits=limits, check_from=check_from, workers=2)
    for i in range(0, len(log.messages), chunk):
        verifier.feed(log.messages[i : i + chunk])
    return verifier


def history() -> Log:
    log = Log()
    for i in range(30):
        log.sealed("alice", payload=b"%d" % i)
        if i % 10 == 9:
            log.effect(f"k{i}")
            log.checkpoint()
    log.forged()
    log.sealed("alice")
    log.checkpoint()
    return log


def test_streamed_verification_agrees_with_verify_messages_on_an_honest_history() -> None:
    log = history()
    report = streamed(log).finish()
    whole = verify_messages(log.messages, log.keyring, T)
    assert report.ok and whole.ok, (report.breaks, whole.breaks)
    assert (report.count, report.verified, report.recorded_rejections, report.checkpoints, report.head) == (
        whole.count, whole.verified, whole.recorded_rejections, whole.checkpoints, whole.head,
    )  # fmt: skip
    assert report.recorded_rejections == 1 and report.checkpoints == 4 and report.head == log.head


def test_streamed_verification_from_a_sequence_checks_signatures_from_there_only() -> None:
    log = history()
    (forged,) = collect_anchors(log.messages, log.keyring, T).excused
    report = streamed(log, check_from=forged + 2).finish()  # after the forgery and its record
    assert report.ok and report.first_seq == forged + 2 and report.last_seq == len(log.messages)


def test_memory_follows_the_window_not_the_length_of_the_stream() -> None:
    """5,000 messages 1 ms apart under a 10 ms skew: the replay check holds dozens of ids, not thousands."""
    log = Log()
    for i in range(5000):
        if i % 50 == 0:
            log.effect(f"k{i}")  # a new subject each: subjects whose ids expired are dropped
        else:
            log.sealed("alice", payload=b"%d" % i)
    verifier = streamed(log, chunk=500, limits=Limits(skew_ns=10 * MS))
    assert verifier.finish().ok
    assert verifier.remembered < 100  # ~20 ids in the window, and a sweep's worth of expired subjects'
    assert len(verifier.judge._replay._seen) < 100


def test_a_replay_within_the_window_is_named() -> None:
    log = Log()
    first = log.sealed("alice")
    log.sealed("alice")
    log.store(first.subject, first.body, {**first.headers, "Nats-Msg-Id": "fresh"})
    report = streamed(log).finish()
    assert [(b.seq, b.reason) for b in report.breaks] == [(3, "replayed")]


def test_a_replay_after_the_window_fails_on_its_clock() -> None:
    log = Log(step_ns=30 * MS)
    first = log.sealed("alice")
    for _ in range(5):
        log.sealed("alice")
    log.store(first.subject, first.body, {**first.headers, "Nats-Msg-Id": "fresh"})
    report = streamed(log, limits=Limits(skew_ns=50 * MS)).finish()
    assert [(b.seq, b.reason) for b in report.breaks] == [(7, "skew")]


def test_a_quarantined_message_replaced_by_other_bytes_is_not_excused() -> None:
    log = history()
    (seq,) = collect_anchors(log.messages, log.keyring, T).excused
    forged = log.messages[seq - 1]
    assert streamed(log).finish().ok  # the honest twin: the record excuses exactly these bytes
    other = log.messages[0]
    log.messages[forged.seq - 1] = StoredMessage(forged.seq, forged.subject, forged.stored_ns, other.headers,
                                                 other.body[:-1] + b"x")  # fmt: skip
    report = streamed(log).finish()
    assert (forged.seq, "bad_signature") in [(b.seq, b.reason) for b in report.breaks]


def test_a_checkpoint_stating_another_tree_root_is_a_break() -> None:
    honest = Log()
    honest.sealed("alice")
    honest.checkpoint()
    assert streamed(honest).finish().checkpoints == 1
    log = Log()
    log.sealed("alice")
    log.checkpoint(root=bytes(32))
    report = streamed(log).finish()
    assert [(b.seq, b.reason) for b in report.breaks] == [(2, "checkpoint")]
    assert "Merkle tree head" in report.breaks[0].detail


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_the_verdict_does_not_depend_on_how_the_stream_is_cut(chunk: int) -> None:
    log = history()
    report = streamed(log, chunk=chunk).finish()
    assert report.ok and report.checkpoints == 4


def _bundle(log: Log, directory: Path) -> Path:
    head, entries = GENESIS, []
    for m in log.messages:
        head = chain_hash(head, m.seq, m.subject, m.headers, m.body)
        entries.append(BundleEntry(m.seq, m.subject, m.stored_ns, m.headers, m.body, head))
    manifest: dict[str, object] = {
        "format": 2, "tenant": T, "stream": f"TB_{T}", "admin_key": log.keyring.admin_key_id, "first_seq": 1,
        "last_seq": len(entries), "count": len(entries), "head": head.hex(), "exported_at": log.now,
    }  # fmt: skip
    revisions = [KeyringRevision(k, v) for k, v in log.revisions]
    end = sign_checkpoint(T, log.ids["ledger"], "ledger", through_seq=len(entries), head=head, now_ns=log.now)
    write_bundle(directory, Bundle(manifest, entries, revisions, end=end))
    return directory


def test_a_bundle_whose_checkpoint_states_another_tree_root_does_not_verify(tmp_path: Path) -> None:
    honest = Log()
    honest.sealed("alice")
    honest.checkpoint()
    assert verify_bundle(_bundle(honest, tmp_path / "honest")).ok
    log = Log()
    log.sealed("alice")
    log.checkpoint(root=bytes(32))
    report = verify_bundle(_bundle(log, tmp_path / "lying"))
    assert [(b.seq, b.reason) for b in report.breaks] == [(2, "checkpoint")]


def test_a_checkpoint_written_before_tree_heads_still_verifies() -> None:
    """The payload of an older service: no tree_size, no tree_root. It holds by its chain head alone."""
    log = Log()
    log.sealed("alice")
    old = {"v": 1, "stream": f"TB_{T}", "through_seq": 1, "head": log.head, "count": 1}
    envelope = checkpoint_envelope(T, "ledger", Position(last_seq=1, head=log.head, count=1), now_ns=log.now + MS)
    envelope = msgspec.structs.replace(envelope, payload=msgspec.msgpack.encode(old))
    s = seal(envelope, log.ids["ledger"])
    log.store(subjects.checkpoint(T), s.body, dict(s.headers))
    assert decode_checkpoint(envelope.payload).tree_root is None
    assert streamed(log).finish().checkpoints == 1
    assert verify_messages(log.messages, log.keyring, T).checkpoints == 1


def test_a_position_that_lost_its_frontier_states_no_tree_head() -> None:
    """A projection made before tree heads has no frontier: its checkpoints state the chain head only."""
    envelope = checkpoint_envelope(T, "ledger", Position(last_seq=9, head=bytes(32), count=9))
    checkpoint = decode_checkpoint(envelope.payload)
    assert (checkpoint.through_seq, checkpoint.tree_size, checkpoint.tree_root) == (9, None, None)


def test_an_event_stored_on_the_decision_log_is_wrong_kind_live_and_in_a_bundle_alike() -> None:
    """The live stream and verify_messages judge with one judge: main's rules hold for both."""
    honest = history()
    assert streamed(honest).finish().ok and verify_messages(honest.messages, honest.keyring, T).ok
    log = history()
    log.sealed("coordinator", subjects.decision(T, 0), to=())
    live = streamed(log).finish()
    whole = verify_messages(log.messages, log.keyring, T)
    assert [(b.seq, b.reason) for b in live.breaks] == [(len(log.messages), "wrong_kind")]
    assert live.breaks == whole.breaks
    assert (live.verified, live.checkpoints, live.signed_through) == (
        whole.verified,
        whole.checkpoints,
        whole.signed_through,
    )
