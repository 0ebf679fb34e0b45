"""Errors raised by :mod:`ledger`.

The tree::

    LedgerError
    ├── BundleError      an audit bundle is missing, unreadable or not a bundle
    ├── ProjectionError  a projection directory is missing, damaged, or of another tenant
    ├── QueryError       a query is not valid SQL over the projection (carries DuckDB's message)
    └── ServiceError     the ledger service cannot start (e.g. its key has another role)
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error raised by :mod:`ledger`."""


class BundleError(LedgerError):
    """An audit bundle cannot be read."""


class ProjectionError(LedgerError):
    """A projection directory cannot be used."""


class QueryError(LedgerError):
    """A query over the projection failed; the message is DuckDB's."""


class ServiceError(LedgerError):
    """The ledger service cannot start."""
