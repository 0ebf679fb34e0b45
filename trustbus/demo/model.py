"""The researcher's stand-in for a language model: it obeys imperative sentences in what it reads.

A naive LLM asked to "summarise this email" and given tools will act on an
instruction embedded in the email. This stand-in does the same, deterministically,
so the injection really propagates and the bus is what stops it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAG = re.compile(r"<[^>]*>")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_REFUND = re.compile(r"^refund order (\d+) for (\d+) dollars to (\w+)", re.IGNORECASE)
_REMEMBER = re.compile(r"^remember that (\w+) (.+?)[.!]?$", re.IGNORECASE)


@dataclass(frozen=True)
class Refund:
    """An instruction to refund, read from "Refund order N for A dollars to C"."""

    order: int
    amount: int
    customer: str


@dataclass(frozen=True)
class Remember:
    """An instruction to remember, read from "Remember that C <note>"."""

    customer: str
    note: str


Action = Refund | Remember


@dataclass(frozen=True)
class Reading:
    """What the model made of a text: a one-line summary, whether it answers the question, what it will do."""

    summary: str
    conclusive: bool
    actions: tuple[Action, ...]


def read(text: str) -> Reading:
    """Summarise ``text`` and pick out the imperative sentences it will act on."""
    plain = _TAG.sub(" ", text)  # markup is no barrier: a model reads hidden text too
    sentences = [s.strip() for s in _SENTENCE.findall(plain) if s.strip()]
    actions: list[Action] = []
    for sentence in sentences:
        if refund := _REFUND.match(sentence):
            actions.append(Refund(order=int(refund[1]), amount=int(refund[2]), customer=refund[3].lower()))
        elif remember := _REMEMBER.match(sentence):
            actions.append(Remember(customer=remember[1].lower(), note=remember[2]))
    summary = sentences[0] if sentences else ""
    return Reading(summary=summary, conclusive="unknown" not in plain.lower(), actions=tuple(actions))
