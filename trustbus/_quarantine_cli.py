"""``trustbus quarantine list``: what the bus refused, and why."""

import dataclasses
import json
from typing import Annotated

import typer

from trustbus._cli_common import (
    DEFAULT_SERVER,
    JsonOpt,
    ServerOpt,
    TenantOpt,
    make_table,
    nkey_seed,
    out,
    run,
    servers,
)

quarantine_app = typer.Typer(help="What the bus refused, and why.", no_args_is_help=True)


@quarantine_app.command("list")
def quarantine_list(
    tenant: TenantOpt,
    reason: Annotated[str | None, typer.Option(help="Only refusals with this reason code.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the last N.")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: JsonOpt = False,
) -> None:
    """Every refused message, oldest first: where it was, the reason code, why, and who recorded it.

    A summary of many refusals from one sender is listed a line per refused message.
    """
    from trustbus._commands import refusals

    found = run(refusals(servers(server), tenant=tenant, reason=reason, nkey_seed=nkey_seed()))
    if limit is not None:
        found = found[-limit:] if limit > 0 else []
    if json_out:
        for refusal in found:
            print(json.dumps(dataclasses.asdict(refusal)))
        return
    table = make_table("seq", "subject", "reason", "detail", "claimed sender", "recorded by (record seq)")
    prefix = f"tb.{tenant}."
    for r in found:
        table.add_row(
            "" if r.seq is None else str(r.seq),
            r.subject.removeprefix(prefix),
            r.reason,
            r.detail,
            r.claimed_sender or "",
            f"{r.recorded_by} (#{r.record_seq})",
        )
    out.print(table)
    out.print(f"{len(found)} refused")
