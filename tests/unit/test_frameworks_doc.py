"""docs/FRAMEWORKS.md tells the truth about its examples: the diffs it shows are theirs, and they run alone.

On the bus, examples/frameworks/pydantic_ai_after.py is run by tests/e2e/test_pydantic_ai.py, and
examples/frameworks/langgraph_after.py by tests/e2e/test_langgraph.py.
"""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from trustbus.adapters.langgraph import LangGraphAgent
from trustbus.adapters.pydantic_ai import PydanticAIAgent

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("pydantic_ai", "langgraph")


@pytest.mark.parametrize("framework", EXAMPLES)
def test_the_diff_shown_is_the_diff_of_the_two_files_and_at_most_five_lines_change(framework: str) -> None:
    before_file, after_file = (f"examples/frameworks/{framework}_{when}.py" for when in ("before", "after"))
    doc = (ROOT / "docs" / "FRAMEWORKS.md").read_text()
    diffs = re.findall(r"```diff\n(.*?)```", doc, flags=re.S)
    assert len(diffs) == len(EXAMPLES)
    [shown] = [diff for diff in diffs if diff.startswith(f"--- {before_file}\n")]
    before, after = ((ROOT / p).read_text().splitlines(keepends=True) for p in (before_file, after_file))
    assert shown == "".join(difflib.unified_diff(before, after, before_file, after_file, n=1))
    changed = [line for line in difflib.ndiff(before, after) if line[:1] in "+-"]
    assert len([line for line in changed if line.strip() not in "+-"]) <= 5, changed  # blank lines aside


async def test_both_run_on_their_own_with_the_stand_in_model() -> None:
    before = importlib.import_module("examples.frameworks.pydantic_ai_before")
    after = importlib.import_module("examples.frameworks.pydantic_ai_after")
    for example in (before, after):
        looked_up = await example.support.run("Where is order A-1?")
        assert looked_up.output == "lookup_order: {'status': 'shipped', 'amount': 25}"
        refunded = await example.support.run("Please refund A-2")
        assert refunded.output.startswith("refund_order: {'refund_id': 'rf-1'")
    assert isinstance(after.app, PydanticAIAgent)


async def test_both_graphs_run_on_their_own_with_the_stand_in_model() -> None:
    before = importlib.import_module("examples.frameworks.langgraph_before")
    after = importlib.import_module("examples.frameworks.langgraph_after")
    for example in (before, after):
        config: Any = {"configurable": {"thread_id": "docs"}}
        looked_up = await example.support.ainvoke({"messages": [HumanMessage("Where is order A-1?")]}, config)
        assert looked_up["messages"][-1].content == "lookup_order: {'status': 'shipped', 'amount': 25}"
        refunded = await example.support.ainvoke({"messages": [HumanMessage("Please refund A-2")]}, config)
        assert refunded["messages"][-1].content.startswith("refund_order: {'refund_id': 'rf-1'")
    assert isinstance(after.app, LangGraphAgent)
