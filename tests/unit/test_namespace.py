"""trustbus installs one top-level package, so it lives beside other libraries.

The folders ``bus/``, ``agents/`` and ``ledger/`` stay at the repository root
and are installed as ``trustbus.bus``, ``trustbus.agents`` and
``trustbus.ledger``. The OpenAI Agents SDK installs a top-level ``agents``
too; both must import in one environment, and a project file that imports
``agents`` means the SDK's.
"""

import ast
import importlib
import importlib.util
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


def test_an_agent_module_loaded_from_the_repository_root_imports_the_sdk() -> None:
    """``trustbus agent run`` (``python -m trustbus``) from the root, where agents/ is trustbus's own folder."""
    code = (
        "import sys; from trustbus.agents import load_agent\n"
        "from trustbus.adapters._frameworks import framework_agent\n"
        "agent = load_agent('tests.e2e.oai_agents:agent', adapt=framework_agent)\n"
        "print(type(agent).__name__, sys.modules['agents'].__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    adapted, sdk_file = result.stdout.split()
    assert adapted == "OpenAIAgent" and not sdk_file.startswith(str(ROOT / "agents"))


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
    """The top-level names ``path`` imports; ``agents`` only if it imports something the SDK's ``agents`` lacks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names if not _the_sdks(alias.name, None))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not all(_the_sdks(node.module, alias.name) for alias in node.names):
                names.add(node.module.split(".")[0])
    return names


def _the_sdks(module: str, name: str | None) -> bool:
    """Whether ``module`` (and ``name`` in it) is the OpenAI Agents SDK's, the one other top-level ``agents``."""
    if module.split(".")[0] != "agents":
        return False
    try:
        found = importlib.import_module(module)  # under pytest, `agents` is the SDK (tests/conftest.py)
    except ImportError:
        return False
    return name is None or hasattr(found, name) or importlib.util.find_spec(f"{module}.{name}") is not None


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
    assert "agents" not in _top_level_imports(ROOT / "trustbus" / "adapters" / "openai_agents.py")  # the SDK's
    assert not _the_sdks("agents", "Handlers")  # trustbus.agents's, by its old name: an offender
