"""Agents written with other frameworks, and tools served by other protocols, on the bus.

Each adapter is its own module with its own optional extra (``pip install 'trustbus[pydantic-ai]'``);
importing this package loads none of them.
"""
