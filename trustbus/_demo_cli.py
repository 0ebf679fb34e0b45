"""``trustbus demo``: a support desk's incident, end to end, on an embedded server."""

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from trustbus._cli_common import traces


def demo(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Working directory (keys, store, logs, ledger, bundle); default: a new temp dir."),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the server and every process running, and print how to stop them.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on the last line.")
    ] = False,
    framework: Annotated[
        str | None,
        typer.Option(
            "--framework",
            help="Run the researcher as an agent written with this framework: pydantic-ai "
            "(needs pip install 'trustbus[pydantic-ai]').",
        ),
    ] = None,
) -> None:
    """Run a support desk's incident as real processes, then replay, re-decide and roll it back.

    Starts an embedded nats-server under the tenant's rendered config, a
    coordinator, the ledger service and four agents (triage, researcher,
    billing, notes), each its own process with its own key. A customer email
    carries an injected instruction; the bus holds it, an operator denies it,
    a poisoned memory write is quarantined, a retry loop is cut, billing is
    killed mid-refund and the refund still happens once. The summary is read
    back from the ledger. Files are left in the working directory. With
    ``--framework`` the researcher is a pydantic-ai agent whose stand-in model
    obeys the email; the bus stops it the same way.
    """
    import asyncio
    import importlib.util
    import tempfile

    from rich.console import Console

    from trustbus.agents import AgentError
    from trustbus.bus import BusError, run_then_settle
    from trustbus.demo.fleet import FRAMEWORKS, DemoError, Fleet
    from trustbus.demo.scenario import Demo
    from trustbus.ledger import LedgerError

    if framework is not None and framework not in FRAMEWORKS:
        print(f"error: --framework {framework}: expected one of {', '.join(FRAMEWORKS)}", file=sys.stderr)
        raise typer.Exit(2)
    if framework is not None and importlib.util.find_spec(FRAMEWORKS[framework][0]) is None:
        print(f"error: --framework {framework} needs its extra: pip install 'trustbus[{framework}]'", file=sys.stderr)
        raise typer.Exit(2)
    traces("demo")

    workdir = directory or Path(tempfile.mkdtemp(prefix="trustbus-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        print(f"error: {workdir} is not empty: give --dir a new or empty directory", file=sys.stderr)
        raise typer.Exit(2)
    # With --json the walkthrough goes to stderr, so stdout is only the JSON line.
    console = Console(stderr=json_out, highlight=False)
    fleet = Fleet(workdir=workdir.resolve(), detach=keep, framework=framework)
    started = time.monotonic()

    async def run() -> dict[str, Any]:
        with console.status("starting the server, provisioning the tenant, starting 6 processes"):
            await fleet.start_server()
            await fleet.provision()
            await fleet.start_components()
        console.print(f"server {fleet.url}; processes: " + ", ".join(f"{n} {p}" for n, p in fleet.pids().items()))
        return await Demo(fleet, console).run()

    try:
        summary = asyncio.run(run_then_settle(run()))
    except (DemoError, TimeoutError, BusError, AgentError, LedgerError) as exc:
        console.print(f"[red]error:[/red] {exc} (logs in {fleet.logs})")
        fleet.stop()
        raise typer.Exit(1) from None
    except BaseException:
        fleet.stop()
        raise
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["kept"] = keep
    summary["started"] = [{"name": name, "pid": pid} for name, pid in fleet.started]
    if keep:
        pids = " ".join(str(pid) for pid in fleet.pids().values())
        console.print(f"still running (--keep). Explore with:\n  export NATS_URL={fleet.url} "
                      f"TRUSTBUS_KEYS={fleet.keys.root} TRUSTBUS_NKEY={fleet.keys.path('support', 'admin')}\n"
                      f"  trustbus tail --tenant support\nstop everything with:\n  kill {pids}",
                      markup=False)  # fmt: skip
        summary["pids"] = fleet.pids()
    else:
        fleet.stop()
    console.print(f"done in {summary['seconds']} s; files in {workdir}")
    if json_out:
        print(json.dumps(summary), file=sys.stdout, flush=True)
