"""Errors raised by :mod:`ledger`.

The tree::

    LedgerError
    ├── BundleError      an audit bundle is missing, unreadable or not a bundle
    ├── ArchiveError     an archive cannot be written or read, or a purge is refused
    ├── ProjectionError  a projection directory is missing, damaged, or of another tenant
    ├── QueryError       a query is not valid SQL over the projection (carries DuckDB's message)
    └── ServiceError     the ledger service cannot start (e.g. its key has another role)
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error raised by :mod:`ledger`."""


class BundleError(LedgerError):
    """An audit bundle cannot be read."""


class ArchiveError(LedgerError):
    """An archive cannot be written or read, or a purge of the live stream is refused (the message says why)."""


class ProjectionError(LedgerError):
    """A projection directory cannot be used."""


class QueryError(LedgerError):
    """A query over the projection failed; the message is DuckDB's."""


class ServiceError(LedgerError):
    """The ledger service cannot start."""
