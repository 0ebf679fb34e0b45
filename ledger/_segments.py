"""The projection on disk: immutable Parquet segments and the catalogue that names them.

A projection directory::

    state.json                      the catalogue (replaced atomically: temp file, fsync, rename)
    segments/<table>/<first>-<last>.parquet
                                    the rows of <table> projected from stream sequences first..last
                                    (zero-padded to 12 digits); written once, never changed

The catalogue holds the position (last sequence, chain head, count), the
checkpoint cadence, and the list of live segments of every table. Segments
are written (temp file, fsync, rename) before the catalogue that names them,
so the catalogue is the commit point: a crash in between leaves files no
catalogue names, removed when the projection is opened again. Readers take
the file list from the catalogue, never from a directory listing, so they see
whole commits only.

Small segments are merged sixteen at a time (size-tiered, so a row is
rewritten about log16(rows) times). A merged-away segment is retired, not
deleted: it stays on disk for :data:`RETIRE_GRACE_NS`, so a query that read an
older catalogue can still open it.

Only the ledger service writes; nothing here holds a DuckDB database file
open, so any number of processes can query while it runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import msgspec

from trustbus.bus import Envelope, subjects
from trustbus.ledger._errors import ProjectionError
from trustbus.ledger._projector import Position
from trustbus.ledger._rows import KeyRow, Rows
from trustbus.ledger._schema import columns_spec

FORMAT = 1
STATE = "state.json"
SEGMENTS = "segments"
FANIN = 16
MAX_TIER = 5  # segments of 16**5 (about a million) rows or more are not merged further
RETIRE_GRACE_NS = 10 * 60 * 1_000_000_000
# DuckDB frees into its own allocator, which gives freed pages back to the system from background threads: without
# them a merge's peak (hundreds of MB for 16 segments of 65,536 rows) stayed resident, out of malloc_trim's reach
# (measured: docs/OPERATIONS.md, "Memory of agents and the ledger service").
DUCKDB_SETTINGS: dict[str, str | bool | int] = {"allocator_background_threads": True}

_json = msgspec.json.Encoder()


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    """One Parquet file of a table: its path (relative to the directory), sequence range and row count."""

    file: str
    first: int
    last: int
    rows: int


class Retired(msgspec.Struct, frozen=True, kw_only=True):
    """A segment merged away at ``at_ns``, deleted once the grace period has passed."""

    file: str
    at_ns: int


class Catalogue(msgspec.Struct, kw_only=True):
    """The contents of ``state.json``."""

    format: int = FORMAT
    tenant: str
    stream: str
    last_seq: int = 0
    head: str = "00" * 32
    count: int = 0
    last_stored_ns: int = 0
    since_checkpoint: int = 0
    frontier: list[str] | None = None
    segments: dict[str, list[Segment]] = msgspec.field(default_factory=dict)
    retired: list[Retired] = msgspec.field(default_factory=list)

    @property
    def position(self) -> Position:
        """The position this catalogue commits."""
        return Position(
            last_seq=self.last_seq,
            head=bytes.fromhex(self.head),
            count=self.count,
            last_stored_ns=self.last_stored_ns,
            frontier=None if self.frontier is None else tuple(bytes.fromhex(h) for h in self.frontier),
        )


_catalogue = msgspec.json.Decoder(Catalogue)


def read_catalogue(directory: Path) -> Catalogue:
    """The committed catalogue of a projection directory; ProjectionError if there is none."""
    try:
        return _catalogue.decode((directory / STATE).read_bytes())
    except FileNotFoundError as exc:
        raise ProjectionError(
            f"no projection at {directory}: run `trustbus ledger run --data {directory}` first"
        ) from exc
    except (msgspec.DecodeError, ValueError) as exc:
        raise ProjectionError(f"projection catalogue {directory / STATE} is damaged: {exc}") from exc


def _sql_string(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tier(rows: int) -> int:
    return int(math.log(max(rows, 1), FANIN))


class SegmentStore:
    """The writer of one projection directory. Only one process may hold it (the ledger service)."""

    def __init__(self, directory: Path, catalogue: Catalogue) -> None:
        """Wrap a directory and its catalogue; use :meth:`open`."""
        self.directory = directory
        self.catalogue = catalogue
        self._db = duckdb.connect(config=dict(DUCKDB_SETTINGS))
        self._keys: tuple[KeyRow, ...] | None = None

    @classmethod
    def open(cls, directory: Path, tenant: str) -> SegmentStore:
        """Open (or create) the projection of ``tenant`` at ``directory`` and remove uncommitted files."""
        if (directory / STATE).exists():
            catalogue = read_catalogue(directory)
            if catalogue.tenant != tenant:
                raise ProjectionError(
                    f"{directory} holds the projection of tenant {catalogue.tenant!r}, not {tenant!r}"
                )
        else:
            catalogue = Catalogue(tenant=tenant, stream=subjects.stream_name(tenant))
        store = cls(directory, catalogue)
        store._remove_uncommitted()
        return store

    @property
    def position(self) -> Position:
        """The committed position."""
        return self.catalogue.position

    def _remove_uncommitted(self) -> None:
        named = {s.file for segs in self.catalogue.segments.values() for s in segs}
        named |= {r.file for r in self.catalogue.retired}
        root = self.directory / SEGMENTS
        for path in root.rglob("*") if root.exists() else ():
            if path.is_file() and path.relative_to(self.directory).as_posix() not in named:
                path.unlink()

    def commit(
        self,
        rows: Rows,
        position: Position,
        *,
        since_checkpoint: int,
        keys: Sequence[KeyRow],
        now_ns: int | None = None,
    ) -> None:
        """Write ``rows`` (projected after the committed position, through ``position``) and commit.

        Args:
            rows: the new rows of every stream table.
            position: the position after them.
            since_checkpoint: new messages since the last checkpoint (the cadence survives a restart).
            keys: the keyring now; the ``keys`` snapshot is rewritten when it changed.
            now_ns: the clock (for retiring merged segments).
        """
        now = time.time_ns() if now_ns is None else now_ns
        first = self.catalogue.last_seq + 1
        for name, table_rows in rows.tables():
            if table_rows:
                path = f"{SEGMENTS}/{name}/{first:012d}-{position.last_seq:012d}.parquet"
                self._write(name, table_rows, path)
                segs = self.catalogue.segments.setdefault(name, [])
                segs.append(Segment(file=path, first=first, last=position.last_seq, rows=len(table_rows)))
                self._compact(name, now)
        snapshot = tuple(keys)
        if snapshot != self._keys:
            self._write_keys(snapshot, position.last_seq, now)
        c = self.catalogue
        c.last_seq, c.head, c.count = position.last_seq, position.head.hex(), position.count
        c.last_stored_ns, c.since_checkpoint = position.last_stored_ns, since_checkpoint
        c.frontier = None if position.frontier is None else [h.hex() for h in position.frontier]
        self._write_catalogue()
        self._delete_expired(now)

    def _write(self, table: str, rows: Sequence[msgspec.Struct], relative: str) -> None:
        path = self.directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        staged_json = path.with_name(path.name + ".json.tmp")
        staged = path.with_name(path.name + ".tmp")
        staged_json.write_bytes(_json.encode_lines(rows))
        try:
            self._db.execute(
                f"COPY (SELECT * FROM read_json({_sql_string(staged_json)}, format='newline_delimited', "
                f"columns={columns_spec(table)})) TO {_sql_string(staged)} (FORMAT parquet)"
            )
        finally:
            staged_json.unlink()
        self._publish(staged, path)

    def _publish(self, staged: Path, path: Path) -> None:
        _fsync(staged)
        os.replace(staged, path)

    def _write_keys(self, keys: tuple[KeyRow, ...], last_seq: int, now: int) -> None:
        relative = f"{SEGMENTS}/keys/{last_seq:012d}-{now}.parquet"
        self._write("keys", keys, relative)
        for old in self.catalogue.segments.get("keys", []):
            self.catalogue.retired.append(Retired(file=old.file, at_ns=now))
        self.catalogue.segments["keys"] = [Segment(file=relative, first=0, last=last_seq, rows=len(keys))]
        self._keys = keys

    def _compact(self, table: str, now: int) -> None:
        segs = self.catalogue.segments[table]
        while len(segs) >= FANIN:
            run = segs[-FANIN:]
            tier = _tier(run[0].rows)
            if tier >= MAX_TIER or any(_tier(s.rows) != tier for s in run):
                return
            relative = f"{SEGMENTS}/{table}/{run[0].first:012d}-{run[-1].last:012d}.parquet"
            path = self.directory / relative
            staged = path.with_name(path.name + ".tmp")
            files = ", ".join(_sql_string(self.directory / s.file) for s in run)
            self._db.execute(f"COPY (SELECT * FROM read_parquet([{files}])) TO {_sql_string(staged)} (FORMAT parquet)")
            self._publish(staged, path)
            merged = Segment(file=relative, first=run[0].first, last=run[-1].last, rows=sum(s.rows for s in run))
            segs[-FANIN:] = [merged]
            self.catalogue.retired.extend(Retired(file=s.file, at_ns=now) for s in run)

    def _write_catalogue(self) -> None:
        path = self.directory / STATE
        staged = path.with_name(STATE + ".tmp")
        staged.write_bytes(json.dumps(msgspec.to_builtins(self.catalogue), indent=1).encode() + b"\n")
        self._publish(staged, path)
        _fsync(self.directory)

    def _delete_expired(self, now: int) -> None:
        expired = [r for r in self.catalogue.retired if now - r.at_ns >= RETIRE_GRACE_NS]
        if not expired:
            return
        self.catalogue.retired = [r for r in self.catalogue.retired if now - r.at_ns < RETIRE_GRACE_NS]
        self._write_catalogue()
        for r in expired:
            (self.directory / r.file).unlink(missing_ok=True)

    def recently_accepted(self, since_ns: int) -> list[tuple[str, int, Envelope]]:
        """Verified envelopes stored at or after ``since_ns``: (subject, seq, envelope) in stream order.

        What the replay check had seen before a restart, read back from the
        projection (the envelope carries the fields the check uses: id, ts).
        """
        segs = self.catalogue.segments.get("envelopes", [])
        if not segs:
            return []
        files = ", ".join(_sql_string(self.directory / s.file) for s in segs)
        found = self._db.execute(
            f"SELECT subject, seq, id, tenant, kind, sender, recipients, ts, correlation_id "
            f"FROM read_parquet([{files}]) WHERE verified AND stored_ns >= ? ORDER BY seq",
            [since_ns],
        ).fetchall()
        return [
            (
                subject,
                seq,
                Envelope(
                    v=1,
                    id=id_,
                    tenant=tenant,
                    kind=kind,
                    sender=sender,
                    to=tuple(to),
                    ts=ts,
                    correlation_id=corr,
                    causation_id=None,
                    hop=0,
                    taint=(),
                    idempotency_key=None,
                    content_type="application/json",
                    payload=b"",
                ),
            )
            for subject, seq, id_, tenant, kind, sender, to, ts, corr in found
        ]

    def close(self) -> None:
        """Release the in-memory DuckDB connection used for writing."""
        self._db.close()
