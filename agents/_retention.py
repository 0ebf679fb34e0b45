"""What the coordinators still need of the live stream, so retention never purges it (``ledger archive --purge``).

A restarting coordinator reads its partition's snapshot (:mod:`agents._correlation_store`) and the decisions
after the sequence it covers; a partition with no valid snapshot is rebuilt from its whole decision log. And
releasing a held envelope reads the envelope back from its stream sequence. So each partition needs the
stream from the sequence after its snapshot's (from 1 without one), and from each envelope still held.
"""

from __future__ import annotations

import msgspec

from trustbus.agents._correlation_store import _SNAPSHOT_DECODER, snapshot_key
from trustbus.agents._signed_value import open_state_value
from trustbus.bus import TenantStream, decode_decisions, decode_envelope, subjects


async def retention_needs(reader: TenantStream) -> list[tuple[int, str]]:
    """``(from_seq, who)`` for everything the tenant's coordinators still need of the live stream."""
    keyring = await reader.keyring()
    bucket = reader.bucket(subjects.state_bucket(reader.tenant))
    needs: list[tuple[int, str]] = []
    for partition in range(await reader.partitions()):
        decisions = reader.log(subjects.decision(reader.tenant, partition))
        if await decisions.last() is None:
            continue  # nothing decided: nothing to rebuild
        entry = await bucket.get(snapshot_key(partition))
        covered = 0
        if entry is not None and not entry.deleted:
            try:
                snapshot = _SNAPSHOT_DECODER.decode(
                    open_state_value(entry.value, keyring=keyring, stored_ns=entry.stored_ns)
                )
                if snapshot.partition == partition:
                    covered = snapshot.covered
            except (ValueError, msgspec.DecodeError):
                covered = 0
        if covered == 0:
            needs.append((1, f"partition {partition} has no valid coordinator snapshot: a restart reads its whole "
                             "decision log"))  # fmt: skip
            continue
        needs.append((covered + 1, f"the coordinator snapshot of partition {partition} covers its decisions through "
                                   f"{covered}: a restart reads those after it"))  # fmt: skip
        held = {d.envelope_id: d.source_seq for d in snapshot.holds}
        async for record in decisions.read(after=covered):  # holds decided since (unverified: only ever stricter)
            try:
                recorded, _ = decode_decisions(decode_envelope(record.body).payload)
            except (msgspec.DecodeError, ValueError):
                continue
            for decision in recorded:
                if decision.verdict == "hold":
                    held[decision.envelope_id] = decision.source_seq
                else:
                    held.pop(decision.envelope_id, None)
        needs += [
            (seq, f"envelope {envelope_id} at {seq} is held for an operator") for envelope_id, seq in held.items()
        ]
    return needs
