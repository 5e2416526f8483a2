"""What tests and benchmarks read from running processes: /metrics, /proc, and polling for both.

- :func:`parse_metrics` and :func:`metric_total`: the Prometheus text of ``/metrics``, as samples
  by name and labels, and sums over label sets;
- :func:`cpu_seconds`, :func:`rss_kib`, :func:`threads`, :func:`open_fds`,
  :func:`client_connections`: one reader of each ``/proc`` figure;
- :func:`eventually`: poll until a check holds (pass ``sleep=gevent.sleep`` under gevent without
  monkey-patching).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_metrics(text: str, *names: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and label set.

    With ``names``, only the samples whose name starts with one of them: the parser costs tens
    of milliseconds for a whole page, too much for a poller sharing the machine it measures.
    """
    # Imported here: prometheus_client picks its value class at its first import, which must
    # come after the service has set up its metrics directory (measure_service.prometheus_metrics).
    from prometheus_client.parser import text_string_to_metric_families

    if names:
        text = "".join(line for line in text.splitlines(keepends=True) if line.startswith(names))
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_total(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str,
                 **labels: str) -> float:
    """The sum of ``name`` over every label set that includes ``labels`` (0 when absent)."""
    wanted = set(labels.items())
    return sum(value for (sample, tags), value in samples.items()
               if sample == name and wanted <= tags)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by ``pid`` (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _status_field(pid: int, name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (None once it is gone)."""
    return _status_field(pid, "VmRSS")


def threads(pid: int) -> int | None:
    """Threads of ``pid`` (None once it is gone)."""
    return _status_field(pid, "Threads")


def open_fds(pid: int) -> int | None:
    """File descriptors ``pid`` holds open (None once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def client_connections(pid: int, port: int) -> int:
    """Established TCP connections that ``pid`` holds on local port ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01"
                and fields[9] in inodes):
            count += 1
    return count


def eventually(
    check: Callable[[], T | None],
    timeout_s: float = 10.0,
    *,
    interval_s: float = 0.02,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    Raises TimeoutError after ``timeout_s``. For effects that land a moment after their cause:
    log lines, metrics files, background fetches, a process starting or stopping.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{check} never became true within {timeout_s} s")
        sleep(interval_s)
