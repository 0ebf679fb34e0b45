"""Stopping a long-running process cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
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
    for error in await cancel_and_wait(task):
        raise error
    return None


async def cancel_and_wait(*tasks: asyncio.Future[Any], again_s: float = 1.0) -> list[BaseException]:
    """Cancel ``tasks``, wait until every one has ended, cancelling again each ``again_s``; the errors they ended with.

    One cancel is not always enough on Python 3.11: ``asyncio.wait_for`` swallows
    a cancel that arrives as its inner call ends (:func:`run_then_settle`), and a
    loop that only a cancel stops then carries on, and whoever awaits it waits
    forever. ``again_s`` leaves a task's own clean-up (a last record, an
    unsubscribe) time to finish before the next cancel. A task's error other than
    the cancel is returned for the caller to raise or report.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_s)
    return [error for task in tasks if not task.cancelled() and (error := task.exception()) is not None]


async def side_by_side(*works: Coroutine[Any, Any, None]) -> None:
    """Run ``works`` side by side until all have ended; once one fails, end the others (:func:`cancel_and_wait`).

    What ``asyncio.TaskGroup`` does, without waiting forever for a task that took
    its one cancel and carried on. Raises the failures as an exception group, as a
    task group does; cancelled from outside, it ends every work first.
    """
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await cancel_and_wait(*tasks)
        raise
    failures = [error for task in done if not task.cancelled() and (error := task.exception()) is not None]
    failures += await cancel_and_wait(*pending)
    if failures:
        raise BaseExceptionGroup("unhandled errors in works run side by side", failures)


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
