"""The garbage collector as `fleet-bridge run` leaves it once the app is built."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bridge.service import GC_YOUNG_THRESHOLD, settle_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(restored_gc: None) -> None:
    _, middle, old = gc.get_threshold()
    held = [object() for _ in range(3)]  # something alive from before, like start-up state
    settle_garbage_collector()
    assert gc.get_freeze_count() >= len(held)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, old)
    # A cycle made afterwards is still collected: only start-up state is set aside.
    cycle: list[object] = []
    cycle.append(cycle)
    gc.collect()  # settles anything pending first
    del cycle
    assert gc.collect() >= 1
