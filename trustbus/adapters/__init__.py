"""Adapters that put agents and tools written for other frameworks on the bus; each needs its own extra."""
