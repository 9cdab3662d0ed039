"""The collector's tuning for processes with thousands of live requests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shapes.collector import MANY_STREAMS_THRESHOLDS, tune_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    frozen = gc.get_freeze_count()
    yield
    gc.set_threshold(*thresholds)
    if not frozen:
        gc.unfreeze()


@pytest.mark.usefixtures("restored_collector")
def test_tuning_freezes_start_up_and_raises_the_thresholds() -> None:
    kept_from_start_up = [object(), []]  # alive when the program tunes the collector
    tune_garbage_collector()
    assert gc.get_threshold() == MANY_STREAMS_THRESHOLDS
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept_from_start_up[1] for obj in gc.get_objects())
    made_after: list[int] = []
    assert any(obj is made_after for obj in gc.get_objects())
