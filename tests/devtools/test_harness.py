"""The dev tools stay out of the product, and the harness leaves no process behind."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import pytest

from devtools.harness import Processes, StartError, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_packages_leave_the_dev_tools_out() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    included = setup["options.packages.find"]["include"].split()
    assert included and not any(name.startswith("devtools") for name in included)


def test_no_product_module_imports_the_dev_tools() -> None:
    product = [*(ROOT / "measure_service").glob("*.py"), *(ROOT / "weighted_cache").glob("*.py")]
    for module in product:
        assert "devtools" not in module.read_text(), module


@pytest.mark.integration
def test_stopping_a_server_stops_the_processes_it_forked(tmp_path: Path) -> None:
    port = free_port()
    script = (
        "import http.server, os, sys\n"
        "if os.fork() == 0:\n"
        "    import time; time.sleep(60); sys.exit()\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()\n"
    )
    with Processes(tmp_path) as procs:
        server = procs.start("forker", [sys.executable, "-c", script], port=port, ready_path="/")
        children = server.child_pids()
        assert children
    assert not [pid for pid in children if running(pid)]


def running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie, killed and not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.integration
def test_a_process_that_exits_at_once_fails_with_the_tail_of_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('cannot start: bad flag'); raise SystemExit(3)"]
    with Processes(tmp_path) as procs, pytest.raises(StartError, match="bad flag"):
        procs.start("broken", argv, port=free_port(), ready_path="/")
