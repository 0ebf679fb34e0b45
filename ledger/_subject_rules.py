"""Which envelope kind each ledger subject carries: a valid signature on the wrong kind is a forged entry."""

from __future__ import annotations

from trustbus.bus import subjects


def kind_problem(tenant: str, subject: str, kind: str) -> str | None:
    """Why an envelope of ``kind`` may not stand on ``subject`` (None: it may).

    A decision log holds only ``decision`` envelopes, an effect subject only
    ``effect`` records, the checkpoint subject only ``checkpoint`` envelopes.
    """
    if subjects.is_decision(tenant, subject):
        wanted = "decision"
    elif subject.startswith(subjects.effect(tenant, "x")[:-1]):
        wanted = "effect"
    elif subject == subjects.checkpoint(tenant):
        wanted = "checkpoint"
    else:
        return None
    return None if kind == wanted else f"a {kind!r} envelope on {subject} (only {wanted!r} belongs there)"
