"""The load generators the service benchmarks run: wrk or bench/loadgen.py, as child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from driver import API_KEY

from devtools.harness import ROOT, Server

LOADGEN = ROOT / "bench" / "loadgen.py"
WRK_SCRIPT = ROOT / "bench" / "wrk" / "measure.lua"
WRK_INSTALL_HINT = "wrk not found; using bench/loadgen.py. For wrk: apt-get install -y wrk"
STATUS_TALLY = r'"status":\s*"(\w+)"'


class Generators:
    """Runs wrk or bench/loadgen.py as child processes and parses their JSON summaries."""

    def __init__(self, body_file: Path, use_wrk: bool) -> None:
        self.body_file = body_file
        self.use_wrk = use_wrk

    def saturate(self, server: Server, *, connections: int, duration_s: float) -> dict[str, Any]:
        """Closed loop at ``connections`` for ``duration_s``."""
        if self.use_wrk:
            return self._wrk(server, connections, duration_s)
        return self._loadgen(server, ["-c", str(connections), "-d", str(duration_s)])

    def fixed_rate(self, server: Server, *, rate: float, connections: int,
                   duration_s: float) -> dict[str, Any]:
        """Open loop at ``rate`` req/s; latency measured from each request's due time."""
        return self._loadgen(server, ["-c", str(connections), "-d", str(duration_s),
                                      "--rate", f"{rate:.1f}"])

    def cold(self, server: Server, template_file: Path, *, connections: int,
             duration_s: float) -> dict[str, Any]:
        """Closed loop where every request carries 5 new keys; tallies row statuses."""
        return self._loadgen(server, ["-c", str(connections), "-d", str(duration_s),
                                      "--tally", STATUS_TALLY], body=template_file, template=True)

    def _loadgen(self, server: Server, extra: list[str], *, body: Path | None = None,
                 template: bool = False) -> dict[str, Any]:
        body_flag = "--body-template-file" if template else "--body-file"
        argv = [sys.executable, str(LOADGEN), server.url + "/v2/measure", "--json",
                "-H", f"Authorization: Bearer {API_KEY}", body_flag,
                str(body or self.body_file), *extra]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        summary: dict[str, Any] = json.loads(out)
        summary["generator"] = "loadgen"
        return summary

    def _wrk(self, server: Server, connections: int, duration_s: float) -> dict[str, Any]:
        threads = min(connections, os.cpu_count() or 1)
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s",
                "-s", str(WRK_SCRIPT), server.url + "/v2/measure"]
        env = {**os.environ, "WRK_JSON": "1", "MEASURE_API_KEY": API_KEY,
               "MEASURE_BODY": self.body_file.read_text()}
        out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
        line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
        raw = json.loads(line.removeprefix("WRK_JSON "))
        errors = raw["errors"]
        return {"generator": "wrk", "connections": connections, "duration_s": raw["duration_s"],
                "requests": raw["requests"], "rps": raw["rps"], "non_2xx": raw["non_2xx"],
                "errors": {"connect": errors["connect"], "io": errors["read"] + errors["write"],
                           "timeout": errors["timeout"], "protocol": 0},
                "latency_ms": raw["latency_ms"]}
