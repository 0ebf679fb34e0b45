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
import os
import signal
import subprocess
import time
from pathlib import Path

import nats
import nats.js.errors

from bus import KeyDirectory, find_server_binary
from ledger import ProjectionError, query
from ledger._segments import read_catalogue
from tests.e2e.test_config_render import TRUSTBUS, run, wait_until_accepted
from tests.e2e.test_fleet_under_rendered_config import _serve

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


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    if proc.stdout:
        proc.stdout.close()


def test_ledger_service_runs_with_its_own_nkey_and_its_checkpoints_verify(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    config = tmp_path / "nats.conf"
    env = {**os.environ, "TRUSTBUS_KEYS": str(keys)}
    env.pop("TRUSTBUS_NKEY", None)
    run("config", "render", "--tenant", T, "--bootstrap", "--out", str(config), env=env)
    up = subprocess.Popen(
        [*TRUSTBUS, "up", "--port", "0", "--data", str(tmp_path / "js"), "--config", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        assert up.stdout is not None
        started = json.loads(up.stdout.readline())
        url = env["NATS_URL"] = started["url"]
        admin = ("--nkey", str(keys / T / "admin.seed"))
        admin_seed = KeyDirectory(keys).load(T, "admin").nkey_seed
        run(*admin, "init", "--tenant", T, env=env)
        for owner in ("ping", "pong"):
            run(*admin, "keys", "new", "--tenant", T, "--owner", owner, env=env)
        for owner in ("coordinator", "ledger"):
            run(*admin, "keys", "new", "--tenant", T, "--owner", owner, "--role", owner, env=env)
        run(*admin, "config", "render", "--tenant", T, "--out", str(config), env=env)
        assert f'"$JS.API.CONSUMER.DELETE.{STREAM}.ledger"' in config.read_text()
        reload = subprocess.run([str(find_server_binary()), "--signal", f"reload={started['pid']}"], timeout=30)
        assert reload.returncode == 0
        wait_until_accepted(url, KeyDirectory(keys).load(T, "ledger"))

        policy = tmp_path / "policy.yaml"
        policy.write_text('rules:\n  - {from: "*", to: ["*"], kinds: [event]}\n')
        coordinator = ["coordinator", "run", "-t", T, "--policy", str(policy), "--nkey-auth"]
        procs.append(_serve(coordinator, env, tmp_path / "coordinator.err"))
        data = tmp_path / "projection"
        ledger_run = ["ledger", "run", "-t", T, "--nkey-auth", "--checkpoint-every", "5", "--checkpoint-seconds", "0.2"]

        def send(n: int) -> None:
            for i in range(n):
                payload = json.dumps({"i": i})
                run(*admin, "send", "-t", T, "--as", "ping", "--to", "pong", "--payload", payload, env=env)

        # First run: it makes its consumer, projects everything and publishes checkpoints.
        ledger = _serve([*ledger_run, "--data", str(data)], env, tmp_path / "ledger1.err")
        procs.append(ledger)
        send(4)
        last = _settled(url, admin_seed, data, inbox=4)
        verified = json.loads(run(*admin, "ledger", "verify", "-t", T, "--json", env=env).stdout)
        assert verified["ok"] and verified["last_seq"] == last and verified["checkpoints"] >= 1, verified
        checks = query("SELECT signer, bool_and(holds), count(*) FROM checkpoint_checks GROUP BY signer", data)
        assert checks.fetchall() == [("ledger", True, verified["checkpoints"])]
        _stop(ledger)
        _, created = asyncio.run(_stream_and_consumer(url, admin_seed))
        assert created is not None

        # A clean restart keeps the consumer.
        ledger = _serve([*ledger_run, "--data", str(data)], env, tmp_path / "ledger2.err")
        procs.append(ledger)
        send(2)
        _settled(url, admin_seed, data, inbox=6)
        _stop(ledger)
        assert asyncio.run(_stream_and_consumer(url, admin_seed))[1] == created

        # An empty projection is behind the consumer: the service deletes it and reads the stream again from 1.
        fresh = tmp_path / "fresh"
        ledger = _serve([*ledger_run, "--data", str(fresh)], env, tmp_path / "ledger3.err")
        procs.append(ledger)
        send(1)
        last = _settled(url, admin_seed, fresh, inbox=7)
        remade = asyncio.run(_stream_and_consumer(url, admin_seed))[1]
        assert remade is not None and remade != created
        counts = _one("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM envelopes", fresh)
        assert counts == (last, last, 1, last)
        verified = json.loads(run(*admin, "ledger", "verify", "-t", T, "--json", env=env).stdout)
        assert verified["ok"] and verified["last_seq"] == last, verified
        assert _one("SELECT bool_and(holds) FROM checkpoint_checks", fresh) == (True,)
        _stop(ledger)

        assert "consumer reset" in (tmp_path / "ledger3.err").read_text()
        for err in ("coordinator.err", "ledger1.err", "ledger2.err", "ledger3.err"):
            assert "Permissions Violation" not in (tmp_path / err).read_text(), err
            assert "cannot read the given-up advisories" not in (tmp_path / err).read_text(), err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=20) == 0
            if proc.stdout:
                proc.stdout.close()
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=20)
        if up.stdout:
            up.stdout.close()
