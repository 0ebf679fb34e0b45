"""The ``trustbus`` command: parse, call one library function, print.

Library imports happen inside the commands so ``trustbus --help`` stays fast.
"""

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trustbus._approvals_cli import approvals_app, approve, deny
from trustbus._cli_common import (
    DEFAULT_SERVER,
    CommandGroup,
    JsonOpt,
    KeysOpt,
    ServerOpt,
    TenantOpt,
    err,
    exit_if_known,
    key_directory,
    nkey_seed,
    out,
    run,
    servers,
    traces,
    use_nkey,
)
from trustbus._config_cli import config_app
from trustbus._console_cli import console
from trustbus._demo_cli import demo
from trustbus._dev_cli import dev_app
from trustbus._doctor_cli import doctor
from trustbus._keys_cli import keys_app
from trustbus._ledger_cli import ledger_app
from trustbus._process_cli import agent_app, coordinator_app
from trustbus._projection_cli import query
from trustbus._quarantine_cli import quarantine_app
from trustbus._services_cli import services
from trustbus._show_cli import show
from trustbus._tools_cli import tools_app

app = typer.Typer(
    help="trustbus: a signed, mediated, event-sourced message bus for multi-agent systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click help for every command: rich's costs more than the rest of ``--help`` together.
    rich_markup_mode=None,
    cls=CommandGroup,
)
app.add_typer(keys_app, name="keys", cls=CommandGroup)
app.add_typer(agent_app, name="agent", cls=CommandGroup)
app.add_typer(coordinator_app, name="coordinator", cls=CommandGroup)
app.add_typer(approvals_app, name="approvals", cls=CommandGroup)
app.add_typer(quarantine_app, name="quarantine", cls=CommandGroup)
app.add_typer(ledger_app, name="ledger", cls=CommandGroup)
app.add_typer(dev_app, name="dev", cls=CommandGroup)
app.command()(approve)
app.command()(deny)
app.add_typer(config_app, name="config", cls=CommandGroup)
app.add_typer(tools_app, name="tools", cls=CommandGroup)
app.command()(query)
app.command()(show)
app.command()(services)
app.command()(doctor)
app.command()(demo)
app.command()(console)


def _show_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version

        out.print(f"trustbus {version('trustbus')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_show_version, help="Print the version and exit.")
    ] = False,
    log_level: Annotated[str, typer.Option(envvar="TRUSTBUS_LOG", help="Log level (logs go to stderr).")] = "warning",
    log_format: Annotated[
        str,
        typer.Option(
            envvar="TRUSTBUS_LOG_FORMAT", help="Log lines: auto (text on a terminal, else JSON), json or text."
        ),
    ] = "auto",
    nkey: Annotated[
        Path | None,
        typer.Option("--nkey", envvar="TRUSTBUS_NKEY", help="authenticate to NATS with this seed file (nkey user)"),
    ] = None,
) -> None:
    """Trustbus command line."""
    from trustbus._logging import FORMATS, LEVELS, configure

    if log_level.lower() not in LEVELS:
        err.print(f"[red]error:[/red] unknown log level {log_level!r}: one of {', '.join(LEVELS)}")
        raise typer.Exit(2)
    if log_format.lower() not in FORMATS:
        err.print(f"[red]error:[/red] unknown log format {log_format!r}: one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    configure(log_level, log_format.lower())
    use_nkey(None)
    if nkey is not None:
        from trustbus.bus import BusError, Identity

        try:
            use_nkey(Identity.load(nkey).nkey_seed)
        except BusError as exc:
            err.print(f"[red]error:[/red] --nkey: {exc}")
            raise typer.Exit(1) from None


@app.command()
def up(
    port: Annotated[
        int, typer.Option(help="Client port (with --cluster: the first node's, the others count up); 0: free ports.")
    ] = 4222,
    data: Annotated[
        Path | None, typer.Option(help="JetStream store dir (default: a temp dir, removed on exit).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="nats-server config file, e.g. nats.conf.")] = None,
    cluster: Annotated[
        int, typer.Option("--cluster", help="Run a JetStream cluster of this many nodes (3 for R3 streams).")
    ] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Run an embedded nats-server (or a cluster) with JetStream on 127.0.0.1 until Ctrl-C or SIGTERM."""
    if cluster:
        _up_cluster(cluster, port=port, data=data, config=config, json_out=json_out)
        return
    from trustbus.bus import BusError, EmbeddedServer

    server = EmbeddedServer(port=port, data_dir=data, config=config)
    try:
        url = server.start()
    except BusError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    stopping = {"signal": 0}

    def _stop(signum: int, _frame: object) -> None:
        # Only forward the signal here; the main thread's wait() returns and cleans up.
        stopping["signal"] = signum
        if server.pid is not None:
            os.kill(server.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    temporary = data is None
    if json_out:
        fields = {"url": url, "pid": server.pid, "data": str(server.data_dir), "temporary": temporary}
        print(json.dumps(fields), flush=True)
    else:
        out.print(f"nats-server with JetStream at [bold]{url}[/bold] (store {server.data_dir})")
        if temporary:
            out.print(
                "[yellow]the store is temporary:[/yellow] removed when this server stops, with every tenant and "
                "key registered in it (seed files stay and will not match); pass --data DIR to keep it"
            )
        out.print(f"export NATS_URL={url}    # then: trustbus init --tenant demo")
        out.print(f"stop it with Ctrl-C, or `kill {os.getpid()}`")
    code = server.wait()
    server.stop()
    if not stopping["signal"] and code != 0:
        err.print(f"[red]nats-server exited with code {code}[/red]")
        for line in server.log_tail()[-10:]:
            err.print(line, markup=False)
        raise typer.Exit(1)


def _up_cluster(size: int, *, port: int, data: Path | None, config: Path | None, json_out: bool) -> None:
    """``up --cluster N``: run the nodes until a signal; report a node that dies; stop when quorum is lost."""
    from trustbus.bus import BusError, EmbeddedCluster

    try:
        nodes = EmbeddedCluster(size, port=port, data_dir=data, config=config)
        urls = nodes.start()
    except BusError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    stopping = {"signal": 0}

    def _stop(signum: int, _frame: object) -> None:
        # Only forward the signal here; the main loop sees the nodes exit and cleans up.
        stopping["signal"] = signum
        nodes.terminate()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    joined = ",".join(urls)
    if json_out:
        print(json.dumps({"urls": urls, "pids": nodes.pids, "data": str(nodes.data_dir)}), flush=True)
    else:
        out.print(f"JetStream cluster {nodes.name} of {size} nodes at [bold]{joined}[/bold] (store {nodes.data_dir})")
        out.print(f"export NATS_URL={joined}    # then: trustbus init --tenant demo (R3)")
        out.print(f"stop it with Ctrl-C, or `kill {os.getpid()}`")
    quorum = size // 2 + 1
    failed = False
    while not stopping["signal"]:
        node = nodes.next_exit()
        if node is None or stopping["signal"]:
            break
        failed = True
        alive = sum(1 for n in nodes.nodes if n.running)
        err.print(f"[red]node {node.server_name} ({node.url}) exited with code {node.exit_code}[/red]")
        for line in node.log_tail()[-10:]:
            err.print(line, markup=False)
        if alive < quorum:
            err.print(f"[red]{alive} of {size} nodes left, below the quorum of {quorum}: stopping the cluster[/red]")
            break
        err.print(f"{alive} of {size} nodes still run (quorum {quorum}): the cluster keeps serving")
    nodes.stop()
    if failed:
        raise typer.Exit(1)


@app.command()
def init(
    tenant: TenantOpt,
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
    replicas: Annotated[
        int | None,
        typer.Option(help="Stream and KV replicas (default: the cluster's size, at most 3; 1 on a lone server)."),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Partitions of the tenant's correlations: how many coordinator processes can share its work "
            "(default 1; fixed when the tenant is created).",
        ),
    ] = None,
    purgeable: Annotated[
        bool,
        typer.Option(
            "--purgeable",
            help="Let the admin purge history once it is archived (trustbus ledger archive --purge); decided when "
            "the tenant is created (a stream that denies purges always will).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Provision a tenant: append-only stream TB_<tenant>, KV buckets, admin key. Safe to run twice."""
    from trustbus.bus import init_tenant

    report, admin = run(
        init_tenant(
            servers(server),
            tenant,
            keys=key_directory(keys),
            replicas=replicas,
            partitions=partitions,
            purgeable=purgeable or None,
            nkey_seed=nkey_seed(),
        )
    )
    if json_out:
        print(json.dumps({"tenant": tenant, "admin_key": admin.key_id, **vars(report)}))
        return
    for name in report.created:
        out.print(f"created   {name}")
    for name in report.updated:
        out.print(f"updated   {name}")
    for name in report.unchanged:
        out.print(f"unchanged {name}")
    out.print(f"replicas  {report.replicas}")
    out.print(f"partitions {report.partitions}")
    out.print(f"admin key {admin.key_id}")


@app.command()
def send(
    tenant: TenantOpt,
    sender: Annotated[str, typer.Option("--as", help="Sign as this owner (its seed must be in --keys).")],
    to: Annotated[list[str], typer.Option("--to", help="Recipient agent id or topic:<name>; repeatable.")],
    payload: Annotated[str, typer.Option(help="Payload text; '-' reads standard input.")] = "{}",
    kind: Annotated[str, typer.Option(help="Envelope kind.")] = "event",
    content_type: Annotated[str, typer.Option(help="Payload content type.")] = "application/json",
    taint: Annotated[list[str] | None, typer.Option(help="Taint label; repeatable.")] = None,
    correlation_id: Annotated[str | None, typer.Option(help="Conversation id (default: a new one).")] = None,
    causation_id: Annotated[str | None, typer.Option(help="Id of the envelope that caused this one.")] = None,
    hop: Annotated[int, typer.Option(help="Causation depth.")] = 0,
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    subject: Annotated[str | None, typer.Option(help="Publish here instead of the sender's outbox.")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign and publish one envelope as a given identity (to its outbox by default)."""
    from trustbus._commands import send_one

    traces("send")
    body = sys.stdin.read() if payload == "-" else payload
    result = run(
        send_one(
            servers(server),
            tenant=tenant,
            sender=sender,
            keys=key_directory(keys),
            to=to,
            kind=kind,
            payload=body.encode(),
            content_type=content_type,
            taint=taint or [],
            correlation_id=correlation_id,
            causation_id=causation_id,
            hop=hop,
            idempotency_key=idempotency_key,
            subject=subject,
            nkey_seed=nkey_seed(),
        )
    )
    if json_out:
        print(json.dumps(result))
    else:
        dup = " (duplicate: already stored)" if result["duplicate"] else ""
        out.print(f"sent {result['id']} to {result['subject']} at stream seq {result['seq']}{dup}")


@app.command()
def tail(
    tenant: TenantOpt,
    subject: Annotated[
        str | None,
        typer.Option(help="Subject filter, relative to the tenant ('decision.*', 'in.billing') or whole; default all."),
    ] = None,
    from_seq: Annotated[int | None, typer.Option(help="Start at this stream sequence.")] = None,
    new: Annotated[bool, typer.Option("--new", help="Only messages stored from now on.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Stop when nothing arrives for this many seconds (default: follow).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only envelopes of this kind (decision, instruction, ...).")] = None,
    agent: Annotated[str | None, typer.Option(help="Only envelopes this agent sent or was sent.")] = None,
    correlation: Annotated[
        str | None, typer.Option(help="Only envelopes of this correlation (decisions about it included).")
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the tenant's stream as it is verified: every envelope, or why it was rejected.

    With --kind, --agent or --correlation, only verified envelopes that match are shown.
    """
    from trustbus._commands import TailFilter, tail_stream
    from trustbus._render import tail_dict, tail_line

    def show(item: Any) -> None:
        if json_out:
            print(json.dumps(tail_dict(item, tenant)), flush=True)
        else:
            out.print(tail_line(item, tenant))

    try:
        run(
            tail_stream(
                servers(server),
                tenant=tenant,
                subject=subject,
                from_seq=from_seq,
                new_only=new,
                limit=limit,
                idle_timeout_s=idle_timeout,
                on_item=show,
                only=TailFilter(kind=kind, agent=agent, correlation=correlation),
                nkey_seed=nkey_seed(),
            )
        )
    except KeyboardInterrupt:
        pass


def main() -> None:
    """Entry point of the ``trustbus`` console script.

    An error of the bus, the agents or the ledger (bad input, a missing file, a
    refusal) reaches the person as its one-line message and exit code 1, from
    any command; anything else is a defect and keeps its traceback.
    """
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except Exception as exc:
        try:
            exit_if_known(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)
        raise
