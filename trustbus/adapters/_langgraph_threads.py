"""A LangGraph thread kept in the agent's trustbus checkpoint, so a restarted process resumes it."""

from __future__ import annotations

import base64
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointMetadata, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver

KEY = "langgraph"
"""The agent checkpoint's field that holds the threads."""


class BusCheckpointer(InMemorySaver):
    """The graph's checkpointer on the bus.

    During a delivery it is LangGraph's in-memory saver; at its end the thread's state (the graph's
    values, serialized by the saver's own serde) is what :meth:`commit` keeps, and the agent sends
    :meth:`saved` as its trustbus checkpoint. Each delivery starts from the thread as of its last
    completed delivery (:meth:`restore`), never from a step of an attempt that was cut off: the
    effects a cut-off attempt recorded answer its repeat instead.
    """

    def __init__(self, *, keep: int = 64) -> None:
        """``keep``: how many threads (the most recently used) the checkpoint holds."""
        super().__init__()
        self.keep = keep
        self.threads: dict[str, dict[str, str]] = {}

    def load(self, checkpoint: dict[str, Any] | None) -> None:
        """Take the threads of the agent's last checkpoint (None: there is none)."""
        saved = (checkpoint or {}).get(KEY)
        self.threads = dict(saved) if isinstance(saved, dict) else {}

    def saved(self) -> dict[str, Any]:
        """The agent checkpoint that holds every thread kept."""
        return {KEY: dict(self.threads)}

    def applied(self, thread: str) -> str | None:
        """The id of the delivery the thread's kept state ends with."""
        kept = self.threads.get(thread)
        return kept["delivery"] if kept else None

    def values(self, thread: str) -> dict[str, Any] | None:
        """The thread's kept state, or None."""
        kept = self.threads.get(thread)
        if kept is None:
            return None
        values: dict[str, Any] = self.serde.loads_typed((kept["type"], base64.b64decode(kept["values"])))
        return values

    async def restore(self, thread: str) -> None:
        """Set ``thread`` back to its kept state (or to nothing): one checkpoint holding the state's values."""
        await self.adelete_thread(thread)
        values = self.values(thread)
        if values is None:
            return
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = values
        checkpoint["channel_versions"] = {channel: self.get_next_version(None, None) for channel in values}
        config: RunnableConfig = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        metadata: CheckpointMetadata = {"source": "update", "step": -1, "parents": {}}
        await self.aput(config, checkpoint, metadata, checkpoint["channel_versions"])

    def commit(self, thread: str, delivery: str, values: dict[str, Any]) -> None:
        """Keep ``values`` as the thread's state after ``delivery`` (and drop the least recent thread past ``keep``)."""
        kind, data = self.serde.dumps_typed(values)
        self.threads.pop(thread, None)
        self.threads[thread] = {"delivery": delivery, "type": kind, "values": base64.b64encode(data).decode()}
        while len(self.threads) > self.keep:
            del self.threads[next(iter(self.threads))]
