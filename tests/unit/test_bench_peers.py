"""bench/peers.py's AutoGen venv: reused only when it was made with exactly the pinned requirements."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peers import REQUIREMENTS, default_venv, is_complete


def test_a_venv_is_reused_only_with_its_marker_naming_the_pins(tmp_path: Path) -> None:
    venv = tmp_path / "autogen"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    assert not is_complete(venv)  # made by hand, or a pip install cut short: made again
    (venv / "requirements.txt").write_text("autogen-core==0.7.4\n")
    assert not is_complete(venv)
    (venv / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    assert is_complete(venv)


def test_the_cache_directory_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTBUS_BENCH_CACHE", str(tmp_path))
    assert default_venv() == tmp_path / "autogen-0.7.5"
    monkeypatch.delenv("TRUSTBUS_BENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_venv() == tmp_path / "xdg" / "trustbus-bench" / "autogen-0.7.5"
