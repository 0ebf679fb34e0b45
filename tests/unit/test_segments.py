"""The projection on disk (Parquet segments + catalogue) and SQL over it; no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustbus.bus import Identity, Keyring, new_envelope, seal, sign_grant
from trustbus.bus._keyring import KeyGrant
from trustbus.ledger import ProjectionError, QueryError, StoredMessage, connect, query
from trustbus.ledger._projector import Projector
from trustbus.ledger._rows import KeyRow, Rows
from trustbus.ledger._schema import TABLES, VIEWS
from trustbus.ledger._segments import DUCKDB_SETTINGS, FANIN, RETIRE_GRACE_NS, STATE, SegmentStore, read_catalogue

T = "acme"


class Feed:
    def __init__(self) -> None:
        self.admin = Identity.generate()
        self.keyring = Keyring(tenant=T, admin_key_id=self.admin.key_id)
        self.alice = Identity.generate()
        grant = KeyGrant(tenant=T, key_id=self.alice.key_id, owner="alice", role="agent", valid_from=0)
        self.keyring.add(self.alice.key_id, sign_grant(grant, self.admin))
        self.seq = 0

    def messages(self, n: int) -> list[StoredMessage]:
        out = []
        for _ in range(n):
            self.seq += 1
            s = seal(new_envelope(tenant=T, kind="event", sender="alice", to=("bob",)), self.alice)
            out.append(StoredMessage(self.seq, "tb.acme.out.alice", s.envelope.ts, dict(s.headers), s.body))
        return out

    def keys(self) -> list[KeyRow]:
        return [KeyRow.of(g) for g in self.keyring.grants()]


def commit(store: SegmentStore, projector: Projector, feed: Feed, n: int, *, now_ns: int | None = None) -> None:
    rows = Rows()
    for m in feed.messages(n):
        rows.extend(projector.apply(m))
    store.commit(rows, projector.position, since_checkpoint=0, keys=feed.keys(), now_ns=now_ns)


def test_an_empty_projection_has_every_table_and_view(tmp_path: Path) -> None:
    SegmentStore.open(tmp_path, T).commit(Rows(), Projector(T, Feed().keyring).position, since_checkpoint=0, keys=[])
    con = connect(tmp_path)
    for name in [*TABLES, *VIEWS]:
        assert con.sql(f"SELECT count(*) FROM {name}").fetchall() == [(0,)], name


def test_the_writer_runs_duckdb_with_its_allocator_purging_in_the_background(tmp_path: Path) -> None:
    """The setting that keeps a long-running ledger service's memory flat is the one its DuckDB runs with."""
    store = SegmentStore.open(tmp_path, T)
    names = ", ".join(f"current_setting('{name}')" for name in DUCKDB_SETTINGS)
    assert store._db.execute(f"SELECT {names}").fetchone() == tuple(DUCKDB_SETTINGS.values()) == (True,)


def test_committed_rows_are_queryable_and_the_position_resumes(tmp_path: Path) -> None:
    feed = Feed()
    store = SegmentStore.open(tmp_path, T)
    projector = Projector(T, feed.keyring)
    commit(store, projector, feed, 5)
    commit(store, projector, feed, 3)
    assert query("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM envelopes", tmp_path).fetchall() == [
        (8, 8, 1, 8)
    ]
    assert query("SELECT owner, role FROM keys ORDER BY owner", tmp_path).fetchall() == [("alice", "agent")]
    reopened = SegmentStore.open(tmp_path, T)
    assert reopened.position == projector.position
    state = json.loads((tmp_path / STATE).read_text())
    assert state["last_seq"] == 8 and state["head"] == projector.position.head.hex()


def test_segments_no_catalogue_names_are_removed_on_open(tmp_path: Path) -> None:
    feed = Feed()
    store = SegmentStore.open(tmp_path, T)
    projector = Projector(T, feed.keyring)
    commit(store, projector, feed, 2)
    committed = read_catalogue(tmp_path)
    commit(store, projector, feed, 2)  # written, then the catalogue "never" committed:
    (tmp_path / STATE).write_text(json.dumps(__import__("msgspec").to_builtins(committed)))
    orphan = tmp_path / "segments/envelopes/000000000003-000000000004.parquet"
    assert orphan.exists()
    reopened = SegmentStore.open(tmp_path, T)
    assert not orphan.exists() and reopened.position.last_seq == 2
    assert query("SELECT count(*) FROM envelopes", tmp_path).fetchall() == [(2,)]


def test_small_segments_are_merged_and_the_merged_away_kept_for_a_grace_period(tmp_path: Path) -> None:
    feed = Feed()
    store = SegmentStore.open(tmp_path, T)
    projector = Projector(T, feed.keyring)
    for _ in range(FANIN):
        commit(store, projector, feed, 1, now_ns=1)
    segs = read_catalogue(tmp_path).segments["envelopes"]
    assert [(s.first, s.last, s.rows) for s in segs] == [(1, FANIN, FANIN)]
    retired = read_catalogue(tmp_path).retired
    assert len([r for r in retired if "envelopes" in r.file]) == FANIN
    assert all((tmp_path / r.file).exists() for r in retired)
    assert query("SELECT count(*), count(DISTINCT seq) FROM envelopes", tmp_path).fetchall() == [(FANIN, FANIN)]
    commit(store, projector, feed, 1, now_ns=1 + RETIRE_GRACE_NS)
    assert read_catalogue(tmp_path).retired == []
    assert not any((tmp_path / r.file).exists() for r in retired)
    assert query("SELECT count(*) FROM envelopes", tmp_path).fetchall() == [(FANIN + 1,)]


def test_a_projection_belongs_to_one_tenant(tmp_path: Path) -> None:
    SegmentStore.open(tmp_path, T).commit(Rows(), Projector(T, Feed().keyring).position, since_checkpoint=0, keys=[])
    with pytest.raises(ProjectionError, match="tenant 'acme'"):
        SegmentStore.open(tmp_path, "other")


def test_no_projection_and_bad_sql_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ProjectionError, match="no projection"):
        query("SELECT 1", tmp_path)
    SegmentStore.open(tmp_path, T).commit(Rows(), Projector(T, Feed().keyring).position, since_checkpoint=0, keys=[])
    with pytest.raises(QueryError, match="nosuchtable"):
        query("SELECT * FROM nosuchtable", tmp_path)
    with pytest.raises(QueryError, match="syntax"):
        query("SELEC 1", tmp_path)
