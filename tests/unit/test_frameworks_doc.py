"""docs/FRAMEWORKS.md tells the truth about its examples: the diffs it shows are theirs, and they run alone.

On the bus, examples/frameworks/<framework>_after.py is run by tests/e2e/test_<framework>.py.
"""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from agents import Runner
from langchain_core.messages import HumanMessage

from trustbus.adapters.langgraph import LangGraphAgent
from trustbus.adapters.openai_agents import OpenAIAgent
from trustbus.adapters.pydantic_ai import PydanticAIAgent

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("pydantic_ai", "openai_agents", "langgraph")


def test_each_diff_shown_is_the_diff_of_its_two_files_and_at_most_five_lines_change() -> None:
    doc = (ROOT / "docs" / "FRAMEWORKS.md").read_text()
    shown = re.findall(r"```diff\n--- (\S+)\n\+\+\+ (\S+)\n(.*?)```", doc, flags=re.S)
    assert [before for before, _, _ in shown] == [f"examples/frameworks/{name}_before.py" for name in EXAMPLES]
    for before_path, after_path, hunks in shown:
        before, after = ((ROOT / p).read_text().splitlines(keepends=True) for p in (before_path, after_path))
        diff = "".join(difflib.unified_diff(before, after, before_path, after_path, n=1))
        assert f"--- {before_path}\n+++ {after_path}\n{hunks}" == diff
        changed = [line for line in difflib.ndiff(before, after) if line[:1] in "+-"]
        assert len([line for line in changed if line.strip() not in "+-"]) <= 5, changed  # blank lines aside


async def test_the_pydantic_ai_example_runs_on_its_own_with_the_stand_in_model() -> None:
    before = importlib.import_module("examples.frameworks.pydantic_ai_before")
    after = importlib.import_module("examples.frameworks.pydantic_ai_after")
    for example in (before, after):
        looked_up = await example.support.run("Where is order A-1?")
        assert looked_up.output == "lookup_order: {'status': 'shipped', 'amount': 25}"
        refunded = await example.support.run("Please refund A-2")
        assert refunded.output.startswith("refund_order: {'refund_id': 'rf-1'")
    assert isinstance(after.app, PydanticAIAgent)


async def test_the_openai_agents_example_runs_on_its_own_with_the_stand_in_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    before = importlib.import_module("examples.frameworks.openai_agents_before")
    after = importlib.import_module("examples.frameworks.openai_agents_after")
    for example in (before, after):
        looked_up = await Runner.run(example.support, "Where is order A-1?")
        assert looked_up.final_output == "lookup_order: {'status': 'shipped', 'amount': 25}"
        refunded = await Runner.run(example.support, "Please refund A-2")
        assert refunded.final_output.startswith("refund_order: {'refund_id': 'rf-1'")
    assert isinstance(after.app, OpenAIAgent)


async def test_the_langgraph_example_runs_on_its_own_with_the_stand_in_model() -> None:
    before = importlib.import_module("examples.frameworks.langgraph_before")
    after = importlib.import_module("examples.frameworks.langgraph_after")
    for example in (before, after):
        config: Any = {"configurable": {"thread_id": "docs"}}
        looked_up = await example.support.ainvoke({"messages": [HumanMessage("Where is order A-1?")]}, config)
        assert looked_up["messages"][-1].content == "lookup_order: {'status': 'shipped', 'amount': 25}"
        refunded = await example.support.ainvoke({"messages": [HumanMessage("Please refund A-2")]}, config)
        assert refunded["messages"][-1].content.startswith("refund_order: {'refund_id': 'rf-1'")
    assert isinstance(after.app, LangGraphAgent)
