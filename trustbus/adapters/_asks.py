"""The runs of an agent waiting for answers: what a checkpoint keeps, and how an answer finds its run.

A run that asked other agents ends with its questions sent; a run whose tool call the coordinator holds
ends with the call kept (:class:`agents.HeldCall`). It is kept here, as JSON, until every question and
every held call is answered. A reply answers the oldest unanswered question its sender was asked in the reply's
correlation (the asked agent handles its inbox one delivery at a time, so it answers in the order it
was asked). Nothing here names an envelope id the agent made: a replay of the same deliveries keeps
the same state, byte for byte.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trustbus.adapters._recording import refusal
from trustbus.agents import Agent, Context, EffectDenied, HeldCall

log = logging.getLogger("trustbus.agent")

CHECKPOINT_KEY = "asks"
"""The key of the agent's checkpoint (a JSON object) under which the waiting runs are kept."""


@dataclass
class Question:
    """One question a run asked: the tool call it answers, whom it asked, what, and the answer once in."""

    call: str
    peer: str
    question: str
    answered: bool = False
    answer: Any = None


@dataclass
class Approval:
    """A held tool call of a run: the framework's call id, the call (``HeldCall.as_json()``), its answer once in."""

    call: str
    key: str  # the held call's idempotency key
    held: dict[str, Any]
    answered: bool = False
    denied: str | None = None  # what the model is told of a denial


@dataclass
class WaitingRun:
    """A run that waits: its message history (JSON), for whom its output is, its questions and held calls."""

    envelope: str  # the delivery that started it
    correlation: str
    sender: str  # who gets the run's output
    history: list[Any]
    questions: list[Question] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every question and held call answered: the run can go on."""
        return all(q.answered for q in self.questions) and all(a.answered for a in self.approvals)

    def as_json(self) -> dict[str, Any]:
        """The run as its checkpoint keeps it."""
        return {
            "envelope": self.envelope,
            "correlation": self.correlation,
            "sender": self.sender,
            "history": self.history,
            "questions": [vars(q) for q in self.questions],
            **({"approvals": [vars(a) for a in self.approvals]} if self.approvals else {}),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> WaitingRun:
        """The run a checkpoint kept."""
        questions = [Question(**q) for q in value["questions"]]
        approvals = [Approval(**a) for a in value.get("approvals", ())]
        history = list(value["history"])
        return cls(value["envelope"], value["correlation"], value["sender"], history, questions, approvals)


class WaitingRuns:
    """The runs waiting for answers, oldest first, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        """``limit``: how many runs may wait at once; a new one past it drops the oldest (logged as an error)."""
        if limit < 1:
            raise ValueError("at least one run must be able to wait")
        self.limit = limit
        self.runs: list[WaitingRun] = []

    def restore(self, checkpoint: Mapping[str, Any] | None) -> None:
        """Take the runs the agent's last checkpoint kept (none if it kept none)."""
        kept: Iterable[Mapping[str, Any]] = (checkpoint or {}).get(CHECKPOINT_KEY, [])
        self.runs = [WaitingRun.from_json(run) for run in kept][-self.limit :]

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint that keeps them."""
        return {CHECKPOINT_KEY: [run.as_json() for run in self.runs]}

    def wait(self, run: WaitingRun) -> WaitingRun | None:
        """Keep ``run`` (replacing one started by the same delivery, as a redelivery does); the run dropped for it."""
        self.runs = [r for r in self.runs if r.envelope != run.envelope]
        self.runs.append(run)
        if len(self.runs) <= self.limit:
            return None
        dropped = self.runs.pop(0)
        log.error(
            "too many runs waiting for answers: the oldest is dropped, its sender gets no answer",
            extra={"envelope_id": dropped.envelope, "correlation_id": dropped.correlation, "limit": self.limit},
        )
        return dropped

    def answer(self, correlation: str, peer: str, answer: Any) -> WaitingRun | None:
        """Record ``peer``'s answer in ``correlation``; the run it answered (None: it answers no question)."""
        for run in self.runs:
            if run.correlation != correlation:
                continue
            for question in run.questions:
                if question.peer == peer and not question.answered:
                    question.answered, question.answer = True, answer
                    return run
        return None

    def held_calls(self) -> list[HeldCall]:
        """The held calls of the waiting runs that no operator has answered yet."""
        return [HeldCall.from_json(a.held) for run in self.runs for a in run.approvals if not a.answered]

    async def go_on(
        self, answer: Callable[[], WaitingRun | None], work: Callable[[WaitingRun], Awaitable[None]]
    ) -> bool:
        """Record an answer (``answer()``: the run it answered, or None) and ``work(run)``; whether it answered one.

        If ``work`` fails, the runs are as they were before the answer, so a retry records it again.
        """
        kept = self.checkpoint()
        run = answer()
        if run is None:
            return False
        try:
            await work(run)
        except BaseException:
            self.restore(kept)
            raise
        return True

    def approve(self, key: str, denied: str | None) -> WaitingRun | None:
        """Record the operator's answer to the held call ``key`` (``denied``: what the model is told); its run."""
        for run in self.runs:
            for approval in run.approvals:
                if approval.key == key and not approval.answered:
                    approval.answered, approval.denied = True, denied
                    return run
        return None

    def done(self, run: WaitingRun) -> None:
        """Forget ``run``: it went on."""
        self.runs = [r for r in self.runs if r is not run]


class AgentWithWaitingRuns(Agent):
    """An adapter's agent whose runs wait in its checkpoint (:attr:`waiting`) for answers and operators."""

    waiting: WaitingRuns

    async def on_start(self, checkpoint: dict[str, Any] | None) -> None:
        """Take up the runs that were waiting when the last process stopped."""
        self.waiting.restore(checkpoint)

    def held_calls(self) -> list[HeldCall]:
        """The held tool calls of the waiting runs that no operator has answered yet."""
        return self.waiting.held_calls()

    async def on_answer(self, ctx: Context, call: HeldCall, denied: EffectDenied | None) -> None:
        """Keep the operator's answer; once its run has every answer, go on with it (the approved call runs then)."""
        told = None if denied is None else refusal(call.tool, denied)
        await self.waiting.go_on(
            lambda: self.waiting.approve(call.idempotency_key, told), lambda run: self._answered(ctx, run)
        )

    async def _answered(self, ctx: Context, run: WaitingRun) -> None:
        """Go on with ``run``, which got an answer (in ``ctx``, a context of the delivery it came with)."""
        raise NotImplementedError
