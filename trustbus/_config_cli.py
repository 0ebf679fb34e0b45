"""``trustbus config render``: a tenant's NATS account, generated from its keyring."""

import os
from pathlib import Path
from typing import Annotated

import typer

from trustbus._cli_common import (
    DEFAULT_SERVER,
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

config_app = typer.Typer(help="Generate nats-server config from a tenant's keyring.", no_args_is_help=True)


@config_app.command("render")
def render(
    tenant: TenantOpt,
    server: ServerOpt = DEFAULT_SERVER,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the config here (atomically) instead of to standard output.")
    ] = None,
    accounts_only: Annotated[
        bool, typer.Option("--accounts-only", help="Only the accounts { } block, to merge into an existing config.")
    ] = False,
    bootstrap: Annotated[
        bool,
        typer.Option(
            "--bootstrap",
            help="Render without a server: the tenant admin as the only user (its seed in --keys, created if "
            "missing), so the tenant can be provisioned inside its account.",
        ),
    ] = False,
    keys: KeysOpt = None,
    system_nkey: Annotated[
        str | None, typer.Option("--system-nkey", help="Public nkey (U...) of a system-account user (monitoring).")
    ] = None,
) -> None:
    """Render the NATS account of a tenant: one nkey user per live key, permissions by role.

    Reads the keyring from the server (authenticate with the global --nkey,
    e.g. the tenant admin's seed). After `keys new`, `rotate` or `revoke`,
    render again and reload the server: nats-server --signal reload=<pid>.
    """
    from trustbus.bus import BusError, list_keys, render_bootstrap_config, render_tenant_config

    try:
        if bootstrap:
            admin = key_directory(keys).admin(tenant)
            text = render_bootstrap_config(
                tenant, admin.key_id, standalone=not accounts_only, system_user_nkey=system_nkey
            )
        else:
            grants = run(list_keys(servers(server), tenant, nkey_seed=nkey_seed()))
            text = render_tenant_config(tenant, grants, standalone=not accounts_only, system_user_nkey=system_nkey)
    except BusError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if out_file is None:
        print(text, end="")
        return
    staged = out_file.with_name(out_file.name + ".new")
    staged.write_text(text)
    os.replace(staged, out_file)  # a server reloading now reads the old file or the new one, never half of one
    out.print(f"wrote {out_file}; apply with: nats-server --signal reload=<pid> (or SIGHUP)")
