"""Logs on stderr: one JSON object per line, or human-readable lines on a terminal."""

from __future__ import annotations

import json
import logging
import sys
import time

from trustbus.bus import EnvelopeFields

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
LEVELS = ("debug", "info", "warning", "error", "critical")  # what --log-level accepts, any case
FORMATS = ("auto", "json", "text")  # what --log-format accepts: auto is text on a terminal, JSON otherwise


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _extra(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """Render a record and its ``extra`` fields as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as JSON."""
        fields: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update(_extra(record))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str)


class TextFormatter(logging.Formatter):
    """Render a record as ``time level logger: message key=value ...`` (fields that are None left out)."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` for a person."""
        fields = " ".join(f"{k}={v}" for k, v in _extra(record).items() if v is not None)
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line}  {fields}" if fields else line
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure(level: str = "WARNING", log_format: str = "auto") -> None:
    """Send trustbus logs to stderr: ``text``, ``json``, or (``auto``) text on a terminal and JSON otherwise."""
    handler = logging.StreamHandler()
    text = log_format == "text" or (log_format == "auto" and sys.stderr.isatty())
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    handler.addFilter(EnvelopeFields())
    root = logging.getLogger("trustbus")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
