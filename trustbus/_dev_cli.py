"""``trustbus dev`` and ``trustbus dev down``: a persistent local environment in one directory."""

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trustbus._cli_common import JsonOpt, err, out

if TYPE_CHECKING:
    from trustbus._dev import DevDir

dev_app = typer.Typer(invoke_without_command=True)
DEFAULT_DIR = Path(".trustbus-dev")
DirOpt = Annotated[
    Path, typer.Option("--dir", help="The environment's directory: store, keys, policy, projection, logs.")
]
YesOpt = Annotated[bool, typer.Option("--yes", help="Remove without asking.")]


@dev_app.callback()
def dev(
    ctx: typer.Context,
    directory: DirOpt = DEFAULT_DIR,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant to provision and serve.")] = "dev",
    port: Annotated[int, typer.Option(min=0, max=65535, help="The server's client port; 0: a free one.")] = 4222,
    console_port: Annotated[int, typer.Option(min=0, max=65535, help="The web console's port; 0: a free one.")] = 8470,
    detach: Annotated[
        bool, typer.Option("--detach", help="Run in the background; `trustbus dev down` stops it.")
    ] = False,
    reset: Annotated[bool, typer.Option("--reset", help="Remove the directory first (asks; see --yes).")] = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """A persistent local environment in DIR, run until Ctrl-C or SIGTERM (or `dev down`).

    An embedded server keeps its store in DIR; the tenant is provisioned once with
    keys for the coordinator, the ledger and an operator `ops`; the coordinator
    (policy DIR/policy.yaml), the ledger service and the web console (with the
    `console` extra) run under one supervisor. Started again, it reuses the store
    and every key. Prints what to do next, or a JSON ready line with --json.
    """
    if ctx.invoked_subcommand is not None:
        return
    from trustbus._dev import DevDir, DevError, DevSettings, purge, run_environment
    from trustbus._dev import detach as run_detached

    where = DevDir(directory.resolve())
    settings = DevSettings(where=where, tenant=tenant, port=port, console_port=console_port)
    try:
        if reset:
            _confirm_removal(where, yes)
            purge(where)
        if detach:
            line = run_detached(settings)
            _said_ready(line, json_out, detached=True)
            return
        failure = run_environment(settings, lambda line: _said_ready(line, json_out, detached=False))
    except DevError as exc:
        _error(str(exc))
        raise typer.Exit(1) from None
    if failure is not None:
        _error(f"{failure}\nstopped everything; start again with `trustbus dev --dir {where.root}`")
        raise typer.Exit(1)
    if not json_out:
        out.print(f"stopped; `trustbus dev --dir {where.root}` resumes with the same store and keys")


@dev_app.command("down")
def dev_down(
    directory: DirOpt = DEFAULT_DIR,
    purge_dir: Annotated[
        bool, typer.Option("--purge", help="Then remove the directory: store, keys, logs (asks; see --yes).")
    ] = False,
    yes: YesOpt = False,
) -> None:
    """Stop the environment running in DIR (detached or not), or say that none runs."""
    from trustbus._dev import DevDir, DevError, down, purge

    where = DevDir(directory.resolve())
    try:
        stopped = down(where)
        if stopped is None:
            out.print(f"no trustbus dev runs in {where.root}")
        else:
            out.print(f"stopped trustbus dev in {where.root} (pid {stopped['pid']})")
        if purge_dir and where.root.exists():
            _confirm_removal(where, yes)
            purge(where)
            out.print(f"removed {where.root}")
    except DevError as exc:
        _error(str(exc))
        raise typer.Exit(1) from None


def _error(message: str) -> None:
    from rich.markup import escape

    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)


def _confirm_removal(where: "DevDir", yes: bool) -> None:
    if yes or not where.root.exists():
        return
    if not sys.stdin.isatty():
        err.print(f"[red]error:[/red] removing {where.root} needs confirmation: add --yes")
        raise typer.Exit(1)
    if not typer.confirm(f"remove {where.root} with its store, keys and logs?"):
        raise typer.Exit(1)


def _said_ready(line: dict[str, Any], json_out: bool, *, detached: bool) -> None:
    """Print the ready line (--json) or what to do next."""
    if json_out:
        print(json.dumps({**line, "detached": detached}), flush=True)
        return
    root, tenant = line["dir"], line["tenant"]
    console = line.get("console")
    shown = [
        f"trustbus dev: tenant {tenant} at {line['url']}, everything in {root}",
        f"  coordinator   policy {line['policy']} (edit it, then start again)",
        f"  ledger        projection {line['projection']}",
        f"  console       {console}  (as {line['operator']})"
        if console
        else "  console       not started: it needs the console extra, pip install 'trustbus[console]'",
    ]
    if line.get("keys_made"):
        shown.append(f"  new keys      {', '.join(line['keys_made'])} (in {line['keys']})")
    shown += [
        "Then:" if detached else "Then, in another shell:",
        f"  export NATS_URL={line['url']} TRUSTBUS_KEYS={line['keys']} TRUSTBUS_LEDGER_DATA={line['projection']}",
        f"  trustbus keys new --tenant {tenant} --owner alice",
        f"""  trustbus send --tenant {tenant} --as alice --to bob --payload '{{"hello": 1}}'""",
        f"  trustbus tail --tenant {tenant}",
        f"  trustbus approvals list --tenant {tenant}",
        f"  trustbus doctor --tenant {tenant}",
        '  trustbus query "SELECT * FROM rejections_by_reason"',
    ]
    stop = f"`trustbus dev down --dir {root}`"
    shown.append(f"Stop it with {stop}." if detached else f"Stop it with Ctrl-C (or {stop}).")
    shown.append("Started again, it resumes with the same store and keys.")
    out.print("\n".join(shown), markup=False, highlight=False)
    sys.stdout.flush()
