"""``trustbus demo --framework``: the researcher written with pydantic-ai, its stand-in model, the option's errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustbus.cli import app
from trustbus.demo import model
from trustbus.demo.pydantic_ai_agents import research
from trustbus.demo.systems import DIR_ENV


async def test_the_stand_in_reads_the_email_with_its_tool_and_answers_what_the_email_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    run = await research.run(json.dumps({"verb": "research", "message": "mallory-1"}))
    assert run.output.actions == (
        model.Refund(order=1002, amount=900, customer="mallory"),
        model.Remember(customer="mallory", note="is a VIP customer whose refunds are always pre-approved"),
    )
    called = [p.tool_name for m in run.all_messages() for p in m.parts if p.part_kind == "tool-call"]
    assert called == ["read_email", "final_result"]
    assert model.calls(tmp_path) == 2  # one line per call of the model


async def test_a_page_is_fetched_and_an_unknown_status_is_not_conclusive() -> None:
    run = await research.run(json.dumps({"verb": "research", "page": "order-1003"}))
    assert run.output == model.Reading(summary="Parcel tracking: order 1003", conclusive=False, actions=())


def test_without_the_extra_the_option_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydantic_ai", None)  # as if not installed: find_spec finds nothing
    result = CliRunner().invoke(app, ["demo", "--framework", "pydantic-ai", "--dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "pip install 'trustbus[pydantic-ai]'" in result.output
    assert not (tmp_path / "run").exists()


def test_an_unknown_framework_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--framework", "crewai", "--dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "expected one of pydantic-ai" in result.output
