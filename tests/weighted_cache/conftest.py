"""Shared fixtures for the weighted_cache tests."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from tests.conftest import FakeClock
from weighted_cache.sketch import FrequencySketch


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def see(sketch: FrequencySketch, key: Hashable, times: int = 1) -> None:
    """Record ``times`` uses of ``key`` the way the policy does: a sighting, then a batch."""
    sketch.sight(key)
    if times > 1:
        sketch.add([(key, times - 1)])
