"""``trustbus ledger archive``: move old history into signed archive segments, and purge what they hold."""

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trustbus._cli_common import (
    DEFAULT_SERVER,
    JsonOpt,
    KeysOpt,
    ServerOpt,
    TenantOpt,
    err,
    key_directory,
    nkey_seed,
    out,
    run,
    servers,
)

if TYPE_CHECKING:
    from trustbus.bus import Identity

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_age(text: str) -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``90m`` or ``45s``; BadParameter otherwise."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not an age such as 30d, 12h, 90m or 45s")
    return int(match.group(1)) * _UNITS_S[match.group(2)]


def archive_history(
    tenant: TenantOpt,
    directory: Annotated[Path, typer.Option("--dir", help="The archive: a directory of segments (made if missing).")],
    before: Annotated[
        int | None, typer.Option("--before", min=2, help="Archive every sequence below SEQ.", metavar="SEQ")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Archive what was stored longer ago than this: 30d, 12h, 90m.")
    ] = None,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Then remove what the archive holds from the live stream (admin rights; a tenant made with "
            "`init --purgeable`); refused if a consumer or a coordinator still needs it.",
        ),
    ] = False,
    signer: Annotated[
        str, typer.Option("--as", help="Owner of the ledger-role key that signs the segments.")
    ] = "ledger",
    keys: KeysOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: JsonOpt = False,
) -> None:
    """Write the stream's history below --before or --older-than as sealed, signed segments after the last in --dir.

    Each segment is an audit bundle chaining from the previous segment's signed head; `ledger verify --archive DIR
    --tenant T` then checks archive and live stream as one run. With --purge the live stream is cut below what the
    archive holds, never below what a durable consumer has not settled or what a coordinator's snapshot and holds
    still need.
    """
    if (before is None) == (older_than is None):
        err.print("[red]error:[/red] give one of --before SEQ or --older-than AGE")
        raise typer.Exit(2)
    age_s = parse_age(older_than) if older_than is not None else None
    identity = key_directory(keys).load(tenant, signer, role="ledger")
    from trustbus.ledger import LedgerError

    try:
        result = run(_archive(tenant, directory, before, age_s, purge, identity, signer, server, json_out))
    except LedgerError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if json_out:
        print(json.dumps(result))
        return
    for segment in result["segments"]:
        out.print(f"segment {segment['name']}: sequences {segment['first_seq']}-{segment['last_seq']}")
    out.print(f"archived through {result['archived_through']} in {directory}")
    if result["first_live_seq"] is not None:
        out.print(f"purged: the live stream now starts at {result['first_live_seq']}")


async def _archive(
    tenant: str,
    directory: Path,
    before: int | None,
    age_s: float | None,
    purge: bool,
    identity: "Identity",
    signer: str,
    server: str,
    quiet: bool,
) -> dict[str, Any]:
    from rich.progress import Progress

    from trustbus.agents import retention_needs
    from trustbus.bus import TenantStream
    from trustbus.ledger import Need, archive, consumer_needs, purge_archived, segments

    async with await TenantStream.connect(servers(server), tenant, nkey_seed=nkey_seed()) as reader:
        if before is not None:
            through = before - 1
        else:
            assert age_s is not None
            through = await reader.first_stored_at(time.time_ns() - int(age_s * 1e9)) - 1
        with Progress(console=err.console, disable=quiet, transient=True) as progress:
            task = progress.add_task("archiving", total=None)
            written = await archive(
                reader,
                directory,
                signer=identity,
                signer_name=signer,
                through=through,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        found = segments(directory)
        held = found[-1].last_seq if found else 0
        first_live = None
        if purge:
            needs: list[Need] = await consumer_needs(reader)
            needs += [Need(seq, who) for seq, who in await retention_needs(reader)]
            first_live = await purge_archived(reader, directory, through=min(through, held), needs=needs)
    return {
        "segments": [{"name": s.name, "first_seq": s.first_seq, "last_seq": s.last_seq} for s in written],
        "archived_through": held,
        "first_live_seq": first_live,
    }
