"""Stopping a long-running process cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call from the running event loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """Run ``work`` to its end, or cancel it as soon as ``stop`` is set and return None.

    For a request that may wait seconds on an unreachable server: a stopping process does not wait on it.
    """
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def run_then_settle(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, then cancel every task it left behind, again each 0.1 s until all have ended.

    ``asyncio.run`` cancels leftover tasks once and then waits for them. On
    Python 3.11 ``asyncio.wait_for`` can swallow a cancel that arrives as its
    inner call ends, which a client reconnecting to a server that is gone does
    every half second: such a task takes one cancel, carries on, and the
    process never exits. The next cancel finds it asleep between attempts.
    """
    try:
        return await work
    finally:
        current = asyncio.current_task()
        while leftovers := [t for t in asyncio.all_tasks() if t is not current and not t.done()]:
            for task in leftovers:
                task.cancel()
            await asyncio.wait(leftovers, timeout=0.1)
