"""Traces across processes: ``trustbus send``, the coordinator and a recipient agent, exporting over OTLP/HTTP
to a receiver this test runs, make one trace; a version 1 envelope still delivers; a malformed traceparent is
refused ``malformed``."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Iterator

import msgspec
import nats
import pytest
import pytest_asyncio

from tests.e2e.fleet import Fleet
from tests.otlp import OtlpReceiver, ReceivedSpan
from tests.processes import ROOT, TRUSTBUS, one_shot_async
from trustbus.bus import EmbeddedServer, KeyDirectory, encode_envelope, init_tenant, new_envelope, subjects

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICY = {
    "taint": {"high_risk_tools": ["refund"], "on_tainted_high_risk": "hold"},
    "rules": [
        {"from": "sender", "to": ["recipient"], "kinds": ["event"]},
        {"from": "recipient", "to": ["sender"], "kinds": ["reply"]},
        {"from": "sender", "to": ["recipient", "billing"], "kinds": ["instruction"], "verbs": ["refund"]},
        {"from": "billing", "to": ["sender"], "kinds": ["reply"]},
    ],
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced_fleet(
    nats_server: EmbeddedServer, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    """One tenant with a coordinator, a recipient (examples.pingpong:Player), billing (examples.billing:app, with
    its tools) and a ledger, all exporting their spans."""
    tmp = tmp_path_factory.mktemp("traces")
    tenant, keys = f"tr{os.getpid()}", KeyDirectory(tmp / "keys")
    await init_tenant([nats_server.url], tenant, keys=keys)
    fleet = Fleet(url=nats_server.url, tenant=tenant, keys=keys, tmp=tmp, nc=await nats.connect(nats_server.url))
    try:
        traced = {**fleet.env, **receiver.env()}
        await fleet.key("sender")
        await fleet.key("operator", role="operator")
        await fleet.key("coordinator", role="coordinator")
        await fleet.key("ledger", role="ledger")
        policy = tmp / "policy.yaml"
        policy.write_text(json.dumps(POLICY))  # JSON is YAML
        await fleet.spawn("coordinator", "run", "-t", tenant, "--policy", str(policy), env=traced)
        await fleet.agent("examples.pingpong:Player", "recipient", env=traced)
        await fleet.key("billing")
        tools = str(ROOT / "examples" / "tools.yaml")
        await fleet.spawn(
            "agent", "run", "examples.billing:app", "--id", "billing", "-t", tenant, "--tools", tools, env=traced
        )
        ledger = ("ledger", "run", "-t", tenant, "--data", str(tmp / "projection"), "--checkpoint-seconds", "0.5")
        await fleet.spawn(*ledger, env=traced)
        yield fleet
    finally:
        await fleet.close()


def _in_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


async def test_sender_coordinator_and_recipient_spans_form_one_trace(
    traced_fleet: Fleet, receiver: OtlpReceiver
) -> None:
    fleet = traced_fleet
    argv = [*TRUSTBUS, "send", "-t", fleet.tenant, "--as", "sender", "--to", "recipient", "--json"]
    sent = await one_shot_async([*argv, "--payload", '{"serve": 1}'], env={**fleet.env, **receiver.env()})
    assert sent.returncode == 0, sent.stderr
    envelope_id = json.loads(sent.stdout)["id"]

    def whole(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        [send] = [s for s in spans if s.attributes.get("messaging.message.id") == envelope_id] or [None]
        if send is None:
            return None
        trace = _in_trace(spans, send.trace_id)
        guardrails = [s for s in trace if s.name == "apply_guardrail coordinator"]
        handled = [s for s in trace if s.name == "invoke_agent recipient"]
        stored = [s for s in trace if s.name == "store_checkpoint coordinator"]
        # the send's decision, the reply's and the checkpoint's; the recipient's handling; the checkpoint stored
        return trace if len(guardrails) == 3 and handled and stored else None

    trace = await receiver.wait(whole)
    [send] = [s for s in trace if s.name == "send event"]
    [handled] = [s for s in trace if s.name == "invoke_agent recipient"]
    guardrails = {s.attributes["gen_ai.security.target.id"]: s for s in trace if s.name.startswith("apply_guardrail")}
    assert send.parent == "" and send.service == "trustbus send"
    assert handled.parent == send.span_id and handled.service == "trustbus agent"
    assert handled.attributes["gen_ai.agent.id"] == "recipient"
    assert handled.attributes["gen_ai.conversation.id"] == envelope_id  # an origin's correlation is its id
    decision = guardrails.pop(envelope_id)
    assert decision.parent == send.span_id and decision.service == "trustbus coordinator"
    assert decision.attributes["gen_ai.operation.name"] == "apply_guardrail"
    assert decision.attributes["gen_ai.security.decision.type"] == "allow"
    assert decision.attributes["gen_ai.security.decision.code"] == "none"
    assert decision.attributes["gen_ai.security.policy.id"] == "rules[0]"
    assert decision.attributes["trustbus.verdict"] == "accept"
    assert decision.attributes["trustbus.action"] == "forward"
    # what the handler sent (its reply, its checkpoint) was decided as children of the handler's span
    assert {s.parent for s in guardrails.values()} == {handled.span_id}
    assert sorted(s.attributes["trustbus.action"] for s in guardrails.values()) == ["forward", "store"]
    # the accepted checkpoint stored by the coordinator: a span of its own, beside its decision
    [stored] = [s for s in trace if s.name == "store_checkpoint coordinator"]
    [checkpoint] = [s for s in guardrails.values() if s.attributes["trustbus.action"] == "store"]
    assert stored.parent == handled.span_id and stored.service == "trustbus coordinator"
    assert stored.attributes["trustbus.envelope.id"] == checkpoint.attributes["gen_ai.security.target.id"]
    assert stored.attributes["gen_ai.conversation.id"] == envelope_id


async def test_a_held_envelope_its_approval_and_its_release_are_one_trace(
    traced_fleet: Fleet, receiver: OtlpReceiver
) -> None:
    fleet, traced = traced_fleet, {**traced_fleet.env, **receiver.env()}
    argv = [*TRUSTBUS, "send", "-t", fleet.tenant, "--as", "sender", "--to", "recipient", "--kind", "instruction"]
    sent = await one_shot_async([*argv, "--taint", "web", "--payload", '{"verb": "refund"}', "--json"], env=traced)
    assert sent.returncode == 0, sent.stderr
    held_id = json.loads(sent.stdout)["id"]
    await fleet.decisions(lambda ds: any(d.envelope_id == held_id and d.verdict == "hold" for d in ds))
    approve = [*TRUSTBUS, "approve", held_id, "-t", fleet.tenant, "--as", "operator", "--json"]
    approved = await one_shot_async(approve, env=traced)
    assert approved.returncode == 0, approved.stderr

    def whole(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        sends = [s for s in spans if s.attributes.get("messaging.message.id") == held_id]
        trace = _in_trace(spans, sends[0].trace_id) if sends else []
        guardrails = [s for s in trace if s.attributes.get("gen_ai.security.target.id") == held_id]
        handled = [s for s in trace if s.name == "invoke_agent recipient"]
        return trace if len(guardrails) == 3 and handled else None  # the hold, the approval, the release

    trace = await receiver.wait(whole)
    [send] = [s for s in trace if s.name == "send instruction"]
    [approval] = [s for s in trace if s.name == "approval approve"]
    [handled] = [s for s in trace if s.name == "invoke_agent recipient"]
    decided = {
        s.attributes["trustbus.action"]: s
        for s in trace
        if s.name.startswith("apply_guardrail") and s.attributes["gen_ai.security.target.id"] == held_id
    }
    assert set(decided) == {"hold", "forward"} and approval.service == "trustbus approve"
    assert decided["hold"].parent == send.span_id and approval.parent == send.span_id
    assert decided["hold"].attributes["gen_ai.security.decision.code"] == "tainted_high_risk"
    assert decided["hold"].attributes["gen_ai.security.policy.id"] == "taint.on_tainted_high_risk"
    assert decided["hold"].attributes["gen_ai.security.decision.type"] == "deny"
    assert decided["forward"].parent == approval.span_id  # decided about the operator's approval
    assert decided["forward"].attributes["gen_ai.security.decision.code"] == "approved"
    assert handled.parent == send.span_id  # the released bytes are the sender's


async def test_a_tool_call_is_a_span_under_its_handler_and_its_record_decided_under_it(
    traced_fleet: Fleet, receiver: OtlpReceiver
) -> None:
    fleet = traced_fleet
    argv = [*TRUSTBUS, "send", "-t", fleet.tenant, "--as", "sender", "--to", "billing", "--kind", "instruction"]
    sent = await one_shot_async(
        [*argv, "--payload", '{"verb": "refund", "order": 7}', "--json"], env=receiver.env() | fleet.env
    )
    assert sent.returncode == 0, sent.stderr
    envelope_id = json.loads(sent.stdout)["id"]

    def whole(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        sends = [s for s in spans if s.attributes.get("messaging.message.id") == envelope_id]
        trace = _in_trace(spans, sends[0].trace_id) if sends else []
        recorded = [s for s in trace if s.attributes.get("trustbus.action") == "record"]
        return trace if recorded and any(s.name == "execute_tool issue_refund" for s in trace) else None

    trace = await receiver.wait(whole)
    [send] = [s for s in trace if s.name == "send instruction"]
    [handled] = [s for s in trace if s.name == "invoke_agent billing"]
    [tool] = [s for s in trace if s.name == "execute_tool issue_refund"]
    [recorded] = [s for s in trace if s.attributes.get("trustbus.action") == "record"]
    assert handled.parent == send.span_id and tool.parent == handled.span_id
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "issue_refund"
    assert len(tool.attributes["gen_ai.tool.call.id"]) > 0
    assert tool.attributes["trustbus.effect.outcome"] == "ran"
    assert recorded.parent == tool.span_id  # the completed record was sent inside the tool call's span
    assert recorded.attributes["gen_ai.security.target.type"] == "tool_call"
    assert recorded.attributes["gen_ai.security.decision.code"] == "effect_recorded"


async def test_a_version_1_envelope_still_delivers_and_starts_a_trace(
    traced_fleet: Fleet, receiver: OtlpReceiver
) -> None:
    fleet = traced_fleet
    envelope_id = await fleet.send(await fleet.bus("sender"), ["recipient"], {"serve": 2})  # no tracing here: v1
    decisions = await fleet.decisions(lambda ds: any(d.envelope_id == envelope_id for d in ds))
    [decision] = [d for d in decisions if d.envelope_id == envelope_id]

    def handled(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        found = [s for s in spans if s.attributes.get("trustbus.envelope.id") == envelope_id]
        return found or None

    [span] = await receiver.wait(handled)
    assert decision.verdict == "accept"
    assert span.name == "invoke_agent recipient" and span.parent == ""


async def test_the_ledger_commits_and_checkpoints_as_spans_and_verifies_both_versions(
    traced_fleet: Fleet, receiver: OtlpReceiver
) -> None:
    def ledger(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        found = [s for s in spans if s.service == "trustbus ledger"]
        names = {s.name for s in found}
        return found if {"commit ledger", "checkpoint ledger"} <= names else None

    spans = await receiver.wait(ledger)
    assert all(s.attributes["trustbus.ledger.through_seq"] > 0 for s in spans)
    argv = [*TRUSTBUS, "ledger", "verify", "-t", traced_fleet.tenant, "--json"]
    verified = await one_shot_async(argv, env=traced_fleet.env)  # the stream holds version 1 and 2 envelopes
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"]


async def test_a_malformed_traceparent_is_refused_malformed(traced_fleet: Fleet) -> None:
    fleet = traced_fleet
    good = new_envelope(
        tenant=fleet.tenant, kind="event", sender="sender", to=["recipient"], payload=b"{}",
        trace=("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", ""),
    )  # fmt: skip
    fields = msgspec.msgpack.decode(encode_envelope(good))
    fields["trace"] = ["00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", ""]  # uppercase: not W3C
    body = msgspec.msgpack.encode(fields)
    identity = fleet.keys.load(fleet.tenant, "sender")
    headers = {
        "Nats-Msg-Id": good.id,
        "Tb-Sig": base64.b64encode(identity.sign(b"trustbus/v1\x00" + body)).decode(),
        "Tb-Key": identity.key_id,
    }
    sender = await fleet.bus("sender")
    before = await fleet.send(sender, ["recipient"], {"serve": 3})  # good envelopes on either side of it
    stored = await fleet.nc.jetstream().publish(subjects.outbox(fleet.tenant, "sender", 0), body, headers=headers)
    after = await fleet.send(sender, ["recipient"], {"serve": 4})
    record = await fleet.quarantined(lambda r: r.stream_seq == stored.seq)
    assert record.reason == "malformed"
    assert "trace" in record.detail
    decided = await fleet.decisions(lambda ds: {before, after} <= {d.envelope_id for d in ds})
    assert {d.envelope_id: d.verdict for d in decided if d.envelope_id in (before, after)} == {
        before: "accept",
        after: "accept",
    }  # refused alone, never with its neighbours
