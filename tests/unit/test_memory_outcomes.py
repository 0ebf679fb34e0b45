"""What an agent is told about its memory write: the answer it trusts and the outcome it reads. Pure: no server."""

from __future__ import annotations

import json

import msgspec
import pytest

from trustbus.agents._answers import UntrustedAnswer
from trustbus.agents._decision import CoordinatorState, Decision, decide, decide_approval
from trustbus.agents._memory_outcomes import check_outcome, not_applied, outcome_key, outcome_of
from trustbus.agents._policy import parse_policy
from trustbus.bus import (
    Identity,
    KeyGrant,
    Keyring,
    Opened,
    encode_decision,
    new_envelope,
    open_envelope,
    seal,
    sign_grant,
)

T0 = 1_800_000_000_000_000_000


def write_decision(*, taint: tuple[str, ...] = (), to: str = "scribe", on_tainted: str = "quarantine") -> Decision:
    """The coordinator's decision about scribe's write of ``note`` (addressed ``to``, carrying ``taint``)."""
    policy = parse_policy({"taint": {"on_tainted_memory_write": on_tainted}})
    payload = {"key": "note", "value": "hello", "expected_revision": 0}
    envelope = new_envelope(tenant="acme", kind="memory_write", sender="scribe", to=[to], taint=taint,
                            payload=json.dumps(payload).encode())  # fmt: skip
    decision = decide(policy, envelope, CoordinatorState(), received_ns=T0, source_seq=1)
    assert isinstance(decision, Decision)
    return decision


@pytest.mark.parametrize(
    ("decision", "status", "reason"),
    [
        (write_decision(), "accepted", "memory_write"),
        (write_decision(taint=("web",)), "refused", "tainted_memory_write"),
        (write_decision(taint=("web",), on_tainted="hold"), "held", "tainted_memory_write"),
        (write_decision(to="bob"), "refused", "foreign_namespace"),
        (not_applied(write_decision()), "refused", "stale_revision"),
    ],
)
def test_the_outcome_states_what_became_of_the_write_and_why(decision: Decision, status: str, reason: str) -> None:
    outcome = outcome_of(decision, "note")
    assert (outcome.status, outcome.reason, outcome.key) == (status, reason, "note")
    assert outcome.accepted == (status == "accepted") and outcome.envelope_id == decision.envelope_id


@pytest.mark.parametrize(
    ("approve", "status", "reason"), [(True, "accepted", "approved"), (False, "refused", "denied")]
)
def test_an_operators_answer_to_a_held_write_is_its_outcome(approve: bool, status: str, reason: str) -> None:
    held = write_decision(taint=("web",), on_tainted="hold")
    approval = new_envelope(tenant="acme", kind="approval", sender="ops", to=[], payload=b"{}")
    outcome = outcome_of(decide_approval(held, approval, approve=approve, received_ns=T0 + 1), "note")
    assert (outcome.status, outcome.reason) == (status, reason)


def test_the_answer_lives_in_the_writers_namespace_under_a_key_no_memory_write_can_name() -> None:
    assert outcome_key("scribe", "note") == "scribe.written.note"


def signed_answer(decision: Decision, *, signer: str = "coordinator", role: str = "coordinator",
                  to: str = "scribe", about: str | None = None) -> Opened:  # fmt: skip
    """``decision`` as an answer signed by ``signer`` (of ``role``) for ``to`` about ``about``, opened."""
    admin, key = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant="acme", admin_key_id=admin.key_id)
    grant = KeyGrant(tenant="acme", key_id=key.key_id, owner=signer, valid_from=0, role=role)  # type: ignore[arg-type]
    keyring.add(key.key_id, sign_grant(grant, admin))
    answer = new_envelope(tenant="acme", kind="decision", sender=signer, to=(to,),
                          causation_id=about or decision.envelope_id, content_type="application/msgpack",
                          payload=encode_decision(decision))  # fmt: skip
    sealed = seal(answer, key)
    return open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=answer.ts)


def test_the_coordinators_answer_about_this_write_is_trusted() -> None:
    decision = write_decision(taint=("web",))
    assert check_outcome(signed_answer(decision), agent="scribe", envelope_id=decision.envelope_id) == decision


@pytest.mark.parametrize(
    ("forgery", "fields"),
    [
        ("signed by another agent's key", {"signer": "mallory", "role": "agent"}),
        ("signed by the writer itself", {"signer": "scribe", "role": "agent"}),
        ("signed by an operator", {"signer": "ops", "role": "operator"}),
        ("addressed to another agent", {"to": "bob"}),
        ("about another write", {"about": "other"}),
    ],
)
def test_an_answer_that_is_not_the_coordinators_about_this_write_is_not_trusted(
    forgery: str, fields: dict[str, str]
) -> None:
    decision = write_decision()
    with pytest.raises(UntrustedAnswer):
        check_outcome(signed_answer(decision, **fields), agent="scribe", envelope_id=decision.envelope_id)


def test_an_answer_about_another_kind_of_envelope_is_not_a_write_outcome() -> None:
    decision = msgspec.structs.replace(write_decision(), kind="effect")
    with pytest.raises(UntrustedAnswer):
        check_outcome(signed_answer(decision), agent="scribe", envelope_id=decision.envelope_id)


async def test_a_replayed_write_is_never_decided_so_its_outcome_times_out_at_once() -> None:
    from trustbus.agents._reexecute import ReplayContext

    cause = new_envelope(tenant="acme", kind="event", sender="desk", to=["scribe"], payload=b"{}")
    context = ReplayContext("scribe", cause, (), {})
    written = await context.memory.write("note", "hello", expected_revision=0)
    assert [e.id for e in context.sent] == [written.id]
    with pytest.raises(TimeoutError, match="replay"):
        await context.memory.outcome(written, timeout_s=30)
