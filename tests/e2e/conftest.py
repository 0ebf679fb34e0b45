"""Fixtures for process tests."""

from tests.e2e.fleet import fleet

__all__ = ["fleet"]
