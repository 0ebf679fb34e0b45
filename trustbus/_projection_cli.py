"""``trustbus ledger run`` (the ledger service) and ``trustbus query`` (SQL over its projection)."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trustbus._cli_common import (
    DEFAULT_SERVER,
    KeysOpt,
    MetricsPortOpt,
    NkeyAuthOpt,
    ServerOpt,
    TenantOpt,
    err,
    key_directory,
    make_table,
    metrics_endpoint,
    metrics_fields,
    out,
    run,
    servers,
    traces,
)

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data", "--db", envvar="TRUSTBUS_LEDGER_DATA", help="Projection directory (written by `ledger run`)."
    ),
]
DEFAULT_DATA = Path("ledger-data")


def ledger_run(
    tenant: TenantOpt,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="New messages between checkpoints.")] = 1000,
    checkpoint_seconds: Annotated[
        float, typer.Option(min=0.01, help="Seconds after which anything new calls for a checkpoint.")
    ] = 10.0,
    data: DataOpt = DEFAULT_DATA,
    name: Annotated[str, typer.Option(help="Key owner to sign checkpoints as (role ledger).")] = "ledger",
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
    nkey_auth: NkeyAuthOpt = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Project the tenant's stream into DATA and publish signed checkpoints, until SIGTERM/SIGINT.

    Prints a JSON ready line when it is reading the stream; resumes after the
    last committed sequence when restarted.
    """
    from trustbus.ledger import ServiceSettings, serve_ledger

    traces("ledger")
    settings = ServiceSettings(checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds)
    with metrics_endpoint(metrics_port) as endpoint:

        def ready() -> None:
            line = {"ready": "ledger", "name": name, "tenant": tenant, "data": str(data), **metrics_fields(endpoint)}
            print(json.dumps(line), flush=True)

        run(
            serve_ledger(
                servers=servers(server),
                tenant=tenant,
                name=name,
                keys=key_directory(keys),
                data_dir=data,
                settings=settings,
                nkey_auth=nkey_auth,
                ready=ready,
                health=endpoint.health if endpoint else None,
            )
        )


def _plain(value: Any) -> Any:
    """A cell as JSON would have it (lists and structs as such, anything else exotic as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def cell(value: Any) -> str:
    """A cell for a table or CSV: lists and structs as JSON, NULL as empty."""
    if value is None:
        return ""
    plain = _plain(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


def query(
    sql: Annotated[str, typer.Argument(help="The SQL (DuckDB dialect); see docs/LEDGER_PROJECTION.md for tables.")],
    data: DataOpt = DEFAULT_DATA,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="CSV with a header row.")] = False,
) -> None:
    """Run SQL over the ledger projection; works while `trustbus ledger run` is writing it."""
    import csv

    import duckdb
    from rich.markup import escape

    from trustbus.ledger import LedgerError
    from trustbus.ledger import query as run_query

    try:
        relation = run_query(sql, data)
        columns = relation.columns
        rows = relation.fetchall()
    except (LedgerError, duckdb.Error) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    if json_out:
        for row in rows:
            print(json.dumps({c: _plain(v) for c, v in zip(columns, row, strict=True)}))
    elif csv_out:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([cell(v) for v in row] for row in rows)
    else:
        table = make_table(*columns)
        for row in rows:
            table.add_row(*(cell(v) for v in row))
        out.print(table)
