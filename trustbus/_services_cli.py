"""``trustbus services``: the processes that answer NATS service discovery (what ``nats micro ls`` lists)."""

import json
from typing import Annotated

import typer

from trustbus._cli_common import DEFAULT_SERVER, JsonOpt, ServerOpt, make_table, nkey_seed, out, run, servers


def services(
    server: ServerOpt = DEFAULT_SERVER,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the answers.")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """List the running coordinators, agents and ledger services, with what each says of its work ($SRV.STATS)."""
    from trustbus.bus import discover_services

    answers = run(discover_services(servers(server), "STATS", wait_s=wait, nkey_seed=nkey_seed()))
    if json_out:
        for answer in answers:
            print(json.dumps(answer))
        return
    table = make_table("kind", "tenant", "name", "host", "pid", "started", "status")
    for a in answers:
        meta, figures = a.get("metadata", {}), a.get("trustbus", {})
        status = ", ".join(f"{k}={v}" for k, v in figures.items())
        row = (meta.get("tenant", ""), meta.get("name", ""), meta.get("host", ""), meta.get("pid", ""))
        table.add_row(a["name"], *row, a.get("started", ""), status)
    out.print(table)
    out.print(f"{len(answers)} process(es) answered")
