"""`trustbus ledger run --nkey-auth` with its own `ledger` key under a rendered per-tenant config.

The server, not the client, limits the ledger to its own consumer `ledger`
(create, info, fetch, ack, delete): the service projects, publishes checkpoints
that `ledger verify` (run as the admin) accepts, keeps its consumer across a
clean restart and deletes and remakes it for a projection that is behind it,
with no permissions violation.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import nats.js.errors

from tests.e2e.test_config_render import wait_until_refused
from tests.e2e.test_fleet_under_rendered_config import rendered
from tests.processes import TRUSTBUS, one_shot, run
from trustbus.bus import KeyDirectory
from trustbus.ledger import ProjectionError, query
from trustbus.ledger._segments import read_catalogue

T = "lgr"
STREAM = f"TB_{T}"


async def _stream_and_consumer(url: str, seed: str) -> tuple[int, float | None]:
    """The stream's last sequence and the creation time of the consumer `ledger` (None: there is none), as admin."""
    nc = await nats.connect(url, nkeys_seed_str=seed)
    try:
        js = nc.jetstream()
        last = int((await js.stream_info(STREAM)).state.last_seq)
        try:
            created = (await js.consumer_info(STREAM, "ledger")).created.timestamp()
        except nats.js.errors.NotFoundError:
            created = None
        return last, created
    finally:
        await nc.close()


def _one(sql: str, data: Path) -> tuple[object, ...]:
    (row,) = query(sql, data).fetchall()
    return row


def _settled(url: str, seed: str, data: Path, *, inbox: int, limit_s: float = 30) -> int:
    """Wait until the projection holds every stream message (``inbox`` deliveries among them) and a checkpoint."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            catalogue = read_catalogue(data)
            (delivered,) = _one("SELECT count(*) FROM envelopes WHERE channel = 'inbox'", data)
        except ProjectionError:
            catalogue, delivered = None, 0
        last, _ = asyncio.run(_stream_and_consumer(url, seed))
        if catalogue is not None and catalogue.last_seq == last and catalogue.since_checkpoint == 0:
            if delivered == inbox:
                return last
        assert time.monotonic() < deadline, f"projection not settled: {catalogue and catalogue.last_seq} of {last}"
        time.sleep(0.1)


def test_ledger_service_runs_with_its_own_nkey_and_its_checkpoints_verify(tmp_path: Path) -> None:
    roles = {"ledger": "ledger", "coordinator": "coordinator", "ping": "agent", "pong": "agent"}
    with rendered(tmp_path, T, roles) as deployment:
        url, env, admin = deployment.url, deployment.env, deployment.admin
        admin_seed = KeyDirectory(tmp_path / "keys").load(T, "admin").nkey_seed
        assert f'"$JS.API.CONSUMER.DELETE.{STREAM}.ledger"' in (tmp_path / "nats.conf").read_text()

        policy = tmp_path / "policy.yaml"
        policy.write_text('rules:\n  - {from: "*", to: ["*"], kinds: [event]}\n')
        coordinator = ["coordinator", "run", "-t", T, "--policy", str(policy), "--nkey-auth"]
        deployment.serve(coordinator, tmp_path / "coordinator.err")
        data = tmp_path / "projection"
        ledger_run = ["ledger", "run", "-t", T, "--nkey-auth", "--checkpoint-every", "5", "--checkpoint-seconds", "0.2"]

        def send(n: int) -> None:
            for i in range(n):
                payload = json.dumps({"i": i})
                run(*admin, "send", "-t", T, "--as", "ping", "--to", "pong", "--payload", payload, env=env)

        # First run: it makes its consumer, projects everything and publishes checkpoints.
        ledger = deployment.serve([*ledger_run, "--data", str(data)], tmp_path / "ledger1.err")
        send(4)
        last = _settled(url, admin_seed, data, inbox=4)
        verified = json.loads(run(*admin, "ledger", "verify", "-t", T, "--json", env=env).stdout)
        assert verified["ok"] and verified["last_seq"] == last and verified["checkpoints"] >= 1, verified
        checks = query("SELECT signer, bool_and(holds), count(*) FROM checkpoint_checks GROUP BY signer", data)
        assert checks.fetchall() == [("ledger", True, verified["checkpoints"])]
        assert ledger.stop(20) == 0
        _, created = asyncio.run(_stream_and_consumer(url, admin_seed))
        assert created is not None

        # A clean restart keeps the consumer.
        ledger = deployment.serve([*ledger_run, "--data", str(data)], tmp_path / "ledger2.err")
        send(2)
        _settled(url, admin_seed, data, inbox=6)
        assert ledger.stop(20) == 0
        assert asyncio.run(_stream_and_consumer(url, admin_seed))[1] == created

        # An empty projection is behind the consumer: the service deletes it and reads the stream again from 1.
        fresh = tmp_path / "fresh"
        ledger = deployment.serve([*ledger_run, "--data", str(fresh)], tmp_path / "ledger3.err")
        send(1)
        last = _settled(url, admin_seed, fresh, inbox=7)
        remade = asyncio.run(_stream_and_consumer(url, admin_seed))[1]
        assert remade is not None and remade != created
        counts = _one("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM envelopes", fresh)
        assert counts == (last, last, 1, last)
        verified = json.loads(run(*admin, "ledger", "verify", "-t", T, "--json", env=env).stdout)
        assert verified["ok"] and verified["last_seq"] == last, verified
        assert _one("SELECT bool_and(holds) FROM checkpoint_checks", fresh) == (True,)
        assert ledger.stop(20) == 0

        assert "consumer reset" in (tmp_path / "ledger3.err").read_text()
        for err in ("coordinator.err", "ledger1.err", "ledger2.err", "ledger3.err"):
            assert "Permissions Violation" not in (tmp_path / err).read_text(), err
            assert "cannot read the given-up advisories" not in (tmp_path / err).read_text(), err


def test_a_ledger_refused_its_consumer_by_the_server_stops_at_once_and_says_why(tmp_path: Path) -> None:
    """A config that does not let the ledger make its consumer (rendered before a grant) is reported, not waited on."""
    with rendered(tmp_path, T, {"ledger": "ledger"}) as deployment:
        config = tmp_path / "nats.conf"
        lines = config.read_text().splitlines(keepends=True)
        config.write_text("".join(line for line in lines if f"CREATE.{STREAM}.ledger" not in line))
        deployment.reload()  # the server applies it after the signal is sent: wait for the grant to go
        ledger = KeyDirectory(tmp_path / "keys").load(T, "ledger")
        wait_until_refused(deployment.url, ledger, f"$JS.API.CONSUMER.CREATE.{STREAM}.ledger")
        ledger_run = [*TRUSTBUS, "ledger", "run", "-t", T, "--nkey-auth", "--data", str(tmp_path / "projection")]
        refused = one_shot(ledger_run, env=deployment.env)
        assert refused.returncode != 0, refused.stderr
        said = refused.stderr.lower()
        assert f"the server refused $JS.API.CONSUMER.CREATE.{STREAM}.ledger".lower() in said, refused.stderr
        assert "permissions violation" in said, refused.stderr
