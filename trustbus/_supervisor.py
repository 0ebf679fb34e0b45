"""Start, watch and stop the processes of a trustbus deployment: the demo's, the end-to-end tests' and the benches'.

Each process reports on stdout in JSON lines; its first line that is a JSON object (other than a
``{"progress": ...}`` line) is its ready line. stdout goes to a file (what outlives the supervisor, as
the demo's detached processes do) or to a pipe read by a thread (progress lines are handed to a
callback as they come, the others read one by one: the ready line, then a follower's lines). stderr is
appended to a log file, whose tail goes into failure reports. A stop is SIGTERM, then SIGKILL if the
process has not exited within the timeout; every process is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from trustbus.bus import die_with_parent

STOP_S = 15.0
TAIL_LINES = 25
_EXITING_S = 1.0
_POLL_S = 0.05  # a ready line written to a file announces itself by no event: it is polled for

Line = dict[str, Any]


class ProcessFailed(Exception):
    """A process exited, or did not report, when it should have; the message names it and its log."""


class Process:
    """One started process: its ready line, its exit code, its stderr log."""

    def __init__(
        self,
        name: str,
        argv: tuple[str, ...],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        out: Path | None,
        with_parent: bool,
        on_progress: Callable[[Line], None] | None,
    ) -> None:
        self.name, self.argv, self.env, self.log, self.out = name, argv, dict(env), log, out
        self._lines: queue.Queue[Line | None] = queue.Queue()
        self._on_progress = on_progress
        self.ready_line: Line | None = None
        self.last_line: Line | None = None  # the last report line read from the pipe (a sender's figures)
        log.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            stderr = files.enter_context(log.open("ab"))
            stdout = files.enter_context(out.open("wb")) if out is not None else subprocess.PIPE
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=self.env, cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops its processes in order
                preexec_fn=die_with_parent if with_parent else None,
            )  # fmt: skip
        self._reader: threading.Thread | None = None
        if out is None:
            self._reader = threading.Thread(target=self._read, name=f"stdout-{name}", daemon=True)
            self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = _parsed(raw)
            if line is None:
                continue
            if "progress" not in line:
                self._lines.put(line)
            elif self._on_progress is not None:
                self._on_progress(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.popen.poll()

    def _report(self, wait_s: float = 0.0) -> Line | None:
        """The ready line if it has been written (waiting up to ``wait_s`` on a pipe); ProcessFailed if it exited."""
        if self.out is not None:
            with contextlib.suppress(OSError):
                for raw in self.out.read_bytes().splitlines():
                    if (line := _parsed(raw)) is not None and "progress" not in line:
                        return line
            if self.popen.poll() is not None:
                raise self.failed("exited")
            return None
        try:
            line = self._lines.get(timeout=wait_s) if wait_s > 0 else self._lines.get_nowait()
        except queue.Empty:
            return None
        if line is None:  # its stdout closed: it is exiting, and its exit code is what to report
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(_EXITING_S)
            raise self.failed("exited")
        return line

    def wait_ready(self, timeout_s: float) -> Line:
        """Block until the ready line (returned); ProcessFailed if the process exits or takes too long."""
        deadline = time.monotonic() + timeout_s
        while self.ready_line is None:
            wait_s = max(0.0, deadline - time.monotonic()) if self.out is None else 0.0
            if (line := self._report(wait_s)) is not None:
                self.ready_line = line
                break
            if time.monotonic() > deadline:
                raise self.failed(f"was not ready within {timeout_s:.0f}s")
            if self.out is not None:
                time.sleep(_POLL_S)
        return self.ready_line

    async def ready(self, timeout_s: float) -> Line:
        """Wait for the ready line (returned) without blocking the event loop."""
        deadline = time.monotonic() + timeout_s
        while self.ready_line is None:
            if (line := self._report()) is not None:
                self.ready_line = line
                break
            if time.monotonic() > deadline:
                raise self.failed(f"was not ready within {timeout_s:.0f}s")
            await asyncio.sleep(_POLL_S)
        return self.ready_line

    def line(self, timeout_s: float) -> Line:
        """The next JSON line on its stdout pipe (after the ready line, if that was awaited).

        What a follower such as ``trustbus tail --json`` prints; ProcessFailed once its stdout closes, or if
        none comes within ``timeout_s``.
        """
        if self.out is not None:
            raise ValueError(f"{self.name} writes its stdout to {self.out}, not to a pipe")
        if (line := self._report(timeout_s)) is None:
            raise self.failed(f"printed no line within {timeout_s:.0f}s")
        return line

    def send_signal(self, signum: int) -> None:
        """Signal the process if it still runs."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL it, as a crash would, and reap it; its pid."""
        self.send_signal(signal.SIGKILL)
        self.wait()
        return self.pid

    def wait(self, timeout_s: float | None = None) -> int:
        """Block until it exits (subprocess.TimeoutExpired after ``timeout_s``); its exit code."""
        code = self.popen.wait(timeout_s)
        self._drain()
        return code

    async def exited(self, timeout_s: float | None = None) -> int:
        """Wait for it to exit without blocking the event loop (TimeoutError after ``timeout_s``); its exit code."""
        return await asyncio.wait_for(asyncio.to_thread(self.wait), timeout_s)

    def stop(self, timeout_s: float = STOP_S) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; reaped. Its exit code."""
        self.send_signal(signal.SIGTERM)
        return self.reap(timeout_s)

    def reap(self, timeout_s: float) -> int:
        """Wait for it to exit, SIGKILLing it if it still runs after ``timeout_s``; its exit code."""
        try:
            code = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self._drain()
        return code

    def _drain(self) -> None:
        """Once it has exited: keep its last report line and close the pipe."""
        if self._reader is None:
            return
        self._reader.join(STOP_S)
        with contextlib.suppress(queue.Empty):
            while True:
                if (line := self._lines.get_nowait()) is not None:
                    self.last_line = line
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def tail(self, lines: int = TAIL_LINES) -> list[str]:
        """The last lines of its stderr log."""
        try:
            return self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def failed(self, what: str) -> ProcessFailed:
        """A ProcessFailed naming the process, ``what`` happened, its exit code and its log."""
        code = self.popen.poll()
        exit_code = f" (exit code {code})" if code is not None else ""
        return ProcessFailed(f"{self.name} {what}{exit_code}: see {self.log}")


def _parsed(raw: bytes) -> Line | None:
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def check_alive(processes: Iterable[Process]) -> None:
    """ProcessFailed for the first of ``processes`` that has exited."""
    for process in processes:
        if process.returncode is not None:
            raise process.failed("exited unexpectedly")


class Supervisor:
    """The processes started for one run, all stopped by :meth:`stop_all` (newest first)."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        cwd: Path,
        logs: Path,
        with_parent: bool = True,
        on_progress: Callable[[Line], None] | None = None,
    ) -> None:
        """``with_parent``: Linux sends each process SIGTERM if the supervisor's process dies (bus.die_with_parent)."""
        self.env, self.cwd, self.logs = env, cwd, logs
        self._with_parent, self._on_progress = with_parent, on_progress
        self.processes: list[Process] = []

    def start(
        self,
        name: str,
        argv: Iterable[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        out: Path | None = None,
    ) -> Process:
        """Start ``argv``; stderr appended to ``log`` (default ``<logs>/<name>.log``), stdout to ``out`` or a pipe."""
        process = Process(
            name, tuple(argv), env=self.env if env is None else env, cwd=self.cwd,
            log=log or self.logs / f"{name}.log", out=out, with_parent=self._with_parent,
            on_progress=self._on_progress,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def restart(self, process: Process) -> Process:
        """Start ``process``'s command again, with the same name, environment, log and stdout file."""
        return self.start(process.name, process.argv, env=process.env, log=process.log, out=process.out)

    def stop(self, processes: Iterable[Process], timeout_s: float = STOP_S) -> None:
        """SIGTERM each of ``processes`` at once, then reap each, SIGKILLing one still running ``timeout_s`` later."""
        group = list(processes)
        for process in group:
            process.send_signal(signal.SIGTERM)
        for process in group:
            process.reap(timeout_s)

    def stop_all(self, timeout_s: float = STOP_S) -> None:
        """Stop every process started, newest first."""
        self.stop(reversed(self.processes), timeout_s)
