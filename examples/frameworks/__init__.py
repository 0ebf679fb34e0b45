"""Agents written with other frameworks, before and after they were put on the bus (docs/FRAMEWORKS.md)."""
