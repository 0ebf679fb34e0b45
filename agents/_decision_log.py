"""The decision log (``tb.<T>.decision.<partition>``) read back into a :class:`CoordinatorState`."""

from __future__ import annotations

import logging

import msgspec

from trustbus.agents._decision import CoordinatorState
from trustbus.agents._policy import Policy
from trustbus.bus import Keyring, SubjectLog, VerificationError, open_envelope
from trustbus.bus._records import decode_decision

log = logging.getLogger("trustbus.coordinator")


class DecisionLog:
    """Follows the decision log; ``state`` is the fold of every decision read so far.

    Only decisions signed by a key with the ``coordinator`` role (as it stood
    when the record was stored) are applied; anything else on the subject is
    logged and skipped. A decision is judged by its store time, not by the
    ``ts`` its coordinator's clock gave it, so a coordinator whose clock was
    stepped never loses what it decided; a second copy of one record (the same
    record id at another sequence) is skipped as a replay.
    """

    def __init__(self, log: SubjectLog, keyring: Keyring, policy: Policy) -> None:
        """Nothing is read until :meth:`catch_up`. ``log``: one partition's decisions
        (:func:`bus.subjects.decision`), or all of them (:func:`bus.subjects.all_decisions`)."""  # noqa: D205, D209
        self.log = log
        self._keyring = keyring
        self._policy = policy
        self.state = CoordinatorState()
        self.decision_ids: dict[str, str] = {}
        self._records: set[str] = set()  # ids of the decision records applied

    async def catch_up(self) -> None:
        """Apply every decision appended after the last one applied."""
        async for record in self.log.read(after=self.state.last_seq):
            self.apply_recorded(record.body, record.headers, record.seq, record.stored_ns)

    def apply_recorded(self, body: bytes, headers: dict[str, str], seq: int, stored_ns: int) -> None:
        """Verify one stored decision envelope and fold it in."""
        try:
            opened = open_envelope(body, headers, keyring=self._keyring, received_ns=stored_ns, at_store=True)
            if opened.grant.role != "coordinator":
                raise VerificationError(f"decision signed by a {opened.grant.role} key")
            if opened.envelope.id in self._records:
                raise VerificationError(f"decision record {opened.envelope.id} stored again")
            decision = decode_decision(opened.envelope.payload)
        except (VerificationError, msgspec.DecodeError, ValueError) as exc:
            log.error("unusable decision record skipped", extra={"stream_seq": seq, "error": str(exc)})
            self.state.last_seq = max(self.state.last_seq, seq)
            return
        self.state.apply(decision, self._policy, seq=seq)
        self.decision_ids[decision.envelope_id] = opened.envelope.id
        self._records.add(opened.envelope.id)
