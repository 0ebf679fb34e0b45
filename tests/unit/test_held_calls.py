"""A held call as a checkpoint keeps it, and how the answers to held calls find their waiting runs."""

from __future__ import annotations

import json

from trustbus.adapters._asks import Approval, Question, WaitingRun, WaitingRuns
from trustbus.agents import HeldCall, idempotency_key
from trustbus.agents._held_calls import CallNumbers
from trustbus.bus import new_envelope


def a_call() -> HeldCall:
    cause = new_envelope(tenant="t", kind="event", sender="boss", to=("pyd",), payload=b"\x00refund", taint=("web",))
    return HeldCall("issue_refund", {"order": 7, "amount": 50}, 1, cause, ("llm", "web"))


def test_a_held_call_kept_as_json_comes_back_the_same_with_the_key_it_was_held_under() -> None:
    call = a_call()
    kept = json.loads(json.dumps(call.as_json()))
    assert HeldCall.from_json(kept) == call
    assert call.idempotency_key == idempotency_key(call.cause.id, "issue_refund", {"amount": 50, "order": 7}, 1)


def test_an_answer_completes_its_run_only_once_every_question_and_held_call_is_answered() -> None:
    call = a_call()
    runs = WaitingRuns(limit=2)
    question = Question("ask-0", "clerk", "how many?")
    approval = Approval("call-0", call.idempotency_key, call.as_json())
    runs.wait(WaitingRun("e1", "c1", "boss", [], [question], [approval]))
    assert runs.approve("another key", None) is None
    run = runs.approve(call.idempotency_key, "issue_refund was not run: denied by ops")
    assert run is not None and not run.complete
    assert runs.approve(call.idempotency_key, None) is None  # answered once
    assert runs.answer("c1", "clerk", "three") is run and run.complete

    kept = WaitingRuns(limit=2)
    kept.restore(json.loads(json.dumps(runs.checkpoint())))
    assert kept.checkpoint() == json.loads(json.dumps(runs.checkpoint()))


def test_a_run_with_no_held_call_is_kept_as_before() -> None:
    runs = WaitingRuns(limit=1)
    runs.wait(WaitingRun("e1", "c1", "boss", [], [Question("ask-0", "clerk", "?")]))
    assert "approvals" not in runs.checkpoint()["asks"][0]


def test_a_held_call_made_again_has_its_own_number_and_the_delivery_s_later_calls_come_after_it() -> None:
    call = a_call()  # number 1 of its delivery
    numbers = CallNumbers(call.cause)
    numbers.resume([call])
    again, resumed = numbers.next("issue_refund", {"amount": 50, "order": 7}, ("llm",))
    assert resumed and again.idempotency_key == call.idempotency_key
    after, resumed = numbers.next("issue_refund", {"amount": 50, "order": 7}, ("llm",))
    assert not resumed and after.index == 2  # the same call once more is a new call, after the held one

    other = CallNumbers(new_envelope(tenant="t", kind="reply", sender="clerk", to=("pyd",)))
    other.resume([call])  # a reply's handler going on with it: the reply's own calls start at 0
    assert other.next("issue_refund", {"order": 7, "amount": 50}, ())[0].idempotency_key == call.idempotency_key
    assert other.fresh("model_request", {}, ()).index == 0
