"""Errors raised by :mod:`agents`.

The tree::

    AgentError
    ├── PolicyError          a policy file is missing, unparsable or invalid
    └── RuntimeSetupError    an agent or coordinator cannot start (no consumer, no key, ...)
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised by :mod:`agents`."""


class PolicyError(AgentError):
    """A policy file could not be loaded; the message names the file, the field and the problem."""


class RuntimeSetupError(AgentError):
    """An agent or coordinator process cannot start."""
