"""Shared fixtures for the weighted_cache tests."""

from __future__ import annotations

import pytest

from tests.conftest import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
