"""The runs a pydantic-ai agent keeps while it waits for answers: matching a reply, the cap, the checkpoint."""

from __future__ import annotations

import logging

import pytest

from trustbus.adapters._asks import Question, WaitingRun, WaitingRuns


def run(envelope: str, correlation: str, *peers: str) -> WaitingRun:
    questions = [Question(f"call-{i}", peer, f"q{i}") for i, peer in enumerate(peers)]
    return WaitingRun(envelope, correlation, "boss", [{"kind": "request"}], questions)


def test_a_reply_answers_the_oldest_open_question_to_its_sender_in_its_correlation() -> None:
    runs = WaitingRuns(10)
    runs.wait(run("e1", "c1", "clerk", "billing", "clerk"))
    runs.wait(run("e2", "c2", "clerk"))
    assert runs.answer("c3", "clerk", 1) is None  # another conversation
    assert runs.answer("c1", "mallory", 1) is None  # not asked
    first = runs.answer("c1", "clerk", "a")
    assert first is not None and not first.complete
    assert runs.answer("c1", "clerk", "b") is first and runs.answer("c1", "billing", "c") is first
    assert first.complete and [q.answer for q in first.questions] == ["a", "c", "b"]
    assert runs.answer("c1", "clerk", "again") is None  # every question to the clerk is answered
    runs.done(first)
    assert [r.envelope for r in runs.runs] == ["e2"]


def test_the_runs_survive_in_the_checkpoint_as_json() -> None:
    runs = WaitingRuns(10)
    runs.wait(run("e1", "c1", "clerk"))
    runs.answer("c1", "clerk", {"rooms": 15})
    again = WaitingRuns(10)
    again.restore(runs.checkpoint())
    assert again.runs == runs.runs
    again.restore(None)
    assert again.runs == []


def test_a_redelivery_replaces_its_run_and_past_the_cap_the_oldest_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    runs = WaitingRuns(2)
    assert runs.wait(run("e1", "c1", "clerk")) is None
    assert runs.wait(run("e1", "c1", "clerk")) is None  # the same delivery again: still one run
    assert runs.wait(run("e2", "c2", "clerk")) is None
    with caplog.at_level(logging.ERROR, logger="trustbus.agent"):
        dropped = runs.wait(run("e3", "c3", "clerk"))
    assert dropped is not None and dropped.envelope == "e1"
    assert [r.envelope for r in runs.runs] == ["e2", "e3"]
    assert "too many runs waiting" in caplog.text
    with pytest.raises(ValueError, match="at least one"):
        WaitingRuns(0)
