"""``trustbus approvals list``, ``trustbus approve``, ``trustbus deny``."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from trustbus._cli_common import (
    DEFAULT_SERVER,
    JsonOpt,
    KeysOpt,
    ServerOpt,
    TenantOpt,
    key_directory,
    make_table,
    nkey_seed,
    out,
    run,
    servers,
    traces,
)

approvals_app = typer.Typer(help="Envelopes held for an operator.", no_args_is_help=True)


def _decision_dict(decision: Any) -> dict[str, Any]:
    import msgspec

    data: dict[str, Any] = msgspec.to_builtins(decision)
    return data


@approvals_app.command("list")
def approvals_list(
    tenant: TenantOpt,
    server: ServerOpt = DEFAULT_SERVER,
    reader: Annotated[
        str | None,
        typer.Option("--as", help="Key owner whose seed is in --nkey (a rendered config's operator); default admin."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List held envelopes and tool calls: who sent what to whom, with which taint, why it waits, what it asks."""
    from trustbus.agents import list_held_requests

    held = run(list_held_requests(servers(server), tenant, nkey_seed=nkey_seed(), reader=reader))
    if json_out:
        for decision, request in held:
            print(json.dumps({**_decision_dict(decision), "request": request}))
        return
    table = make_table("envelope", "sender", "to", "kind", "effective taint", "reasons", "request")
    for d, request in held:
        table.add_row(d.envelope_id, d.sender, ",".join(d.deliver_to), d.kind, ",".join(d.effective_taint),
                      ",".join(d.reasons), request)  # fmt: skip
    out.print(table)


def _answer(
    envelope_id: str, tenant: str, operator: str, note: str, server: str, keys: Path | None, json_out: bool, *,
    approve: bool,
) -> None:  # fmt: skip
    from trustbus.agents import answer

    traces("approve" if approve else "deny")
    decision = run(
        answer(
            servers(server),
            tenant,
            envelope_id,
            operator=operator,
            keys=key_directory(keys),
            approve=approve,
            note=note,
            nkey_seed=nkey_seed(),
        )
    )
    if json_out:
        print(json.dumps(_decision_dict(decision)))
    else:
        outcome = "released to " + ",".join(decision.deliver_to) if decision.verdict == "accept" else "dropped"
        out.print(f"{envelope_id}: {outcome} (approval {decision.approval_id} by {decision.approver})")


EnvelopeArg = Annotated[str, typer.Argument(help="The held envelope's id (see `trustbus approvals list`).")]
OperatorOpt = Annotated[str, typer.Option("--as", help="Operator key owner (role operator) to sign as.")]
NoteOpt = Annotated[str, typer.Option(help="Why; recorded with the approval.")]


def approve(
    envelope_id: EnvelopeArg, tenant: TenantOpt, operator: OperatorOpt, note: NoteOpt = "",
    server: ServerOpt = DEFAULT_SERVER, keys: KeysOpt = None, json_out: JsonOpt = False,
) -> None:  # fmt: skip
    """Release a held envelope to its recipients (signed by an operator key)."""
    _answer(envelope_id, tenant, operator, note, server, keys, json_out, approve=True)


def deny(
    envelope_id: EnvelopeArg, tenant: TenantOpt, operator: OperatorOpt, note: NoteOpt = "",
    server: ServerOpt = DEFAULT_SERVER, keys: KeysOpt = None, json_out: JsonOpt = False,
) -> None:  # fmt: skip
    """Drop a held envelope: it is never delivered (signed by an operator key)."""
    _answer(envelope_id, tenant, operator, note, server, keys, json_out, approve=False)
