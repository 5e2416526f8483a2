"""Replay cache traces and compare hit ratios: weighted_cache, LRU, theine and Belady's optimum.

The replays, one per policy, are in ``replays.py`` (with the protocol every policy follows); the
points, their verdicts and the printed tables in ``hit_ratio_tables.py``.

Every unit-cost trace (the shared traces, the Zipf generator and the synthetic generators of
``synthetic.py``) is replayed at 0.5%, 2%, 10% and 50% of its distinct keys plus any reference
points; weighted_cache is also replayed at twice each size, so a dip as the cache grows shows.

    .venv/bin/python bench/hit_ratio.py                  # everything, in 2 processes
    .venv/bin/python bench/hit_ratio.py --only gli --only recency --jobs 1
    .venv/bin/python bench/hit_ratio.py --plot bench/charts   # more sizes, one chart per trace
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import synthetic
import traces
from hit_ratio_tables import REFERENCE, UnitRow, WeightedRow, print_unit_table, print_weighted_table
from replays import REPLAYS, Tally, TheineCache
from traces import Trace

FRACTIONS = (0.005, 0.02, 0.10, 0.50)  # of a trace's distinct keys
REAL_TRACES = ("gli", "oltp", "loop", "sprite", "multi1", "2_pools", "web07", "orm", "gcc", "p6")
UNIT_TRACES = ("zipf", *REAL_TRACES, *synthetic.GENERATORS)
WEIGHTED_TRACE = "adapt_size"
WEIGHTED_FRACTIONS = (0.01, 0.05, 0.10, 0.20)  # of the weighted trace's distinct bytes
QUICK_ACCESSES = 100_000
# The longest traces are replayed from their start up to this many accesses unless --full:
# pure-Python replays of the whole of them take too long for a routine run.
LONG_TRACES = ("p6", "orm")
LONG_TRACE_ACCESSES = 2_000_000


# -- trace loading, shared by the worker processes ----------------------------------------------

_TRACES: dict[str, Trace] = {}


def load(name: str, directory: Path, limit: int | None, full: bool) -> Trace | None:
    """The named trace (shared, synthetic or Zipf), cut to ``limit`` accesses; None if absent."""
    if name in synthetic.GENERATORS:
        trace: Trace | None = Trace(name, list(synthetic.GENERATORS[name][0]()))
    elif name == "zipf":
        trace = traces.zipf_trace(n_accesses=limit or 1_000_000)
    else:
        trace = traces.load_trace(name, directory)
    if trace is None:
        return None
    if name in LONG_TRACES and not full:
        limit = min(limit or LONG_TRACE_ACCESSES, LONG_TRACE_ACCESSES)
    return trace.head(limit)


def _job(args: tuple[str, str, int]) -> tuple[str, str, int, Tally | None, float]:
    name, policy, size = args
    start = time.perf_counter()
    tally = REPLAYS[policy](_TRACES[name], size)
    return name, policy, size, tally, time.perf_counter() - start


def run_jobs(jobs: Sequence[tuple[str, str, int]], processes: int) -> dict[tuple[str, str, int],
                                                                           Tally | None]:
    """Replay every (trace, policy, size), longest traces first, in ``processes`` processes."""
    ordered = sorted(jobs, key=lambda job: -len(_TRACES[job[0]].keys))
    results: dict[tuple[str, str, int], Tally | None] = {}
    done = 0

    def note(result: tuple[str, str, int, Tally | None, float]) -> None:
        nonlocal done
        name, policy, size, tally, seconds = result
        results[(name, policy, size)] = tally
        done += 1
        print(f"[{done}/{len(ordered)}] {name} @ {size} {policy}: {seconds:.1f}s", flush=True)

    if processes <= 1:
        for job in ordered:
            note(_job(job))
    else:
        # fork: the workers share the traces loaded by the parent.
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for result in pool.imap_unordered(_job, ordered):
                note(result)
    return results


def unit_sizes(trace: Trace, quick: bool) -> list[int]:
    """FRACTIONS of the distinct keys, the generator's extra shares and the reference points."""
    distinct = trace.distinct_keys()
    shares = list(FRACTIONS)
    if trace.name in synthetic.GENERATORS:
        shares.extend(synthetic.GENERATORS[trace.name][1])
    sizes = {max(1, int(distinct * share)) for share in shares}
    if not quick:
        sizes.update(REFERENCE.get(trace.name, {}))
    return sorted(sizes)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    names = [*UNIT_TRACES, WEIGHTED_TRACE]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", help="traces directory (default: $TRACES_DIR or ../shared)")
    parser.add_argument(
        "--only", action="append", choices=names, metavar="NAME", help=f"one of {names}"
    )
    parser.add_argument("--full", action="store_true",
                        help=f"replay all of {', '.join(LONG_TRACES)}, "
                        f"not their first {LONG_TRACE_ACCESSES:,} accesses")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"replay only the first {QUICK_ACCESSES} accesses of each trace (no reference points)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help="replay more sizes per trace; draw hit ratio against capacity into DIR",
    )
    return parser.parse_args(argv)


def unit_jobs(trace: Trace, sizes: Sequence[int]) -> list[tuple[str, str, int]]:
    """The replays behind the unit-cost rows of ``trace`` at ``sizes``."""
    jobs = []
    for size in sizes:
        jobs.extend((trace.name, policy, size) for policy in ("ours", "lru", "theine", "opt"))
        jobs.append((trace.name, "ours", 2 * size))
    return jobs


def unit_rows(
    trace: Trace, sizes: Sequence[int], results: Mapping[tuple[str, str, int], Tally | None],
    quick: bool,
) -> list[UnitRow]:
    """One row per size, from the replays of :func:`unit_jobs`."""
    name = trace.name
    rows = []
    for size in sizes:
        theine = results[(name, "theine", size)]
        double = results[(name, "ours", 2 * size)]
        rows.append(UnitRow(
            name, size,
            ours=_ratio(results[(name, "ours", size)]),
            lru=_ratio(results[(name, "lru", size)]),
            theine=None if theine is None else theine.hit_ratio,
            optimal=_ratio(results[(name, "opt", size)]),
            reference=REFERENCE.get(name, {}).get(size) if not quick else None,
            ours_double=None if double is None else double.hit_ratio,
            synthetic=name in synthetic.GENERATORS,
        ))
    return rows


def weighted_capacities(trace: Trace) -> list[tuple[float, int]]:
    """(share of the distinct bytes, capacity) of each weighted point."""
    return [(share, int(trace.distinct_cost() * share)) for share in WEIGHTED_FRACTIONS]


def weighted_jobs(trace: Trace) -> list[tuple[str, str, int]]:
    """The replays behind the weighted rows of ``trace``."""
    return [
        (trace.name, policy, capacity)
        for _, capacity in weighted_capacities(trace)
        for policy in ("ours", "lru", "lfu")
    ]


def weighted_rows(
    trace: Trace, results: Mapping[tuple[str, str, int], Tally | None]
) -> list[WeightedRow]:
    """One row per weighted point, from the replays of :func:`weighted_jobs`."""
    return [
        WeightedRow(share, capacity, *(_tally(results[(trace.name, policy, capacity)])
                                       for policy in ("ours", "lru", "lfu")))
        for share, capacity in weighted_capacities(trace)
    ]


def run_unit_trace(
    trace: Trace, sizes: Sequence[int], quick: bool = False, processes: int = 1
) -> list[UnitRow]:
    """Replay one unit-cost trace at ``sizes`` with every policy."""
    _TRACES[trace.name] = trace
    return unit_rows(trace, sizes, run_jobs(unit_jobs(trace, sizes), processes), quick)


def run_weighted_trace(trace: Trace, processes: int = 1) -> list[WeightedRow]:
    """Replay one weighted trace at every weighted point."""
    _TRACES[trace.name] = trace
    return weighted_rows(trace, run_jobs(weighted_jobs(trace), processes))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected traces and print the tables."""
    args = parse_args(argv)
    selected = args.only or [*UNIT_TRACES, WEIGHTED_TRACE]
    directory = traces.resolve_traces_dir(args.traces)
    limit = QUICK_ACCESSES if args.quick else None
    if TheineCache is None:
        print("theine is not installed: its column is left empty")
    skipped: list[str] = []
    # Every replay of every trace goes to one pool, longest first, so both processes stay busy.
    jobs: list[tuple[str, str, int]] = []
    unit_points: list[tuple[Trace, list[int]]] = []
    weighted_traces: list[Trace] = []
    for name in selected:
        trace = load(name, directory, limit, args.full)
        if trace is None:
            skipped.append(traces.TRACE_FILES[name].filename)
            continue
        _TRACES[name] = trace
        if trace.weighted:
            weighted_traces.append(trace)
            jobs.extend(weighted_jobs(trace))
            continue
        sizes = unit_sizes(trace, args.quick)
        if args.plot:
            sizes = sorted({*sizes, *plots_module().curve_capacities(sizes)})
        unit_points.append((trace, sizes))
        jobs.extend(unit_jobs(trace, sizes))
        print(f"{name}: {len(trace.keys):,} accesses, {trace.distinct_keys():,} distinct keys",
              flush=True)
    results = run_jobs(jobs, args.jobs)
    rows = [row for trace, sizes in unit_points
            for row in unit_rows(trace, sizes, results, args.quick)]
    weighted = [(trace, weighted_rows(trace, results)) for trace in weighted_traces]
    if rows:
        print_unit_table(rows)
    for trace, trace_rows in weighted:
        print_weighted_table(trace, trace_rows)
    if skipped:
        print(f"\nSkipped (not found in {directory}): {', '.join(skipped)}")
    if args.plot:
        named = [(trace.name, trace_rows) for trace, trace_rows in weighted]
        for path in plots_module().draw_hit_ratios(rows, named, args.plot):
            print(f"drew {path}")
    return 0


def plots_module() -> Any:
    """bench/plots.py, imported only for --plot: matplotlib is needed for charts alone."""
    import plots

    return plots


def _tally(tally: Tally | None) -> Tally:
    assert tally is not None
    return tally


def _ratio(tally: Tally | None) -> float:
    return _tally(tally).hit_ratio


if __name__ == "__main__":
    sys.exit(main())
