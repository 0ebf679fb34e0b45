"""``trustbus ledger``: verify, export, replay, rollback; ``run`` and the proofs are in modules of their own."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trustbus._archive_cli import archive_history
from trustbus._cli_common import (
    DEFAULT_SERVER,
    JsonOpt,
    KeysOpt,
    MaybeTenantOpt,
    ServerOpt,
    TenantOpt,
    err,
    key_directory,
    make_table,
    nkey_seed,
    out,
    recorded_messages,
    run,
    servers,
    traces,
)
from trustbus._projection_cli import ledger_run
from trustbus._proof_cli import check_proof_file, prove

if TYPE_CHECKING:
    from collections.abc import Sequence

    from trustbus.bus import Keyring, StoredMessage
    from trustbus.ledger import Incident

ledger_app = typer.Typer(help="Verify the tenant's ledger and export audit bundles.", no_args_is_help=True)
ledger_app.command("run")(ledger_run)
ledger_app.command("archive")(archive_history)


def _report_dict(report: Any) -> dict[str, Any]:
    first = report.first_break
    return {
        "ok": report.ok,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "count": report.count,
        "verified": report.verified,
        "recorded_rejections": report.recorded_rejections,
        "checkpoints": report.checkpoints,
        "head": report.head.hex(),
        "first_break": None if first is None else {"seq": first.seq, "reason": first.reason, "detail": first.detail},
        "breaks": [{"seq": b.seq, "reason": b.reason, "detail": b.detail} for b in report.breaks],
        "signed_through": report.signed_through,
        "covered": list(report.covered) if report.covered else None,
        "uncovered": list(report.uncovered) if report.uncovered else None,
        "anchors": report.anchors,
        "admin_key_pinned": report.admin_key_pinned,
    }


def _coverage_lines(report: Any) -> list[str]:
    """What a signature vouches for, what it does not, and what the signatures rest on, in words."""
    covered, uncovered = report.covered, report.uncovered
    lines = [
        f"covered by a signature: sequences {covered[0]}-{covered[1]}" if covered else "covered by a signature: none",
        f"[yellow]not covered[/yellow]: sequences {uncovered[0]}-{uncovered[1]} (could be cut off or replaced "
        "unnoticed)"
        if uncovered
        else "not covered: none",
    ]
    lines += [f"  {'holds' if a['holds'] else 'FAILS'}: {a['source']} at sequence {a['seq']}" for a in report.anchors]
    if report.admin_key_pinned is False:
        lines.append("[yellow]trust anchor: the admin key named by the bundle itself[/yellow] (pin it: --admin-key)")
    elif report.admin_key_pinned:
        lines.append("trust anchor: the pinned admin key")
    return lines


@ledger_app.command("verify")
def verify(
    tenant: MaybeTenantOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="Verify this audit bundle instead (no server needed).")] = None,
    archive: Annotated[
        Path | None,
        typer.Option(help="Verify this archive (ledger archive --dir), and with --tenant the live stream after it."),
    ] = None,
    from_seq: Annotated[int, typer.Option("--from", help="First sequence to check (live stream).")] = 1,
    admin_key: Annotated[str | None, typer.Option(help="Pin the tenant admin key (trust anchor).")] = None,
    expect: Annotated[
        list[str] | None,
        typer.Option(
            "--expect",
            help="Bundles: an outside anchor, SEQ:HEAD (hex) or a checkpoint file kept elsewhere; the bundle must "
            "reach SEQ and its chain there must be HEAD. Repeatable.",
        ),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: JsonOpt = False,
) -> None:
    """Check every signature (key valid at the time), the sequence, the chain and every checkpoint; exit 1 on a break.

    A bundle must be covered by signed checkpoints to its last sequence (its export checkpoint);
    the output says which range a signature covers and which it does not.
    """
    from trustbus.ledger import verify_bundle, verify_stream

    if bundle is not None:
        from trustbus.ledger import LedgerError

        try:
            report = verify_bundle(bundle, admin_key=admin_key, expect=expect or ())
        except LedgerError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    elif expect:
        err.print("[red]error:[/red] --expect checks a bundle: give --bundle DIR")
        raise typer.Exit(2)
    elif archive is not None:
        report = _verify_archive(archive, tenant, admin_key, server)
    elif tenant is not None:
        report = run(verify_stream(servers(server), tenant, from_seq=from_seq, nkey_seed=nkey_seed()))
    else:
        err.print("[red]error:[/red] give --tenant (live stream), --bundle DIR or --archive DIR")
        raise typer.Exit(2)
    if json_out:
        print(json.dumps(_report_dict(report)))
    else:
        if report.ok:
            out.print(
                f"[green]verified[/green] sequences {report.first_seq}-{report.last_seq}: {report.verified} envelopes, "
                f"{report.recorded_rejections} recorded rejections, {report.checkpoints} checkpoints, "
                f"chain head {report.head.hex()}"
            )
        else:
            first = report.first_break
            assert first is not None
            out.print(f"[red]BROKEN[/red] at sequence {first.seq}: {first.reason}: {first.detail}")
        for line in _coverage_lines(report):
            out.print(line)
    if not report.ok:
        raise typer.Exit(1)


def _verify_archive(directory: Path, tenant: str | None, admin_key: str | None, server: str) -> Any:
    """Verify an archive (and the live stream after it, with ``tenant``), with a progress display."""
    from rich.progress import Progress

    from trustbus.bus import TenantStream
    from trustbus.ledger import LedgerError, verify_archive

    async def verifying(progress: Progress) -> Any:
        task = progress.add_task("verifying", total=None)

        def seen(seq: int) -> None:
            progress.update(task, completed=seq)

        if tenant is None:
            return await verify_archive(directory, admin_key=admin_key, progress=seen)
        async with await TenantStream.connect(servers(server), tenant, nkey_seed=nkey_seed()) as reader:
            return await verify_archive(directory, reader=reader, progress=seen)

    try:
        with Progress(console=err.console, transient=True) as progress:
            return run(verifying(progress))
    except LedgerError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@ledger_app.command("export")
def export(
    tenant: TenantOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the bundle to.")],
    signer: Annotated[
        str, typer.Option("--as", help="Owner of the ledger-role key that signs the export checkpoint.")
    ] = "ledger",
    from_seq: Annotated[
        int, typer.Option("--from", help="First sequence (moved earlier if a checkpoint in the bundle needs it).")
    ] = 1,
    keys: KeysOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Write a self-contained audit bundle: every stored message, its chain hash, the keyring, signed checkpoints.

    The bundle ends with an export checkpoint (and a partial one starts with a start
    checkpoint) signed with the ledger key of --as, read from --keys.
    """
    from trustbus.ledger import export as export_tenant

    identity = key_directory(keys).load(tenant, signer, role="ledger")
    manifest = run(
        export_tenant(
            servers(server),
            tenant,
            out_dir,
            signer=identity,
            signer_name=signer,
            from_seq=from_seq,
            nkey_seed=nkey_seed(),
        )
    )
    if json_out:
        print(json.dumps(manifest))
    else:
        out.print(
            f"bundle {out_dir}: sequences {manifest['first_seq']}-{manifest['last_seq']}, head {manifest['head']}"
        )


def _reexecuted(
    incident: "Incident", targets: list[str], messages: "Sequence[StoredMessage]", keyring: "Keyring", tenant: str
) -> list[dict[str, Any]]:
    """Re-run each ``ID=module:attr`` agent on the deliveries the incident recorded for it, from its checkpoint."""
    import asyncio

    from trustbus.adapters._frameworks import framework_agent
    from trustbus.agents import load_agent, reexecute
    from trustbus.ledger import checkpoint_before

    effects = {record.idempotency_key: record for _, _, _, record in incident.effects}
    rows: list[dict[str, Any]] = []
    for target in targets:
        agent_id, _, where = target.partition("=")
        deliveries = [
            (s.envelope, next((d.effective_taint for d in s.decisions if d.verdict == "accept"), s.envelope.taint))
            for s in incident.steps
            if agent_id in s.deliveries
        ]
        sends: dict[str, list[Any]] = {}
        for s in incident.steps:
            if s.envelope.sender == agent_id and s.envelope.causation_id:
                sends.setdefault(s.envelope.causation_id, []).append(s.envelope)
        first = min((s.seq for s in incident.steps if agent_id in s.deliveries), default=0)
        checkpoint = checkpoint_before(messages, keyring, tenant, agent_id, first) if first else None
        replayed = asyncio.run(
            reexecute(
                load_agent(where, adapt=framework_agent),
                agent_id,
                deliveries,
                recorded_sends=sends,
                effects=effects,
                checkpoint=checkpoint,
                held=incident.held,
            )
        )
        for r in replayed:
            rows.append({
                "agent": agent_id,
                "delivery": r.delivery.id,
                "divergences": [
                    {"what": d.what, "recorded": d.recorded, "replayed": d.replayed} for d in r.divergences
                ],
            })  # fmt: skip
    return rows


@ledger_app.command("replay")
def replay(
    correlation: Annotated[str, typer.Option(help="The correlation (conversation) to replay.")],
    tenant: MaybeTenantOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="Replay from this audit bundle (no server needed).")] = None,
    archive: Annotated[
        Path | None, typer.Option(help="Replay from this archive, and with --tenant the live stream after it.")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="Re-decide every envelope under this policy.")] = None,
    execute: Annotated[
        list[str] | None,
        typer.Option(
            "--execute",
            help="ID=module:attr: re-run that agent's handler on what was delivered to it, effects answered "
            "from their records (nothing is sent, no tool runs); repeatable. Exit 1 on a divergence.",
        ),
    ] = None,
    admin_key: Annotated[str | None, typer.Option(help="Pin the tenant admin key (bundles).")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: JsonOpt = False,
) -> None:
    """The incident as a causal tree: who said what to whom, each decision and why, taint, effects."""
    from trustbus._incident_view import incident_tree, redecided_rows, redecided_table
    from trustbus.ledger import build_incident, step_dict

    messages, keyring, tenant_name = recorded_messages(tenant, bundle, server, admin_key, archive=archive)
    incident = build_incident(messages, keyring, tenant_name, correlation)
    if not incident.steps:
        err.print(f"[red]error:[/red] nothing recorded for correlation {correlation}")
        raise typer.Exit(1)
    redecided = redecided_rows(incident, policy) if policy is not None else None
    executed = _reexecuted(incident, execute, messages, keyring, tenant_name) if execute else None
    diverged = bool(executed) and any(item["divergences"] for item in executed or [])
    if json_out:
        print(json.dumps({"correlation": correlation, "tree": [step_dict(r) for r in incident.roots],
                          "redecided": redecided, "executed": executed}))  # fmt: skip
        if diverged:
            raise typer.Exit(1)
        return
    out.print(incident_tree(incident, f"correlation {correlation}"))
    if redecided is not None:
        out.print(redecided_table(redecided, f"under {policy}"))
    for item in executed or []:
        if not item["divergences"]:
            out.print(f"[green]same[/green] {item['agent']} on {item['delivery']}")
        for d in item["divergences"]:
            out.print(f"[red]diverged[/red] {item['agent']} on {item['delivery']}: {d['what']}: "
                      f"recorded {d['recorded']!r}, replayed {d['replayed']!r}")  # fmt: skip
    if diverged:
        raise typer.Exit(1)


def _rejected_dict(step: Any) -> dict[str, Any]:
    """A message of the incident that was not what its subject carries (not planned, shown)."""
    return {"seq": step.seq, "id": step.envelope.id, "sender": step.envelope.sender, "kind": step.envelope.kind,
            "why": step.quarantined}  # fmt: skip


def _compensation_dict(c: Any) -> dict[str, Any]:
    return {"seq": c.seq, "agent": c.agent, "tool": c.tool, "effect_class": c.effect_class,
            "compensating_tool": c.compensating_tool, "idempotency_key": c.idempotency_key,
            "arguments": c.arguments()}  # fmt: skip


@ledger_app.command("rollback")
def rollback(
    correlation: Annotated[str, typer.Option(help="The correlation (incident) to roll back.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False,
    operator: Annotated[
        str | None, typer.Option("--as", help="Operator key owner who sends the compensations (not with --dry-run).")
    ] = None,
    keys: KeysOpt = None,
    tenant: MaybeTenantOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="Plan from this audit bundle.")] = None,
    from_seq: Annotated[int, typer.Option(help="Only effects at or after this sequence.")] = 0,
    server: ServerOpt = DEFAULT_SERVER,
    nkey_auth: Annotated[
        bool,
        typer.Option(
            "--nkey-auth",
            help="Send the compensations connected as the operator's own nkey (a rendered config); the stream is "
            "read with the global --nkey.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Compensate an incident's reversible effects, latest first; list irreversible ones for a person.

    With --dry-run only the plan is printed. Otherwise each compensation is sent
    as an instruction from the operator through the coordinator, and awaited.
    """
    from trustbus.ledger import (
        build_incident,
        compensated_keys,
        plan_rollback,
        verified_effects,
    )

    if not dry_run and (operator is None or tenant is None):
        err.print("[red]error:[/red] executing a rollback needs --tenant and --as OPERATOR (or use --dry-run)")
        raise typer.Exit(2)
    messages, keyring, tenant_name = recorded_messages(tenant, bundle, server, None)
    incident = build_incident(messages, keyring, tenant_name, correlation)
    done = compensated_keys(verified_effects(messages, keyring, tenant_name))
    plan = plan_rollback(incident, compensated=done, from_seq=from_seq)
    compensated: list[str] = []
    if not dry_run:
        from trustbus.ledger import execute_rollback

        traces("ledger rollback")
        assert operator is not None and tenant is not None
        identity = key_directory(keys).load(tenant, operator, role="operator")
        compensated = run(
            execute_rollback(
                servers(server), tenant, plan, operator=identity, operator_name=operator, nkey_auth=nkey_auth
            )
        )
    if json_out:
        print(json.dumps({
            "correlation": correlation,
            "compensate": [_compensation_dict(c) for c in plan.compensate],
            "for_a_person": [_compensation_dict(c) for c in plan.for_a_person],
            "already_compensated": [_compensation_dict(c) for c in plan.already_compensated],
            "memory": [{"agent": m.agent, "key": m.key, "written_by": list(m.written_by)} for m in plan.memory],
            "rejected": [_rejected_dict(s) for s in incident.rejected],
            "compensated_now": compensated,
        }))  # fmt: skip
        return
    table = make_table("order", "seq", "agent", "effect", "undo with", "key")
    for order, c in enumerate(plan.compensate, start=1):
        table.add_row(str(order), str(c.seq), c.agent, c.tool, c.compensating_tool or "", c.idempotency_key)
    out.print(table)
    for c in plan.for_a_person:
        out.print(
            f"[yellow]for a person[/yellow]: #{c.seq} {c.agent} {c.tool} ({c.effect_class}) key {c.idempotency_key}"
        )
    if plan.already_compensated:
        out.print(f"{len(plan.already_compensated)} effect(s) already compensated")
    for s in incident.rejected:
        out.print(f"[red]rejected[/red]: #{s.seq} {s.envelope.sender}'s {s.envelope.kind}: {s.quarantined}")
    for m in plan.memory:
        out.print(
            f"memory {m.agent}.{m.key}: written {len(m.written_by)} time(s) in the incident; reverted if still so"
        )
    if compensated:
        out.print(f"[green]compensated[/green] {len(compensated)} effect(s), latest first")


ledger_app.command("prove")(prove)
ledger_app.command("check-proof")(check_proof_file)
