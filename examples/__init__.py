"""Example agents and policy."""
