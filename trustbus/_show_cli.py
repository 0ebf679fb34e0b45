"""``trustbus show ID``: one envelope or record decoded, with the causes before it and what it caused."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trustbus._cli_common import (
    DEFAULT_SERVER,
    JsonOpt,
    MaybeTenantOpt,
    ServerOpt,
    err,
    out,
    recorded_messages,
)

if TYPE_CHECKING:
    from trustbus.bus import Envelope, StoredMessage
    from trustbus.ledger import Incident, Step


def show(
    envelope_id: Annotated[
        str,
        typer.Argument(help="An envelope id (a message, a decision, an effect record, a hold) or a decision id."),
    ],
    tenant: MaybeTenantOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="Look in this audit bundle (no server needed).")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: JsonOpt = False,
) -> None:
    """An envelope decoded, the chain of envelopes that caused it, and what it caused, decided and did.

    A decision or an effect record is shown with the envelope it is about; a
    decision of a group's record (``<record id>.<position>``) with its record. Reads
    the whole stream (or bundle): for a long one, `trustbus query` over the
    ledger's projection is faster.
    """
    from trustbus._incident_view import incident_tree
    from trustbus._render import envelope_dict, said_by
    from trustbus.ledger import Incident, build_incident, step_dict

    messages, keyring, tenant_name = recorded_messages(tenant, bundle, server, None)
    found = _find(messages, envelope_id) or _find_grouped(messages, envelope_id)
    if found is None:
        err.print(f"[red]error:[/red] no envelope {envelope_id} in tenant {tenant_name!r}")
        raise typer.Exit(1)
    message, envelope, (correlation_id, about_id) = found
    incident = build_incident(messages, keyring, tenant_name, correlation_id)
    step = _step_about(incident, envelope, about_id)
    causes = _causes(incident, step) if step is not None else []
    if json_out:
        print(json.dumps({
            "seq": message.seq,
            "subject": message.subject,
            "envelope": envelope_dict(envelope),
            "causes": [{"id": c.envelope.id, "kind": c.envelope.kind, "sender": c.envelope.sender} for c in causes],
            "about": step_dict(step) if step is not None else None,
        }))  # fmt: skip
        return
    out.print(f"#{message.seq} {message.subject}: [bold]{envelope.kind}[/bold] {envelope.id} from {envelope.sender}")
    out.print(f"  says: {said_by(envelope, message.subject, tenant_name)}", markup=False)
    out.print(f"  correlation {envelope.correlation_id}, caused by {envelope.causation_id or 'nothing (a root)'}")
    for depth, cause in enumerate(causes):
        out.print(f"  {'  ' * depth}after {cause.envelope.kind} {cause.envelope.id} from {cause.envelope.sender}")
    if step is not None:
        title = "what it is about, and what followed" if step.envelope.id != envelope.id else "what followed"
        out.print(incident_tree(Incident(incident.correlation_id, [step], [step]), title))


Found = tuple["StoredMessage", "Envelope", tuple[str, str]]
"""A stored message, its envelope, and the correlation and envelope id of what it is about."""


def _find(messages: "list[StoredMessage]", envelope_id: str) -> Found | None:
    """The first stored message whose envelope has ``envelope_id`` (the sender's copy comes before deliveries)."""
    from trustbus.bus import VerificationError, decode_envelope

    for message in messages:
        try:
            envelope = decode_envelope(message.body)
        except VerificationError:
            continue
        if envelope.id == envelope_id:
            return message, envelope, (envelope.correlation_id, envelope.causation_id or "")
    return None


def _find_grouped(messages: "list[StoredMessage]", decision_id: str) -> Found | None:
    """The group's record that holds the decision ``decision_id`` (``<record id>.<position>``), about its envelope."""
    from trustbus.bus import recorded_decisions

    record_id, dot, position = decision_id.rpartition(".")
    found = _find(messages, record_id) if dot and position.isdigit() else None
    if found is None or found[1].kind != "decision":
        return None
    try:
        decisions = dict(recorded_decisions(found[1]))
    except ValueError:  # msgspec.DecodeError is one
        return None
    decision = decisions.get(decision_id)
    return None if decision is None else (found[0], found[1], (decision.correlation_id, decision.envelope_id))


def _step_about(incident: "Incident", envelope: "Envelope", about_id: str) -> "Step | None":
    """The incident's step for ``envelope``, or for the envelope a decision or an effect record is about."""
    steps = {step.envelope.id: step for step in _walk(incident.roots)}
    return steps.get(envelope.id) or steps.get(about_id)


def _causes(incident: "Incident", step: "Step") -> "list[Step]":
    """The steps that led to ``step``, its root first."""
    by_id = {s.envelope.id: s for s in _walk(incident.roots)}
    chain: list[Any] = []
    cause = by_id.get(step.envelope.causation_id or "")
    while cause is not None and all(cause is not seen for seen in chain):  # a cycle cannot be recorded; stop anyway
        chain.append(cause)
        cause = by_id.get(cause.envelope.causation_id or "")
    return chain[::-1]


def _walk(steps: "list[Step]") -> "list[Step]":
    return [s for step in steps for s in (step, *_walk(step.children))]
