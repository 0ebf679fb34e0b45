"""Trustbus agent B of bench/mediated.py: ``trustbus agent run bench._mediated_sink:Sink --id b``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench._records import OUT_ENV, Recorder
from trustbus.agents import Agent, Context


class Sink(Agent):
    """Records each envelope's latency, on receipt in the handler (after verification); see ``Recorder``."""

    def __init__(self) -> None:
        self.recorder = Recorder(Path(os.environ[OUT_ENV]))

    async def handle(self, ctx: Context) -> None:
        self.recorder.record(ctx.envelope.payload, time.time_ns())
