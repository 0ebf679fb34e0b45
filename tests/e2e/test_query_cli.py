"""`trustbus query` as a process, over a projection written without a server: table, --json, --csv, bad SQL."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest

from tests.processes import TRUSTBUS, one_shot
from trustbus.bus import Identity, Keyring, new_envelope, seal, sign_grant
from trustbus.bus._keyring import KeyGrant
from trustbus.ledger import StoredMessage
from trustbus.ledger._projector import Projector
from trustbus.ledger._rows import KeyRow, Rows
from trustbus.ledger._segments import SegmentStore

T = "acme"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("projection")
    admin, alice = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    grant = KeyGrant(tenant=T, key_id=alice.key_id, owner="alice", role="agent", valid_from=0)
    keyring.add(alice.key_id, sign_grant(grant, admin))
    projector = Projector(T, keyring)
    rows = Rows()
    for seq in (1, 2, 3):
        s = seal(new_envelope(tenant=T, kind="event", sender="alice", to=("bob", "carol"), taint=("web",)), alice)
        rows.extend(projector.apply(StoredMessage(seq, "tb.acme.out.alice", s.envelope.ts, dict(s.headers), s.body)))
    rows.extend(projector.apply(StoredMessage(4, "tb.acme.out.alice", 0, {}, b"\xc1")))
    store = SegmentStore.open(directory, T)
    store.commit(rows, projector.position, since_checkpoint=0, keys=[KeyRow.of(g) for g in keyring.grants()])
    return directory


def trustbus(*args: str) -> subprocess.CompletedProcess[str]:
    return one_shot([*TRUSTBUS, *args])


SQL = "SELECT seq, sender, recipients, verified, reject_reason FROM envelopes ORDER BY seq"


def test_json_lines_one_object_per_row(data: Path) -> None:
    done = trustbus("query", SQL, "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows[0] == {
        "seq": 1,
        "sender": "alice",
        "recipients": ["bob", "carol"],
        "verified": True,
        "reject_reason": None,
    }
    assert rows[3] == {"seq": 4, "sender": None, "recipients": None, "verified": False, "reject_reason": "malformed"}


def test_csv_has_a_header_and_lists_as_json(data: Path) -> None:
    done = trustbus("query", SQL, "--data", str(data), "--csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["seq", "sender", "recipients", "verified", "reject_reason"]
    assert rows[1] == ["1", "alice", '["bob", "carol"]', "true", ""]
    assert len(rows) == 5


def test_a_table_for_people(data: Path) -> None:
    done = trustbus("query", "SELECT * FROM rejections_by_reason", "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert "ledger" in done.stdout and "malformed" in done.stdout and "rejections" in done.stdout


def test_bad_sql_names_duckdbs_error_and_exits_1(data: Path) -> None:
    done = trustbus("query", "SELECT nope FROM envelopes", "--data", str(data))
    assert done.returncode == 1 and done.stdout == ""
    assert "error:" in done.stderr and "Binder Error" in done.stderr and "nope" in done.stderr
    missing = trustbus("query", "SELECT 1", "--data", str(data / "absent"))
    assert missing.returncode == 1 and "no projection at" in missing.stderr
