"""``trustbus keys``: new, list, rotate and revoke a tenant's keys (signed by its admin key)."""

import json
from typing import TYPE_CHECKING, Annotated, cast

import typer

from trustbus._cli_common import (
    DEFAULT_SERVER,
    JsonOpt,
    KeysOpt,
    ServerOpt,
    TenantOpt,
    err,
    key_directory,
    make_table,
    nkey_seed,
    out,
    run,
    servers,
)

if TYPE_CHECKING:
    from trustbus.bus import Role

keys_app = typer.Typer(help="Manage a tenant's keys: new, list, rotate, revoke.", no_args_is_help=True)


@keys_app.command("new")
def keys_new(
    tenant: TenantOpt,
    owner: Annotated[str, typer.Option(help="Who the key belongs to (an agent id, 'coordinator', ...).")],
    role: Annotated[str, typer.Option(help="agent, coordinator, ledger or operator.")] = "agent",
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a seed file (mode 0600) for OWNER and register its key, signed by the tenant admin."""
    from trustbus._render import grant_dict
    from trustbus.bus import new_key

    checked = _role(role)
    grant = run(new_key(servers(server), tenant, owner, role=checked, keys=key_directory(keys), nkey_seed=nkey_seed()))
    if json_out:
        print(json.dumps(grant_dict(grant)))
    else:
        out.print(f"{grant.owner} ({grant.role}) key {grant.key_id}, seed {key_directory(keys).path(tenant, owner)}")


KEY_ROLES = ("agent", "coordinator", "ledger", "operator")  # what `keys new` and `keys rotate` may give


def _role(role: str) -> "Role":
    """``role`` if it is one a key may be given; a usage error otherwise."""
    if role not in KEY_ROLES:
        err.print(f"[red]error:[/red] unknown role {role!r}: one of {', '.join(KEY_ROLES)}")
        raise typer.Exit(2)
    return cast("Role", role)


@keys_app.command("list")
def keys_list(tenant: TenantOpt, server: ServerOpt = DEFAULT_SERVER, json_out: JsonOpt = False) -> None:
    """List the tenant's keyring."""
    from trustbus._render import grant_dict
    from trustbus.bus import list_keys

    grants = run(list_keys(servers(server), tenant, nkey_seed=nkey_seed()))
    if json_out:
        for grant in grants:
            print(json.dumps(grant_dict(grant)))
        return
    table = make_table("owner", "role", "key id", "valid from (ns)", "revoked at (ns)")
    for grant in grants:
        table.add_row(grant.owner, grant.role, grant.key_id, str(grant.valid_from), str(grant.revoked_at or ""))
    out.print(table)


@keys_app.command("rotate")
def keys_rotate(
    tenant: TenantOpt,
    owner: Annotated[str, typer.Option(help="Whose key to rotate.")],
    role: Annotated[
        str | None,
        typer.Option(help="Give the new key this role (agent, coordinator, ledger, operator); default: the old key's."),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Give OWNER a new key and revoke the old one from now (older envelopes stay valid).

    With --role the new key has that role: the way to change an owner's role.
    """
    from trustbus._render import grant_dict
    from trustbus.bus import rotate_key

    checked = _role(role) if role is not None else None
    old, new = run(
        rotate_key(servers(server), tenant, owner, keys=key_directory(keys), role=checked, nkey_seed=nkey_seed())
    )
    if json_out:
        print(json.dumps({"old": grant_dict(old) if old else None, "new": grant_dict(new)}))
    elif old is None:
        out.print(f"{owner} ({new.role}): new key {new.key_id}; its old key was not in the keyring")
    else:
        out.print(f"{owner} ({new.role}): new key {new.key_id}; {old.key_id} ({old.role}) revoked at {old.revoked_at}")


@keys_app.command("revoke")
def keys_revoke(
    tenant: TenantOpt,
    key_id: Annotated[str, typer.Argument(help="The key id (U...) to revoke.")],
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke KEY_ID from now: envelopes it signs from now on are rejected as revoked_key."""
    from trustbus._render import grant_dict
    from trustbus.bus import revoke_key

    grant = run(revoke_key(servers(server), tenant, key_id, keys=key_directory(keys), nkey_seed=nkey_seed()))
    if json_out:
        print(json.dumps(grant_dict(grant)))
    else:
        out.print(f"{grant.key_id} ({grant.owner}) revoked at {grant.revoked_at}")
