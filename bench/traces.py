"""Readers for the shared cache traces, and a seeded Zipf generator.

The traces are third-party data kept outside the repository, in ``../shared/traces`` beside the
project root (see its README for formats and terms). They are read in place and never copied.
Set ``TRACES_DIR`` or pass ``--traces DIR`` to a benchmark to read them from elsewhere.
"""

from __future__ import annotations

import gzip
import itertools
import lzma
import os
import random
import struct
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

DEFAULT_TRACES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
TRACES_ENV = "TRACES_DIR"


@dataclass(frozen=True)
class Trace:
    """A sequence of accesses; ``costs`` is None for unit costs, else one cost per access."""

    name: str
    keys: list[Hashable]
    costs: list[int] | None = None

    @property
    def weighted(self) -> bool:
        """True when accesses carry their own costs (object sizes)."""
        return self.costs is not None

    def distinct_keys(self) -> int:
        """Number of distinct keys in the trace."""
        return len(set(self.keys))

    def distinct_cost(self) -> int:
        """Sum of the costs of the distinct keys (each counted once)."""
        if self.costs is None:
            return self.distinct_keys()
        first: dict[Hashable, int] = {}
        for key, cost in zip(self.keys, self.costs, strict=True):
            first.setdefault(key, cost)
        return sum(first.values())

    def head(self, limit: int | None) -> Trace:
        """The first ``limit`` accesses (all of them when limit is None)."""
        if limit is None or limit >= len(self.keys):
            return self
        costs = None if self.costs is None else self.costs[:limit]
        return Trace(self.name, self.keys[:limit], costs)


def resolve_traces_dir(override: str | None = None) -> Path:
    """The traces directory: ``override``, else ``$TRACES_DIR``, else ``../shared/traces``."""
    chosen = override or os.environ.get(TRACES_ENV)
    return Path(chosen) if chosen else DEFAULT_TRACES_DIR


def _open_text(path: Path) -> TextIO:
    """Open a gzip (``.gz``) or xz (``.xz``) compressed text file."""
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="ascii")
    return gzip.open(path, "rt", encoding="ascii")


def _read_bytes(path: Path) -> bytes:
    """The decompressed content of a gzip (``.gz``) or xz (``.xz``) file."""
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    return gzip.decompress(path.read_bytes())


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for each non-blank line of a compressed text file."""
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if fields:
                yield lineno, fields


def _ints(path: Path, lineno: int, fields: list[str], count: int) -> list[int]:
    if len(fields) < count:
        raise ValueError(f"{path}:{lineno}: expected {count} fields, got {len(fields)}")
    try:
        return [int(field) for field in fields[:count]]
    except ValueError:
        raise ValueError(f"{path}:{lineno}: not an integer in {fields!r}") from None


def read_int_lines(path: Path) -> list[int]:
    """One integer key per line (LIRS and Caffeine ``.trace.gz`` files).

    A line holding only ``*`` is a phase marker in some LIRS traces, not an access: it is skipped.
    """
    return [_ints(path, lineno, fields, 1)[0] for lineno, fields in _lines(path) if fields != ["*"]]


def read_arc(path: Path) -> list[int]:
    """ARC ``.lis`` lines ``start count ignored reqno``, each meaning keys start..start+count-1."""
    keys: list[int] = []
    for lineno, fields in _lines(path):
        start, count = _ints(path, lineno, fields, 2)
        if count < 0:
            raise ValueError(f"{path}:{lineno}: negative block count {count}")
        keys.extend(range(start, start + count))
    return keys


def read_int32_be(path: Path) -> list[int]:
    """Big-endian signed 32-bit keys (cache2k traces)."""
    data = _read_bytes(path)
    if len(data) % 4:
        raise ValueError(f"{path}: length {len(data)} is not a multiple of 4 bytes")
    return [key for (key,) in struct.iter_unpack(">i", data)]


def read_address(path: Path) -> list[int]:
    """Memory address traces, lines ``op 0xADDRESS size``: the key is the address."""
    keys: list[int] = []
    for lineno, fields in _lines(path):
        if len(fields) < 2:
            raise ValueError(f"{path}:{lineno}: expected 2 fields, got {len(fields)}")
        try:
            keys.append(int(fields[1], 16))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: not a hexadecimal address: {fields[1]!r}") from None
    return keys


def read_adapt_size(path: Path) -> tuple[list[Hashable], list[int]]:
    """AdaptSize lines ``time key size``.

    An object is the pair (key, size): a key seen again with another size is another version of
    the object, so it cannot be served from the old copy. Returns the objects and their sizes.
    """
    objects: list[Hashable] = []
    sizes: list[int] = []
    for lineno, fields in _lines(path):
        _, key, size = _ints(path, lineno, fields, 3)
        if size <= 0:
            raise ValueError(f"{path}:{lineno}: object size must be positive, got {size}")
        objects.append((key, size))
        sizes.append(size)
    return objects, sizes


@dataclass(frozen=True)
class TraceFile:
    """Where a named trace lives and how to read it."""

    filename: str
    reader: Callable[[Path], list[int]] | None = None
    weighted_reader: Callable[[Path], tuple[list[Hashable], list[int]]] | None = None

    def load(self, name: str, directory: Path) -> Trace:
        """Read the trace from ``directory``."""
        path = directory / self.filename
        if self.weighted_reader is not None:
            keys, costs = self.weighted_reader(path)
            return Trace(name, keys, costs)
        assert self.reader is not None
        return Trace(name, list(self.reader(path)))


TRACE_FILES: dict[str, TraceFile] = {
    "gli": TraceFile("gli.lirs.gz", read_int_lines),
    "oltp": TraceFile("arc-OLTP.lis.gz", read_arc),
    "p6": TraceFile("arc-P6.lis.gz", read_arc),
    "loop": TraceFile("caffeine-lirs-loop.trace.gz", read_int_lines),
    "sprite": TraceFile("caffeine-lirs-sprite.trace.gz", read_int_lines),
    "multi1": TraceFile("caffeine-lirs-multi1.trace.gz", read_int_lines),
    "2_pools": TraceFile("caffeine-lirs-2_pools.trace.gz", read_int_lines),
    "web07": TraceFile("caffeine-cache2k-web07.trace.xz", read_int32_be),
    "orm": TraceFile("caffeine-cache2k-orm-busy.trace.xz", read_int32_be),
    "gcc": TraceFile("caffeine-address-gcc.trace.gz", read_address),
    "adapt_size": TraceFile(
        "caffeine-adapt_size-request.trace.xz", weighted_reader=read_adapt_size
    ),
}


def load_trace(name: str, directory: Path) -> Trace | None:
    """The named trace from ``directory``, or None if its file is not there."""
    spec = TRACE_FILES[name]
    if not (directory / spec.filename).is_file():
        return None
    return spec.load(name, directory)


def zipf_keys(
    n_keys: int = 100_000, n_accesses: int = 1_000_000, s: float = 1.0, seed: int = 1
) -> list[int]:
    """``n_accesses`` keys drawn from Zipf(s) over ``range(n_keys)``; key 0 is the most popular.

    The same arguments give the same list on every run and machine.
    """
    if n_keys < 1 or n_accesses < 0:
        raise ValueError("n_keys must be >= 1 and n_accesses >= 0")
    cumulative = list(itertools.accumulate(1.0 / rank**s for rank in range(1, n_keys + 1)))
    rng = random.Random(seed)
    # choices() bisects the cumulative weights: O(log n) per draw, no numpy needed.
    return rng.choices(range(n_keys), cum_weights=cumulative, k=n_accesses)


def zipf_trace(
    n_keys: int = 100_000, n_accesses: int = 1_000_000, s: float = 1.0, seed: int = 1
) -> Trace:
    """A Zipf trace (see ``zipf_keys``) named ``zipf``."""
    keys: list[Hashable] = list(zipf_keys(n_keys, n_accesses, s, seed))
    return Trace("zipf", keys)
