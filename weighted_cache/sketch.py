"""TinyLFU frequency estimation: a count-min sketch behind a doorkeeper.

Counters are saturating 4-bit values (0..15) held one per byte in a
``bytearray``: Python cannot address nibbles cheaply, and a byte per counter
keeps the ageing pass (one ``bytes.translate``) in C.  The doorkeeper is a
bloom filter that absorbs the first sighting of each key, so one-hit wonders
never reach the counters.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

_DEPTH = 4
_MAX_COUNT = 15
# Ageing halves every counter; translation tables do it, and count the odd
# counters whose halves it drops, in C.
_HALVE = bytes(i >> 1 for i in range(256))
_ODD = bytes(i & 1 for i in range(256))
# Enough bits per key that a full doorkeeper seldom mistakes a first sighting for a repeat.
_DOOR_BITS_PER_KEY = 8


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


class FrequencySketch:
    """Estimates how often each key was seen recently.

    Once the recorded sightings reach ``sample_size``, every counter is
    halved and the doorkeeper cleared, so old popularity fades (TinyLFU's
    reset).  Each row reads its own 15-bit slice of the key's hash and each
    doorkeeper probe its own 21-bit slice.

    The hash is that of the 1-tuple ``(key,)``: Python hashes small ints to
    themselves, so the raw hash would put neighbouring keys in neighbouring
    counters and leave the high slices empty, while a tuple runs the key's
    hash through CPython's xxHash round in C, far cheaper than mixing bits
    in Python.  ``sight`` counts a miss and ``add`` a batch of later uses;
    each computes its slots itself, as a shared helper would cost a call on
    every miss.
    """

    __slots__ = ("_door", "_door_mask", "_door_sightings", "_mask", "_table", "_width",
                 "additions", "sample_size", "version")

    def __init__(self, num_counters: int) -> None:
        if num_counters <= 0:
            raise ValueError("num_counters must be positive")
        # num_counters counts every counter, over all rows.
        self._width = _next_pow2(max(num_counters // _DEPTH, 16))
        self._mask = self._width - 1
        self._table = bytearray(self._width * _DEPTH)
        self.sample_size = max(num_counters, 16)
        door_bits = _next_pow2(max(self.sample_size, 64) * _DOOR_BITS_PER_KEY)
        self._door = bytearray(door_bits >> 3)
        self._door_mask = door_bits - 1
        self._door_sightings = 0  # first sightings held by the doorkeeper alone
        self.additions = 0  # sightings recorded since the last ageing, net of its losses
        # Bumped whenever counters change (sight() excepted, see there), so
        # callers may reuse an estimate.
        self.version = 0

    def estimate(self, key: Hashable) -> int:
        """Return the estimated recent frequency of ``key`` (0..16)."""
        h = hash((key,))
        t = self._table
        m = self._mask
        w = self._width
        count = t[h & m]
        c = t[h >> 15 & m | w]
        if c < count:
            count = c
        c = t[h >> 30 & m | w << 1]
        if c < count:
            count = c
        c = t[h >> 45 & m | w * 3]
        if c < count:
            count = c
        door = self._door
        dm = self._door_mask
        i, j, k = h & dm, (h >> 21) & dm, (h >> 42) & dm
        if door[i >> 3] >> (i & 7) & 1 and door[j >> 3] >> (j & 7) & 1 \
                and door[k >> 3] >> (k & 7) & 1:
            return count + 1
        return count

    def sight(self, key: Hashable) -> int:
        """Record one sighting of ``key``; return its estimate, this one included.

        The doorkeeper absorbs a first sighting; a later one raises the
        counters.  One hash serves both the update and the estimate.  It
        never ages the sketch itself: callers flush their own tallies first.
        """
        h = hash((key,))
        door = self._door
        dm = self._door_mask
        # Straight-line code, not loops over the probes and rows: this runs
        # once per miss, where a loop's overhead is a large share.
        i = h & dm
        j = h >> 21 & dm
        k = h >> 42 & dm
        bit_i = 1 << (i & 7)
        bit_j = 1 << (j & 7)
        bit_k = 1 << (k & 7)
        i >>= 3
        j >>= 3
        k >>= 3
        first = not (door[i] & bit_i and door[j] & bit_j and door[k] & bit_k)
        if first:
            door[i] |= bit_i
            door[j] |= bit_j
            door[k] |= bit_k
        t = self._table
        m = self._mask
        w = self._width
        i = h & m
        j = h >> 15 & m | w
        k = h >> 30 & m | w << 1
        n = h >> 45 & m | w * 3
        ti = t[i]
        tj = t[j]
        tk = t[k]
        tn = t[n]
        low = ti if ti < tj else tj
        if tk < low:
            low = tk
        if tn < low:
            low = tn
        if first:
            self._door_sightings += 1
            self.additions += 1
        elif low < _MAX_COUNT:
            self.additions += 1
            # Conservative update: raise only the counters at the minimum,
            # which limits overestimation from collisions.
            low += 1
            if ti < low:
                t[i] = low
            if tj < low:
                t[j] = low
            if tk < low:
                t[k] = low
            if tn < low:
                t[n] = low
            # No version bump: these counters are the sighted key's own, and
            # move another key's estimate only through a collision.
        return low + 1

    def add(self, counts: Iterable[tuple[Hashable, int]]) -> None:
        """Raise the counters of each key by its count, past the doorkeeper.

        For sightings after a key's first, which ``sight`` has already given
        to the doorkeeper; ages the sketch when the sample is full.
        """
        t = self._table
        m = self._mask
        w1 = self._width
        w2 = w1 << 1
        w3 = w1 * 3
        added = 0
        for key, times in counts:
            h = hash((key,))
            i = h & m
            j = h >> 15 & m | w1
            k = h >> 30 & m | w2
            n = h >> 45 & m | w3
            ti = t[i]
            tj = t[j]
            tk = t[k]
            tn = t[n]
            low = ti if ti < tj else tj
            if tk < low:
                low = tk
            if tn < low:
                low = tn
            if low < _MAX_COUNT:
                new = low + times
                if new > _MAX_COUNT:
                    new = _MAX_COUNT
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
        if self.additions >= self.sample_size:
            self.age()

    def age(self) -> None:
        """Halve every counter and clear the doorkeeper.

        ``additions`` keeps only what survives: the doorkeeper's sightings are
        gone, and an odd counter loses half a sighting to the halving (one
        key moves ``_DEPTH`` counters, so the odd ones count a quarter each).
        """
        table = self._table
        odd = table.translate(_ODD).count(1)
        self._table = bytearray(table.translate(_HALVE))
        self._door = bytearray(len(self._door))
        net = self.additions - self._door_sightings - odd // _DEPTH
        self.additions = net // 2 if net > 0 else 0
        self._door_sightings = 0
        self.version += 1

    def clear(self) -> None:
        """Forget all frequencies."""
        self._table = bytearray(len(self._table))
        self._door = bytearray(len(self._door))
        self._door_sightings = 0
        self.additions = 0
        self.version += 1
