"""The library README documents every public name."""

from __future__ import annotations

from pathlib import Path

import weighted_cache
from weighted_cache import Cache

README = (Path(weighted_cache.__file__).parent / "README.md").read_text()


def test_every_exported_name_is_documented():
    missing = [name for name in weighted_cache.__all__ if f"{name}" not in README]
    assert missing == []


def test_every_public_cache_method_and_property_is_documented():
    public = {name for name in vars(Cache) if not name.startswith("_")}
    missing = sorted(name for name in public if f"{name}(" not in README
                     and f"`{name}`" not in README and f"**`{name}" not in README)
    assert missing == []


def test_every_mapping_operator_is_documented():
    for spelling in ("cache[key] = value", "cache[key]", "del cache[key]", "key in cache",
                     "len(cache)", "iter(cache)"):
        assert spelling in README
