"""Effects: tool calls as recorded events, and the blast-radius inventory of tools.

An effect is recorded as ``effect`` envelopes on ``tb.<T>.effect.<agent>.<key>``
(one subject per idempotency key, so the latest record of a call is one direct
get away): ``requested`` before the tool runs, then ``completed`` (with the
result and the taint the result carries) or ``failed``. The coordinator folds
completed effects' taint into the agent's effective taint for that correlation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def idempotency_key(causing_envelope_id: str, tool: str, args: dict[str, Any], call_index: int) -> str:
    """A key that is the same every time the same delivery makes the same call: 32 hex chars.

    ``call_index`` counts the handler's effect calls, so a handler that calls the
    same tool twice with the same arguments makes two effects, and a redelivery
    of the same envelope makes the same two keys again.
    """
    canonical = json.dumps([causing_envelope_id, tool, args, call_index], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
