"""docs/FRAMEWORKS.md tells the truth about its examples: the diff it shows is theirs, and they run alone.

On the bus, examples/frameworks/pydantic_ai_after.py is run by tests/e2e/test_pydantic_ai.py.
"""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path

from trustbus.adapters.pydantic_ai import PydanticAIAgent

ROOT = Path(__file__).resolve().parents[2]
BEFORE, AFTER = "examples/frameworks/pydantic_ai_before.py", "examples/frameworks/pydantic_ai_after.py"


def test_the_diff_shown_is_the_diff_of_the_two_files_and_at_most_five_lines_change() -> None:
    doc = (ROOT / "docs" / "FRAMEWORKS.md").read_text()
    [shown] = re.findall(r"```diff\n(.*?)```", doc, flags=re.S)
    before, after = ((ROOT / p).read_text().splitlines(keepends=True) for p in (BEFORE, AFTER))
    assert shown == "".join(difflib.unified_diff(before, after, BEFORE, AFTER, n=1))
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
