"""An incident as a graph for the page to draw: envelopes, decisions, holds, effects and quarantines as nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trustbus.ledger import Incident, Step


def graph_model(incident: Incident) -> dict[str, Any]:
    """Nodes and edges (cytoscape's element format) of ``incident``'s causal tree.

    Each envelope is a node, drawn under the envelope that caused it; what was
    decided about it (a hold is a node of its own), each tool call it recorded and
    its quarantine hang off it. An edge carries the taint that flowed along it:
    an envelope's effective taint into what it caused and into its decisions, a
    tool call's taint into its effect node.
    """
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []

    def edge(source: str, target: str, taint: list[str] | tuple[str, ...], label: str = "") -> None:
        text = label or ",".join(taint)
        edges.append({"data": {"id": f"{source}>{target}", "source": source, "target": target,
                               "taint": list(taint), "label": text}})  # fmt: skip

    def add(step: Step, cause: str | None) -> None:
        env = step.envelope
        node = f"envelope:{env.id}"
        to = ",".join(env.to) or "-"
        delivered = f"\ndelivered to {','.join(sorted(step.deliveries))}" if step.deliveries else ""
        nodes.append({"data": {"id": node, "type": "envelope", "envelope_id": env.id,
                               "label": f"#{step.seq} {env.kind}\n{env.sender} -> {to}{delivered}"}})  # fmt: skip
        if cause is not None:
            edge(cause, node, tainted(step))
        for i, d in enumerate(step.decisions):
            kind = "hold" if d.verdict == "hold" else "decision"
            by = f"\nby {d.approver}" if d.approver else ""
            decided = f"decision:{env.id}:{i}"
            nodes.append({"data": {"id": decided, "type": kind, "verdict": d.verdict, "envelope_id": env.id,
                                   "label": f"{d.verdict}\n{','.join(d.reasons) or 'ok'}{by}"}})  # fmt: skip
            edge(node, decided, d.effective_taint)
        for i, e in enumerate(step.effects):
            effect = f"effect:{env.id}:{i}"
            nodes.append({"data": {"id": effect, "type": "effect", "envelope_id": env.id,
                                   "label": f"{e.tool}\n{e.phase}"}})  # fmt: skip
            edge(node, effect, e.taint)
        if step.quarantined:
            refused = f"quarantine:{env.id}"
            nodes.append({"data": {"id": refused, "type": "quarantine", "envelope_id": env.id,
                                   "label": f"quarantined\n{step.quarantined}"}})  # fmt: skip
            edge(node, refused, (), "refused")
        for child in step.children:
            add(child, node)

    for root in incident.roots:
        add(root, None)
    return {"correlation": incident.correlation_id, "nodes": nodes, "edges": edges}


def tainted(step: Step) -> tuple[str, ...]:
    """The taint ``step``'s envelope carried: what the coordinator computed when it decided, else what it declared."""
    for decision in reversed(step.decisions):
        if decision.effective_taint:
            return decision.effective_taint
    return step.envelope.taint
