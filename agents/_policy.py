"""The coordinator's policy: who may send what to whom, and the limits on it.

Written by people in YAML or TOML and validated with pydantic, so a mistake
is reported with the field's path and the problem, and the coordinator refuses
to start. See ``examples/policy.yaml`` for a commented example.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trustbus.agents._documents import load_document, validation_problems
from trustbus.agents._errors import PolicyError

_NAME = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,63})$")
_RECIPIENT = re.compile(r"^(\*|topic:\*|(topic:)?[A-Za-z0-9][A-Za-z0-9_-]{0,63})$")

Kind = Literal["event", "instruction", "reply", "memory_write", "effect", "approval", "decision", "checkpoint"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RateLimit(_Model):
    """A token bucket per sender: ``per_second`` refill, ``burst`` capacity."""

    per_second: Annotated[float, Field(gt=0)]
    burst: Annotated[int, Field(ge=1)]
    over_limit: Literal["reject", "delay"] = "reject"


class Suspension(_Model):
    """A sender with ``rejections`` messages refused before a decision (failing verification, or on the wrong
    outbox) within ``window_s`` seconds in one partition is suspended there until an operator lifts it (see
    agents/_suspension.py)."""  # noqa: D205, D209

    rejections: Annotated[int, Field(ge=1)] = 1000
    window_s: Annotated[float, Field(gt=0)] = 60.0


class Limits(_Model):
    """Limits that apply to every envelope. ``suspension: null`` turns suspension off."""

    hop_limit: Annotated[int, Field(ge=0)] = 8
    fanout_per_envelope: Annotated[int, Field(ge=1, le=1000)] = 16
    budget_per_correlation: Annotated[int, Field(ge=1)] = 1000
    correlations_in_memory: Annotated[int, Field(ge=1)] = 10_000  # per partition; the rest are stored
    # Decisions one correlation may hold; past it an envelope is quarantined (correlation_full), so a
    # correlation's stored state stays under a stored value's size (about 500 bytes a decision).
    decisions_per_correlation: Annotated[int, Field(ge=1)] = 1500
    # Seconds without a decision after which a correlation expires and starts again empty; over the replay
    # window, and under the state bucket's key age (bus.STATE_TTL_S, 30 days) with room for an outage.
    correlation_idle_s: Annotated[float, Field(ge=600, le=14 * 86_400)] = 7 * 86_400
    rate: RateLimit | None = None
    suspension: Suspension | None = Suspension()


class TaintRules(_Model):
    """What happens to an instruction whose effective taint is not empty.

    An instruction's verb names the tool it asks the recipient to call.
    """

    high_risk_tools: list[str] = []
    on_tainted_high_risk: Literal["hold", "reject"] = "hold"
    on_tainted_instruction: Literal["accept", "hold", "reject"] = "accept"
    on_tainted_memory_write: Literal["quarantine", "hold", "accept"] = "quarantine"


class Rule(_Model):
    """``from`` may send envelopes of ``kinds`` to ``to``; instructions only with one of ``verbs``.

    ``*`` matches any agent (in ``to``: any agent, and ``topic:*`` any topic).
    """

    sender: Annotated[str, Field(alias="from")]
    to: Annotated[list[str], Field(min_length=1)]
    kinds: Annotated[list[Kind], Field(min_length=1)]
    verbs: list[str] = []

    @field_validator("sender")
    @classmethod
    def _sender_is_a_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an agent id or '*'")
        return value

    @field_validator("to")
    @classmethod
    def _recipients_are_names(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _RECIPIENT.fullmatch(item):
                raise ValueError(f"{item!r} is not an agent id, 'topic:<name>', '*' or 'topic:*'")
        return value

    def matches(self, sender: str, recipient: str, kind: str) -> bool:
        """Whether this rule lets ``sender`` send ``kind`` to ``recipient``."""
        if kind not in self.kinds or self.sender not in ("*", sender):
            return False
        wildcard = "topic:*" if recipient.startswith("topic:") else "*"
        return recipient in self.to or wildcard in self.to

    def allows_verb(self, verb: str) -> bool:
        """Whether an instruction with ``verb`` passes this rule."""
        return "*" in self.verbs or verb in self.verbs


class Policy(_Model):
    """The whole policy. Anything no rule allows is refused (default deny)."""

    version: Literal[1] = 1
    limits: Limits = Limits()
    rate_overrides: dict[str, RateLimit] = {}
    taint: TaintRules = TaintRules()
    rules: list[Rule] = []

    def with_high_risk_tools(self, names: Iterable[str]) -> Policy:
        """This policy with ``names`` added to the high-risk tools (e.g. those the tool registry marks)."""
        merged = sorted(set(self.taint.high_risk_tools) | set(names))
        return self.model_copy(update={"taint": self.taint.model_copy(update={"high_risk_tools": merged})})

    def rate_for(self, sender: str) -> RateLimit | None:
        """The rate limit that applies to ``sender``, if any."""
        return self.rate_overrides.get(sender, self.limits.rate)

    def rule_for(self, sender: str, recipient: str, kind: str) -> Rule | None:
        """The first rule that lets ``sender`` send ``kind`` to ``recipient``."""
        return next((rule for rule in self.rules if rule.matches(sender, recipient, kind)), None)


def parse_policy(data: Any, *, source: str = "<policy>") -> Policy:
    """Validate already-parsed data; a PolicyError lists every problem as ``source: field.path: message``."""
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, source=source)
        raise PolicyError("invalid policy:\n  " + "\n  ".join(problems)) from None


def load_policy(path: str | Path) -> Policy:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) policy file."""
    return parse_policy(load_document(path, what="policy", error=PolicyError), source=str(path))
