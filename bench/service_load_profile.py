"""py-spy samples of one saturated service worker, ranked by function: service_load.py --profile."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from load_generators import Generators

from devtools.harness import Server


def profile_hit_path(gens: Generators, service: Server, *, connections: int,
                     duration_s: float, out_dir: Path, top: int = 15) -> dict[str, Any]:
    """Sample one service worker with py-spy while the hit path is saturated.

    Runs after the measured runs, so the sampling never skews the measured figures.
    """
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return {"skipped": "py-spy not found: .venv/bin/pip install py-spy"}
    out_dir.mkdir(parents=True, exist_ok=True)
    worker = service.child_pids()[0]
    raw = out_dir / "hit-path.pyspy.txt"
    argv = [py_spy, "record", "--pid", str(worker), "--duration", f"{duration_s:g}",
            "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw)]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as spy:
        time.sleep(0.5)  # let py-spy attach before the load starts
        gens.saturate(service, connections=connections, duration_s=duration_s)
        _, err = spy.communicate(timeout=duration_s + 30)
    if spy.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
    stacks = raw.read_text().splitlines()
    # Time in socket send/recv is the kernel's loopback work and, on a busy machine, time spent
    # preempted there; the Python work is ranked apart from it.
    python_work = [line for line in stacks if not _leaf(line).startswith(_SOCKET_IO)]
    total = collapse(stacks)[2]
    own, inclusive, work = collapse(python_work)
    wrappers = {name for name, n in inclusive.items() if n > 0.9 * work}

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        kept = sorted(((n, name) for name, n in counts.items() if name not in wrappers),
                      reverse=True)
        return [(name, round(100 * n / max(1, work), 1)) for n, name in kept[:top]]

    return {"worker_pid": worker, "samples": total, "raw_stacks": str(raw),
            "socket_io_pct": round(100 * (total - work) / max(1, total), 1),
            "self_pct": ranked(own), "inclusive_pct": ranked(inclusive)}


def _leaf(line: str) -> str:
    return _function_of(line.rpartition(" ")[0].rpartition(";")[2])


_SOCKET_IO = ("SocketMixin.send ", "SocketMixin.recv ")


def collapse(lines: list[str]) -> tuple[dict[str, int], dict[str, int], int]:
    """Self and inclusive sample counts per function, and the total, from py-spy raw stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function_of(frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
    return own, inclusive, total


def _function_of(frame: str) -> str:
    # "handle (gevent/pywsgi.py:123)" -> "handle (gevent/pywsgi.py)": lines split one function.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"

