"""unless_stopped, run_then_settle, cancel_and_wait and side_by_side (pure asyncio).

Work that finishes is returned, work that would wait on is cut short by stop; a task that swallows a
cancel (as Python 3.11's ``wait_for`` can) does not keep anyone waiting.
"""

from __future__ import annotations

import asyncio

import pytest

from trustbus.bus._signals import cancel_and_wait, run_then_settle, side_by_side, unless_stopped


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


async def test_work_that_swallows_the_cancel_at_stop_still_ends() -> None:
    ended = asyncio.Event()

    async def stubborn() -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # as a wait_for that lost the cancel: it carries on
            await asyncio.Event().wait()
        finally:
            ended.set()
        return 1

    stop = asyncio.Event()
    asyncio.get_running_loop().call_soon(stop.set)
    run = asyncio.ensure_future(unless_stopped(stubborn(), stop))
    await asyncio.wait({run}, timeout=10)  # unlike wait_for, no cancel of its own at the timeout to help it end
    assert run.done() and run.result() is None  # one cancel would leave it waiting for ever
    assert ended.is_set()


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


async def test_cancel_and_wait_ends_a_task_that_swallows_its_first_cancels() -> None:
    ended = asyncio.Event()
    task = _left_behind(3, ended)
    await asyncio.sleep(0.01)
    assert await asyncio.wait_for(cancel_and_wait(task, again_s=0.05), 5) == []  # one cancel would not do
    assert ended.is_set() and task.cancelled()


async def test_cancel_and_wait_returns_what_a_task_failed_with() -> None:
    async def failing() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ValueError("failed on the way out") from None

    task = asyncio.ensure_future(failing())
    done = asyncio.ensure_future(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    errors = await cancel_and_wait(task, done)
    assert [str(e) for e in errors] == ["failed on the way out"]


async def test_side_by_side_runs_every_work_to_its_end() -> None:
    finished: list[str] = []

    async def work(name: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        finished.append(name)

    await side_by_side(work("slow", 0.05), work("quick", 0.01))
    assert finished == ["quick", "slow"]


async def test_side_by_side_ends_the_others_when_one_fails_even_if_one_swallows_a_cancel() -> None:
    ended = asyncio.Event()

    async def failing() -> None:
        await asyncio.sleep(0.02)
        raise ValueError("the server refused it")

    async def swallowing() -> None:
        await _left_behind(1, ended)

    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(side_by_side(failing(), swallowing()), 5)  # a TaskGroup would wait forever here
    assert [str(e) for e in raised.value.exceptions] == ["the server refused it"]
    assert ended.is_set()


async def test_side_by_side_cancelled_from_outside_ends_every_work() -> None:
    ended = asyncio.Event()

    async def swallowing() -> None:
        await _left_behind(1, ended)

    runner = asyncio.ensure_future(side_by_side(swallowing(), asyncio.sleep(3600)))
    await asyncio.sleep(0.01)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 5)
    assert ended.is_set()
