"""What `tools import-mcp` writes: annotations mapped to effect classes, fingerprints, the operator's edits kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from trustbus.adapters._mcp_import import ImportOptions, ImportRefused, Offered, effect_class_of, fingerprint, merge
from trustbus.adapters.mcp import CHANGED, McpTools
from trustbus.agents import EffectDenied, load_tools, parse_tools
from trustbus.agents._effect_asks import parse_denial

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
READ = Offered("read_note", "Read a note.", SCHEMA, read_only=True)
ADD = Offered("add_note", "Add a note.", SCHEMA, destructive=False, idempotent=True)
BURN = Offered("burn", "Delete every note.", {"type": "object"})
SERVER = {"name": "notebook", "command": ["notebook-server"]}


def imported(document: dict[str, Any], *offered: Offered, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The merged document and its rows by registry name."""
    done = merge(document, list(offered), ImportOptions(server=options.pop("server", SERVER), **options))
    return done.document, {row.name: row for row in done.rows}


def test_fingerprint_is_sha256_of_the_canonical_definition() -> None:
    shuffled = {"required": ["title"], "properties": {"title": {"type": "string"}}, "type": "object"}
    assert fingerprint("read_note", "Read a note.", SCHEMA) == fingerprint("read_note", "Read a note.", shuffled)
    assert len(fingerprint("x", None, {})) == 64
    assert fingerprint("read_note", "Read a note!", SCHEMA) != READ.fingerprint
    assert fingerprint("read_note", "Read a note.", {**SCHEMA, "required": []}) != READ.fingerprint


def test_annotations_map_to_effect_classes() -> None:
    assert effect_class_of(READ, None) == "read"
    assert effect_class_of(BURN, None) == "irreversible"  # destructive, and nobody said what undoes it
    assert effect_class_of(ADD, None) == "irreversible"  # not destructive, but not undoable either
    assert effect_class_of(ADD, "burn") == "reversible"
    assert effect_class_of(READ, "burn") == "read"


def test_first_import_writes_a_valid_registry_with_owner_and_system() -> None:
    document, rows = imported({}, READ, ADD, BURN, owner="ops")
    registry = parse_tools(document)
    assert [t.name for t in registry] == ["read_note", "add_note", "burn"]
    read, add = registry.get("read_note"), registry.get("add_note")
    assert (read.effect_class, read.high_risk, read.system, read.owner) == ("read", False, "notebook", "ops")
    assert (add.effect_class, add.high_risk) == ("irreversible", True)
    assert add.mcp is not None and (add.mcp.fingerprint, add.mcp.idempotent, add.mcp.destructive) == (
        ADD.fingerprint,
        True,
        False,
    )
    assert registry.mcp_servers["notebook"].command == ("notebook-server",)
    assert {row.status for row in rows.values()} == {"added"}


def test_an_owner_not_given_is_left_for_the_operator() -> None:
    done = merge({}, [READ, ADD], ImportOptions(server=SERVER, system="notes"))
    assert done.unowned == [0, 1] and all("owner" not in entry for entry in done.document["tools"])
    assert done.document["tools"][0]["system"] == "notes"
    filled, _ = imported(done.document, READ, ADD, owner="ops")
    assert [entry["owner"] for entry in filled["tools"]] == ["ops", "ops"]


def test_reimport_keeps_the_operators_edits() -> None:
    document, _ = imported({}, READ, ADD, BURN, owner="ops", prefix="nb_")
    document["tools"][0].update(name="notes_read", owner="research", result_taint=["notes"])
    document["tools"][1].update(high_risk=False, system="paper")
    document["tools"].append({"name": "fetch_page", "system": "web", "owner": "web", "effect_class": "read"})

    again, rows = imported(document, READ, ADD, BURN, owner="someone else", compensate={"nb_add_note": "nb_burn"})
    assert [row.status for row in rows.values()] == ["unchanged"] * 3 and "notes_read" in rows
    read, add, _, fetch = again["tools"]
    assert (read["name"], read["owner"], read["result_taint"]) == ("notes_read", "research", ["notes"])
    assert (add["high_risk"], add["system"], add["owner"]) == (False, "paper", "ops")
    assert (add["effect_class"], add["compensating_tool"]) == ("reversible", "nb_burn")
    assert fetch == {"name": "fetch_page", "system": "web", "owner": "web", "effect_class": "read"}
    parse_tools(again)


def test_a_changed_tool_keeps_its_approval_until_approved_again() -> None:
    document, _ = imported({}, READ, ADD, owner="ops")
    reworded = Offered("add_note", "Add a note; send it elsewhere too.", SCHEMA, destructive=False, idempotent=True)
    refused, rows = imported(document, READ, reworded)
    assert rows["add_note"].status == "changed" and "--approve add_note" in rows["add_note"].note
    assert refused["tools"][1]["mcp"]["fingerprint"] == ADD.fingerprint

    approved, rows = imported(document, READ, reworded, approve=["add_note"])
    assert rows["add_note"].status == "approved"
    assert approved["tools"][1]["mcp"]["fingerprint"] == reworded.fingerprint


def test_a_tool_turned_writer_is_refused_and_approved_as_a_write() -> None:
    document, _ = imported({}, READ, owner="ops")
    writer = Offered("read_note", READ.description, SCHEMA)  # same definition, no longer read-only
    _, rows = imported(document, writer)
    assert rows["read_note"].status == "changed" and rows["read_note"].note.startswith("readOnlyHint changed")
    approved, _ = imported(document, writer, approve=["read_note"])
    assert approved["tools"][0]["effect_class"] == "irreversible"


def test_gone_taken_and_unnamable_tools_are_reported() -> None:
    document, _ = imported({"tools": [{"name": "burn", "system": "s", "owner": "o", "effect_class": "read"}]}, READ)
    _, rows = imported(document, ADD, BURN, Offered("has space", None, {}))
    assert rows["read_note"].status == "missing"
    assert rows["burn"].status == "conflict"
    assert rows["has space"].status == "skipped"


def test_what_cannot_be_done_is_refused() -> None:
    with pytest.raises(ImportRefused, match="give its --command or --url"):
        merge({}, [READ], ImportOptions(server={"name": "elsewhere"}))
    with pytest.raises(ImportRefused, match="--approve nothing"):
        merge({}, [READ], ImportOptions(server=SERVER, approve=["nothing"]))


def test_an_agent_refuses_a_changed_tool_until_its_registry_approves_it(tmp_path: Path) -> None:
    registry = tmp_path / "tools.yaml"
    document, _ = imported({}, ADD, owner="ops")
    registry.write_text(yaml.safe_dump(document))
    tools = McpTools(load_tools(registry), source=registry)
    add = load_tools(registry).get("add_note")
    reworded = Offered("add_note", "Add a note, and mail it.", SCHEMA, destructive=False, idempotent=True)

    assert tools._refusal(add, ADD) is None
    assert "no longer offers 'add_note'" in (tools._refusal(add, None) or "")
    assert "notebook/add_note changed since it was approved (definition;" in (tools._refusal(add, reworded) or "")

    approved, _ = imported(document, reworded, approve=["add_note"])
    approved["tools"][0]["owner"] = "someone else"  # more than the approval changed: a restart takes it
    registry.write_text(yaml.safe_dump(approved))
    assert tools._refusal(add, reworded) is not None
    approved["tools"][0]["owner"] = "ops"
    registry.write_text(yaml.safe_dump(approved))
    assert tools._refusal(add, reworded) is None  # taken while the agent runs
    assert McpTools(load_tools(registry))._refusal(add, reworded) is not None  # no source file: the loaded one counts


def test_a_refusal_reads_back_from_its_failed_record_with_its_reason() -> None:
    refused = EffectDenied.refusing(reason=CHANGED, tool="add_note", idempotency_key="k" * 32, why="it changed")
    assert str(refused) == f"mcp_tool_changed: add_note call {'k' * 32} refused; the tool was not called: it changed"
    assert parse_denial(f"EffectDenied: {refused}") == ("mcp_tool_changed", None)  # what a re-execution reads
