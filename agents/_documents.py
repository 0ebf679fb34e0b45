"""Reading the YAML and TOML files people write (policies, tool registries), with errors that name the problem.

A file is parsed by its suffix (``.yaml``/``.yml`` or ``.toml``); pydantic
validation errors are turned into one line per problem,
``source: field.path: message``, so a mistake is found without reading a
traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trustbus.agents._errors import AgentError


def load_document(path: str | Path, *, what: str, error: type[AgentError]) -> Any:
    """The parsed content of a YAML or TOML file; an empty file is ``{}``.

    Args:
        path: a ``.yaml``, ``.yml`` or ``.toml`` file.
        what: what the file is, for messages (``"policy"``, ``"tool registry"``).
        error: the error class to raise, with a message naming the file and the problem.
    """
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise error(f"cannot read {what} {file}: {exc.strerror}") from exc
    suffix = file.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise error(f"{what} {file}: unknown format {suffix!r}; use .yaml, .yml or .toml")
    except yaml.YAMLError as exc:
        raise error(f"{what} {file} is not valid YAML: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {file} is not valid TOML: {exc}") from None
    return data if data is not None else {}


def problem(source: str, location: tuple[str | int, ...], message: str) -> str:
    """One problem as ``source: field.path: message`` (``(top level)`` for the whole document)."""
    return f"{source}: {'.'.join(str(part) for part in location) or '(top level)'}: {message}"


def validation_problems(exc: ValidationError, *, source: str) -> list[str]:
    """Every error of a pydantic validation, one :func:`problem` line each."""
    return [problem(source, tuple(error["loc"]), error["msg"]) for error in exc.errors()]
