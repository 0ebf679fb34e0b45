"""The researcher's stand-in for a language model: it obeys imperative sentences in what it reads.

A naive LLM asked to "summarise this email" and given tools will act on an
instruction embedded in the email. This stand-in does the same, deterministically,
so the injection really propagates and the bus is what stops it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustbus.demo.systems import DIR_ENV

CALLS_FILE = "model-calls"
"""In the run's directory: a line per call of a framework agent's model made with this stand-in."""
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


def source_of(request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The tool call that reads what a research request is about: ``read_email`` a message, else ``fetch_page``."""
    if "message" in request:
        return "read_email", {"message": request["message"]}
    return "fetch_page", {"page": request["page"]}


def note_call(prompt: str) -> None:
    """Count a call of the model (a line in the run's :data:`CALLS_FILE`), when there is a run directory."""
    directory = os.environ.get(DIR_ENV)
    if directory:
        with open(Path(directory) / CALLS_FILE, "a") as calls:
            calls.write(json.dumps(prompt) + "\n")


def calls(directory: Path) -> int:
    """How many times the model was called in the run whose directory this is."""
    path = directory / CALLS_FILE
    return len(path.read_text().splitlines()) if path.exists() else 0
