"""agents package (built in later issues)."""

__all__: list[str] = []
