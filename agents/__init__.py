"""What runs as a process: the agent API and runtime, the coordinator and its policy."""

from trustbus.agents._coordinator import Coordinator
from trustbus.agents._decision import CoordinatorState, Deferral, decide
from trustbus.agents._effects import idempotency_key
from trustbus.agents._errors import (
    AgentError,
    EffectDenied,
    EffectError,
    PolicyError,
    RuntimeSetupError,
    ToolRegistryError,
    UnknownTool,
)
from trustbus.agents._policy import Limits, Policy, RateLimit, Rule, load_policy, parse_policy
from trustbus.agents._runtime import Agent, Context, Handlers, connect_agent, read_checkpoint, run_agent
from trustbus.agents._tools import Tool, Toolbox, ToolImplementation, ToolRegistry, load_tools, parse_tools

__all__ = [
    "Agent",
    "AgentError",
    "Context",
    "Coordinator",
    "CoordinatorState",
    "Deferral",
    "EffectDenied",
    "EffectError",
    "Handlers",
    "Limits",
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
    "connect_agent",
    "decide",
    "idempotency_key",
    "load_policy",
    "load_tools",
    "parse_policy",
    "parse_tools",
    "read_checkpoint",
    "run_agent",
]
