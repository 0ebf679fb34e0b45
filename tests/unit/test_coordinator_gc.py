"""The coordinator process's garbage collection: start-up frozen, thresholds raised (docs/PERFORMANCE.md)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from trustbus._process_cli import COORDINATOR_GC_THRESHOLDS, tune_gc_for_a_long_lived_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_is_frozen_and_collections_are_rarer() -> None:
    tune_gc_for_a_long_lived_heap()
    assert gc.get_freeze_count() > 0
    young, middle, old = gc.get_threshold()
    assert (young, middle, old) == COORDINATOR_GC_THRESHOLDS
    assert young > 700 and middle >= 10 and old >= 10  # never more often than CPython's defaults
