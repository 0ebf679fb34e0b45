"""Recognising an agent written with another framework, loading that framework's adapter only then."""

from __future__ import annotations

from trustbus.agents import Agent


def framework_agent(found: object) -> Agent | None:
    """``found`` as a trustbus agent if it is an agent of a framework with an adapter; None otherwise."""
    package = type(found).__module__.partition(".")[0]
    if package == "pydantic_ai":
        from pydantic_ai import Agent as PydanticAgent

        from trustbus.adapters.pydantic_ai import on_bus

        if isinstance(found, PydanticAgent):
            return on_bus(found)
    if package == "agents":  # the OpenAI Agents SDK (trustbus's own agents are trustbus.agents)
        from agents import Agent as SDKAgent

        from trustbus.adapters.openai_agents import on_bus as sdk_on_bus

        if isinstance(found, SDKAgent):
            return sdk_on_bus(found)
    if package == "langgraph":
        from langgraph.graph.state import CompiledStateGraph

        from trustbus.adapters.langgraph import on_bus as graph_on_bus

        if isinstance(found, CompiledStateGraph):
            return graph_on_bus(found)
    return None
