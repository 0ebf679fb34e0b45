"""The tool registry (validation names the field), bindings, idempotency keys and effect subjects."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from trustbus.agents import (
    Agent,
    RuntimeSetupError,
    Toolbox,
    ToolImplementation,
    ToolRegistryError,
    UnknownTool,
    idempotency_key,
    load_tools,
    parse_tools,
)
from trustbus.agents._process import bind_tools
from trustbus.bus import ConfigError, EffectRecord, decode_effect, encode_effect, subjects

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str, effect_class: str = "read", **fields: Any) -> dict[str, Any]:
    return {"name": name, "system": "payments", "owner": "billing-team", "effect_class": effect_class, **fields}


def problems(data: Any) -> str:
    with pytest.raises(ToolRegistryError) as caught:
        parse_tools(data, source="tools.yaml")
    return str(caught.value)


def test_example_registry_loads() -> None:
    registry = load_tools(ROOT / "examples" / "tools.yaml")
    assert registry.get("fetch_page").result_taint == ("web",)
    assert registry.get("llm_complete").result_taint == ("llm",)
    refund = registry.get("issue_refund")
    assert (refund.effect_class, refund.compensating_tool, refund.high_risk) == ("reversible", "charge_back", True)
    assert registry.get("charge_back").compensating_tool == "issue_refund"
    assert registry.get("send_email").effect_class == "irreversible"


def test_toml_registry_loads(tmp_path: Path) -> None:
    file = tmp_path / "tools.toml"
    file.write_text(
        '[[tools]]\nname = "fetch_page"\nsystem = "web"\nowner = "research"\n'
        'effect_class = "read"\nresult_taint = ["web", "web"]\n'
    )
    registry = load_tools(file)
    assert [t.name for t in registry] == ["fetch_page"] and registry.get("fetch_page").result_taint == ("web",)


def test_reversible_tool_without_compensating_tool_names_the_field() -> None:
    message = problems({"tools": [tool("issue_refund", "reversible")]})
    assert "tools.yaml: tools.0.compensating_tool: " in message and "reversible tool needs" in message


def test_unknown_compensating_tool_names_the_field() -> None:
    message = problems({"tools": [tool("read_it"), tool("issue_refund", "reversible", compensating_tool="undo")]})
    assert "tools.yaml: tools.1.compensating_tool: 'undo' is not a tool in this registry" in message


def test_bad_taint_label_names_the_field() -> None:
    message = problems({"tools": [tool("fetch_page", result_taint=["web page"])]})
    assert "tools.yaml: tools.0.result_taint: " in message and "'web page' is not a taint label" in message


@pytest.mark.parametrize(
    ("tools", "where", "what"),
    [
        ([tool("lookup", compensating_tool="x")], "tools.0.compensating_tool", "only a reversible tool has one"),
        ([tool("mail", "irreversible", compensating_tool="x")], "tools.0.compensating_tool", "only a reversible"),
        ([tool("undo", "reversible", compensating_tool="undo")], "tools.0.compensating_tool", "another tool"),
        (
            [tool("lookup"), tool("refund", "reversible", compensating_tool="lookup")],
            "tools.1.compensating_tool",
            "'lookup' is a read tool",
        ),
        ([tool("twice"), tool("twice")], "tools.1.name", "listed twice"),
        ([tool("a.b")], "tools.0.name", "is not a tool name"),
        ([tool("x", "delete")], "tools.0.effect_class", "Input should be"),
        ([tool("x", colour="red")], "tools.0.colour", "Extra inputs are not permitted"),
        ([{"name": "x", "effect_class": "read"}], "tools.0.system", "Field required"),
    ],
)
def test_every_problem_names_its_field(tools: list[dict[str, Any]], where: str, what: str) -> None:
    assert re.search(rf"tools\.yaml: {re.escape(where)}: .*{re.escape(what)}", problems({"tools": tools}))


def test_a_compensating_pair_may_name_each_other() -> None:
    registry = parse_tools(
        {
            "tools": [
                tool("issue_refund", "reversible", compensating_tool="charge_back"),
                tool("charge_back", "reversible", compensating_tool="issue_refund"),
                tool("void", "irreversible"),
                tool("hold", "reversible", compensating_tool="void"),
            ]
        }
    )
    assert len(registry) == 4 and "void" in registry


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("tools.yaml", "tools: [unclosed", "is not valid YAML"),
        ("tools.toml", "tools = [", "is not valid TOML"),
        ("tools.json", "{}", "unknown format '.json'"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, name: str, text: str, problem: str) -> None:
    file = tmp_path / name
    file.write_text(text)
    with pytest.raises(ToolRegistryError, match=re.escape(problem)) as caught:
        load_tools(file)
    assert str(file) in str(caught.value)
    with pytest.raises(ToolRegistryError, match="cannot read tool registry"):
        load_tools(tmp_path / "missing.yaml")


MCP_SERVER = {"name": "notebook", "command": ["notebook-server", "--quiet"]}
FINGERPRINT = "ab" * 32


def served(name: str, effect_class: str = "read", **mcp: Any) -> dict[str, Any]:
    return tool(name, effect_class, mcp={"server": "notebook", "tool": name, "fingerprint": FINGERPRINT, **mcp})


def test_mcp_servers_and_served_tools_load() -> None:
    http = {"name": "remote", "url": "https://tools.example/mcp"}
    registry = parse_tools({"mcp_servers": [MCP_SERVER, http], "tools": [served("read_note"), tool("local")]})
    assert registry.mcp_servers["notebook"].command == ("notebook-server", "--quiet")
    assert registry.mcp_servers["remote"].url == "https://tools.example/mcp"
    binding = registry.get("read_note").mcp
    assert binding is not None and (binding.server, binding.fingerprint, binding.destructive) == (
        "notebook",
        FINGERPRINT,
        True,
    )
    assert registry.get("local").mcp is None


@pytest.mark.parametrize(
    ("servers", "tools", "where", "what"),
    [
        ([MCP_SERVER], [served("x", fingerprint="sha256:ab")], "tools.0.mcp.fingerprint", "64 lowercase hex"),
        ([MCP_SERVER], [served("x", server="elsewhere")], "tools.0.mcp.server", "'elsewhere' is not in mcp_servers"),
        ([], [served("x")], "tools.0.mcp.server", "(listed: none)"),
        ([MCP_SERVER], [served("x", tool="")], "tools.0.mcp.tool", "at least 1 character"),
        ([MCP_SERVER], [served("x", hint=True)], "tools.0.mcp.hint", "Extra inputs are not permitted"),
        ([{"name": "s"}], [], "mcp_servers.0.url", "either a command (stdio) or a url"),
        ([{**MCP_SERVER, "url": "http://h/mcp"}], [], "mcp_servers.0.url", "not both or neither"),
        ([{"name": "s", "url": "ftp://h"}], [], "mcp_servers.0.url", "not an http:// or https:// URL"),
        ([{"name": "s", "command": []}], [], "mcp_servers.0.command", "at least 1 item"),
        ([{"name": "a b", "url": "http://h"}], [], "mcp_servers.0.name", "is not a server name"),
        ([MCP_SERVER, MCP_SERVER], [], "mcp_servers.1.name", "listed twice"),
    ],
)
def test_every_mcp_problem_names_its_field(
    servers: list[dict[str, Any]], tools: list[dict[str, Any]], where: str, what: str
) -> None:
    assert re.search(
        rf"tools\.yaml: {re.escape(where)}: .*{re.escape(what)}", problems({"mcp_servers": servers, "tools": tools})
    )


def test_agent_may_not_implement_a_tool_an_mcp_server_serves(tmp_path: Path) -> None:
    registry = tmp_path / "tools.yaml"
    registry.write_text(yaml.safe_dump({"mcp_servers": [MCP_SERVER], "tools": [served("fetch_page")]}))

    class Fetcher(Agent):
        tools: Mapping[str, ToolImplementation] = {"fetch_page": _noop}

    with pytest.raises(RuntimeSetupError, match=r"an MCP server serves \(fetch_page\)"):
        bind_tools(Fetcher(), registry)
    assert bind_tools(Agent(), registry) is not None


async def _noop(args: dict[str, Any], *, idempotency_key: str) -> None:
    return None


def test_unknown_tools_are_named() -> None:
    registry = parse_tools({"tools": [tool("fetch_page"), tool("send_email", "irreversible")]})
    with pytest.raises(UnknownTool, match=r"'wire_money' is not in the registry \(known: fetch_page, send_email\)"):
        registry.get("wire_money")
    with pytest.raises(UnknownTool, match="'wire_money'"):
        Toolbox(registry, {"wire_money": _noop})
    box = Toolbox(registry, {"fetch_page": _noop})
    assert box.bound("fetch_page") == (registry.get("fetch_page"), _noop)
    with pytest.raises(UnknownTool, match="no implementation"):
        box.bound("send_email")


def test_agent_with_tools_needs_a_registry() -> None:
    class Fetcher(Agent):
        tools: Mapping[str, ToolImplementation] = {"fetch_page": _noop}

    with pytest.raises(RuntimeSetupError, match="--tools FILE"):
        bind_tools(Fetcher(), None)
    assert bind_tools(Agent(), None) is None
    assert bind_tools(Fetcher(), ROOT / "examples" / "tools.yaml") is not None


def test_idempotency_keys_are_stable_and_distinct() -> None:
    key = idempotency_key("env-1", "issue_refund", {"order": 7, "amount": 12}, 0)
    assert key == idempotency_key("env-1", "issue_refund", {"amount": 12, "order": 7}, 0)  # argument order is moot
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    others = {
        idempotency_key("env-2", "issue_refund", {"order": 7, "amount": 12}, 0),  # another delivery
        idempotency_key("env-1", "charge_back", {"order": 7, "amount": 12}, 0),  # another tool
        idempotency_key("env-1", "issue_refund", {"order": 8, "amount": 12}, 0),  # other arguments
        idempotency_key("env-1", "issue_refund", {"order": 7, "amount": 12}, 1),  # the handler's second call
    }
    assert len(others) == 4 and key not in others
    assert subjects.effect_record("acme", "billing", 0, key) == f"tb.acme.effect.billing.0.{key}"


@pytest.mark.parametrize("key", ["", "a.b", "*", ">", "k" * 65, "white space"])
def test_effect_subject_refuses_keys_that_would_widen_it(key: str) -> None:
    with pytest.raises(ConfigError, match="invalid effect idempotency key"):
        subjects.effect_record("acme", "billing", 0, key)


def test_effect_record_round_trips() -> None:
    record = EffectRecord(
        phase="completed",
        tool="fetch_page",
        idempotency_key="k1",
        args=b'{"url":"https://example.org"}',
        result=b'{"text":"hi"}',
        effect_class="read",
        taint=("web",),
    )
    assert decode_effect(encode_effect(record)) == record
