"""``trustbus ledger verify`` and ``trustbus ledger export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

ledger_app = typer.Typer(help="Verify the tenant's ledger and export audit bundles.", no_args_is_help=True)


def _report_dict(report: Any) -> dict[str, Any]:
    first = report.first_break
    return {
        "ok": report.ok,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "count": report.count,
        "verified": report.verified,
        "recorded_rejections": report.recorded_rejections,
        "head": report.head.hex(),
        "first_break": None if first is None else {"seq": first.seq, "reason": first.reason, "detail": first.detail},
        "breaks": [{"seq": b.seq, "reason": b.reason, "detail": b.detail} for b in report.breaks],
    }


@ledger_app.command("verify")
def verify(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", envvar="TRUSTBUS_TENANT", help="Tenant.")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Verify this audit bundle instead (no server needed).")] = None,
    from_seq: Annotated[int, typer.Option("--from", help="First sequence to check (live stream).")] = 1,
    admin_key: Annotated[str | None, typer.Option(help="Pin the tenant admin key (trust anchor).")] = None,
    server: Annotated[str, typer.Option("--server", envvar="NATS_URL", help="NATS URL(s).")] = "nats://127.0.0.1:4222",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check every signature (key valid at the time), the sequence and the hash chain; exit 1 on a break."""
    from ledger import verify_bundle, verify_stream
    from trustbus.cli import _nkey, _run, _servers, err, out

    if bundle is not None:
        from ledger import LedgerError

        try:
            report = verify_bundle(bundle, admin_key=admin_key)
        except LedgerError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    elif tenant is not None:
        report = _run(verify_stream(_servers(server), tenant, from_seq=from_seq, nkey_seed=_nkey()))
    else:
        err.print("[red]error:[/red] give --tenant (live stream) or --bundle DIR")
        raise typer.Exit(2)
    if json_out:
        print(json.dumps(_report_dict(report)))
    elif report.ok:
        out.print(
            f"[green]verified[/green] sequences {report.first_seq}-{report.last_seq}: {report.verified} envelopes, "
            f"{report.recorded_rejections} recorded rejections, chain head {report.head.hex()}"
        )
    else:
        first = report.first_break
        assert first is not None
        out.print(f"[red]BROKEN[/red] at sequence {first.seq}: {first.reason}: {first.detail}")
    if not report.ok:
        raise typer.Exit(1)


@ledger_app.command("export")
def export(
    tenant: Annotated[str, typer.Option("--tenant", "-t", envvar="TRUSTBUS_TENANT", help="Tenant.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the bundle to.")],
    server: Annotated[str, typer.Option("--server", envvar="NATS_URL", help="NATS URL(s).")] = "nats://127.0.0.1:4222",
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Write a self-contained audit bundle: every stored message, its chain hash, the keyring."""
    from ledger import export as export_tenant
    from trustbus.cli import _nkey, _run, _servers, out

    manifest = _run(export_tenant(_servers(server), tenant, out_dir, nkey_seed=_nkey()))
    if json_out:
        print(json.dumps(manifest))
    else:
        out.print(
            f"bundle {out_dir}: sequences {manifest['first_seq']}-{manifest['last_seq']}, head {manifest['head']}"
        )
