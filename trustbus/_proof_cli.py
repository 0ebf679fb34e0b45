"""``trustbus ledger prove`` and ``trustbus ledger check-proof``: Merkle proofs that are checked alone."""

import json
from pathlib import Path
from typing import Annotated

import typer

from trustbus._cli_common import DEFAULT_SERVER, JsonOpt, MaybeTenantOpt, ServerOpt, err, nkey_seed, out, run, servers


def prove(
    out_file: Annotated[Path, typer.Option("--out", help="Write the proof file here.")],
    seq: Annotated[
        int | None, typer.Option("--seq", help="Prove that the envelope at this sequence is in the log.")
    ] = None,
    consistency: Annotated[
        tuple[int, int] | None,
        typer.Option(
            "--consistency",
            help="OLD NEW: prove that the log at the checkpoint of tree size OLD is a prefix of the log at NEW.",
        ),
    ] = None,
    tenant: MaybeTenantOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="Prove from this audit bundle (no server needed).")] = None,
    admin_key: Annotated[str | None, typer.Option(help="Pin the tenant admin key (bundles).")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: JsonOpt = False,
) -> None:
    """Write a Merkle proof that `ledger check-proof` verifies alone: one envelope's inclusion, or consistency."""
    from trustbus.ledger import LedgerError, encode_proof, prove_from_bundle, prove_from_stream

    if (seq is None) == (consistency is None) or (tenant is None) == (bundle is None):
        err.print("[red]error:[/red] give --seq N or --consistency OLD NEW, and --tenant T or --bundle DIR")
        raise typer.Exit(2)
    try:
        if bundle is not None:
            proof = prove_from_bundle(bundle, seq=seq, consistency=consistency, admin_key=admin_key)
        else:
            assert tenant is not None
            proof = run(
                prove_from_stream(servers(server), tenant, seq=seq, consistency=consistency, nkey_seed=nkey_seed())
            )
    except LedgerError as exc:
        if json_out:
            print(json.dumps({"ok": False, "error": str(exc), "reason": getattr(exc, "reason", "error")}))
        else:
            err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    out_file.write_bytes(encode_proof(proof))
    what = f"sequence {seq}" if seq is not None else f"tree {consistency[0]} -> {consistency[1]}"  # type: ignore[index]
    if json_out:
        print(json.dumps({"ok": True, "out": str(out_file), "kind": "inclusion" if seq is not None else "consistency"}))
    else:
        out.print(f"proof of {what} written to {out_file}")


def check_proof_file(
    proof_file: Annotated[Path, typer.Argument(help="A proof file written by `ledger prove`.")],
    admin_key: Annotated[str | None, typer.Option(help="Pin the tenant admin key (trust anchor).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a proof file with no server and no bundle; exit 1 if anything in it does not check."""
    from trustbus.ledger import ProofError, check_proof, checked_dict

    try:
        checked = check_proof(proof_file.read_bytes(), admin_key=admin_key)
    except (ProofError, OSError) as exc:
        reason = exc.reason if isinstance(exc, ProofError) else "unreadable"
        detail = str(exc) if isinstance(exc, ProofError) else f"cannot read {proof_file}: {exc.strerror or exc}"
        if json_out:
            print(json.dumps({"ok": False, "reason": reason, "detail": detail}))
        else:
            err.print(f"[red]REFUSED[/red] {detail}")
        raise typer.Exit(1) from None
    if json_out:
        print(json.dumps(checked_dict(checked)))
    elif checked.kind == "inclusion":
        out.print(
            f"[green]proved[/green] sequence {checked.seq} ({checked.subject}) is in the tree of "
            f"{checked.tree_size} signed by {checked.signer}, root {checked.root.hex()}"
        )
    else:
        out.print(
            f"[green]proved[/green] the tree of {checked.old_size} is a prefix of the tree of {checked.tree_size} "
            f"signed by {checked.signer}, root {checked.root.hex()}"
        )
