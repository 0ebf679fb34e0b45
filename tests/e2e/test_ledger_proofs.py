"""Merkle proofs end to end: the service signs tree heads; `ledger prove` and `ledger check-proof` as processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.e2e.fleet import Fleet
from tests.e2e.test_ledger_service import settled, start_ledger
from tests.processes import TRUSTBUS, one_shot_async
from trustbus.bus import Bus, TenantStream, new_envelope, pinned_admin_key, subjects
from trustbus.ledger import read_stream
from trustbus.ledger._merkle import message_leaf_hash, root_of
from trustbus.ledger._proof_making import tree_checkpoints
from trustbus.ledger._segments import read_catalogue

pytestmark = pytest.mark.timeout(300)  # ten CLI processes and two ledger services, on shared cores


async def cli(fleet: Fleet, *args: str) -> tuple[int, str]:
    """`trustbus <args>` run to its end: its exit code, and its stdout and stderr together."""
    result = await one_shot_async([*TRUSTBUS, *args], env=fleet.env, timeout_s=120)
    return result.returncode, result.stdout + result.stderr


async def events(fleet: Fleet, alice: Bus, n: int) -> None:
    for i in range(n):
        env = new_envelope(tenant=fleet.tenant, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
        await alice.publish(subjects.outbox(fleet.tenant, "alice", 0), alice.seal(env))


async def test_the_service_signs_tree_heads_across_a_restart_and_proofs_check_alone(
    fleet: Fleet, tmp_path: Path
) -> None:
    data = tmp_path / "projection"
    alice = await fleet.bus("alice")
    options = ("--checkpoint-every", "10", "--checkpoint-seconds", "0.2")
    ledger = await start_ledger(fleet, data, *options)
    for wave in (10, 10, 5):  # each wave settles under its own tree head, however the service batches its reads
        await events(fleet, alice, wave)
        await settled(fleet, data)
    ledger.send_signal(signal.SIGTERM)
    assert await ledger.exited() == 0
    assert read_catalogue(data).frontier  # the tree is resumed from here
    await start_ledger(fleet, data, *options)
    await events(fleet, alice, 12)
    await settled(fleet, data)

    js = fleet.nc.jetstream()
    messages = await read_stream(TenantStream(js, fleet.tenant))
    admin = await pinned_admin_key(js, fleet.tenant)
    keyring = (await fleet.bus("reader")).keyring.keyring
    heads = tree_checkpoints(messages, keyring, fleet.tenant)
    assert len(heads) >= 4  # three waves, then one after the restart
    leaves = [message_leaf_hash(m.seq, m.subject, m.headers, m.body) for m in messages]
    for h in heads:  # every tree head the service signed, before and after its restart, is the stream's
        size = h.checkpoint.tree_size or 0
        assert size == h.checkpoint.through_seq and h.checkpoint.tree_root == root_of(leaves[:size])
    old, new = heads[0].checkpoint.tree_size or 0, heads[-1].checkpoint.tree_size or 0

    bundle = tmp_path / "bundle"
    assert (await cli(fleet, "ledger", "export", "-t", fleet.tenant, "--out", str(bundle)))[0] == 0
    for source in (("-t", fleet.tenant), ("--bundle", str(bundle))):
        proof = tmp_path / "inclusion.json"
        code, said = await cli(fleet, "ledger", "prove", "--seq", "3", *source, "--out", str(proof), "--json")
        assert code == 0, said
        code, said = await cli(fleet, "ledger", "check-proof", str(proof), "--admin-key", admin, "--json")
        assert code == 0, said
        checked = json.loads(said.splitlines()[-1])
        assert (checked["ok"], checked["seq"], checked["tree_size"], checked["signer"]) == (True, 3, new, "ledger")
        consistency = tmp_path / "consistency.json"
        code, said = await cli(fleet, "ledger", "prove", "--consistency", str(old), str(new), *source,
                               "--out", str(consistency))  # fmt: skip
        assert code == 0, said
        code, said = await cli(fleet, "ledger", "check-proof", str(consistency), "--json")
        assert code == 0 and json.loads(said.splitlines()[-1])["old_size"] == old, said

    # A proof file changed by one bit is refused, with its reason.
    data_bytes = bytearray(proof.read_bytes())
    data_bytes[data_bytes.index(b'"path":["') + 12] ^= 0x01
    proof.write_bytes(bytes(data_bytes))
    code, said = await cli(fleet, "ledger", "check-proof", str(proof), "--json")
    assert code == 1 and json.loads(said.splitlines()[-1])["reason"] in {"not_included", "malformed"}, said
