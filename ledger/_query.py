"""SQL over the projection: an in-memory DuckDB connection with a view per table over its Parquet segments."""

from __future__ import annotations

from pathlib import Path

import duckdb

from trustbus.ledger._errors import QueryError
from trustbus.ledger._schema import TABLES, VIEWS, create_table_sql
from trustbus.ledger._segments import read_catalogue


def connect(data_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to the projection at ``data_dir``, as of its last commit.

    Every table (``envelopes``, ``decisions``, ``effects``, ``memory_proposals``,
    ``quarantine``, ``checkpoints``, ``keys``) is a view over the segments the
    catalogue names, and every view of docs/LEDGER_PROJECTION.md is defined.
    The connection is in memory and opens no database file, so it never
    blocks, or is blocked by, the ledger service writing. It is a snapshot:
    segments merged away after it was opened stay readable for ten minutes;
    connect again to see newer rows.

    Raises:
        ProjectionError: there is no projection at ``data_dir``, or it is damaged.
    """
    catalogue = read_catalogue(data_dir)
    con = duckdb.connect()
    for table in TABLES:
        files = [str(data_dir / s.file) for s in catalogue.segments.get(table, [])]
        if files:
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}])")
        else:
            con.execute(create_table_sql(table))
    for view, sql in VIEWS.items():
        con.execute(f"CREATE VIEW {view} AS {sql}")
    return con


def query(sql: str, data_dir: Path) -> duckdb.DuckDBPyRelation:
    """Run one SQL query over the projection at ``data_dir`` (see :func:`connect`); returns its relation.

    Raises:
        ProjectionError: there is no projection at ``data_dir``, or it is damaged.
        QueryError: the SQL does not parse or bind; the message is DuckDB's. (An error found while
            running, e.g. a failed cast, is raised as ``duckdb.Error`` when the relation is fetched.)
    """
    con = connect(data_dir)
    try:
        relation = con.sql(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    return relation
