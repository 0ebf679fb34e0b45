"""What a sender's reader holds for the coordinator (agents._intake): fetches join it while there is room."""

from __future__ import annotations

import asyncio

from trustbus.agents._intake import _Reader


async def test_fetches_join_what_waits_up_to_the_batch_size_then_wait_for_the_coordinator() -> None:
    reader = _Reader("coordinator-0-alice", batch=3)
    await reader.hold(["a"])  # type: ignore[list-item]
    await reader.hold(["b"])  # type: ignore[list-item]
    assert reader.held == ["a", "b"]  # one batch for the coordinator's next turn, in order
    blocked = asyncio.create_task(reader.hold(["c", "d"]))  # type: ignore[list-item]
    await asyncio.sleep(0)
    assert not blocked.done() and reader.held == ["a", "b"]  # no room: a turn never takes more than a batch
    assert reader.take() == ["a", "b"]
    await asyncio.wait_for(blocked, 1)
    assert reader.held == ["c", "d"] and reader.take() == ["c", "d"] and reader.held == []
