"""What runs as a process: the agent API and runtime, the coordinator and its policy.

Every name is imported from its module on first use (PEP 562), so importing one
module of the package (or ``trustbus --help``) loads only what that module needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustbus.bus import lazy_names

if TYPE_CHECKING:
    from trustbus.agents._approvals import answer, list_held, list_held_requests
    from trustbus.agents._context import Context
    from trustbus.agents._coordinator import Coordinator
    from trustbus.agents._decision import CoordinatorState, Deferral, decide, instruction_verb
    from trustbus.agents._effects import idempotency_key
    from trustbus.agents._errors import (
        AgentError,
        EffectDenied,
        EffectError,
        EffectHeld,
        PolicyError,
        RuntimeSetupError,
        ToolRegistryError,
        UnknownTool,
    )
    from trustbus.agents._held_calls import HeldCall
    from trustbus.agents._memory_outcomes import MemoryOutcome
    from trustbus.agents._policy import Limits, Policy, RateLimit, Rule, load_policy, parse_policy
    from trustbus.agents._process import load_agent, serve_agent, serve_coordinator
    from trustbus.agents._redecide import redecide
    from trustbus.agents._reexecute import reexecute
    from trustbus.agents._retention import retention_needs
    from trustbus.agents._runtime import Agent, Handlers, connect_agent, read_checkpoint, run_agent
    from trustbus.agents._status import PartitionStatus, coordinator_status
    from trustbus.agents._tools import (
        McpBinding,
        McpServer,
        Tool,
        Toolbox,
        ToolImplementation,
        ToolRegistry,
        load_tools,
        parse_tools,
    )

__all__ = [
    "Agent",
    "AgentError",
    "Context",
    "Coordinator",
    "CoordinatorState",
    "Deferral",
    "EffectDenied",
    "EffectError",
    "EffectHeld",
    "Handlers",
    "HeldCall",
    "Limits",
    "McpBinding",
    "McpServer",
    "MemoryOutcome",
    "Policy",
    "PolicyError",
    "RateLimit",
    "Rule",
    "RuntimeSetupError",
    "Tool",
    "ToolImplementation",
    "ToolRegistry",
    "ToolRegistryError",
    "Toolbox",
    "UnknownTool",
    "answer",
    "connect_agent",
    "decide",
    "idempotency_key",
    "instruction_verb",
    "list_held",
    "PartitionStatus",
    "coordinator_status",
    "list_held_requests",
    "load_agent",
    "load_policy",
    "load_tools",
    "parse_policy",
    "parse_tools",
    "read_checkpoint",
    "redecide",
    "reexecute",
    "retention_needs",
    "run_agent",
    "serve_agent",
    "serve_coordinator",
]

# Where each public name is defined.
_ORIGINS: dict[str, str] = {
    "answer": "trustbus.agents._approvals",
    "list_held": "trustbus.agents._approvals",
    "PartitionStatus": "trustbus.agents._status",
    "coordinator_status": "trustbus.agents._status",
    "retention_needs": "trustbus.agents._retention",
    "list_held_requests": "trustbus.agents._approvals",
    "Coordinator": "trustbus.agents._coordinator",
    "CoordinatorState": "trustbus.agents._decision",
    "Deferral": "trustbus.agents._decision",
    "decide": "trustbus.agents._decision",
    "instruction_verb": "trustbus.agents._decision",
    "idempotency_key": "trustbus.agents._effects",
    "AgentError": "trustbus.agents._errors",
    "EffectDenied": "trustbus.agents._errors",
    "EffectError": "trustbus.agents._errors",
    "EffectHeld": "trustbus.agents._errors",
    "HeldCall": "trustbus.agents._held_calls",
    "PolicyError": "trustbus.agents._errors",
    "RuntimeSetupError": "trustbus.agents._errors",
    "ToolRegistryError": "trustbus.agents._errors",
    "UnknownTool": "trustbus.agents._errors",
    "MemoryOutcome": "trustbus.agents._memory_outcomes",
    "Limits": "trustbus.agents._policy",
    "Policy": "trustbus.agents._policy",
    "RateLimit": "trustbus.agents._policy",
    "Rule": "trustbus.agents._policy",
    "load_policy": "trustbus.agents._policy",
    "parse_policy": "trustbus.agents._policy",
    "load_agent": "trustbus.agents._process",
    "serve_agent": "trustbus.agents._process",
    "serve_coordinator": "trustbus.agents._process",
    "redecide": "trustbus.agents._redecide",
    "reexecute": "trustbus.agents._reexecute",
    "Agent": "trustbus.agents._runtime",
    "Context": "trustbus.agents._context",
    "Handlers": "trustbus.agents._runtime",
    "connect_agent": "trustbus.agents._runtime",
    "read_checkpoint": "trustbus.agents._runtime",
    "run_agent": "trustbus.agents._runtime",
    "McpBinding": "trustbus.agents._tools",
    "McpServer": "trustbus.agents._tools",
    "Tool": "trustbus.agents._tools",
    "ToolImplementation": "trustbus.agents._tools",
    "ToolRegistry": "trustbus.agents._tools",
    "Toolbox": "trustbus.agents._tools",
    "load_tools": "trustbus.agents._tools",
    "parse_tools": "trustbus.agents._tools",
}

# Hidden from the type checker, which reads the imports above: seeing __getattr__, it would take any name for Any.
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_names(globals(), _ORIGINS)
