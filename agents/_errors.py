"""Errors raised by :mod:`agents`.

The tree::

    AgentError
    ├── PolicyError          a policy file is missing, unparsable or invalid
    ├── RuntimeSetupError    an agent or coordinator cannot start (no consumer, no key, ...)
    ├── ToolRegistryError    a tool registry file is missing, unparsable or invalid
    ├── UnknownTool          a tool not in the registry, or with no implementation bound
    ├── EffectError          an effect's stored record cannot be trusted
    ├── EffectDenied         a tool call was refused: by the coordinator (held, then denied) or its MCP binding
    └── EffectHeld           a tool call the coordinator holds, made by a handler that does not wait for the answer
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trustbus.agents._held_calls import HeldCall


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


class EffectDenied(AgentError):
    """A tool call was refused, by the coordinator (a high-risk call under taint) or by its binding: it did not run.

    Attributes:
        reason: the stable reason code of the refusal: ``denied`` (an operator said no),
            ``tainted_high_risk`` (the policy rejects such calls outright), ``unknown_cause``, or
            ``mcp_tool_changed`` (the MCP server's tool is not the one approved: refused by its binding).
        tool: the tool that was not called.
        idempotency_key: the call's key.
        approver: the operator who denied it, if one did.
    """

    def __init__(self, message: str, *, reason: str, tool: str, idempotency_key: str, approver: str | None) -> None:
        """``message`` says what was refused and why."""
        super().__init__(message)
        self.reason = reason
        self.tool = tool
        self.idempotency_key = idempotency_key
        self.approver = approver

    @classmethod
    def refusing(
        cls, *, reason: str, tool: str, idempotency_key: str, approver: str | None = None, why: str = ""
    ) -> EffectDenied:
        """A refusal whose ``failed`` record reads back with its reason, so a re-execution refuses it again.

        ``why`` follows the standard message (what the tool's binding saw, what to do about it).
        """
        from trustbus.agents._effect_asks import denial_message  # it imports this module (through _policy)

        message = denial_message(reason=reason, approver=approver, tool=tool, key=idempotency_key)
        return cls(
            f"{message}: {why}" if why else message,
            reason=reason,
            tool=tool,
            idempotency_key=idempotency_key,
            approver=approver,
        )


class EffectHeld(AgentError):
    """The coordinator holds a tool call for an operator, and the handler asked not to wait (it did not run).

    Attributes:
        call: the held call, to keep (``call.as_json()``) until :meth:`agents.Agent.on_answer` is called with it.
    """

    def __init__(self, call: HeldCall) -> None:
        """``call``: the held call."""
        super().__init__(f"{call.tool} call {call.idempotency_key} is held for an operator; the tool was not called")
        self.call = call
