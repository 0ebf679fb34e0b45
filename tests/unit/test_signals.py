"""unless_stopped (pure asyncio): work that finishes is returned, work that would wait on is cut short by stop."""

from __future__ import annotations

import asyncio

from trustbus.bus._signals import run_then_settle, unless_stopped


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


def _left_behind(swallowed: int, ended: asyncio.Event) -> asyncio.Task[None]:
    """A task that takes ``swallowed`` cancels and carries on, as a reconnect loop whose wait_for lost one."""

    async def reconnecting() -> None:
        takes = swallowed
        try:
            while True:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    if takes == 0:
                        raise
                    takes -= 1
        finally:
            ended.set()

    return asyncio.ensure_future(reconnecting())


def test_a_task_that_swallows_a_cancel_does_not_keep_the_process_from_exiting() -> None:
    ended = asyncio.Event()

    async def main() -> str:
        _left_behind(3, ended)
        await asyncio.sleep(0.01)  # it is running
        return "done"

    assert asyncio.run(run_then_settle(main())) == "done"  # bare asyncio.run(main()) would wait forever
    assert ended.is_set()


def test_a_task_left_behind_that_takes_its_cancel_ends_at_the_first() -> None:
    ended = asyncio.Event()

    async def main() -> str:
        _left_behind(0, ended)
        await asyncio.sleep(0.01)
        return "done"

    assert asyncio.run(run_then_settle(main())) == "done"
    assert ended.is_set()
