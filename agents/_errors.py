"""Errors raised by :mod:`agents`.

The tree::

    AgentError
    ├── PolicyError          a policy file is missing, unparsable or invalid
    ├── RuntimeSetupError    an agent or coordinator cannot start (no consumer, no key, ...)
    ├── ToolRegistryError    a tool registry file is missing, unparsable or invalid
    ├── UnknownTool          a tool not in the registry, or with no implementation bound
    └── EffectError          an effect's stored record cannot be trusted
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised by :mod:`agents`."""


class PolicyError(AgentError):
    """A policy file could not be loaded; the message names the file, the field and the problem."""


class RuntimeSetupError(AgentError):
    """An agent or coordinator process cannot start."""


class ToolRegistryError(AgentError):
    """A tool registry could not be loaded; the message names the file, the field and the problem."""


class UnknownTool(AgentError):
    """A tool is not in the registry, or the agent has no implementation bound to it."""


class EffectError(AgentError):
    """The stored record of an effect does not verify or belongs to another call: nothing is run."""
