"""Rendering an incident for people: the causal tree and a re-decision table (``ledger replay``, ``demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.tree import Tree

from trustbus._cli_common import make_table

if TYPE_CHECKING:
    from rich.table import Table

    from trustbus.ledger import Incident, Step


def redecided_rows(incident: Incident, policy_file: Path) -> list[dict[str, Any]]:
    """Every envelope of ``incident`` decided again under the policy in ``policy_file``, beside what was recorded."""
    from trustbus.agents import Deferral, load_policy, redecide

    sent = [(s.seq, s.stored_ns, s.envelope, s.decisions[0] if s.decisions else None) for s in incident.steps]
    results = redecide(load_policy(policy_file), sent, incident.effects)
    rows = []
    for r in results:
        now = r.now
        rows.append(
            {
                "id": r.envelope.id,
                "sender": r.envelope.sender,
                "kind": r.envelope.kind,
                "recorded": None
                if r.recorded is None
                else {"verdict": r.recorded.verdict, "reasons": list(r.recorded.reasons)},
                "now": {"verdict": "defer", "reasons": ["rate_limit"]}
                if isinstance(now, Deferral)
                else {"verdict": now.verdict, "reasons": list(now.reasons)},
                "changed": r.changed,
            }
        )
    return rows


def redecided_table(rows: list[dict[str, Any]], heading: str) -> Table:
    """The rows of :func:`redecided_rows` as a table; ``heading`` names the new policy's column."""
    table = make_table("envelope", "sender", "kind", "recorded", heading, "changed")
    for row in rows:
        recorded = row["recorded"] or {"verdict": "-", "reasons": []}
        table.add_row(row["id"], row["sender"], row["kind"],
                      f"{recorded['verdict']} {','.join(recorded['reasons'])}",
                      f"{row['now']['verdict']} {','.join(row['now']['reasons'])}",
                      "[bold red]yes[/bold red]" if row["changed"] else "")  # fmt: skip
    return table


def _tree_label(step: Step) -> str:
    env = step.envelope
    taint = f" taint={','.join(env.taint)}" if env.taint else ""
    label = f"#{step.seq} [bold]{env.kind}[/bold] {env.sender} -> {','.join(env.to) or '-'} hop={env.hop}{taint}"
    for d in step.decisions:
        color = {"accept": "green", "reject": "red", "hold": "yellow"}[d.verdict]
        extra = f" by {d.approver}" if d.approver else ""
        effective = f" effective taint={','.join(d.effective_taint)}" if d.effective_taint else ""
        label += f"\n  [{color}]{d.verdict}[/{color}] {','.join(d.reasons) or 'ok'}{extra}{effective}"
    if step.deliveries:
        label += f"\n  delivered to {','.join(sorted(step.deliveries))}"
    for e in step.effects:
        label += f"\n  effect {e.tool} {e.phase}" + (f" taint={','.join(e.taint)}" if e.taint else "")
    if step.quarantined:
        label += f"\n  [red]quarantined[/red] {escape(step.quarantined)}"
    return label


def incident_tree(incident: Incident, title: str) -> Tree:
    """The incident as a rich tree: each envelope under its cause, with its decisions, deliveries and effects."""
    tree = Tree(title)

    def grow(branch: Tree, step: Step) -> None:
        node = branch.add(_tree_label(step))
        for child in step.children:
            grow(node, child)

    for root in incident.roots:
        grow(tree, root)
    return tree
