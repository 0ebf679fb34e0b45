"""``trustbus console``: the web console, for one tenant, acting as one operator."""

import json
import secrets
from typing import Annotated

import typer

from trustbus._cli_common import DEFAULT_SERVER, KeysOpt, ServerOpt, TenantOpt, err, key_directory, nkey_seed, servers
from trustbus._projection_cli import DEFAULT_DATA, DataOpt


def console(
    tenant: TenantOpt,
    operator: Annotated[
        str, typer.Option("--as", help="Operator key owner (role operator): the page's approvals are signed with it.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0: a free one.")] = 8470,
    data: DataOpt = DEFAULT_DATA,
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
) -> None:
    """Serve the web console until Ctrl-C or SIGTERM: live decisions, holds to approve, incident graphs, SQL.

    Prints a JSON ready line with the URL to open: it carries a login token made
    at start, which every page and API call needs. Needs the `console` extra.
    """
    try:
        from trustbus.console._app import make_app
        from trustbus.console._serve import bind, serve
        from trustbus.console._source import Source
    except ImportError as exc:
        needed = (exc.name or "its web server").split(".")[0]
        err.print(f"[red]error:[/red] the console needs {needed}: pip install 'trustbus\\[console]'")
        raise typer.Exit(1) from None
    directory = key_directory(keys)
    directory.load(tenant, operator, role="operator")  # a missing or wrong key is said now, not at the first click
    source = Source(servers(server), tenant, operator, directory, nkey_seed(), data)
    token = secrets.token_urlsafe(24)
    try:
        sock = bind(host, port)
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc.strerror}")
        raise typer.Exit(1) from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        url = f"http://{shown}:{bound}/?token={token}"
        print(json.dumps({"ready": "console", "url": url, "tenant": tenant, "as": operator}), flush=True)

    serve(make_app(source, token), sock, ready)
