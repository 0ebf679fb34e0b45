"""Processes in tests: a one-shot command run to its end, and the supervisor for those that keep running.

A one-shot command (``trustbus send``, ``ledger verify``, a script that must be refused) is run with
:func:`one_shot` (:func:`one_shot_async` from a coroutine, :func:`run` for a `trustbus` command) and its
output asserted. Servers, coordinators, agents, ledger services and ``tail`` followers run under the
process supervisor (``trustbus._supervisor``, the demo's and the benches' too) of :func:`supervised`,
which stops every one of them at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from trustbus._supervisor import Process, ProcessFailed, Supervisor

ROOT = Path(__file__).resolve().parents[1]
TRUSTBUS = (sys.executable, "-m", "trustbus")


def one_shot(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the repository to its end; its exit code and its output, as text."""
    return subprocess.run(list(argv), cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=timeout_s)


async def one_shot_async(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """:func:`one_shot` without blocking the event loop."""
    return await asyncio.to_thread(one_shot, argv, env=env, stdin=stdin, timeout_s=timeout_s)


def run(*args: str, env: Mapping[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """`trustbus <args>` run to its end; with ``check``, it must exit 0 (else its stderr is the failure)."""
    result = one_shot([*TRUSTBUS, *args], env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@contextlib.contextmanager
def supervised(logs: Path, env: Mapping[str, str] | None = None) -> Iterator[Supervisor]:
    """A supervisor of processes run in the repository (stderr logs under ``logs``), all stopped on exit."""
    supervisor = Supervisor(env=os.environ if env is None else env, cwd=ROOT, logs=logs)
    try:
        yield supervisor
    finally:
        supervisor.stop_all()


def ready(process: Process, timeout_s: float = 60) -> dict[str, object]:
    """``process``'s ready line, waited for; if it exits first or is late, the failure shows its log's tail."""
    try:
        return process.wait_ready(timeout_s)
    except ProcessFailed as exc:
        raise AssertionError("\n".join([str(exc), *process.tail()])) from None
