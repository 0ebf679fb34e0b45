"""unless_stopped (pure asyncio): work that finishes is returned, work that would wait on is cut short by stop."""

from __future__ import annotations

import asyncio

from bus._signals import unless_stopped


async def test_work_that_finishes_returns_its_result() -> None:
    async def quick() -> int:
        return 42

    assert await unless_stopped(quick(), asyncio.Event()) == 42


async def test_work_still_waiting_when_stop_is_set_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def forever() -> int:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return 1

    stop = asyncio.Event()
    asyncio.get_running_loop().call_soon(stop.set)
    assert await asyncio.wait_for(unless_stopped(forever(), stop), 5) is None
    assert cancelled.is_set()


async def test_an_error_of_the_work_is_raised() -> None:
    async def broken() -> int:
        raise ValueError("no")

    try:
        await unless_stopped(broken(), asyncio.Event())
    except ValueError as exc:
        assert str(exc) == "no"
    else:
        raise AssertionError("the work's error was swallowed")
