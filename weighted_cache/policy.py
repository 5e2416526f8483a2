"""Admission and eviction: adaptive W-TinyLFU in cost units.

Layout (Caffeine's W-TinyLFU): new entries enter a small LRU *window*;
entries leaving the window are *candidates* for the main space, a segmented
LRU of *probation* and *protected*.  A candidate is admitted only if the
sketch says it is used more often than what it would push out.  A hill
climber moves budget between window and main space so that recency-heavy
workloads get a large window and frequency-heavy ones a small one.

Every size here is in cost units.  A candidate whose cost needs several
victims must out-score their *summed* frequency, so one big object cannot
flush many popular small ones.  Victims are picked from a short sample at
the probation tail by lowest frequency per unit of cost (ties: the costlier
one goes), which is Ristretto's "sampled eviction that respects cost"
restricted to the LRU end, so LRU order still breaks ties between equals.

This module only decides; the cache owns the entries and calls it under
its lock.  Nothing here blocks.
"""

from __future__ import annotations

import math
import random
from collections import Counter, OrderedDict
from itertools import islice

from .sketch import FrequencySketch
from .store import PROBATION, PROTECTED, REMOVED, WINDOW, Entry

_WINDOW_START = 0.01  # share of the budget the window starts with
_PROTECTED_SHARE = 0.8  # share of the main space kept for protected
_STEP_PERCENT = 0.0625  # climber step, as a share of the budget
_RESTART_THRESHOLD = 0.05  # hit-rate change that restarts the climber
_STEP_DECAY = 0.98
_STEP_SIGN = -1.0  # first move shrinks the window, as Caffeine does
_SAMPLE_MULT = 10.0  # climber sample: this many requests per resident entry
# Probation-tail entries considered per eviction.  Only when their costs
# differ does the sample reorder victims; with equal costs LRU order stands,
# which measured better on the unit-cost traces.
_VICTIM_SAMPLE = 4
_MAX_FREQ = 16  # a saturated counter plus the doorkeeper bit
_HASHDOS_FREQ = 6  # above this a losing candidate sometimes gets in anyway


class Policy:
    """Decides which entries stay, for a budget of ``max_cost``."""

    def __init__(self, max_cost: int, sketch: FrequencySketch, seed: int = 0) -> None:
        self.sketch = sketch
        self.window: OrderedDict[Entry, None] = OrderedDict()
        self.probation: OrderedDict[Entry, None] = OrderedDict()
        self.protected: OrderedDict[Entry, None] = OrderedDict()
        self.window_cost: float = 0
        self.probation_cost: float = 0
        self.protected_cost: float = 0
        self.max_cost = max_cost
        self.window_max = int(max_cost * _WINDOW_START)
        self.protected_max = 0
        self._set_main()
        self._pending: Counter[Entry] = Counter()
        self._pending_total = 0
        # A seeded generator keeps replays deterministic.
        self._rng = random.Random(seed)
        self._step = _STEP_SIGN * _STEP_PERCENT * max_cost
        self._prev_rate = 0.0
        self._sample_hits = 0
        self._sample_misses = 0
        self._sample_period = 0

    # -- bookkeeping -------------------------------------------------------

    @property
    def total_cost(self) -> float:
        """Cost of every entry the policy tracks."""
        return self.window_cost + self.probation_cost + self.protected_cost

    def _set_main(self) -> None:
        self.protected_max = int((self.max_cost - self.window_max) * _PROTECTED_SHARE)

    def _push(self, entry: Entry, where: int) -> None:
        entry.where = where
        if where == WINDOW:
            self.window[entry] = None
            self.window_cost += entry.cost
        elif where == PROBATION:
            self.probation[entry] = None
            self.probation_cost += entry.cost
        else:
            self.protected[entry] = None
            self.protected_cost += entry.cost

    def remove(self, entry: Entry) -> None:
        """Forget ``entry`` (deleted, expired or replaced by the cache)."""
        where = entry.where
        if where == WINDOW:
            del self.window[entry]
            self.window_cost -= entry.cost
        elif where == PROBATION:
            del self.probation[entry]
            self.probation_cost -= entry.cost
        elif where == PROTECTED:
            del self.protected[entry]
            self.protected_cost -= entry.cost
        entry.where = REMOVED
        if self._pending:
            self._write_back(entry)

    def clear(self) -> None:
        """Forget every entry and all frequencies."""
        for queue in (self.window, self.probation, self.protected):
            for entry in queue:
                entry.where = REMOVED
            queue.clear()
        self.window_cost = self.probation_cost = self.protected_cost = 0
        self._pending.clear()
        self._pending_total = 0
        self.sketch.clear()

    # -- events from the cache ----------------------------------------------

    def record_hits(self, reads: list[Entry]) -> None:
        """Apply a batch of buffered reads: count them and refresh recency.

        Hits are tallied per entry in ``_pending`` (a C-speed Counter update)
        instead of going through the sketch one by one: a pure-Python
        count-min increment costs about a microsecond, far above the budget
        of a cache hit.  The tallies are written back to the sketch when the
        entry leaves and before the sketch ages, and are added to the
        sketch's estimate meanwhile, so the frequencies compared are the same.
        """
        window, probation, protected = self.window, self.probation, self.protected
        pending = self._pending
        pending.update(reads)
        self._pending_total += len(reads)
        self._sample_hits += len(reads)
        # Reorder once per entry, most recently read last.
        for entry in reversed(dict.fromkeys(reversed(reads))):
            where = entry.where
            if where == WINDOW:
                window.move_to_end(entry)
            elif where == PROTECTED:
                protected.move_to_end(entry)
            elif where == PROBATION:
                del probation[entry]
                self.probation_cost -= entry.cost
                self._push(entry, PROTECTED)
            else:
                self._write_back(entry)  # left the cache after it was read
        if self.sketch.additions + self._pending_total >= self.sketch.sample_size:
            self._write_back_all()
        self._demote_protected()
        self._climb()

    def _write_back(self, entry: Entry) -> None:
        times = self._pending.pop(entry, 0)
        if times:
            self._pending_total -= times
            self.sketch.increment(entry.key, times)

    def _write_back_all(self) -> None:
        self.sketch.increment_many([(e.key, n) for e, n in self._pending.items()])
        self._pending.clear()
        self._pending_total = 0

    def frequency(self, entry: Entry) -> int:
        """Estimated recent uses of a resident entry, buffered hits included."""
        return min(self.sketch.estimate(entry.key) + self._pending.get(entry, 0), _MAX_FREQ)

    def add(self, entry: Entry) -> list[Entry]:
        """Track a new entry; return the entries that must leave.

        The returned list contains ``entry`` itself when admission refused it.
        """
        self.sketch.increment(entry.key)
        self._sample_misses += 1
        self._push(entry, WINDOW)
        out: list[Entry] = []
        self._evict(entry, False, out)
        self._climb()
        return out

    def update(self, entry: Entry, old_cost: float) -> list[Entry]:
        """Account for ``entry`` having been rewritten with a new cost.

        The updated entry itself is never chosen to leave.
        """
        delta = entry.cost - old_cost
        where = entry.where
        self.sketch.increment(entry.key)
        if where == WINDOW:
            self.window_cost += delta
            self.window.move_to_end(entry)
        elif where == PROTECTED:
            self.protected_cost += delta
            self.protected.move_to_end(entry)
        else:
            del self.probation[entry]
            self.probation_cost += delta - entry.cost
            self._push(entry, PROTECTED)
        out: list[Entry] = []
        self._demote_protected()
        self._evict(entry, True, out)
        return out

    def resize(self, max_cost: int) -> list[Entry]:
        """Change the budget; return the entries that no longer fit."""
        share = self.window_max / self.max_cost if self.max_cost else _WINDOW_START
        self.max_cost = max_cost
        self.window_max = int(max_cost * share)
        self._set_main()
        self._step = _STEP_SIGN * _STEP_PERCENT * max_cost
        self._demote_protected()
        out: list[Entry] = []
        self._evict(None, True, out)
        return out

    # -- eviction ------------------------------------------------------------

    def _evict(self, keep: Entry | None, keep_is_update: bool, out: list[Entry]) -> None:
        window = self.window
        # Window overflow: its oldest entries become admission candidates.
        while self.window_cost > self.window_max and window:
            cand = next(iter(window))
            del window[cand]
            self.window_cost -= cand.cost
            if cand is keep and keep_is_update:
                self._push(cand, PROBATION)
            else:
                self._admit(cand, keep if keep_is_update else None, out)
        # Still over budget (a grown update, a smaller max_cost): plain eviction.
        while self.total_cost > self.max_cost:
            victim = self._any_victim(keep)
            if victim is None:
                break
            self.remove(victim)
            out.append(victim)

    def _admit(self, cand: Entry, keep: Entry | None, out: list[Entry]) -> None:
        excess = self.total_cost + cand.cost - self.max_cost
        if excess <= 0:
            self._push(cand, PROBATION)
            return
        victims = self._select_victims(min(excess, cand.cost), keep)
        if victims is not None:
            cand_freq = self.frequency(cand)
            victim_freq = sum(self.frequency(v) for v in victims)
            if cand_freq > victim_freq or (
                cand_freq >= _HASHDOS_FREQ and self._rng.random() < 1 / 128
            ):
                for victim in victims:
                    self.remove(victim)
                    out.append(victim)
                self._push(cand, PROBATION)
                return
        cand.where = REMOVED
        out.append(cand)

    def _select_victims(self, need: float, keep: Entry | None) -> list[Entry] | None:
        """Choose entries freeing at least ``need``, or None if impossible.

        Victims come from the probation tail, then protected, then the
        window.  Within probation a few tail entries are sampled and the one
        with the least frequency per unit of cost is taken first.
        """
        chosen: list[Entry] = []
        picked: set[int] = set()
        freed: float = 0
        freqs: dict[int, int] = {}
        probation = self.probation
        while freed < need:
            sample = [
                e for e in islice(probation, len(picked) + _VICTIM_SAMPLE + 1)
                if id(e) not in picked and e is not keep
            ][:_VICTIM_SAMPLE]
            if not sample:
                break
            best = sample[0]
            if any(e.cost != best.cost for e in sample):
                for e in sample:
                    if id(e) not in freqs:
                        freqs[id(e)] = self.frequency(e)
                # Lowest frequency per cost first; the costlier one on ties.
                best = min(sample, key=lambda e: (freqs[id(e)] / e.cost if e.cost else math.inf,
                                                  -e.cost))
            picked.add(id(best))
            chosen.append(best)
            freed += best.cost
        for queue in (self.protected, self.window):
            for e in queue:
                if freed >= need:
                    break
                if e is not keep:
                    chosen.append(e)
                    freed += e.cost
        return chosen if freed >= need else None

    def _any_victim(self, keep: Entry | None) -> Entry | None:
        for queue in (self.probation, self.protected, self.window):
            for e in queue:
                if e is not keep:
                    return e
        return None

    def _demote_protected(self) -> None:
        protected = self.protected
        while self.protected_cost > self.protected_max and protected:
            entry, _ = protected.popitem(last=False)
            self.protected_cost -= entry.cost
            self._push(entry, PROBATION)

    # -- adaptive window -------------------------------------------------------

    def _climb(self) -> None:
        requests = self._sample_hits + self._sample_misses
        if requests < self._sample_period:
            return
        if self._sample_period:
            rate = self._sample_hits / requests
            change = rate - self._prev_rate
            amount = self._step if change >= 0 else -self._step
            if abs(change) >= _RESTART_THRESHOLD:
                self._step = _STEP_PERCENT * self.max_cost * (1 if amount >= 0 else -1)
            else:
                self._step = _STEP_DECAY * amount
            self._prev_rate = rate
            self._adjust_window(int(amount))
        entries = len(self.window) + len(self.probation) + len(self.protected)
        self._sample_period = int(_SAMPLE_MULT * max(entries, 16))
        self._sample_hits = self._sample_misses = 0

    def _adjust_window(self, amount: int) -> None:
        if amount > 0:
            grow = min(amount, self.max_cost - self.window_max)
            self.window_max += grow
            quota: float = grow
            self._set_main()
            self._demote_protected()
            # Refill the larger window from the main space's coldest entries.
            for queue, where in ((self.probation, PROBATION), (self.protected, PROTECTED)):
                while quota > 0 and queue:
                    entry = next(iter(queue))
                    if entry.cost > quota:
                        break
                    del queue[entry]
                    if where == PROBATION:
                        self.probation_cost -= entry.cost
                    else:
                        self.protected_cost -= entry.cost
                    self._push(entry, WINDOW)
                    quota -= entry.cost
        elif amount < 0:
            quota = min(-amount, self.window_max)
            self.window_max -= quota
            self._set_main()
            # Shrinking moves the window's oldest into probation unjudged.
            window = self.window
            while self.window_cost > self.window_max and window:
                entry, _ = window.popitem(last=False)
                self.window_cost -= entry.cost
                self._push(entry, PROBATION)
