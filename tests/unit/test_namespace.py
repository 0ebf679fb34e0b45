"""trustbus installs one top-level package, so it lives beside other libraries.

The folders ``bus/``, ``agents/`` and ``ledger/`` stay at the repository root
and are installed as ``trustbus.bus``, ``trustbus.agents`` and
``trustbus.ledger``. The OpenAI Agents SDK installs a top-level ``agents``
too; both must import in one environment.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("bus", "agents", "ledger")


def _run_isolated(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in this environment's Python, away from the repository root."""
    return subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_trustbus_and_the_openai_agents_sdk_import_in_one_environment(tmp_path: Path) -> None:
    code = (
        "import agents, trustbus.agents, trustbus.bus, trustbus.ledger\n"
        "print(agents.__file__)\n"
        "print(agents.Agent.__module__, agents.Runner.__name__)\n"
        "print(trustbus.agents.AgentError.__module__)\n"
    )
    result = _run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr
    sdk_file, sdk_agent, our_error = result.stdout.splitlines()
    assert Path(sdk_file).parent != ROOT / "agents"
    assert Path(sdk_file).parent.parent.name == "site-packages"
    assert sdk_agent == "agents.agent Runner"
    assert our_error == "trustbus.agents._errors"


def test_no_top_level_bus_agents_or_ledger_is_installed(tmp_path: Path) -> None:
    code = (
        "import importlib.util\n"
        "for name in ('bus', 'agents', 'ledger'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    print(name, spec.origin if spec else None)\n"
    )
    result = _run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr
    found = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert found["bus"] == "None" and found["ledger"] == "None"
    # The only `agents` is the SDK's, installed beside trustbus for this test.
    assert not found["agents"].startswith(str(ROOT / "agents"))


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_project_file_imports_a_layer_by_its_old_top_level_name() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = {
        name: sorted(set(LAYERS) & _top_level_imports(ROOT / name))
        for name in tracked
        if set(LAYERS) & _top_level_imports(ROOT / name)
    }
    assert len(tracked) > 150
    assert offenders == {}
