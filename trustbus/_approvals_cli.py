"""``trustbus approvals list``, ``trustbus approve``, ``trustbus deny``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

approvals_app = typer.Typer(help="Envelopes held for an operator.", no_args_is_help=True)

TenantOpt = Annotated[str, typer.Option("--tenant", "-t", envvar="TRUSTBUS_TENANT", help="Tenant name.")]
ServerOpt = Annotated[str, typer.Option("--server", envvar="NATS_URL", help="NATS URL(s).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _decision_dict(decision: Any) -> dict[str, Any]:
    import msgspec

    data: dict[str, Any] = msgspec.to_builtins(decision)
    return data


@approvals_app.command("list")
def approvals_list(
    tenant: TenantOpt,
    server: ServerOpt = "nats://127.0.0.1:4222",
    reader: Annotated[
        str | None,
        typer.Option("--as", help="Key owner whose seed is in --nkey (a rendered config's operator); default admin."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List held envelopes and tool calls: who sent what to whom, with which taint, why it waits, what it asks."""
    from rich.table import Table

    from trustbus.agents._approvals import list_held_requests
    from trustbus.cli import _nkey, _run, _servers, out

    held = _run(list_held_requests(_servers(server), tenant, nkey_seed=_nkey(), reader=reader))
    if json_out:
        for decision, request in held:
            print(json.dumps({**_decision_dict(decision), "request": request}))
        return
    table = Table("envelope", "sender", "to", "kind", "effective taint", "reasons", "request")
    for d, request in held:
        table.add_row(d.envelope_id, d.sender, ",".join(d.deliver_to), d.kind, ",".join(d.effective_taint),
                      ",".join(d.reasons), request)  # fmt: skip
    out.print(table)


def _answer(
    envelope_id: str, tenant: str, operator: str, note: str, server: str, keys: Path | None, json_out: bool, *,
    approve: bool,
) -> None:  # fmt: skip
    from trustbus.agents._approvals import answer
    from trustbus.cli import _keys, _nkey, _run, _servers, out

    decision = _run(
        answer(
            _servers(server),
            tenant,
            envelope_id,
            operator=operator,
            keys=_keys(keys),
            approve=approve,
            note=note,
            nkey_seed=_nkey(),
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
KeysOpt = Annotated[Path | None, typer.Option("--keys", envvar="TRUSTBUS_KEYS", help="Seed directory.")]


def approve(
    envelope_id: EnvelopeArg, tenant: TenantOpt, operator: OperatorOpt, note: NoteOpt = "",
    server: ServerOpt = "nats://127.0.0.1:4222", keys: KeysOpt = None, json_out: JsonOpt = False,
) -> None:  # fmt: skip
    """Release a held envelope to its recipients (signed by an operator key)."""
    _answer(envelope_id, tenant, operator, note, server, keys, json_out, approve=True)


def deny(
    envelope_id: EnvelopeArg, tenant: TenantOpt, operator: OperatorOpt, note: NoteOpt = "",
    server: ServerOpt = "nats://127.0.0.1:4222", keys: KeysOpt = None, json_out: JsonOpt = False,
) -> None:  # fmt: skip
    """Drop a held envelope: it is never delivered (signed by an operator key)."""
    _answer(envelope_id, tenant, operator, note, server, keys, json_out, approve=False)
