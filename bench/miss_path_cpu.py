"""CPU per miss: a Fetcher answering 5-row requests of new keys (waited for, 45 ms window) from an
instant fake upstream, 20 concurrent clients, two client keys configured; in process.

A paired comparison of the miss path's own CPU cost (the wait-window figure measured end to end
follows the machine's load): run it for this checkout and for another one, alternately::

    .venv/bin/python bench/miss_path_cpu.py . /tmp/main-checkout . /tmp/main-checkout
"""

from gevent import monkey

monkey.patch_all()

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

CLIENTS = 20
REQUESTS_PER_CLIENT = 150
ROWS = 5
ROUNDS = 3


def measure() -> None:
    """Run the rounds with the measure_service on sys.path; print CPU per request."""
    import gevent

    from measure_service.fetcher import Fetcher, FetcherSettings
    from measure_service.rows import RowKey
    from measure_service.upstream import RowResult
    from weighted_cache import Cache

    class Upstream:
        def measure(self, rows: Any, params: Any, **options: Any) -> dict[str, RowResult]:
            gevent.sleep(0.002)
            return {str(row["rowIdentifier"]): RowResult(1.0, "modeled", None) for row in rows}

        def settle(self, error: Any, *, explained: bool) -> None:
            pass

    def key(i: int) -> RowKey:
        return RowKey(inventory_id=f"s{i}.com", date="2024-10-30", impressions=1000,
                      country=None, region=None, channel=None, device_type=None, network=None,
                      framework=None, latest=None)

    settings = FetcherSettings(
        ttl_s=100, stale_s=50, error_ttl_s=10, batch_window_s=0.002, batch_rows=100,
        max_pending_rows=1_000_000, concurrency=4, tenants=2, wait_s=0.045,
    )
    fetcher = Fetcher(Cache(10_000_000), Upstream(), settings)  # type: ignore[arg-type]
    counter = [0]

    def client() -> None:
        for _ in range(REQUESTS_PER_CLIENT):
            base = counter[0]
            counter[0] += ROWS
            fetcher.lookup([key(base + k) for k in range(ROWS)], [1] * ROWS, 0.045, "a")

    for round_ in range(ROUNDS):
        started = time.process_time()
        gevent.joinall([gevent.spawn(client) for _ in range(CLIENTS)])
        cpu = time.process_time() - started
        print(f"round {round_}: {cpu / (CLIENTS * REQUESTS_PER_CLIENT) * 1e6:.1f} us CPU per "
              f"{ROWS}-row miss request", flush=True)


def main(argv: list[str]) -> int:
    """With no argument, measure this checkout; else measure each checkout named, in turn."""
    if len(argv) > 1 and argv[1] == "--here":
        sys.path.insert(0, argv[2])
        measure()
        return 0
    for root in argv[1:] or ["."]:
        print(f"== {Path(root).resolve()}", flush=True)
        subprocess.run([sys.executable, __file__, "--here", str(Path(root).resolve())],
                       check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
