"""The service load benchmark's figures from its runs, their verdicts and the printed table."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

THROUGHPUT_TARGET = 0.9
P99_TARGET = 1.5
# The hit path's worker CPU per request, at most this many times the bare WSGI app's.
BARE_CPU_TARGET = 1.5
TARGETS = ("bare", "floor", "service")


def paired_ratios(runs: list[dict[str, Any]], base: list[dict[str, Any]],
                  pick: Callable[[dict[str, Any]], float]) -> list[float]:
    """Each round's figure over the base's figure of the same round.

    Both were measured within one round, seconds apart, so a ratio cancels most of the load
    that other processes put on the machine at that time; their median is steadier than a
    ratio of medians taken over different moments.
    """
    return [pick(run) / max(pick(other), 1e-9) for run, other in zip(runs, base, strict=True)]


def median_of(runs: list[dict[str, Any]], pick: Callable[[dict[str, Any]], float]) -> float:
    """Median of one figure over a target's rounds."""
    return float(statistics.median(pick(r) for r in runs))


def hit_path_report(saturation: dict[str, list[dict[str, Any]]],
                     fixed: dict[str, list[dict[str, Any]]], rate: float) -> dict[str, Any]:
    figures: dict[str, Any] = {"fixed_rate": round(rate, 1)}
    for name in TARGETS:
        figures[name] = {
            "saturation_rps": median_of(saturation[name], lambda r: r["rps"]),
            "saturation_p50_ms": median_of(saturation[name], lambda r: r["latency_ms"]["p50"]),
            "saturation_p99_ms": median_of(saturation[name], lambda r: r["latency_ms"]["p99"]),
            "fixed_p50_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p50"]),
            "fixed_p99_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p99"]),
            "fixed_achieved_rps": median_of(fixed[name], lambda r: r["rps"]),
            "saturation_cpu_us_per_request": median_of(
                saturation[name], lambda r: r["cpu_us_per_request"]),
            "fixed_cpu_us_per_request": median_of(fixed[name], lambda r: r["cpu_us_per_request"]),
            "saturation_split_us": _split_medians(saturation[name]),
            "late_sends": sum(r["late_sends"] for r in fixed[name]),
            "non_2xx": sum(r["non_2xx"] for r in saturation[name] + fixed[name]),
            "non_2xx_by_status": _non_2xx_statuses(saturation[name] + fixed[name]),
            # wrk counts an answer slower than its 2 s timeout as an error.
            "client_errors": sum(sum(r["errors"].values())
                                 for r in saturation[name] + fixed[name]),
            "runs": {"saturation": saturation[name], "fixed_rate": fixed[name]},
        }
    bare, floor, service = figures["bare"], figures["floor"], figures["service"]
    figures["bare_cpu_ratio"] = round(
        service["saturation_cpu_us_per_request"] / bare["saturation_cpu_us_per_request"], 3)
    figures["bare_rps_ratio"] = round(service["saturation_rps"] / bare["saturation_rps"], 3)
    cpu_rounds = paired_ratios(saturation["service"], saturation["bare"],
                               lambda r: r["cpu_us_per_request"])
    rps_rounds = paired_ratios(saturation["service"], saturation["bare"], lambda r: r["rps"])
    figures["bare_cpu_ratio_rounds"] = [round(ratio, 3) for ratio in cpu_rounds]
    figures["bare_cpu_ratio_paired"] = round(statistics.median(cpu_rounds), 3)
    figures["bare_rps_ratio_paired"] = round(statistics.median(rps_rounds), 3)
    # The verdict is the median of the paired rounds (see paired_ratios).
    figures["bare_cpu_ok"] = figures["bare_cpu_ratio_paired"] <= BARE_CPU_TARGET
    figures["throughput_ratio"] = round(service["saturation_rps"] / floor["saturation_rps"], 3)
    figures["p99_ratio"] = round(service["fixed_p99_ms"] / max(floor["fixed_p99_ms"], 1e-9), 3)
    figures["p50_ratio"] = round(service["fixed_p50_ms"] / max(floor["fixed_p50_ms"], 1e-9), 3)
    # What the throughput ratio would be if both apps had the CPU to themselves.
    figures["cpu_throughput_ratio"] = round(
        floor["saturation_cpu_us_per_request"] / service["saturation_cpu_us_per_request"], 3)
    figures["cpu_throughput_ok"] = figures["cpu_throughput_ratio"] >= THROUGHPUT_TARGET
    figures["throughput_ok"] = figures["throughput_ratio"] >= THROUGHPUT_TARGET
    figures["p99_ok"] = figures["p99_ratio"] <= P99_TARGET
    return figures


def _split_medians(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    if "split_us" not in runs[0]:
        return None
    return {part: median_of(runs, lambda r, part=part: r["split_us"][part])
            for part in runs[0]["split_us"]}


def redis_report(saturation: dict[str, list[dict[str, Any]]],
                  fixed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The hit path with ``REDIS_URL`` set against the same build without it, same run."""
    def pick(name: str) -> dict[str, float]:
        return {
            "saturation_rps": median_of(saturation[name], lambda r: r["rps"]),
            "saturation_cpu_us_per_request": median_of(
                saturation[name], lambda r: r["cpu_us_per_request"]),
            "fixed_p50_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p50"]),
            "fixed_p99_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p99"]),
            "non_2xx": sum(r["non_2xx"] for r in saturation[name] + fixed[name]),
        }

    without, with_ = pick("service"), pick("service_redis")
    return {
        "without": without, "with": with_,
        "rps_ratio": round(with_["saturation_rps"] / without["saturation_rps"], 3),
        "cpu_ratio": round(with_["saturation_cpu_us_per_request"]
                           / without["saturation_cpu_us_per_request"], 3),
        "runs": {"saturation": saturation["service_redis"], "fixed_rate": fixed["service_redis"]},
    }


def _non_2xx_statuses(runs: list[dict[str, Any]]) -> dict[str, int]:
    # wrk reports only a count; loadgen reports each status.
    counts: dict[str, int] = {}
    for run in runs:
        for code, n in run.get("statuses", {}).items():
            if not code.startswith("2"):
                counts[code] = counts.get(code, 0) + n
    return counts


def print_table(report: dict[str, Any]) -> None:
    """Print the report as a small table."""
    hit = report["hit_path"]
    bare, floor, service = hit["bare"], hit["floor"], hit["service"]
    git = report["git"]
    dirty = f" + uncommitted changes to {', '.join(git['modified'])}" if git["modified"] else ""
    print(f"\nservice load benchmark, {report['date']}, commit {git['commit']}{dirty}")
    print(f"{report['workers']} gevent workers, "
          f"{report['connections']} connections, {report['duration_s']:g} s runs, "
          f"median of {report['rounds']} round(s)")
    print(f"saturation: {report['saturation_generator']}; "
          f"fixed rate: {report['fixed_rate_generator']}")
    print(f"\n{'hit path (5-row all-hit body)':<40}{'bare':>12}{'floor':>12}{'service':>12}"
          f"{'svc/floor':>10}")
    rows = [
        ("saturation req/s", "saturation_rps", hit["throughput_ratio"]),
        ("saturation p50 ms", "saturation_p50_ms", None),
        ("saturation p99 ms", "saturation_p99_ms", None),
        (f"p50 ms at {hit['fixed_rate']:.0f} req/s", "fixed_p50_ms", hit["p50_ratio"]),
        (f"p99 ms at {hit['fixed_rate']:.0f} req/s", "fixed_p99_ms", hit["p99_ratio"]),
        ("achieved req/s at fixed rate", "fixed_achieved_rps", None),
        ("worker CPU us/request, saturated", "saturation_cpu_us_per_request",
         1 / hit["cpu_throughput_ratio"]),
        ("worker CPU us/request, fixed rate", "fixed_cpu_us_per_request", None),
        ("late sends (generator behind)", "late_sends", None),
        ("non-2xx answers", "non_2xx", None),
        ("client errors (incl. wrk timeouts > 2 s)", "client_errors", None),
    ]
    for label, key, ratio in rows:
        ratio_text = "" if ratio is None else f"{ratio:.2f}x"
        print(f"{label:<40}{bare[key]:>12,.2f}{floor[key]:>12,.2f}{service[key]:>12,.2f}"
              f"{ratio_text:>10}")
    if report["rounds"] > 1:
        for name in TARGETS:
            runs = hit[name]["runs"]["fixed_rate"]
            p99s = ", ".join(f"{r['latency_ms']['p99']:.1f}" for r in runs)
            print(f"{name} p99 ms at the fixed rate, each round: {p99s}")
        saturated = {name: [r["cpu_us_per_request"] for r in hit[name]["runs"]["saturation"]]
                     for name in TARGETS}
        for name, cpus in saturated.items():
            print(f"{name} worker CPU us/request saturated, each round: "
                  f"{', '.join(f'{cpu:.1f}' for cpu in cpus)}")
        print(f"service/bare worker CPU per request, each round: "
              f"{', '.join(f'{ratio:.2f}x' for ratio in hit['bare_cpu_ratio_rounds'])}")
    if bare["saturation_split_us"]:
        print("\nworker CPU us/request saturated, by part (bench/cpu_split.py; medians of rounds)")
        for part in bare["saturation_split_us"]:
            figures = [hit[name]["saturation_split_us"][part] for name in TARGETS]
            print(f"  {part:<38}" + "".join(f"{us:>12,.1f}" for us in figures))
    for name in TARGETS:
        if hit[name]["non_2xx"]:
            print(f"{name} non-2xx answers by status (loadgen runs only): "
                  f"{hit[name]['non_2xx_by_status']}")
    verdict = {True: "ok", False: "MISSED"}
    print(f"\ntargets: throughput >= {THROUGHPUT_TARGET}x floor: "
          f"{verdict[hit['throughput_ok']]}; p99 <= {P99_TARGET}x floor: "
          f"{verdict[hit['p99_ok']]}")
    cpu_rounds = hit["bare_cpu_ratio_rounds"]
    print(f"service vs bare WSGI: worker CPU per request {hit['bare_cpu_ratio_paired']:.2f}x, "
          f"the median of {len(cpu_rounds)} paired round(s) (from {min(cpu_rounds):.2f}x to "
          f"{max(cpu_rounds):.2f}x; target <= {BARE_CPU_TARGET}x: {verdict[hit['bare_cpu_ok']]}); "
          f"ratio of the medians {hit['bare_cpu_ratio']:.2f}x; saturation req/s "
          f"{hit['bare_rps_ratio_paired']:.2f}x (paired; ratio of the medians "
          f"{hit['bare_rps_ratio']:.2f}x)")
    print(f"throughput ratio implied by CPU per request (floor/service, machine-load "
          f"independent): {hit['cpu_throughput_ratio']:.2f}x: "
          f"{verdict[hit['cpu_throughput_ok']]}")
    print(f"hot body all hits after the runs: {hit['all_hits_after']}; cache misses counted "
          f"during them: {hit['cache_misses_during_hit_runs']}")
    redis = hit.get("with_redis")
    if redis:
        print("\nsame build, REDIS_URL empty vs set (hit path, same run)")
        for key in ("saturation_rps", "saturation_cpu_us_per_request", "fixed_p50_ms",
                    "fixed_p99_ms", "non_2xx"):
            print(f"  {key:<34}{redis['without'][key]:>12,.2f}{redis['with'][key]:>12,.2f}")
        print(f"  req/s ratio with/without {redis['rps_ratio']:.3f}; CPU per request ratio "
              f"{redis['cpu_ratio']:.3f}")
    miss = report.get("miss_path")
    if miss:
        print("\nmiss path (5 cold keys per request, WAIT_FOR_MISSING=false)")
        for key, value in miss.items():
            print(f"  {key:<34}{value}")
    profile = report.get("profile")
    if profile:
        print("\nhit-path profile (py-spy, one service worker under saturation)")
        if "skipped" in profile:
            print(f"  skipped: {profile['skipped']}")
        else:
            print(f"  {profile['samples']} samples; raw stacks in {profile['raw_stacks']}")
            print(f"  {profile['socket_io_pct']}% in socket send/recv; the rest, ranked below, "
                  "is 100%")
            for title, key in (("self time", "self_pct"), ("inclusive", "inclusive_pct")):
                print(f"  {title}:")
                for name, pct in profile[key]:
                    print(f"    {pct:5.1f}%  {name}")
    print(f"\nload average before/after: {report['machine']['loadavg_before']} / "
          f"{report['machine']['loadavg_after']}")

