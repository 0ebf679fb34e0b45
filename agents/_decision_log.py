"""The decision log (``tb.<T>.decision.<partition>``) read back into a :class:`CoordinatorState`."""

from __future__ import annotations

import logging

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from trustbus.agents._decision import CoordinatorState
from trustbus.agents._policy import Policy
from trustbus.bus import Keyring, TransportError, VerificationError, open_envelope, subjects
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

    def __init__(
        self, js: JetStreamContext, keyring: Keyring, tenant: str, policy: Policy, *, partition: int | None
    ) -> None:
        """Nothing is read until :meth:`catch_up`. ``partition``: one partition's log, or None for all of them."""
        self._js = js
        self._keyring = keyring
        self._policy = policy
        self._stream = f"TB_{tenant}"
        self._subject = subjects.all_decisions(tenant) if partition is None else subjects.decision(tenant, partition)
        self.state = CoordinatorState()
        self.decision_ids: dict[str, str] = {}
        self._records: set[str] = set()  # ids of the decision records applied

    async def catch_up(self) -> None:
        """Apply every decision appended after the last one applied."""
        seq = self.state.last_seq + 1
        while True:
            try:
                raw = await self._js.get_msg(self._stream, seq, subject=self._subject, next=True)
            except nats.js.errors.NotFoundError:
                return
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                raise TransportError(f"cannot read decisions: {exc}") from exc
            assert raw.seq is not None and raw.time is not None
            self.apply_recorded(raw.data or b"", raw.headers or {}, raw.seq, int(raw.time.timestamp() * 1e9))
            seq = raw.seq + 1

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
