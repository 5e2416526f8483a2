"""Per-key fair shares of what upstream fetching may use: pending rows, rows/s and requests/s.

Every client key (tenant) may use a fair share of each bound, so that one client making new
keys as fast as it can fills neither the pending queue nor upstream's rate for the others:

- a tenant's *share* is the bound divided among the tenants using it now, plus one share kept
  free for a tenant that is not using it yet (while more keys are configured than active);
- a tenant's *guarantee* is the bound divided by the number of configured keys: a tenant under
  its guarantee is always admitted, even when the others have used the whole bound (they got
  there while it was idle). So a bound can be passed, but never beyond twice its value;
- a tenant over its share gets ``unavailable`` for its own new rows, with the reason; another
  tenant's rows are never refused because of it.

The pending-row bound counts rows being fetched now; the rate bounds count over a sliding one
second window. A rate bound of 0 means no bound. One object serves one worker's greenlets
(not thread-safe).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping

Tenant = Hashable

# Refusal reasons (the ``reason`` label of measure_upstream_unavailable_rows_total).
OVER_PENDING_SHARE = "tenant_pending_share"
OVER_ROWS_SHARE = "tenant_rows_share"
OVER_REQUESTS_SHARE = "tenant_requests_share"
_WINDOW_S = 1.0


class _Share:
    """One bound shared fairly between tenants; subclasses say what a tenant uses of it."""

    def __init__(self, bound: float, tenants: int) -> None:
        self.bound = bound
        self._tenants = max(1, tenants)

    def used(self, tenant: Tenant) -> float:
        raise NotImplementedError

    def total(self) -> float:
        raise NotImplementedError

    def users(self) -> int:
        raise NotImplementedError

    def room(self, tenant: Tenant) -> float:
        """How much more ``tenant`` may use now (infinite without a bound)."""
        if not self.bound:
            return math.inf
        used = self.used(tenant)
        active = self.users() + (0 if used else 1)
        share = self.bound / min(self._tenants, active + 1) if active < self._tenants else (
            self.bound / active
        )
        guarantee = self.bound / self._tenants
        fair = min(share - used, self.bound - self.total())
        return max(0.0, fair, guarantee - used)


class PendingShare(_Share):
    """Rows being fetched, by the tenant whose request started each fetch."""

    def __init__(self, bound: int, tenants: int) -> None:
        super().__init__(bound, tenants)
        self._held: dict[Tenant, int] = {}
        self._total = 0

    def used(self, tenant: Tenant) -> float:
        return self._held.get(tenant, 0)

    def total(self) -> float:
        return self._total

    def users(self) -> int:
        return len(self._held)

    def take(self, tenant: Tenant, count: int) -> None:
        self._held[tenant] = self._held.get(tenant, 0) + count
        self._total += count

    def give_back(self, tenant: Tenant, count: int) -> None:
        held = self._held.get(tenant, 0) - count
        self._total -= count
        if held > 0:
            self._held[tenant] = held
        else:
            self._held.pop(tenant, None)


class RateShare(_Share):
    """Use per second over a sliding window: the last full second, weighted, plus this one."""

    def __init__(self, per_s: float, tenants: int, clock: Callable[[], float]) -> None:
        super().__init__(per_s, tenants)
        self._clock = clock
        self._window = math.floor(clock() / _WINDOW_S)
        self._current: dict[Tenant, float] = {}
        self._previous: dict[Tenant, float] = {}

    def used(self, tenant: Tenant) -> float:
        weight = self._roll()
        return self._current.get(tenant, 0.0) + weight * self._previous.get(tenant, 0.0)

    def total(self) -> float:
        weight = self._roll()
        return sum(self._current.values()) + weight * sum(self._previous.values())

    def users(self) -> int:
        self._roll()
        return len(self._current.keys() | self._previous.keys())

    def charge(self, tenant: Tenant, amount: float) -> None:
        self._roll()
        self._current[tenant] = self._current.get(tenant, 0.0) + amount

    def _roll(self) -> float:
        """Move to the window of now; return the weight of the previous window's use."""
        now = self._clock() / _WINDOW_S
        window = math.floor(now)
        if window != self._window:
            self._previous = self._current if window == self._window + 1 else {}
            self._current = {}
            self._window = window
        return 1.0 - (now - window)


class TenantQuotas:
    """The three fair shares of one worker's upstream fetching (see the module docstring)."""

    def __init__(
        self,
        *,
        max_pending_rows: int,
        rows_per_s: float,
        requests_per_s: float,
        tenants: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Share the bounds between ``tenants`` configured keys; a rate of 0 is no bound."""
        if max_pending_rows < 1:
            raise ValueError(f"max_pending_rows must be >= 1, got {max_pending_rows!r}")
        for name, value in (("rows_per_s", rows_per_s), ("requests_per_s", requests_per_s)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.pending = PendingShare(max_pending_rows, tenants)
        self.rows = RateShare(rows_per_s, tenants, clock)
        self.requests = RateShare(requests_per_s, tenants, clock)

    def admit(self, tenant: Tenant, wanted: int) -> tuple[int, str | None]:
        """How many of ``wanted`` new fetches ``tenant`` may start now, and why not the rest.

        Admitted rows are taken from the pending share and charged to the rows rate at once.
        """
        if self.requests.room(tenant) <= 0:
            return 0, OVER_REQUESTS_SHARE
        limits = (
            (self.pending.room(tenant), OVER_PENDING_SHARE),
            (self.rows.room(tenant), OVER_ROWS_SHARE),
        )
        admitted, reason = wanted, None
        for room, why in limits:
            if room < admitted:
                admitted, reason = max(0, int(room)), why
        if admitted:
            self.pending.take(tenant, admitted)
            self.rows.charge(tenant, admitted)
        return admitted, reason

    def finished(self, tenant: Tenant, count: int = 1) -> None:
        """``count`` fetches started by ``tenant`` ended (answered or failed)."""
        self.pending.give_back(tenant, count)

    def charge_request(self, rows_by_tenant: Mapping[Tenant, int]) -> None:
        """Charge one upstream request to the tenants whose rows are in it, by their rows."""
        total = sum(rows_by_tenant.values())
        if not total:
            return
        for tenant, rows in rows_by_tenant.items():
            self.requests.charge(tenant, rows / total)
