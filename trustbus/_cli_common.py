"""What every ``trustbus`` command shares: consoles, help layout, common options, running a call against NATS.

Every CLI module imports this one and it imports none of them. Nothing here loads
the library at import time: ``trustbus --help`` must not pay for nats-py, DuckDB
or PyNaCl; the library is imported where a command runs it. Nor rich: help is
plain click text (``rich_markup_mode=None`` on the app), and the consoles make
their rich ``Console`` on the first print.

The modules that define commands do without ``from __future__ import annotations``:
typer reads every command's parameters on each start, and string annotations
would be compiled and evaluated there, several times over (tests/unit/test_structure.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from typer._click import Context, HelpFormatter

    from trustbus.bus import KeyDirectory, MetricsServer

T = TypeVar("T")


class LazyConsole:
    """Prints like a rich ``Console`` made with ``options``, made on the first print."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """The rich ``Console`` itself (for a progress display), made now if not yet."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def print(self, *objects: Any, **print_options: Any) -> None:
        """``Console.print``: rich markup, tables and trees."""
        self.console.print(*objects, **print_options)


# Piped, a table is as wide as its content (a script or `less -S` reads whole ids); at a terminal, as wide as it.
PIPED_WIDTH = 10_000
out = LazyConsole(soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)
err = LazyConsole(stderr=True, soft_wrap=True)


class CommandGroup(TyperGroup):
    """A command group that answers ``<command> --help`` at once and lists each command's whole summary.

    Typer converts every option's value with pydantic, so processing the root's
    ``--log-level`` and ``--nkey`` would import pydantic (nearly as long again as
    the rest of the start-up) only to print a command's help; this group hands
    ``NAME ... --help`` straight to the command, without processing its own
    options or running its callback (tests/unit/test_cli_help.py: same text).
    """

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        *names, last = args or [""]
        if names and last in ctx.help_option_names and self._names_a_command(names):
            self.commands[names[0]].make_context(names[0], args[1:], parent=ctx)  # prints the help and exits
        return super().parse_args(ctx, args)

    def _names_a_command(self, names: list[str]) -> bool:
        command: Any = self
        for name in names:
            command = getattr(command, "commands", {}).get(name)
            if command is None:
                return False
        return True

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        # click's list cuts each summary to fit the width; this one wraps the whole first paragraph.
        rows = [
            (name, " ".join((command.short_help or command.help or "").split("\n\n")[0].split()))
            for name, command in self.commands.items()
            if not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def make_table(*columns: str) -> Table:
    """A table that never cuts a value: one too wide for its column folds onto the next line of the cell."""
    from rich.table import Table

    made = Table()
    for column in columns:
        made.add_column(column, overflow="fold")
    return made


DEFAULT_SERVER = "nats://127.0.0.1:4222"

ServerOpt = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="NATS_URL",
        help="NATS URL, or several separated by commas (a cluster). Reads NATS_URL.",
    ),
]
_TENANT = typer.Option("--tenant", "-t", envvar="TRUSTBUS_TENANT", help="Tenant name.")
TenantOpt = Annotated[str, _TENANT]
MaybeTenantOpt = Annotated[str | None, _TENANT]
"""For commands that read a tenant's live stream or an audit bundle instead."""
KeysOpt = Annotated[
    Path | None,
    typer.Option("--keys", envvar="TRUSTBUS_KEYS", help="Seed file directory (default ~/.trustbus/keys)."),
]
MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        envvar="TRUSTBUS_METRICS_PORT",
        min=0,
        max=65535,
        help="Serve /metrics, /healthz and /readyz on this port (0: a free one, in the ready line); off if not given.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
NkeyAuthOpt = Annotated[
    bool, typer.Option("--nkey-auth", help="Authenticate to NATS with the seed's nkey (rendered configs).")
]

# The seed of the global --nkey option, for this invocation's NATS connections. A secret: never printed or logged.
_nkey_seed: str | None = None


def use_nkey(seed: str | None) -> None:
    """Authenticate this invocation's NATS connections with ``seed`` (the global --nkey), or anonymously."""
    global _nkey_seed
    _nkey_seed = seed


def nkey_seed() -> str | None:
    """The --nkey seed to authenticate with, if one was given."""
    return _nkey_seed


def servers(server: str) -> list[str]:
    """The URLs of a --server value (several, comma-separated, for a cluster)."""
    return [url.strip() for url in server.split(",") if url.strip()]


def key_directory(keys: Path | None) -> KeyDirectory:
    """The seed directory of --keys (default ~/.trustbus/keys)."""
    from trustbus.bus import KeyDirectory, default_keys_dir

    return KeyDirectory(keys or default_keys_dir())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a bus, agent or ledger error becomes a one-line message and exit code 1."""
    import asyncio

    from trustbus.bus import run_then_settle

    try:
        return asyncio.run(run_then_settle(coro))
    except Exception as exc:
        exit_if_known(exc)
        raise


def exit_if_known(exc: BaseException) -> None:
    """If ``exc`` is a bus, agent or ledger error (or a task group's of only those), say each and exit 1.

    Those are what a person can act on (bad input, a refusal, a missing file), so
    each is its message alone; anything else is a defect: the caller re-raises it.
    """
    from rich.markup import escape

    from trustbus.agents import AgentError
    from trustbus.bus import BusError
    from trustbus.ledger import LedgerError

    kinds = (BusError, AgentError, LedgerError)
    if isinstance(exc, kinds):
        known: list[BaseException] = [exc]
    elif isinstance(exc, BaseExceptionGroup) and exc.split(kinds)[1] is None:
        known = list(_leaves(exc))
    else:
        return
    for error in known:
        err.print(f"[red]error:[/red] {escape(str(error))}")
    raise typer.Exit(1)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [leaf for e in group.exceptions for leaf in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])]


def recorded_messages(
    tenant: str | None, bundle: Path | None, server: str, admin_key: str | None, *, archive: Path | None = None
) -> tuple[Any, Any, str]:
    """(messages, keyring, tenant) from a bundle, an archive (and the live stream after it, with ``tenant``) or the
    live stream; exit 2 if none is given."""  # noqa: D205, D209
    from trustbus.ledger import load_bundle_messages, load_messages

    if bundle is not None:
        return load_bundle_messages(bundle, admin_key=admin_key)
    if archive is not None:
        return run(_across(archive, tenant, server, admin_key))
    if tenant is None:
        err.print("[red]error:[/red] give --tenant (live stream) or --bundle DIR")
        raise typer.Exit(2)
    messages, keyring = run(load_messages(servers(server), tenant, nkey_seed=nkey_seed()))
    return messages, keyring, tenant


async def _across(archive: Path, tenant: str | None, server: str, admin_key: str | None) -> tuple[Any, Any, str]:
    from trustbus.bus import TenantStream
    from trustbus.ledger import load_across

    if tenant is None:
        return await load_across(archive, admin_key=admin_key)
    async with await TenantStream.connect(servers(server), tenant, nkey_seed=nkey_seed()) as reader:
        return await load_across(archive, reader)


def traces(command: str) -> None:
    """Make spans in this ``trustbus <command>`` if the OTEL_* variables ask (docs/OBSERVABILITY.md, "Traces").

    Nothing of tracing is even imported without them; an exporter that cannot be made is exit code 2.
    """
    if not any(name.startswith("OTEL_") for name in os.environ):
        return
    from trustbus.bus import ConfigError, configure_tracing

    try:
        configure_tracing(f"trustbus {command}")
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@contextmanager
def metrics_endpoint(port: int | None) -> Iterator[MetricsServer | None]:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` while inside; nothing if ``port`` is None.

    A taken port is a one-line error and exit code 1, before anything connects.
    """
    if port is None:
        yield None
        return
    from trustbus.bus import MetricsServer

    try:
        server = MetricsServer(port).start()
    except Exception as exc:
        exit_if_known(exc)
        raise
    try:
        yield server
    finally:
        server.close()


def metrics_fields(server: MetricsServer | None) -> dict[str, object]:
    """What a ready line says about the metrics endpoint: its port, if one is served."""
    return {} if server is None else {"metrics_port": server.port}
