"""docs/THREAT_MODEL.md names only tests that exist: every `tests/...::test_name` is a test function in that file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "THREAT_MODEL.md").read_text()
REFERENCE = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
REFERENCES = sorted(set(REFERENCE.findall(DOC)))


def defined_tests(path: Path) -> set[str]:
    """Names of the test functions defined at the top level of a test module (sync or async)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def test_the_threat_model_names_tests() -> None:
    assert len(REFERENCES) >= 20
    # Every threat section and the limits section are there.
    for heading in ("Memory poisoning", "Tool misuse", "Identity spoofing", "What the bus does not protect against"):
        assert f"\n## {heading}" in DOC


@pytest.mark.parametrize(("path", "name"), REFERENCES, ids=[f"{p}::{n}" for p, n in REFERENCES])
def test_every_named_test_exists(path: str, name: str) -> None:
    module = ROOT / path
    assert module.is_file(), f"docs/THREAT_MODEL.md names {path}, which does not exist"
    assert name in defined_tests(module), f"docs/THREAT_MODEL.md names {path}::{name}, which {path} does not define"
