"""Admission and eviction: adaptive W-TinyLFU in cost units.

Layout (Caffeine's W-TinyLFU): new entries enter a small LRU *window*;
entries leaving the window are *candidates* for the main space, a segmented
LRU of *probation* and *protected*.  A candidate is admitted only if the
sketch says it is used more often than what it would push out.  A
climber moves budget between window and main space so that recency-heavy
workloads get a large window and frequency-heavy ones a small one; it
weighs, within each sample, the hits that ghost entries (keys refused or
evicted lately) show a move would gain against those it would give up, and
checks that model against two shadow miniatures of the policy, run on a
hash-sampled subset of the keys with the window a step smaller and a step
larger, whose hit counts measure which way a step pays.

Every size here is in cost units.  A candidate whose cost needs several
victims must out-score their *summed* frequency, so one big object cannot
flush many popular small ones.  Victims are picked from a short sample at
the probation tail: when the sampled costs differ, the entry with the least
frequency per unit of cost goes first (ties: the costlier one), which is
Ristretto's "sampled eviction that respects cost" confined to the LRU end.
With equal costs plain LRU order stands.  Protected is kept in CLOCK order
rather than strict LRU (hits set a flag instead of relinking), which keeps
reads cheap.

This module only decides; the cache owns the entries and calls it under
its lock.  Nothing here blocks.  Its pieces live beside it: the queues in
segment.py, the climber's evidence in ghosts.py and shadows.py; the
climber's decision is made here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from .ghosts import STEPS, Ghost
from .segment import Segment
from .shadows import MAX_FREQ, NEVER, PROTECTED_SHARE, Shadows
from .sketch import FrequencySketch
from .store import Entry

# Where an entry is, kept on the entry so no queue needs a lookup; REMOVED (0) is what a new
# Entry holds: in no queue.
WINDOW = 1
PROBATION = 2
PROTECTED = 3
PROTECTED_HOT = 4  # protected, and read since the CLOCK hand last passed it
WINDOW_NEW = 5  # in the window; the sketch has not yet seen this insertion
# Marks added to the codes above.  TRACKED: the ghosts follow the key when it leaves (window
# and probation entries only, whose reads take _reorder anyway).  SAMPLED (always with TRACKED):
# the shadows replay the key (see Shadows); its reads miss record_hits' protected branches and
# take _reorder too.  An unmarked entry leaving protected is marked again by its hash.
SAMPLED = 8
TRACKED = 16
_MARKS = SAMPLED | TRACKED
_PLAIN = 7  # where & _PLAIN: the code without marks
# What the miss path asks of a code, as tables: a tuple index is one specialised instruction,
# while ``&`` on an int is a generic call that allocates its result.
_CODES = range(32)
_TRACKED_AT = tuple(bool(code & TRACKED) for code in _CODES)
_SAMPLED_AT = tuple(bool(code & SAMPLED) for code in _CODES)
_FRESH_AT = tuple(code & _PLAIN == WINDOW_NEW for code in _CODES)
_MAIN_TRACKED_AT = tuple(bool(code & TRACKED) and code & _PLAIN != WINDOW for code in _CODES)
_TO_PROBATION = tuple(PROBATION | code & _MARKS for code in _CODES)
_PLAIN_AT = tuple(code & _PLAIN for code in _CODES)
_NEW_TRACKED = WINDOW_NEW | TRACKED
_PROTECTED_SAMPLED = PROTECTED | _MARKS
_NEW_SAMPLED = WINDOW_NEW | _MARKS

_WINDOW_MIN = 0.01  # the window's share of the budget: where it starts, and its floor
_WEIGHTED_WINDOW = 0.2  # the starting share when entry costs vary (see _on_first_fill)
# Climber (see _climb): a sample is looked at every half request per resident
# entry (at least _MIN_SAMPLE requests, and every _MIN_SAMPLE in the first
# sample after the fill).  It ends at its first decisive look, or unmoved at
# _MAX_SAMPLE requests or _MAX_PASSES passes over the cache, whichever is
# fewer (but at least one look).  A move must beat _MIN_GAIN of the sample's
# requests and _BAR times its own noise at the sample's last look (more at
# earlier looks).  Moves are _STEP_PERCENT of the budget, at most _MAX_STEPS
# of them, unless the window catches no reuse at all (see _climb).
_STEP_PERCENT = 0.0625
_MAX_STEPS = 2  # a move is at most this many steps while the window catches reuse
_GHOST_SAMPLE = 4096  # caches beyond this many entries track a sample of departed keys
_SAMPLE_MULT = 0.5
_MIN_SAMPLE = 64
_MAX_SAMPLE = 1024
_MAX_PASSES = 4  # nor more than this many passes over the cache
_BAR = 2.0
_MIN_GAIN = 0.002
# Shadows (see shadows.py): their sample holds this many to twice as many entries' worth of keys.
# Their lean moves the window a step once it passes _SHADOW_BAR times its noise; a ghost's near
# move waits while they lean against it by _SHADOW_VETO requests or _BAR sigmas, whichever is
# more.  The lean halves whenever their counts age.
_SHADOW_ENTRIES = 64
_SHADOW_BAR = 2.5
_SHADOW_VETO = 2
_VICTIM_SAMPLE = 4  # probation-tail entries compared when costs differ
# Entries whose unwritten uses are held at once; bounds that table's memory.
_PENDING_LIMIT = 16384
_DEPARTED_BATCH = 32


class Policy:
    """Decides which entries stay, for a budget of ``max_cost``."""

    def __init__(self, max_cost: int, sketch: FrequencySketch) -> None:
        self.sketch = sketch
        self.window = Segment(WINDOW)
        self.probation = Segment(PROBATION)
        self.protected = Segment(PROTECTED)
        window, probation, protected = self.window, self.probation, self.protected
        # Indexed by ``where``, marks included.
        plain = (None, window, probation, protected, protected, window, None, None)
        self._segments = plain * 4
        self.max_cost = max_cost
        self.total_cost: float = 0  # cost of every entry tracked, candidates included
        self.window_max = self._window_floor()
        self.protected_max = 0
        self._set_main()
        # Entries holding uses not yet written to the sketch (see record_hits),
        # in the order of their first such use; those that left since hold 0.
        self._pending: list[Entry] = []
        self._pending_entries = 0  # how many of them still hold uses
        self._pending_total = 0
        self._departed: list[tuple[Hashable, int]] = []
        # The last single victim's sketch estimate, reused while the counters
        # are unchanged: a victim that keeps winning is judged over and over.
        self._victim: Entry | None = None
        self._victim_base = 0
        self._victim_version = -1
        self._first_cost: float = 0
        self._varied_costs = False
        self._filled = False
        # Climber: no samples are taken before the cache first fills.
        self._sample_hits = 0
        self._sample_misses = 0
        self._sample_period = NEVER
        self._window_hits = 0
        self._probation_hits = 0
        self._window_ghost = Ghost()  # refused candidates, by window departures
        self._main_ghost = Ghost()  # main's victims, by main evictions
        self._look = _MIN_SAMPLE  # requests between looks at the current sample
        self._sample_cap = _MIN_SAMPLE  # requests after which the sample ends unmoved
        self._pass = 0  # requests for one pass over the cache: its entry count
        # Samples are sized for unit costs until the cache fills (see _on_first_fill).
        self._shadows = Shadows()
        self._shadow_bits = 0  # the shadows' sample rate is 2**-bits
        self._ghost_bits = 0  # the ghosts', at least as high
        self._ghost_mask = self._sample_mask = 0
        self._set_samples(max_cost)
        self._place_shadows()

    # -- bookkeeping -------------------------------------------------------

    def _window_floor(self) -> int:
        return max(int(self.max_cost * _WINDOW_MIN), 1)

    def _set_main(self) -> None:
        self.protected_max = int((self.max_cost - self.window_max) * PROTECTED_SHARE)

    def remove(self, entry: Entry) -> None:
        """Forget ``entry`` (deleted, expired or replaced by the cache)."""
        segment = self._segments[entry.where]
        if segment is not None:
            segment.unlink(entry)
            self.total_cost -= entry.cost
        if entry.uses:
            self._depart(entry)

    def clear(self) -> None:
        """Forget every entry and all frequencies."""
        for segment in (self.window, self.probation, self.protected):
            segment.clear()
        self.total_cost = 0
        for entry in self._pending:
            entry.uses = 0
        self._pending.clear()
        self._pending_entries = 0
        self._pending_total = 0
        self._departed.clear()
        self.sketch.clear()
        self._window_ghost.clear()
        self._main_ghost.clear()
        self._shadows.clear()

    # -- frequency -----------------------------------------------------------

    def _depart(self, entry: Entry) -> None:
        """Queue the unwritten uses of an entry that left (or was refused)."""
        times = entry.uses
        entry.uses = 0
        self._pending_entries -= 1
        self._pending_total -= times
        # Departed entries are written in batches; until then their key
        # reads a little low.
        departed = self._departed
        departed.append((entry.key, times))
        if len(departed) >= _DEPARTED_BATCH:
            self.sketch.add(departed)
            departed.clear()

    def _write_back_all(self) -> None:
        departed = self._departed
        for entry in self._pending:
            times = entry.uses
            if times:
                departed.append((entry.key, times))
                entry.uses = 0
        self.sketch.add(departed)
        departed.clear()
        self._pending.clear()
        self._pending_entries = 0
        self._pending_total = 0

    def frequency(self, entry: Entry) -> int:
        """Estimated recent uses of a resident entry, unwritten uses included."""
        freq = self.sketch.estimate(entry.key) + entry.uses
        return freq if freq < MAX_FREQ else MAX_FREQ

    # -- events from the cache ----------------------------------------------

    def record_hits(self, reads: list[Entry]) -> None:
        """Apply a batch of buffered reads: count them and refresh recency.

        Uses are tallied on each entry (``uses``) instead of going through
        the sketch one by one: a pure-Python count-min increment costs about
        a microsecond, far above the budget of a cache hit.  Tallies are
        written to the sketch when the entry leaves and before the sketch
        ages, and are added to the sketch's estimate meanwhile, so admission
        compares the same frequencies.
        """
        pending = self._pending
        first_uses = len(pending)
        reorder = self._reorder
        for entry in reads:
            uses = entry.uses
            if not uses:
                pending.append(entry)
            entry.uses = uses + 1
            where = entry.where
            if where == PROTECTED:
                entry.where = PROTECTED_HOT
            elif where != PROTECTED_HOT:
                reorder(entry)
        n = len(reads)
        self._pending_entries += len(pending) - first_uses
        self._pending_total += n
        self._sample_hits += n
        if (self.sketch.additions + self._pending_total >= self.sketch.sample_size
                or self._pending_entries > _PENDING_LIMIT):
            self._write_back_all()
        elif len(pending) > 2 * _PENDING_LIMIT:
            # Most of the list left since: drop those, keeping the order.
            pending[:] = [entry for entry in pending if entry.uses]
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
        sampled = _SAMPLED_AT[where]
        if sampled:
            self._shadows.access(entry.key, entry.cost)
        where = _PLAIN_AT[where]
        if where in (WINDOW, WINDOW_NEW):
            self.window.move_to_end(entry)
            self._window_hits += 1
        elif where == PROBATION:
            self._probation_hits += 1
            self.probation.unlink(entry)
            self.protected.append(entry, _PROTECTED_SAMPLED if sampled else PROTECTED)
            if self.protected.cost > self.protected_max:
                self._demote_protected()
        elif where == PROTECTED:
            # Sampled entries only (the others never get here): strict LRU, never flagged.
            self.protected.move_to_end(entry)
        else:
            # Read, then removed before the reads were applied.
            self._depart(entry)

    def add(self, entry: Entry) -> list[Entry]:
        """Track a new entry; return the entries that must leave.

        The returned list contains ``entry`` itself when admission refused it.
        """
        # The sketch sees this use only when the entry leaves the window
        # (see _admit): one hash then serves the sighting and the estimate.
        self._sample_misses += 1
        key = entry.key
        tag = WINDOW_NEW
        # One hash picks the keys the ghosts track and, among them, those the shadows replay;
        # the mark it leaves on the entry spares a hash when the entry leaves.
        spread = hash((key,))
        if not spread & self._ghost_mask:
            ghost = self._window_ghost
            if key in ghost.recent or key in ghost.older:
                ghost.returned(key)
            ghost = self._main_ghost
            if key in ghost.recent or key in ghost.older:
                ghost.returned(key)
            if spread & self._sample_mask:
                tag = _NEW_TRACKED
            else:
                tag = _NEW_SAMPLED
                self._shadows.access(key, entry.cost)
        window = self.window
        window.append(entry, tag)
        self.total_cost += entry.cost
        out: list[Entry] = []
        if window.cost > self.window_max or self.total_cost > self.max_cost:
            self._evict(entry, False, out)
        if self._sample_hits + self._sample_misses >= self._sample_period:
            self._climb()
        return out

    def update(self, entry: Entry, old_cost: float) -> list[Entry]:
        """Account for ``entry`` having been rewritten with a new cost.

        The updated entry itself is never chosen to leave.
        """
        where = entry.where
        if _FRESH_AT[where]:
            self.sketch.sight(entry.key)  # its insertion, before the update's own use
        if not entry.uses:
            self._pending.append(entry)
            self._pending_entries += 1
        entry.uses += 1
        self._pending_total += 1
        segment = self._segments[entry.where]
        assert segment is not None
        new_cost = entry.cost
        entry.cost = old_cost
        segment.unlink(entry)
        entry.cost = new_cost
        self.total_cost += new_cost - old_cost
        target = self.protected if segment is self.probation else segment
        marks = where & _MARKS
        if target is self.protected and not marks & SAMPLED:
            marks = 0  # protected holds no other marks
        target.append(entry, target.tag | marks)
        self._demote_protected()
        out: list[Entry] = []
        self._evict(entry, True, out)
        return out

    def resize(self, max_cost: int) -> list[Entry]:
        """Change the budget; return the entries that no longer fit."""
        share = self.window_max / self.max_cost
        self.max_cost = max_cost
        self.window_max = max(int(max_cost * share), self._window_floor())
        self._set_main()
        self._place_shadows()
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
            where = cand.where
            window.unlink(cand)
            if cand is keep and keep_is_update:
                self.probation.append(cand, _TO_PROBATION[where])
            else:
                self._admit(cand, keep if keep_is_update else None, out, where)
        # Still over budget (a grown update, a smaller max_cost): plain eviction.
        while self.total_cost > self.max_cost:
            victim = self._any_victim(keep)
            if victim is None:
                break
            self.remove(victim)
            out.append(victim)

    def _admit(self, cand: Entry, keep: Entry | None, out: list[Entry], where: int) -> None:
        """Judge ``cand``, just out of the window, where it was tagged ``where``."""
        # ``cand`` has left the window but still counts in total_cost.
        if _TRACKED_AT[where]:
            self._window_ghost.clock += cand.cost
        sketch = self.sketch
        # WINDOW_NEW: the sketch has not yet seen its insertion.
        fresh = _FRESH_AT[where]
        seen = sketch.sight(cand.key) if fresh else -1
        excess = self.total_cost - self.max_cost
        if excess <= 0:
            self._first_cost = self._first_cost or cand.cost
            if cand.cost != self._first_cost:
                self._varied_costs = True
            self.probation.append(cand, _TO_PROBATION[where])
            return
        if not self._filled:
            self._on_first_fill()
        need = excess if excess < cand.cost else cand.cost
        head = self.probation.head
        victim: Entry = head.next
        second: Entry = victim.next
        victims: list[Entry] | None
        if (victim is not head and victim is not keep and victim.cost >= need
                and (second is head or (second.cost == victim.cost
                                        and (second.next is head
                                             or second.next.cost == victim.cost)))):
            # The usual case: the LRU entry suffices and its sampled
            # neighbours cost the same, so ranking them would keep LRU order.
            # Its estimate is reused while the counters are unchanged: a
            # victim that keeps winning is judged over and over.
            if victim is self._victim and sketch.version == self._victim_version:
                base = self._victim_base
            else:
                base = sketch.estimate(victim.key)
                self._victim, self._victim_base, self._victim_version = (
                    victim, base, sketch.version)
            victims_freq = base + victim.uses
            victims = [victim]
        else:
            victims = self._sample_victims(need, keep)
            victims_freq = 0 if victims is None else sum(self.frequency(v) for v in victims)
        if victims is not None:
            cand_freq = (seen if fresh else sketch.estimate(cand.key)) + cand.uses
            if (cand_freq if cand_freq < MAX_FREQ else MAX_FREQ) > (
                    victims_freq if victims_freq < MAX_FREQ else MAX_FREQ):
                ghost = self._main_ghost
                for victim in victims:
                    if _MAIN_TRACKED_AT[victim.where]:  # main's own victims only
                        ghost.clock += victim.cost
                        ghost.add(victim.key)
                    self.remove(victim)
                    out.append(victim)
                self.probation.append(cand, _TO_PROBATION[where])
                return
        if _TRACKED_AT[where]:
            self._window_ghost.add(cand.key)
        self.total_cost -= cand.cost  # cand is in no segment: remove() would miss it
        if cand.uses:
            self._depart(cand)
        out.append(cand)

    def _on_first_fill(self) -> None:
        """Start the climber, and pick the starting window, once the cache is full.

        With varied costs a 1% window is smaller than many single entries,
        which then skip the recency stage and face admission cold; a 20%
        window measured best on the weighted trace (object and byte hit
        ratio), while unit costs keep Caffeine's 1%.  Samples start here:
        while the cache fills every candidate is admitted, so those hit
        rates say nothing about the window.
        """
        self._filled = True
        entries = self.window.count + self.probation.count + self.protected.count
        if self._set_samples(entries):
            # Costs vary: the entries that fit are not the budget's guess.
            self._shadows.clear()
            for segment in (self.window, self.probation, self.protected):
                for entry in segment:
                    where = entry.where & _PLAIN
                    where = PROTECTED if where == PROTECTED_HOT else where
                    entry.where = self._marked(entry, where)
            self._place_shadows()
        if self._varied_costs:
            self._adjust_window(int(self.max_cost * _WEIGHTED_WINDOW) - self.window_max)
        self._sample_hits = self._sample_misses = 0
        self._window_hits = self._probation_hits = 0
        self._next_period()
        # Frequent looks at the first sample: a window too small for the
        # workload costs hits on every request until it moves.
        self._sample_period = self._look = _MIN_SAMPLE

    def _set_samples(self, entries: int) -> bool:
        """Size the ghosts' and the shadows' samples for ``entries``; return whether they changed.

        The shadows get _SHADOW_ENTRIES to twice that many entries' worth of keys; the ghosts
        track every key up to _GHOST_SAMPLE entries, and beyond a sample (at least the
        shadows') so they stay small.
        """
        bits = max((entries // _SHADOW_ENTRIES).bit_length() - 1, 0)
        ghost_bits = min((entries // _GHOST_SAMPLE).bit_length(), bits)
        changed = (bits, ghost_bits) != (self._shadow_bits, self._ghost_bits)
        self._shadow_bits = bits
        self._ghost_bits = ghost_bits
        self._ghost_mask = (1 << ghost_bits) - 1
        self._sample_mask = (1 << bits) - 1
        self._shadows.age_at = max(self.sketch.sample_size >> bits, 1)
        return changed

    def _sample_victims(self, need: float, keep: Entry | None) -> list[Entry] | None:
        """Choose entries freeing at least ``need``, or None if impossible.

        Victims come from the probation tail, ranked by frequency per unit
        of cost within a sample of _VICTIM_SAMPLE, then protected, then the
        window.
        """
        head = self.probation.head
        first: Entry = head.next
        chosen: list[Entry] = []
        freed: float = 0
        cursor = first
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
            where = entry.where
            if where == PROTECTED_HOT:
                entry.where = PROTECTED  # read since it was last passed: keep it
                protected.move_to_end(entry)
                continue
            protected.unlink(entry)
            if _SAMPLED_AT[where]:
                tag = PROBATION | _MARKS
            elif not self._ghost_mask or not hash((entry.key,)) & self._ghost_mask:
                tag = PROBATION | TRACKED
            else:
                tag = PROBATION
            probation.append(entry, tag)

    # -- adaptive window -------------------------------------------------------

    def _next_period(self) -> int:
        """Start a sample: set the ghost depths, the looks and the cap; return the first look."""
        entries = self.window.count + self.probation.count + self.protected.count
        # The ghosts' clocks run on the departures of the keys they track.
        depth = (self._step_cost() << (STEPS - 1)) >> self._ghost_bits
        self._window_ghost.depth = self._main_ghost.depth = depth
        self._look = max(int(_SAMPLE_MULT * entries), _MIN_SAMPLE)
        self._sample_cap = max(self._look, min(_MAX_SAMPLE, _MAX_PASSES * entries))
        self._pass = entries
        return self._look

    def _step_cost(self) -> int:
        return max(int(self.max_cost * _STEP_PERCENT), 1)

    def _climb(self) -> None:
        """Look at the sample so far; move the window once its evidence is decisive.

        Growing the window by d would have gained the refused candidates
        that came back within d window departures, and cost main's coldest
        d of budget, estimated at probation's hit density.  Shrinking it
        would have gained main's victims that came back within d evictions,
        and cost the window's density times d.  Both are measured over the
        same requests, so a change of phase moves both sides alike.

        That estimate of what main gives up is a model, and wrong on some
        workloads; the shadows measure instead.  A near move the ghosts
        propose waits while the shadows lean against it, and a decisive lean
        moves the window a step by itself.  The ghosts still propose the far
        moves, which the shadows, a step either side, cannot see.

        A sample is a sequential test: it ends at the first look where a
        move's net gain clears the bar, else it keeps gathering up to its
        cap and ends unmoved.  Small caches see few events per request, so
        a fixed short sample would let chance pass a fixed bar many times
        over a trace; strong evidence still ends a sample at its first look.
        """
        requests = self._sample_hits + self._sample_misses
        step = self._step_cost()
        window, probation, protected = self.window, self.probation, self.protected
        protected_hits = self._sample_hits - self._window_hits - self._probation_hits
        window_density = self._window_hits / max(window.cost, 1)
        probation_density = self._probation_hits / max(probation.cost, 1)
        protected_density = protected_hits / max(protected.cost, 1)
        main_density = (self._sample_hits - self._window_hits) / max(
            probation.cost + protected.cost, 1)
        cap = self._sample_cap
        # Twice the noise at the last look; each earlier look is one more
        # chance for noise to pass, so its bar grows with the log of the looks
        # still to come, as the running maximum of a random walk does.
        bar = _BAR * math.sqrt(1 + math.log(cap / max(requests, 1))) if requests < cap else _BAR
        best, move = _MIN_GAIN * requests, 0
        scale = 1 << self._ghost_bits
        room = self.max_cost - self.window_max
        # Depths beyond _MAX_STEPS are weighed only while the window catches
        # no reuse at all, and once the sample has lasted a pass over the
        # cache (main's own reuse has had its chance to show): then the window
        # sits before a cliff that short moves never show (reuse farther off
        # than the next step), and may jump as far as that evidence reaches,
        # up to half the budget.  The probation-first estimate of what main
        # gives up is trusted only near its edge; farther in, a move is also
        # charged main's average density, since main shrinks as a whole.
        far = self._window_hits == 0 and requests >= self._pass
        levels = STEPS if far else _MAX_STEPS
        reach = max(self.max_cost >> 1, step * _MAX_STEPS)
        # The shadows' lean: what a step up rather than down would have gained on the sampled
        # keys lately.  A near move the ghosts propose waits while the shadows lean against
        # it by the ghosts' own bar, as they would against noise.
        shadows = self._shadows
        lean = shadows.up - shadows.down
        spread = math.sqrt(shadows.up + shadows.down)
        against = max(_SHADOW_VETO, _BAR * spread)
        grow_ok = lean > -against
        shrink_ok = lean < against
        for level in range(levels):
            d = step << level
            if d > reach:
                break
            near = level < _MAX_STEPS
            if (d <= room or (d >> 1) < room) and (grow_ok or not near):
                d = min(d, room)  # the last move may be a part step, up to the whole budget
                gain = scale * self._window_ghost.gains[level]
                # Main gives up probation first, then protected.
                cold = min(d, probation.cost)
                loss = probation_density * cold + protected_density * (d - cold)
                if level >= _MAX_STEPS and main_density * d > loss:
                    loss = main_density * d
                if gain - loss > best and gain - loss > bar * math.sqrt(scale * gain + loss):
                    best, move = gain - loss, d
            if d <= self.window_max - self._window_floor() and (shrink_ok or not near):
                gain = scale * self._main_ghost.gains[level]
                loss = window_density * d
                if gain - loss > best and gain - loss > bar * math.sqrt(scale * gain + loss):
                    best, move = gain - loss, -d
        if abs(lean) > _SHADOW_BAR * spread and abs(move) <= step << (_MAX_STEPS - 1):
            # A decisive lean moves the window a step its way, unless the ghosts see farther.
            if lean > 0 and room > 0 and move <= 0:
                move = min(step, room)
            elif lean < 0 and self.window_max > self._window_floor() and move >= 0:
                move = -step
        if not move and requests < cap:
            self._sample_period = requests + self._look
            return
        self._sample_hits = self._sample_misses = 0
        self._window_hits = self._probation_hits = 0
        self._window_ghost.gains = [0] * STEPS
        self._main_ghost.gains = [0] * STEPS
        self._sample_period = self._next_period()
        if move:
            self._adjust_window(move)

    def _marked(self, entry: Entry, where: int) -> int:
        """``where`` (a plain code) with the marks ``entry``'s key earns there."""
        spread = hash((entry.key,))
        if spread & self._ghost_mask:
            return where
        if spread & self._sample_mask:
            return where if where in (PROTECTED, PROTECTED_HOT) else where | TRACKED
        return where | _MARKS

    def _place_shadows(self) -> None:
        """Scale the budget to the sample and put the shadows' windows a step either side."""
        rate = 1 / (1 << self._shadow_bits)
        step = self._step_cost()
        low = max(self.window_max - step, self._window_floor())
        high = min(self.window_max + step, self.max_cost)
        self._shadows.place(self.max_cost * rate, low * rate, high * rate)

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
                    self.window.append(entry, self._marked(entry, WINDOW))
                    quota -= entry.cost
        elif amount < 0:
            self.window_max -= max(min(-amount, self.window_max - self._window_floor()), 0)
            self._set_main()
            # Shrinking moves the window's oldest into probation unjudged.
            window = self.window
            while window.cost > self.window_max and window.count:
                entry = window.head.next
                where = entry.where
                if _FRESH_AT[where]:
                    self.sketch.sight(entry.key)
                window.unlink(entry)
                self.probation.append(entry, _TO_PROBATION[where])
        self._place_shadows()
