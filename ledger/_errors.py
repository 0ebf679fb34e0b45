"""Errors raised by :mod:`ledger`.

The tree::

    LedgerError
    └── BundleError      an audit bundle is missing, unreadable or not a bundle
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error raised by :mod:`ledger`."""


class BundleError(LedgerError):
    """An audit bundle cannot be read."""
