"""The trustbus command."""
