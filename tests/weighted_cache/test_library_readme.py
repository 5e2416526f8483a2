"""The library README documents every public name."""

from __future__ import annotations

import asyncio
import logging
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

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


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_the_python_examples_run_in_order_with_the_names_the_text_leaves_to_the_reader():
    async def remote_profile(user_id: int) -> bytes:
        return b"profile"

    namespace: dict[str, object] = {
        "body": b"report",
        "log": logging.getLogger("readme"),
        "fetch_profile": lambda user_id: b"profile",
        "client": SimpleNamespace(fetch_profile=remote_profile),
        "cachedmethod": weighted_cache.cachedmethod,
    }
    for block in _python_blocks():
        if "await " in block:
            wrapped = "async def _example():\n" + textwrap.indent(block, "    ")
            exec(wrapped, namespace)
            asyncio.run(namespace["_example"]())  # type: ignore[operator]
        else:
            exec(block, namespace)
