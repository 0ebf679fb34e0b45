"""``trustbus dev``'s environment: server, tenant, coordinator, ledger service and console, in one directory.

Everything lives under the directory: the JetStream store (``jetstream/``), the seeds (``keys/``),
the coordinator's policy (``policy.yaml``, written on the first start and left for the user to edit),
the ledger's projection (``projection/``) and every process's log (``logs/``). Started again, the
environment reuses all of it: the tenant is provisioned once and a key is only made for an owner that
has no seed. One environment runs per directory: the running one holds an exclusive lock on
``dev.lock`` (released by the kernel however it ends), and ``running.json`` says where it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

from trustbus._supervisor import Process, ProcessFailed, Supervisor
from trustbus.bus import KeyDirectory, Role, init_tenant, list_keys, new_key, rotate_key

READY_S = 60.0
STOP_S = 15.0
DOWN_S = 60.0
OWNERS: dict[str, Role] = {"coordinator": "coordinator", "ledger": "ledger", "ops": "operator"}
"""The keys the environment's processes sign with (the admin's is made by provisioning)."""
OPERATOR = "ops"


class DevError(Exception):
    """The environment could not start or stop; the message says why and what to do."""


@dataclass(frozen=True)
class DevDir:
    """Where everything of one environment lives."""

    root: Path

    @property
    def keys(self) -> KeyDirectory:
        """The seeds of the tenant's keys."""
        return KeyDirectory(self.root / "keys")

    @property
    def store(self) -> Path:
        """The server's JetStream store."""
        return self.root / "jetstream"

    @property
    def projection(self) -> Path:
        """The ledger service's DuckDB projection (what `trustbus query` and the console's SQL page read)."""
        return self.root / "projection"

    @property
    def policy(self) -> Path:
        """The coordinator's policy."""
        return self.root / "policy.yaml"

    @property
    def logs(self) -> Path:
        """Each process's stderr log."""
        return self.root / "logs"

    @property
    def lock(self) -> Path:
        """Held by the running environment; its presence marks the directory as an environment's."""
        return self.root / "dev.lock"

    @property
    def running(self) -> Path:
        """The running environment's ready line (removed when it stops)."""
        return self.root / "running.json"

    def make(self) -> None:
        """Create the directory if it is not there; DevError if it cannot be."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DevError(f"cannot make the directory {self.root}: {exc.strerror or exc}") from None

    def status(self) -> dict[str, Any] | None:
        """The running environment's ready line, or None if none runs here."""
        if not self.lock.exists():
            return None
        with _locked(self.lock) as held:
            if held:
                return None
        try:
            line = json.loads(self.running.read_text())
        except (OSError, ValueError):
            return {}  # it runs, but has not said where yet (starting) or its file was removed
        return line if isinstance(line, dict) else {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Try to take ``path``'s exclusive lock without waiting: whether it was taken (released on exit)."""
    with path.open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def already_running(where: DevDir, line: dict[str, Any]) -> DevError:
    """The refusal of a second environment in ``where``: what runs there and how to stop it."""
    serving = f" at {line['url']}" if line.get("url") else ""
    pid = f" (pid {line['pid']})" if line.get("pid") else ""
    return DevError(
        f"trustbus dev already runs in {where.root}{pid}{serving}: use it, "
        f"or stop it with `trustbus dev down --dir {where.root}`"
    )


def console_available() -> bool:
    """Whether the console's extra (its web server) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("starlette", "uvicorn"))


@dataclass(frozen=True)
class DevSettings:
    """What ``trustbus dev`` was asked for.

    Attributes:
        where: the environment's directory.
        tenant: the tenant to provision and serve.
        port: the server's client port (0: a free one).
        console_port: the console's port (0: a free one).
    """

    where: DevDir
    tenant: str
    port: int
    console_port: int


class Environment:
    """The processes of one running environment, started in order and stopped in reverse."""

    def __init__(self, settings: DevSettings) -> None:
        self.settings = settings
        where = settings.where
        env = {**os.environ, "TRUSTBUS_KEYS": str(where.keys.root)}
        env.pop("TRUSTBUS_NKEY", None)  # the environment's server takes anonymous clients
        self.supervisor = Supervisor(env=env, cwd=where.root, logs=where.logs)
        self.server: Process | None = None
        self.components: list[Process] = []

    def _start(self, name: str, *args: str) -> Process:
        return self.supervisor.start(name, [sys.executable, "-m", "trustbus", *args])

    def _ready(self, process: Process) -> dict[str, Any]:
        try:
            return process.wait_ready(READY_S)
        except ProcessFailed as exc:
            raise DevError("\n".join([str(exc), *process.tail(8)])) from None

    def start(self) -> dict[str, Any]:
        """Start everything and provision what is missing; the ready line's fields."""
        settings, where = self.settings, self.settings.where
        self.server = self._start("server", "up", "--port", str(settings.port), "--data", str(where.store), "--json")
        url = str(self._ready(self.server)["url"])
        self.supervisor.env = {**self.supervisor.env, "NATS_URL": url}
        made = asyncio.run(provision(url, settings.tenant, where.keys))
        if not where.policy.exists():
            where.policy.write_text(resources.files("trustbus").joinpath("_dev_policy.yaml").read_text())
        common = ("--tenant", settings.tenant)
        self.components += [
            self._start("coordinator", "coordinator", "run", *common, "--policy", str(where.policy)),
            self._start("ledger", "ledger", "run", *common, "--data", str(where.projection)),
        ]
        if console_available():
            self.components.append(self._start(
                "console", "console", *common, "--as", OPERATOR, "--port", str(settings.console_port),
                "--data", str(where.projection),
            ))  # fmt: skip
        lines = {process.name: self._ready(process) for process in self.components}
        console_url = lines["console"]["url"] if "console" in lines else None
        return {
            "ready": "dev", "dir": str(where.root), "tenant": settings.tenant, "url": url,
            "keys": str(where.keys.root), "projection": str(where.projection), "policy": str(where.policy),
            "console": console_url, "operator": OPERATOR, "keys_made": made, "pid": os.getpid(),
            "pids": {p.name: p.pid for p in [self.server, *self.components]},
        }  # fmt: skip

    def next_exit(self, stopping: threading.Event) -> Process | None:
        """Block until ``stopping`` is set (None) or one of the processes exits (that one)."""
        exited: list[Process] = []
        for process in [*self.components, *([self.server] if self.server else [])]:
            threading.Thread(target=_watch, args=(process, exited, stopping), daemon=True).start()
        stopping.wait()
        return exited[0] if exited else None

    def stop(self) -> None:
        """SIGTERM the components, then the server, waiting for each (SIGKILL after a while)."""
        self.supervisor.stop(reversed(self.components), STOP_S)
        if self.server is not None:
            self.supervisor.stop([self.server], STOP_S)


def _watch(process: Process, exited: list[Process], stopping: threading.Event) -> None:
    process.popen.wait()
    if not stopping.is_set():
        exited.append(process)
    stopping.set()


async def provision(url: str, tenant: str, keys: KeyDirectory) -> list[str]:
    """Provision ``tenant`` (a no-op when it exists) and give each of OWNERS a valid key; who got a new one.

    An owner keeps its seed while the keyring holds its key, unrevoked; a seed the keyring does not
    know (the store was removed, the seeds kept) is replaced by a new key with the same role.
    """
    await init_tenant([url], tenant, keys=keys)
    valid = {grant.key_id for grant in await list_keys([url], tenant) if grant.revoked_at is None}
    made = []
    for owner, role in OWNERS.items():
        if not keys.path(tenant, owner).exists():
            await new_key([url], tenant, owner, role=role, keys=keys)
        elif keys.load(tenant, owner).key_id not in valid:
            await rotate_key([url], tenant, owner, keys=keys, role=role)
        else:
            continue
        made.append(owner)
    return made


def run_environment(settings: DevSettings, on_ready: Callable[[dict[str, Any]], None]) -> str | None:
    """Run the environment in the foreground until SIGINT or SIGTERM; what went wrong, or None after a clean stop.

    DevError if it cannot start (another runs in the directory, a port is taken, a process failed).
    """
    where = settings.where
    where.make()
    with where.lock.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise already_running(where, where.status() or {}) from None
        return _run_locked(settings, on_ready)


def _run_locked(settings: DevSettings, on_ready: Callable[[dict[str, Any]], None]) -> str | None:
    where = settings.where
    where.running.unlink(missing_ok=True)
    stopping = threading.Event()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def _stop(signum: int, _frame: object) -> None:
        stopping.set()
        raise _Interrupted  # stops a start in progress; once running, the main thread only waits

    for signum in previous:
        signal.signal(signum, _stop)
    environment = Environment(settings)
    try:
        line = environment.start()
        _write_atomically(where.running, json.dumps(line))
        on_ready(line)
        exited = environment.next_exit(stopping)
    except _Interrupted:
        return None
    finally:
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C does not cut the stop short
        environment.stop()
        where.running.unlink(missing_ok=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if exited is None:
        return None
    return "\n".join([str(exited.failed("exited unexpectedly")), *exited.tail(8)])


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the environment was starting or running."""


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds the console's login token)."""
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)
    with os.fdopen(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)
    os.replace(staged, path)


def detach(settings: DevSettings) -> dict[str, Any]:
    """Run the environment as a process of its own that outlives this one; its ready line once it is ready."""
    where = settings.where
    where.make()
    if (line := where.status()) is not None:
        raise already_running(where, line)
    argv = [
        sys.executable, "-m", "trustbus", "dev", "--dir", str(where.root), "--tenant", settings.tenant,
        "--port", str(settings.port), "--console-port", str(settings.console_port), "--json",
    ]  # fmt: skip
    supervisor = Supervisor(env=os.environ, cwd=where.root, logs=where.logs, with_parent=False)
    process = supervisor.start("dev", argv, out=where.logs / "dev.out")
    try:
        return process.wait_ready(READY_S * 2)
    except ProcessFailed as exc:
        lines = [line for line in process.tail(8) if line.strip()]
        raise DevError("\n".join([str(exc), *lines])) from None


def down(where: DevDir) -> dict[str, Any] | None:
    """Stop the environment running in ``where`` (SIGTERM, then wait for its lock); its ready line, or None."""
    line = where.status()
    if line is None:
        return None
    if not line.get("pid"):
        raise DevError(f"trustbus dev in {where.root} is still starting: try again in a moment")
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(line["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + DOWN_S
    with where.lock.open("a") as lock:
        stopped = _lock_within(lock, DOWN_S)
    # The lock is free once the environment let go of it; its processes may still be on their way out.
    pids = [int(line["pid"]), *(int(p) for p in line.get("pids", {}).values())]
    if not (stopped and all(_exited_within(pid, deadline - time.monotonic()) for pid in pids)):
        raise DevError(f"trustbus dev (pid {line['pid']}) did not stop within {DOWN_S:.0f} s: see {where.logs}")
    return line


def _exited_within(pid: int, timeout_s: float) -> bool:
    """Wait (in the kernel, through a pidfd) up to ``timeout_s`` for ``pid`` to exit; whether it has."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], max(0.0, timeout_s))[0])
    finally:
        os.close(fd)


def _lock_within(lock: IO[str], timeout_s: float) -> bool:
    """Wait (blocked in the kernel, not polling) up to ``timeout_s`` for ``lock``'s exclusive lock."""
    taken = threading.Event()

    def take() -> None:
        fcntl.flock(lock, fcntl.LOCK_EX)
        taken.set()

    threading.Thread(target=take, daemon=True).start()
    return taken.wait(timeout_s)


def purge(where: DevDir) -> None:
    """Remove the environment's directory; DevError if it runs or is not an environment's directory."""
    if not where.root.exists():
        return
    if not where.lock.exists():
        raise DevError(f"{where.root} is not a trustbus dev directory (it has no dev.lock): not removing it")
    if where.status() is not None:
        raise DevError(f"trustbus dev runs in {where.root}: stop it first (`trustbus dev down --dir {where.root}`)")
    shutil.rmtree(where.root)
