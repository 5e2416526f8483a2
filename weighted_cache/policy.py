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
the probation tail: when the sampled costs differ, the entry with the least
frequency per unit of cost goes first (ties: the costlier one), which is
Ristretto's "sampled eviction that respects cost" confined to the LRU end.
With equal costs plain LRU order stands, which measured better on the
unit-cost traces.  Protected is kept in CLOCK order rather than strict LRU
(hits set a flag instead of relinking), which keeps reads cheap.

This module only decides; the cache owns the entries and calls it under
its lock.  Nothing here blocks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterator

from .sketch import FrequencySketch
from .store import PROBATION, PROTECTED, PROTECTED_HOT, REMOVED, WINDOW, WINDOW_NEW, Entry

_WINDOW_START = 0.01  # share of the budget the window starts with
_WEIGHTED_WINDOW = 0.2  # the same when entry costs vary (see _on_first_fill)
_PROTECTED_SHARE = 0.8  # share of the main space kept for protected
_STEP_PERCENT = 0.0625  # climber step, as a share of the budget
_RESTART_THRESHOLD = 0.05  # hit-rate change that restarts the climber
_STEP_DECAY = 0.98
# A sample whose hit rate moved by d moves the window by at least this * d
# of the budget, up to _MAX_MOVE: a recency-heavy phase is followed far in a
# few samples, where Caffeine's fixed 6.25% steps would need dozens.  The cap
# keeps a scan (the hit rate falls whatever the window) from swinging the
# whole budget into the window, which would flush the hot entries.
_STEP_GAIN = 1.5
_MAX_MOVE = 0.35
_STEP_SIGN = -1.0  # the first move shrinks the window, as Caffeine does
_SAMPLE_MULT = 15.0  # climber sample: this many requests per resident entry
_VICTIM_SAMPLE = 4  # probation-tail entries compared when costs differ
_MAX_FREQ = 16  # a saturated counter plus the doorkeeper bit
# Entries whose unwritten uses are held at once; bounds that table's memory.
_PENDING_LIMIT = 16384
_DEPARTED_BATCH = 32


class Segment:
    """An LRU queue of entries linked through their ``prev``/``next`` slots.

    A sentinel closes the ring, so linking never tests for an empty queue.
    ``cost`` is the summed cost of the entries queued.
    """

    __slots__ = ("cost", "count", "head", "tag")

    def __init__(self, tag: int) -> None:
        head = Entry(None, None, 0, 0.0)
        head.prev = head.next = head
        self.head = head
        self.tag = tag
        self.cost: float = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Entry]:
        """Entries from least to most recently used."""
        head = self.head
        entry = head.next
        while entry is not head:
            following = entry.next
            yield entry
            entry = following

    def first(self) -> Entry | None:
        """The least recently used entry, or None."""
        entry: Entry = self.head.next
        return None if entry is self.head else entry

    def append(self, entry: Entry) -> None:
        """Queue ``entry`` as the most recently used."""
        head = self.head
        last = head.prev
        entry.prev = last
        entry.next = head
        last.next = entry
        head.prev = entry
        entry.where = self.tag
        self.cost += entry.cost
        self.count += 1

    def unlink(self, entry: Entry) -> None:
        """Take ``entry`` out of the queue."""
        before, after = entry.prev, entry.next
        before.next = after
        after.prev = before
        entry.prev = entry.next = None
        entry.where = REMOVED
        self.cost -= entry.cost
        self.count -= 1

    def move_to_end(self, entry: Entry) -> None:
        """Mark ``entry`` as the most recently used."""
        head = self.head
        last = head.prev
        if last is entry:
            return
        before, after = entry.prev, entry.next
        before.next = after
        after.prev = before
        entry.prev = last
        entry.next = head
        last.next = entry
        head.prev = entry

    def clear(self) -> None:
        """Unlink every entry."""
        for entry in self:
            entry.prev = entry.next = None
            entry.where = REMOVED
        self.head.prev = self.head.next = self.head
        self.cost = 0
        self.count = 0


class Policy:
    """Decides which entries stay, for a budget of ``max_cost``."""

    def __init__(self, max_cost: int, sketch: FrequencySketch) -> None:
        self.sketch = sketch
        self.window = Segment(WINDOW)
        self.probation = Segment(PROBATION)
        self.protected = Segment(PROTECTED)
        self._segments = (None, self.window, self.probation, self.protected, self.protected,
                          self.window)
        self.max_cost = max_cost
        self.total_cost: float = 0  # cost of every entry tracked, candidates included
        self.window_max = int(max_cost * _WINDOW_START)
        self.protected_max = 0
        self._set_main()
        # Uses not yet written to the sketch, per resident entry (see record_hits).
        self._pending: Counter[Entry] = Counter()
        self._pending_total = 0
        self._departed: list[tuple[Hashable, int]] = []
        self._victim: Entry | None = None  # last single victim and its estimate
        self._victim_base = 0
        self._victim_version = -1
        self._step = _STEP_SIGN * _STEP_PERCENT * max_cost
        self._filled = False
        self._first_cost: float = 0
        self._varied_costs = False
        self._prev_rate = 0.0
        self._sample_hits = 0
        self._sample_misses = 0
        self._sample_period = 0

    # -- bookkeeping -------------------------------------------------------

    def _set_main(self) -> None:
        self.protected_max = int((self.max_cost - self.window_max) * _PROTECTED_SHARE)

    def remove(self, entry: Entry) -> None:
        """Forget ``entry`` (deleted, expired or replaced by the cache)."""
        segment = self._segments[entry.where]
        if segment is not None:
            segment.unlink(entry)
            self.total_cost -= entry.cost
        if self._pending:
            self._write_back(entry)

    def clear(self) -> None:
        """Forget every entry and all frequencies."""
        for segment in (self.window, self.probation, self.protected):
            segment.clear()
        self.total_cost = 0
        self._pending.clear()
        self._pending_total = 0
        self._departed.clear()
        self.sketch.clear()

    # -- frequency -----------------------------------------------------------

    def _use(self, entry: Entry) -> None:
        pending = self._pending
        pending[entry] = pending.get(entry, 0) + 1  # skips Counter.__missing__
        self._pending_total += 1
        if len(self._pending) > _PENDING_LIMIT:
            self._write_back_all()

    def _write_back(self, entry: Entry) -> None:
        times = self._pending.pop(entry, 0)
        if times:
            self._depart(entry.key, times)

    def _depart(self, key: Hashable, times: int) -> None:
        """Queue the unwritten uses of an entry that left (or was refused)."""
        self._pending_total -= times
        # Departed entries are written in batches (one inlined loop in the
        # sketch); until then their key reads a little low.
        departed = self._departed
        departed.append((key, times))
        if len(departed) >= _DEPARTED_BATCH:
            self.sketch.increment_many(departed)
            departed.clear()

    def _write_back_all(self) -> None:
        self._departed.extend((e.key, n) for e, n in self._pending.items())
        self.sketch.increment_many(self._departed)
        self._departed.clear()
        self._pending.clear()
        self._pending_total = 0

    def frequency(self, entry: Entry) -> int:
        """Estimated recent uses of a resident entry, unwritten uses included."""
        freq = self.sketch.estimate(entry.key) + self._pending.get(entry, 0)
        return freq if freq < _MAX_FREQ else _MAX_FREQ

    # -- events from the cache ----------------------------------------------

    def record_hits(self, reads: list[Entry]) -> None:
        """Apply a batch of buffered reads: count them and refresh recency.

        Uses are tallied per entry in ``_pending`` (a C-speed Counter update)
        instead of going through the sketch one by one: a pure-Python
        count-min increment costs about a microsecond, far above the budget
        of a cache hit.  Tallies are written to the sketch when the entry
        leaves and before the sketch ages, and are added to the sketch's
        estimate meanwhile, so admission compares the same frequencies.
        """
        pending = self._pending
        n = len(reads)
        if n > 16:
            pending.update(reads)  # counts in C, after some fixed overhead
            for entry in reads:
                where = entry.where
                if where == PROTECTED:
                    entry.where = PROTECTED_HOT
                elif where != PROTECTED_HOT:
                    self._reorder(entry)
        else:
            # Few reads (a write drains the buffer first): one loop, fewer calls.
            get = pending.get
            for entry in reads:
                pending[entry] = get(entry, 0) + 1
                where = entry.where
                if where == PROTECTED:
                    entry.where = PROTECTED_HOT
                elif where != PROTECTED_HOT:
                    self._reorder(entry)
        self._pending_total += n
        self._sample_hits += n
        if (self.sketch.additions + self._pending_total >= self.sketch.sample_size
                or len(pending) > _PENDING_LIMIT):
            self._write_back_all()
        if self._sample_hits + self._sample_misses >= self._sample_period:
            self._climb()

    def _reorder(self, entry: Entry) -> None:
        """Refresh the recency of a read entry outside protected.

        Protected entries are only flagged by record_hits: relinking one
        costs ~10 attribute writes, so protected is kept in CLOCK order
        instead of strict LRU (a flagged entry reaching the head gets a
        second chance, see _demote_protected).  Window and probation hits
        are rarer and relink as usual.
        """
        where = entry.where
        if where in (WINDOW, WINDOW_NEW):
            self.window.move_to_end(entry)
        elif where == PROBATION:
            self.probation.unlink(entry)
            self.protected.append(entry)
            if self.protected.cost > self.protected_max:
                self._demote_protected()
        else:
            self._write_back(entry)  # left the cache after it was read

    def add(self, entry: Entry) -> list[Entry]:
        """Track a new entry; return the entries that must leave.

        The returned list contains ``entry`` itself when admission refused it.
        """
        # The sketch sees this use only when the entry leaves the window
        # (see _admit): one hash then serves the sighting and the estimate.
        self._sample_misses += 1
        window = self.window
        # Segment.append, inlined: this runs for every miss.
        head = window.head
        last = head.prev
        entry.prev = last
        entry.next = head
        last.next = entry
        head.prev = entry
        entry.where = WINDOW_NEW
        cost = entry.cost
        window.cost += cost
        window.count += 1
        self.total_cost += cost
        out: list[Entry] = []
        if window.cost > self.window_max or self.total_cost > self.max_cost:
            cand: Entry = head.next
            if (window.cost - cand.cost <= self.window_max
                    and self.total_cost - cand.cost <= self.max_cost):
                # One candidate leaves the window and then everything fits:
                # _evict's loops reduce to this single admission.
                fresh = cand.where == WINDOW_NEW
                # window.unlink(cand), inlined.
                after = cand.next
                head.next = after
                after.prev = head
                cand.prev = cand.next = None
                cand.where = REMOVED
                window.cost -= cand.cost
                window.count -= 1
                self._admit(cand, None, out, fresh)
            else:
                self._evict(entry, False, out)
        if self._sample_hits + self._sample_misses >= self._sample_period:
            self._climb()
        return out

    def update(self, entry: Entry, old_cost: float) -> list[Entry]:
        """Account for ``entry`` having been rewritten with a new cost.

        The updated entry itself is never chosen to leave.
        """
        if entry.where == WINDOW_NEW:
            self.sketch.sight(entry.key)  # its insertion, before the update's own use
        self._use(entry)
        segment = self._segments[entry.where]
        assert segment is not None
        new_cost = entry.cost
        entry.cost = old_cost
        segment.unlink(entry)
        entry.cost = new_cost
        self.total_cost += new_cost - old_cost
        (self.protected if segment is self.probation else segment).append(entry)
        self._demote_protected()
        out: list[Entry] = []
        self._evict(entry, True, out)
        return out

    def resize(self, max_cost: int) -> list[Entry]:
        """Change the budget; return the entries that no longer fit."""
        share = self.window_max / self.max_cost
        self.max_cost = max_cost
        self.window_max = int(max_cost * share)
        self._set_main()
        self._step = math.copysign(_STEP_PERCENT * max_cost, self._step)
        self._demote_protected()
        out: list[Entry] = []
        self._evict(None, True, out)
        return out

    # -- eviction ------------------------------------------------------------

    def _evict(self, keep: Entry | None, keep_is_update: bool, out: list[Entry]) -> None:
        window = self.window
        # Window overflow: its oldest entries become admission candidates.
        while window.cost > self.window_max and window.count:
            cand: Entry = window.head.next
            fresh = cand.where == WINDOW_NEW
            window.unlink(cand)
            if cand is keep and keep_is_update:
                self.probation.append(cand)
            else:
                self._admit(cand, keep if keep_is_update else None, out, fresh)
        # Still over budget (a grown update, a smaller max_cost): plain eviction.
        while self.total_cost > self.max_cost:
            victim = self._any_victim(keep)
            if victim is None:
                break
            self.remove(victim)
            out.append(victim)

    def _admit(self, cand: Entry, keep: Entry | None, out: list[Entry], fresh: bool) -> None:
        """Judge ``cand``, just out of the window; ``fresh`` if the sketch
        has not yet seen its insertion."""
        # ``cand`` has left the window but still counts in total_cost.
        seen = self.sketch.sight(cand.key) if fresh else -1
        excess = self.total_cost - self.max_cost
        if excess <= 0:
            self._first_cost = self._first_cost or cand.cost
            if cand.cost != self._first_cost:
                self._varied_costs = True
            self.probation.append(cand)
            return
        if not self._filled:
            self._on_first_fill()
        need = excess if excess < cand.cost else cand.cost
        head = self.probation.head
        victim: Entry = head.next
        nxt: Entry = victim.next
        if (victim is not head and victim is not keep and victim.cost >= need
                and (nxt is head or (nxt.cost == victim.cost
                                     and (nxt.next is head or nxt.next.cost == victim.cost)))):
            # Unit-cost fast path: the LRU entry suffices and its sampled
            # neighbours cost the same, so the cost-aware ranking would agree.
            # frequency() is inlined for both sides.
            sketch, pending = self.sketch, self._pending
            cand_freq = (seen if fresh else sketch.estimate(cand.key)) + pending.get(cand, 0)
            if cand_freq > _MAX_FREQ:
                cand_freq = _MAX_FREQ
            # Losing candidates leave the same victim in place, so its
            # sketch estimate is reused until the counters change.  (A
            # doorkeeper false positive appearing meanwhile is missed.)
            if victim is self._victim and sketch.version == self._victim_version:
                base = self._victim_base
            else:
                base = sketch.estimate(victim.key)
                self._victim, self._victim_base = victim, base
                self._victim_version = sketch.version
            victim_freq = base + pending.get(victim, 0)
            if victim_freq > _MAX_FREQ:
                victim_freq = _MAX_FREQ
            if cand_freq > victim_freq:
                # remove(victim) inlined: it is probation's LRU entry.
                victim.prev = victim.next = None
                victim.where = REMOVED
                head.next = nxt
                nxt.prev = head
                probation = self.probation
                vcost = victim.cost
                probation.cost -= vcost
                probation.count -= 1
                self.total_cost -= vcost
                times = pending.pop(victim, 0)
                if times:
                    self._depart(victim.key, times)
                out.append(victim)
                probation.append(cand)
                return
        else:
            victims = self._select_victims(need, keep)
            if victims is not None:
                cand_freq = seen if fresh else self.frequency(cand)
                if fresh:
                    cand_freq = min(cand_freq + self._pending.get(cand, 0), _MAX_FREQ)
                if cand_freq > sum(self.frequency(v) for v in victims):
                    for victim in victims:
                        self.remove(victim)
                        out.append(victim)
                    self.probation.append(cand)
                    return
        self.total_cost -= cand.cost  # cand is in no segment: remove() would miss it
        times = self._pending.pop(cand, 0)
        if times:
            self._depart(cand.key, times)
        out.append(cand)

    def _on_first_fill(self) -> None:
        """Pick the starting window once the cache is full.

        With varied costs a 1% window is smaller than many single entries,
        which then skip the recency stage and face admission cold; a 20%
        window measured best on the weighted trace (object and byte hit
        ratio), while unit costs keep Caffeine's 1%.  The climber adapts
        from there.
        """
        self._filled = True
        if self._varied_costs:
            self._adjust_window(int(self.max_cost * _WEIGHTED_WINDOW) - self.window_max)
            self._step = abs(self._step)

    def _select_victims(self, need: float, keep: Entry | None) -> list[Entry] | None:
        """Choose entries freeing at least ``need``, or None if impossible.

        Victims come from the probation tail, then protected, then the
        window.
        """
        head = self.probation.head
        chosen: list[Entry] = []
        freed: float = 0
        cursor = head.next
        sample: list[Entry] = []
        # Keep a window of up to _VICTIM_SAMPLE unpicked entries from the tail.
        while freed < need:
            while len(sample) < _VICTIM_SAMPLE and cursor is not head:
                if cursor is not keep:
                    sample.append(cursor)
                cursor = cursor.next
            if not sample:
                break
            best = sample[0]
            if any(e.cost != best.cost for e in sample):
                # Least frequency per unit of cost first; the costlier on ties.
                best = min(sample, key=self._victim_rank)
            sample.remove(best)
            chosen.append(best)
            freed += best.cost
        for segment in (self.protected, self.window):
            for e in segment:
                if freed >= need:
                    break
                if e is not keep:
                    chosen.append(e)
                    freed += e.cost
        return chosen if freed >= need else None

    def _victim_rank(self, entry: Entry) -> tuple[float, float]:
        per_cost = self.frequency(entry) / entry.cost if entry.cost else math.inf
        return per_cost, -entry.cost

    def _any_victim(self, keep: Entry | None) -> Entry | None:
        for segment in (self.probation, self.protected, self.window):
            for e in segment:
                if e is not keep:
                    return e
        return None

    def _demote_protected(self) -> None:
        protected, probation = self.protected, self.probation
        while protected.cost > self.protected_max and protected.count:
            entry = protected.head.next
            if entry.where == PROTECTED_HOT:
                entry.where = PROTECTED  # read since it was last passed: keep it
                protected.move_to_end(entry)
                continue
            protected.unlink(entry)
            probation.append(entry)

    # -- adaptive window -------------------------------------------------------

    def _climb(self) -> None:
        requests = self._sample_hits + self._sample_misses
        if requests < self._sample_period:
            return
        if self._sample_period:
            rate = self._sample_hits / requests
            change = rate - self._prev_rate
            amount = self._step if change >= 0 else -self._step
            move = min(_STEP_GAIN * abs(change), _MAX_MOVE) * self.max_cost
            if move > abs(amount):
                amount = math.copysign(move, amount)
            if abs(change) >= _RESTART_THRESHOLD:
                self._step = math.copysign(_STEP_PERCENT * self.max_cost, amount)
            else:
                self._step = _STEP_DECAY * amount
            self._prev_rate = rate
            self._adjust_window(int(amount))
        entries = self.window.count + self.probation.count + self.protected.count
        self._sample_period = int(_SAMPLE_MULT * max(entries, 16))
        self._sample_hits = self._sample_misses = 0

    def _adjust_window(self, amount: int) -> None:
        if amount > 0:
            grow = min(amount, self.max_cost - self.window_max)
            self.window_max += grow
            self._set_main()
            self._demote_protected()
            # Refill the larger window from the main space's coldest entries.
            quota: float = grow
            for segment in (self.probation, self.protected):
                while quota > 0 and segment.count:
                    entry = segment.head.next
                    if entry.cost > quota:
                        break
                    segment.unlink(entry)
                    self.window.append(entry)
                    quota -= entry.cost
        elif amount < 0:
            self.window_max -= min(-amount, self.window_max)
            self._set_main()
            # Shrinking moves the window's oldest into probation unjudged.
            window = self.window
            while window.cost > self.window_max and window.count:
                entry = window.head.next
                if entry.where == WINDOW_NEW:
                    self.sketch.sight(entry.key)
                window.unlink(entry)
                self.probation.append(entry)


