"""TinyLFU frequency estimation: a count-min sketch with a doorkeeper.

Counters are saturating 4-bit values (0..15) held one per byte in a
``bytearray``: Python cannot address nibbles cheaply, and a byte per counter
keeps increments and the aging pass (one ``bytes.translate``) in C.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

_DEPTH = 4
_MAX_COUNT = 15
# Aging divides every counter by two; a translation table does it in C.
_HALVE = bytes(i >> 1 for i in range(256))


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def spread(key: Hashable) -> int:
    """Return 64 well-mixed bits for ``key`` (possibly negative).

    Python hashes small ints to themselves, so the raw hash would put
    neighbouring keys in neighbouring counters; hashing a 1-tuple runs the
    key's hash through CPython's xxHash round, in C, for the price of one
    tuple (far cheaper than mixing a 64-bit int in Python).
    """
    return hash((key,))


class Doorkeeper:
    """A bloom filter that absorbs the first sighting of each key.

    One-hit wonders then never reach the count-min table, which keeps its
    counters for keys that repeat.  It holds about 8 bits per expected key
    (three probes), which keeps false positives near 3% when full.
    """

    __slots__ = ("_bits", "_mask")

    def __init__(self, expected: int) -> None:
        nbits = _next_pow2(max(expected, 64) * 8)
        self._bits = bytearray(nbits >> 3)
        self._mask = nbits - 1

    def __contains__(self, h: int) -> bool:
        m = self._mask
        bits = self._bits
        i, j, k = h & m, (h >> 21) & m, (h >> 42) & m
        return bool(
            bits[i >> 3] >> (i & 7) & 1
            and bits[j >> 3] >> (j & 7) & 1
            and bits[k >> 3] >> (k & 7) & 1
        )

    def add(self, h: int) -> bool:
        """Record ``h``; return True if it was (probably) already present."""
        m = self._mask
        bits = self._bits
        present = True
        for i in (h & m, (h >> 21) & m, (h >> 42) & m):
            byte = bits[i >> 3]
            bit = 1 << (i & 7)
            if not byte & bit:
                bits[i >> 3] = byte | bit
                present = False
        return present

    def clear(self) -> None:
        """Forget every key."""
        self._bits = bytearray(len(self._bits))


class FrequencySketch:
    """Estimates how often each key was seen recently.

    After ``sample_size`` recorded increments every counter is halved and the
    doorkeeper is cleared, so old popularity fades (TinyLFU's reset).
    """

    __slots__ = ("_door", "_mask", "_table", "_width", "additions", "sample_size", "version")

    def __init__(self, num_counters: int) -> None:
        if num_counters <= 0:
            raise ValueError("num_counters must be positive")
        # num_counters counts every counter, over all rows.
        self._width = _next_pow2(max(num_counters // _DEPTH, 16))
        self._mask = self._width - 1
        self._table = bytearray(self._width * _DEPTH)
        self.sample_size = max(num_counters, 16)
        self._door = Doorkeeper(self.sample_size)
        self.additions = 0
        # Bumped whenever counters change (sight() excepted, see there), so
        # callers may reuse an estimate.
        self.version = 0

    @property
    def width(self) -> int:
        """Counters per row."""
        return self._width

    def _slots(self, h: int) -> tuple[int, int, int, int]:
        # Each row reads its own 15-bit slice of the hash (slices overlap
        # for rows wider than 2^15), offset into the row's part of the table.
        m = self._mask
        w = self._width
        return (h & m, ((h >> 15) & m) | w, ((h >> 30) & m) | (w << 1),
                ((h >> 45) & m) | (w * 3))

    def estimate(self, key: Hashable) -> int:
        """Return the estimated recent frequency of ``key`` (0..16)."""
        # spread() and _slots() inlined: this runs for every admission.
        h = hash((key,))
        t = self._table
        m = self._mask
        w = self._width
        count = min(t[h & m], t[((h >> 15) & m) | w], t[((h >> 30) & m) | (w << 1)],
                    t[((h >> 45) & m) | (w * 3)])
        # Doorkeeper membership, inlined.
        door = self._door
        bits = door._bits
        dm = door._mask
        i, j, k = h & dm, (h >> 21) & dm, (h >> 42) & dm
        if bits[i >> 3] >> (i & 7) & 1 and bits[j >> 3] >> (j & 7) & 1 \
                and bits[k >> 3] >> (k & 7) & 1:
            return count + 1
        return count

    def increment(self, key: Hashable, times: int = 1) -> None:
        """Record ``times`` sightings of ``key``."""
        h = spread(key)
        if not self._door.add(h):
            times -= 1
            self.additions += 1
            if times <= 0:
                self._maybe_age()
                return
        t = self._table
        i, j, k, n = self._slots(h)
        # Conservative update: raise only counters at the minimum, which
        # limits overestimation from collisions.
        low = min(t[i], t[j], t[k], t[n])
        if low < _MAX_COUNT:
            new = min(low + times, _MAX_COUNT)
            for s in (i, j, k, n):
                if t[s] < new:
                    t[s] = new
            self.additions += times
            self.version += 1
        self._maybe_age()

    def sight(self, key: Hashable) -> int:
        """Record one sighting of ``key``; return its estimate, this one included.

        The doorkeeper absorbs a first sighting; a later one raises the
        counters.  One hash serves both the update and the estimate.  It
        never ages the sketch itself: callers flush their own tallies first.
        """
        h = hash((key,))
        door = self._door
        bits = door._bits
        dm = door._mask
        # Doorkeeper.add, unrolled: this runs once per miss.
        first = False
        i = h & dm
        byte = bits[i >> 3]
        bit = 1 << (i & 7)
        if not byte & bit:
            bits[i >> 3] = byte | bit
            first = True
        i = (h >> 21) & dm
        byte = bits[i >> 3]
        bit = 1 << (i & 7)
        if not byte & bit:
            bits[i >> 3] = byte | bit
            first = True
        i = (h >> 42) & dm
        byte = bits[i >> 3]
        bit = 1 << (i & 7)
        if not byte & bit:
            bits[i >> 3] = byte | bit
            first = True
        t = self._table
        m = self._mask
        w = self._width
        i = h & m
        j = ((h >> 15) & m) | w
        k = ((h >> 30) & m) | (w << 1)
        n = ((h >> 45) & m) | (w * 3)
        ti, tj, tk, tn = t[i], t[j], t[k], t[n]
        low = min(ti, tj, tk, tn)
        if first:
            self.additions += 1
            return low + 1
        if low < _MAX_COUNT:
            # Conservative update, as in increment.
            low += 1
            if ti < low:
                t[i] = low
            if tj < low:
                t[j] = low
            if tk < low:
                t[k] = low
            if tn < low:
                t[n] = low
            self.additions += 1
            # No version bump: these counters are the sighted key's own, and
            # move another key's estimate only through a collision.
        return low + 1

    def increment_many(self, counts: Iterable[tuple[Hashable, int]]) -> None:
        """Record ``(key, times)`` pairs; the batched, inlined form of increment.

        The doorkeeper is skipped: callers count only sightings after the
        first (see ``sight``).
        """
        t = self._table
        m = self._mask
        w1 = self._width
        w2 = w1 << 1
        w3 = w1 * 3
        top = _MAX_COUNT
        added = 0
        for key, times in counts:
            h = hash((key,))
            i = h & m
            j = ((h >> 15) & m) | w1
            k = ((h >> 30) & m) | w2
            n = ((h >> 45) & m) | w3
            ti, tj, tk, tn = t[i], t[j], t[k], t[n]
            low = min(ti, tj, tk, tn)
            if low < top:
                new = low + times
                if new > top:
                    new = top
                if ti < new:
                    t[i] = new
                if tj < new:
                    t[j] = new
                if tk < new:
                    t[k] = new
                if tn < new:
                    t[n] = new
                added += times
        self.additions += added
        self.version += 1
        self._maybe_age()

    def _maybe_age(self) -> None:
        if self.additions >= self.sample_size:
            self.age()

    def age(self) -> None:
        """Halve every counter and clear the doorkeeper."""
        self._table = bytearray(self._table.translate(_HALVE))
        self._door.clear()
        self.additions //= 2
        self.version += 1

    def clear(self) -> None:
        """Forget all frequencies."""
        self._table = bytearray(len(self._table))
        self._door.clear()
        self.additions = 0
        self.version += 1
