"""What runs as a process: the agent API and runtime, the coordinator and its policy."""

from agents._coordinator import Coordinator
from agents._decision import CoordinatorState, Decision, Deferral, Dropped, decide, decode_decision, encode_decision
from agents._errors import AgentError, PolicyError, RuntimeSetupError
from agents._policy import Limits, Policy, RateLimit, Rule, load_policy, parse_policy
from agents._runtime import Agent, Context, Handlers, connect_agent, read_checkpoint, run_agent

__all__ = [
    "Agent",
    "AgentError",
    "Context",
    "Coordinator",
    "CoordinatorState",
    "Decision",
    "Deferral",
    "Dropped",
    "Handlers",
    "Limits",
    "Policy",
    "PolicyError",
    "RateLimit",
    "Rule",
    "RuntimeSetupError",
    "connect_agent",
    "decide",
    "decode_decision",
    "encode_decision",
    "load_policy",
    "parse_policy",
    "read_checkpoint",
    "run_agent",
]
