"""``trustbus doctor``: what is wrong with a tenant as this machine sees it, and the command that fixes each."""

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

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
)

if TYPE_CHECKING:
    from trustbus.bus import KeyDirectory, Keyring

Status = Literal["ok", "warn", "fail"]
ADMIN = "admin"  # the owner of the tenant admin key (`trustbus init`)


@dataclass(frozen=True)
class Finding:
    """One check: how it went, what was found, and the command that fixes it (empty when there is nothing to do)."""

    check: str
    status: Status
    what: str
    fix: str = ""


def doctor(
    tenant: TenantOpt, server: ServerOpt = DEFAULT_SERVER, keys: KeysOpt = None, json_out: JsonOpt = False
) -> None:
    """Check the server, the tenant, this machine's seeds against the keyring, and the coordinators.

    Says what is wrong and the command that fixes it; exit 1 if anything fails.
    """
    findings = run(_examine(servers(server), tenant, key_directory(keys), nkey_seed()))
    if json_out:
        for finding in findings:
            print(json.dumps(asdict(finding)))
    else:
        table = make_table("check", "", "what", "fix")
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for f in findings:
            table.add_row(f.check, f"[{colour[f.status]}]{f.status}[/{colour[f.status]}]", f.what, f.fix)
        out.print(table)
    if any(f.status == "fail" for f in findings):
        raise typer.Exit(1)


async def _examine(servers: list[str], tenant: str, keys: "KeyDirectory", seed: str | None) -> list[Finding]:
    from trustbus.agents import coordinator_status, list_held
    from trustbus.bus import BusError, TenantStream

    try:
        stream = await TenantStream.connect(servers, tenant, nkey_seed=seed)
    except BusError as exc:
        return [Finding("server and tenant", "fail", str(exc), "trustbus up   (or give --server / NATS_URL)")]
    async with stream:
        try:
            partitions = await stream.partitions()
            keyring, admin_key = await stream.keyring(), await stream.admin_key()
        except BusError as exc:
            return [Finding("server and tenant", "fail", str(exc), f"trustbus init --tenant {tenant}")]
        findings = [Finding("server and tenant", "ok", f"tenant {tenant} is provisioned, {partitions} partition(s)")]
        findings += _seeds(keys, tenant, keyring, admin_key)
    status = await coordinator_status(servers, tenant, nkey_seed=seed)
    idle = [str(p.partition) for p in status if not p.held]
    if idle:
        findings.append(Finding(
            "coordinators", "warn", f"no coordinator holds partition(s) {', '.join(idle)}: nothing there is mediated",
            f"trustbus coordinator run --tenant {tenant} --policy POLICY.yaml",
        ))  # fmt: skip
    else:
        findings.append(Finding("coordinators", "ok", f"every partition is held ({len(status)})"))
    held = await list_held(servers, tenant, nkey_seed=seed)
    if held:
        fix = f"trustbus approvals list --tenant {tenant}"
        findings.append(Finding("holds", "warn", f"{len(held)} held envelope(s) wait for an operator", fix))
    return findings


def _seeds(keys: "KeyDirectory", tenant: str, keyring: "Keyring", admin_key: str) -> list[Finding]:
    """Each seed file of ``tenant`` on this machine, against the keyring and the pinned admin key."""
    from trustbus.bus import BusError, Identity, VerificationError

    folder = keys.root / tenant
    seeds = sorted(folder.glob("*.seed")) if folder.is_dir() else []
    if not seeds:
        return [Finding("seeds", "warn", f"no seed files for {tenant} in {folder}", f"trustbus init --tenant {tenant}")]
    findings = []
    for path in seeds:
        owner = path.stem
        try:
            key_id = Identity.load(path).key_id
        except BusError as exc:
            findings.append(Finding(f"seed {owner}", "fail", str(exc), f"remove {path} and make it again"))
            continue
        if owner == ADMIN:
            if key_id == admin_key:
                findings.append(Finding("seed admin", "ok", "the tenant's pinned admin key"))
            else:
                findings.append(Finding(
                    "seed admin", "fail", f"{path} holds {key_id}, not the tenant's pinned admin key {admin_key}: "
                    "it cannot sign grants (another machine's, or the tenant was made again)",
                    "use the admin seed of the machine that ran `trustbus init`",
                ))  # fmt: skip
            continue
        fix = f"trustbus keys rotate --tenant {tenant} --owner {owner} --role ROLE"
        try:
            grant = keyring.resolve(key_id)
        except VerificationError as exc:
            findings.append(Finding(f"seed {owner}", "fail", f"{exc} (was the server's store replaced?)", fix))
            continue
        if grant.revoked_at is not None:
            findings.append(Finding(f"seed {owner}", "fail", f"{key_id} is revoked", fix.replace("ROLE", grant.role)))
        else:
            findings.append(Finding(f"seed {owner}", "ok", f"{grant.role} key {key_id}"))
    return findings
