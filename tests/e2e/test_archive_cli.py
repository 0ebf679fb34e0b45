"""docs/OPERATIONS.md "Retention", followed: a tenant made --purgeable, its history archived by age and by sequence,
purged, then verified and replayed across archive and live stream; the live stream alone no longer verifies."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.processes import run
from trustbus.bus import Bus, EmbeddedServer, KeyDirectory, new_envelope, new_id

TENANT = "retained"


async def test_archive_purge_verify_and_replay_as_the_operations_page_says(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    keys, archive = tmp_path / "keys", tmp_path / "archive"
    env = {**os.environ, "NATS_URL": nats_server.url, "TRUSTBUS_KEYS": str(keys), "TRUSTBUS_TENANT": TENANT}
    run("init", "--purgeable", env=env)
    run("keys", "new", "--owner", "ledger", "--role", "ledger", env=env)
    run("keys", "new", "--owner", "alice", env=env)
    identity = KeyDirectory(keys).load(TENANT, "alice")
    correlation = new_id()
    async with await Bus.connect(nats_server.url, tenant=TENANT, name="alice", identity=identity) as alice:
        for i in range(8):
            envelope = new_envelope(tenant=TENANT, kind="event", sender="alice", to=["bob"],
                                    correlation_id=correlation, payload=b"%d" % i)  # fmt: skip
            await alice.publish(alice.outbox(envelope), alice.seal(envelope))

    first = json.loads(run("ledger", "archive", "--dir", str(archive), "--before", "4", "--json", env=env).stdout)
    assert first["archived_through"] == 3 and first["first_live_seq"] is None
    rest = run("ledger", "archive", "--dir", str(archive), "--older-than", "0s", "--purge", "--json", env=env)
    assert json.loads(rest.stdout) == {
        "segments": [{"name": "000000000004-000000000008", "first_seq": 4, "last_seq": 8}],
        "archived_through": 8,
        "first_live_seq": 9,
    }

    verified = json.loads(run("ledger", "verify", "--archive", str(archive), "--json", env=env).stdout)
    assert verified["ok"] and (verified["first_seq"], verified["last_seq"], verified["verified"]) == (1, 8, 8)
    replayed = run("ledger", "replay", "--archive", str(archive), "--correlation", correlation, "--json", env=env)
    assert len(json.loads(replayed.stdout)["tree"]) == 8
    live_only = run("ledger", "verify", "--json", env=env, check=False)
    assert live_only.returncode == 1 and json.loads(live_only.stdout)["first_break"]["reason"] == "missing"
    fresh = run("ledger", "run", "--data", str(tmp_path / "projection"), env=env, check=False)
    assert fresh.returncode == 1 and "1-8 were archived and purged" in fresh.stderr, fresh.stderr
