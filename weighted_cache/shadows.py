"""The climber's measurement: shadow miniatures of the policy on a sample of the keys.

Two small copies of the policy, with windows a step smaller and a step
larger than the cache's, replay the requests for a hash-sampled subset of
the keys; the hits only one of them gets say which way a step pays.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Hashable

# The policy's own settings too (it imports them), so the miniatures cannot drift from it.
PROTECTED_SHARE = 0.8  # share of the main space kept for protected
MAX_FREQ = 16  # a saturated counter plus the doorkeeper bit
NEVER = sys.maxsize


class _Shadow:
    """A miniature of the policy over the sampled keys, with a window of its own size.

    Keys map to their cost in three LRU-ordered dicts (window, probation,
    protected); admission compares the sampled keys' own counts, so a
    replayed request costs a few dict operations and no sketch hash.
    """

    __slots__ = ("max_cost", "probation", "probation_cost", "protected", "protected_cost",
                 "protected_max", "window", "window_cost", "window_max")

    def __init__(self) -> None:
        self.window: OrderedDict[Hashable, float] = OrderedDict()
        self.probation: OrderedDict[Hashable, float] = OrderedDict()
        self.protected: OrderedDict[Hashable, float] = OrderedDict()
        self.window_cost: float = 0
        self.probation_cost: float = 0
        self.protected_cost: float = 0
        self.max_cost: float = 0
        self.window_max: float = 0
        self.protected_max: float = 0

    def access(self, key: Hashable, cost: float, counts: dict[Hashable, int]) -> int:
        """Replay one request; return 1 on a hit, else 0."""
        protected = self.protected
        if key in protected:  # where most hits land
            protected.move_to_end(key)
            return 1
        window = self.window
        if key in window:
            window.move_to_end(key)
            return 1
        probation = self.probation
        held = probation.pop(key, None)
        if held is not None:
            self.probation_cost -= held
            protected[key] = held
            self.protected_cost += held
            if self.protected_cost > self.protected_max:
                self._demote()
            return 1
        window[key] = cost
        self.window_cost += cost
        while self.window_cost > self.window_max and window:
            cand, cand_cost = window.popitem(last=False)
            self.window_cost -= cand_cost
            self._admit(cand, cand_cost, counts)
        return 0

    def _demote(self) -> None:
        protected, probation = self.protected, self.probation
        while self.protected_cost > self.protected_max and protected:
            key, cost = protected.popitem(last=False)
            self.protected_cost -= cost
            probation[key] = cost
            self.probation_cost += cost

    def _admit(self, cand: Hashable, cost: float, counts: dict[Hashable, int]) -> None:
        excess = self.window_cost + self.probation_cost + self.protected_cost + cost - self.max_cost
        probation = self.probation
        if excess > 0:
            victims: list[Hashable] = []
            freq = 0
            for segment in (probation, self.protected):
                for victim in segment:
                    if excess <= 0:
                        break
                    victims.append(victim)
                    freq += counts.get(victim, 0)
                    excess -= segment[victim]
            if excess > 0 or counts.get(cand, 0) <= (freq if freq < MAX_FREQ else MAX_FREQ):
                return
            for victim in victims:
                held = probation.pop(victim, None)
                if held is None:
                    self.protected_cost -= self.protected.pop(victim)
                else:
                    self.probation_cost -= held
        probation[cand] = cost
        self.probation_cost += cost

    def resize(self, max_cost: float, window_max: float) -> None:
        """Take a new budget and window, moving entries as Policy._adjust_window does."""
        self.max_cost = max_cost
        self.window_max = window_max
        self.protected_max = (max_cost - window_max) * PROTECTED_SHARE
        self._demote()
        window, probation, protected = self.window, self.probation, self.protected
        # A larger window takes main's coldest entries; a smaller one hands its oldest to probation.
        for segment in (probation, protected):
            while segment and self.window_cost + next(iter(segment.values())) <= window_max:
                key, cost = segment.popitem(last=False)
                if segment is probation:
                    self.probation_cost -= cost
                else:
                    self.protected_cost -= cost
                window[key] = cost
                self.window_cost += cost
        while self.window_cost > window_max and window:
            key, cost = window.popitem(last=False)
            self.window_cost -= cost
            probation[key] = cost
            self.probation_cost += cost
        while self.window_cost + self.probation_cost + self.protected_cost > max_cost:
            segment = probation or protected or window
            if not segment:
                break
            key, cost = segment.popitem(last=False)
            if segment is probation:
                self.probation_cost -= cost
            elif segment is protected:
                self.protected_cost -= cost
            else:
                self.window_cost -= cost

    def clear(self) -> None:
        """Forget every key."""
        for segment in (self.window, self.probation, self.protected):
            segment.clear()
        self.window_cost = self.probation_cost = self.protected_cost = 0


class Shadows:
    """Two miniatures whose windows sit one climber step below and above the cache's.

    SHARDS-style: they replay only the keys whose spread hash falls under the
    policy's sample mask, on a budget scaled by the same rate, so the hit
    counts they disagree on measure, rather than model, what a step either
    way would have gained.  ``up`` counts requests only the larger window
    hit, ``down`` those only the smaller one hit.
    """

    __slots__ = ("age_at", "counts", "down", "high", "low", "seen", "up")

    def __init__(self) -> None:
        self.low = _Shadow()
        self.high = _Shadow()
        self.counts: dict[Hashable, int] = {}
        self.seen = 0
        self.age_at = NEVER
        self.up = 0
        self.down = 0

    def access(self, key: Hashable, cost: float) -> None:
        """Replay one request for a sampled key in both miniatures."""
        counts = self.counts
        count = counts.get(key, 0)
        if count < MAX_FREQ:
            counts[key] = count + 1
        self.seen += 1
        if self.seen >= self.age_at:
            # Halve every count, as the sketch ages; keys left at 0 are forgotten.  The
            # lean fades at the same pace, so it weighs the current phase most.
            counts = self.counts = {k: c >> 1 for k, c in counts.items() if c > 1}
            self.seen = 0
            self.up >>= 1
            self.down >>= 1
        low = self.low.access(key, cost, counts)
        if low != self.high.access(key, cost, counts):
            if low:
                self.down += 1
            else:
                self.up += 1

    def place(self, max_cost: float, low: float, high: float) -> None:
        """Give the miniatures a budget and their windows; start a new count."""
        self.low.resize(max_cost, low)
        self.high.resize(max_cost, high)
        self.up = self.down = 0

    def clear(self) -> None:
        """Forget every key and count."""
        self.low.clear()
        self.high.clear()
        self.counts.clear()
        self.seen = 0
        self.up = self.down = 0
