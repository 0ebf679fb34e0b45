"""Following the tenant stream while the demo runs: what was decided, done and refused, as it happens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from trustbus.bus import (
    Decision,
    EffectRecord,
    Envelope,
    QuarantineRecord,
    TenantStream,
    decode_decisions,
    decode_effect,
    decode_json,
    decode_quarantine_record,
    subjects,
)

T = TypeVar("T")
_COLOURS = {"accept": "green", "reject": "red", "hold": "yellow"}


@dataclass
class Seen:
    """Everything read from the stream so far."""

    sent: dict[str, Envelope] = field(default_factory=dict)  # outbox envelopes by id
    decisions: list[Decision] = field(default_factory=list)
    effects: list[tuple[str, EffectRecord]] = field(default_factory=list)  # (agent, record)
    quarantined: list[QuarantineRecord] = field(default_factory=list)

    def decided(self, correlation: str, **match: object) -> list[Decision]:
        """Decisions in ``correlation`` whose fields equal ``match`` (``reason=`` matches one of the reasons)."""
        reason = match.pop("reason", None)
        return [
            d
            for d in self.decisions
            if d.correlation_id == correlation
            and (reason is None or reason in d.reasons)
            and all(getattr(d, k) == v for k, v in match.items())
        ]


def describe(envelope: Envelope | None, decision: Decision) -> str:
    """``sender -> recipients kind [verb]`` of a decided envelope."""
    what = decision.kind
    to = ""
    if envelope is not None:
        to = f" -> {','.join(envelope.to)}" if envelope.to else ""
        if envelope.kind in ("instruction", "memory_write"):
            try:
                body = decode_json(envelope.payload)
                what += f" {body.get('verb') or body.get('key') or ''}".rstrip()
            except ValueError:
                pass
    return f"{decision.sender}{to} {what}"


class Watch:
    """Reads the tenant stream in order, keeps :class:`Seen`, and wakes whoever waits on it."""

    def __init__(self, stream: TenantStream, show: Callable[[str], None]) -> None:
        """``show`` gets one rich-markup line per decision and completed effect."""
        self.seen = Seen()
        self._stream, self._show = stream, show
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        """Follow the stream until cancelled."""
        t = self._stream.tenant
        async for item in self._stream.tail():
            if item.opened is None:
                continue
            envelope = item.opened.envelope
            try:
                if item.subject.startswith(f"tb.{t}.out."):
                    self.seen.sent[envelope.id] = envelope
                elif subjects.is_decision(t, item.subject):
                    for decision in decode_decisions(envelope.payload)[0]:
                        self._decision(decision)
                elif (parsed := subjects.parse(item.subject)) and parsed.tenant == t and parsed.channel == "effect":
                    self._effect(parsed.owner or "", decode_effect(envelope.payload))
                elif item.subject == subjects.quarantine(t):
                    self.seen.quarantined.append(decode_quarantine_record(envelope.payload))
            except ValueError:  # a signed message that is not the record its subject is for: nothing to show
                continue
            async with self._changed:
                self._changed.notify_all()

    def _decision(self, decision: Decision) -> None:
        self.seen.decisions.append(decision)
        if decision.kind in ("checkpoint", "effect"):
            return
        colour = _COLOURS[decision.verdict]
        why = ", ".join(decision.reasons) or "ok"
        taint = f"  taint: {','.join(decision.effective_taint)}" if decision.effective_taint else ""
        by = f" by {decision.approver}" if decision.approver else ""
        what = describe(self.seen.sent.get(decision.envelope_id), decision)
        self._show(f"  [{colour}]{decision.verdict:<6}[/{colour}] {what}  [dim]({why}{by}){taint}[/dim]")

    def _effect(self, agent: str, record: EffectRecord) -> None:
        self.seen.effects.append((agent, record))
        if record.phase != "requested":
            colour = "cyan" if record.phase == "completed" else "red"
            self._show(
                f"  [{colour}]effect[/{colour}] {agent} {record.tool} {record.phase} [dim]({record.effect_class})[/dim]"
            )

    async def until(self, found: Callable[[Seen], T | None], what: str, timeout_s: float = 30.0) -> T:
        """Wait until ``found(seen)`` returns something; TimeoutError naming ``what`` otherwise."""

        async def wait() -> T:
            async with self._changed:
                while (result := found(self.seen)) is None:
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(wait(), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{what}: not seen within {timeout_s:.0f}s") from None
