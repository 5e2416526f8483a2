"""``make image-test``: build the image from the real Dockerfile, run it, check it as a user would.

As root, with podman: builds the repository's ``Dockerfile`` (``--format docker``, so that its
``HEALTHCHECK`` is kept) on ``python:3.11-slim``, or, where that cannot be pulled, on a stand-in
built from Debian packages (``base_image.py``). Then runs the image against the Scope3 simulator
on the host (host network, loopback only, read-only root file system) and checks, in order:

1. the image's config: a non-root ``USER``, the ``CMD`` and the ``HEALTHCHECK``;
2. the ``HEALTHCHECK`` reports healthy within 10 s of ``podman run``;
3. every process in the container runs as that user, who cannot write to ``/app``, and the
   runtime stage has no compiler;
4. a row misses (fetched from upstream in the wait window), then the same row hits;
5. the service's ``/metrics`` counted that hit and that miss;
6. ``podman stop`` (SIGTERM) with requests in flight: each is answered in full, the container
   exits 0 before its grace period ends (no SIGKILL), and nothing listens afterwards.

Everything it creates (container, images, build layers) is removed at the end, and it prints the
image's size. Not root, or no podman: one line says why, and it exits 0, except in CI
(``CI=true``), where it cannot skip. Options: ``--keep`` leaves the image for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import base_image
from common import (
    API_KEY,
    ROOT,
    UPSTREAM_TOKEN,
    Processes,
    Skip,
    ensure_commands,
    free_port,
    measure_rows,
    post_rows,
    say,
    skip_or_fail,
    wait_until,
)

NAME = "image-test"
PUBLIC_BASE = "python:3.11-slim"
HEALTHY_WITHIN_S = 10.0
# Workers write their counts to the shared metrics files each second.
METRICS_WITHIN_S = 5.0
# gunicorn.conf.py's default GUNICORN_GRACEFUL_TIMEOUT: SIGTERM must end the container within it.
GRACEFUL_TIMEOUT_S = 20
IN_FLIGHT_REQUESTS = 8
IN_FLIGHT_UPSTREAM_LATENCY_MS = 2000


def _ulimits() -> tuple[str, ...]:
    """podman raises nofile and nproc above the host's limits by default, which some sandboxes
    refuse (runc: "error setting rlimits"); ask for what the service needs, within ours."""
    import resource

    limits = []
    for name, wanted, kind in (("nofile", 16384, resource.RLIMIT_NOFILE),
                               ("nproc", 4096, resource.RLIMIT_NPROC)):
        hard = resource.getrlimit(kind)[1]
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        limits += ["--ulimit", f"{name}={value}:{value}"]
    return tuple(limits)


ULIMITS = _ulimits()
# A machine behind a TLS-inspecting proxy trusts its CA on the host only: lend the host's bundle to
# the build's RUN steps.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class Checks:
    """Counts passed checks; the first failure raises."""

    def __init__(self) -> None:
        """No check run yet."""
        self.passed = 0
        self.figures: dict[str, Any] = {}

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        """Record ``what`` as passed, or raise with ``detail``."""
        if not ok:
            raise AssertionError(f"{what}: {detail}" if detail else what)
        self.passed += 1
        say(NAME, f"ok: {what}" + (f" ({detail})" if detail else ""))


def podman(*args: str, check: bool = True, timeout: float | None = 600,
           log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``podman args``; its output goes to ``log`` if given, else is captured."""
    if log is not None:
        with open(log, "a") as out:
            result = subprocess.run(["podman", *args], stdout=out, stderr=subprocess.STDOUT,
                                    text=True, timeout=timeout)
    else:
        result = subprocess.run(["podman", *args], capture_output=True, text=True,
                                timeout=timeout)
    if check and result.returncode != 0:
        where = f"; see {log}" if log else f": {result.stderr.strip()[-2000:]}"
        raise RuntimeError(f"podman {' '.join(args[:2])} failed ({result.returncode}){where}")
    return result


def image_ids() -> set[str]:
    """Every image id in podman's store, intermediate ones included."""
    out = podman("images", "--all", "--quiet", "--no-trunc").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def preflight() -> None:
    """Raise Skip when this machine cannot build and run containers."""
    if os.geteuid() != 0:
        raise Skip("needs root (rootful podman, and apt to install it)")
    ensure_commands(NAME, {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap"})
    probe = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if probe.returncode != 0:
        raise Skip(f"podman cannot start here: {probe.stderr.strip()[-300:]}")


def pick_base(run_id: str, work: Path, created_images: list[str]) -> str:
    """The public base if it is here or can be pulled; else the local Debian stand-in."""
    if podman("image", "exists", PUBLIC_BASE, check=False).returncode == 0:
        return PUBLIC_BASE
    pulled = podman("pull", "--quiet", PUBLIC_BASE, check=False, timeout=300)
    if pulled.returncode == 0:
        created_images.append(PUBLIC_BASE)
        return PUBLIC_BASE
    reason = (pulled.stderr.strip().splitlines() or ["unknown error"])[-1]
    say(NAME, f"cannot pull {PUBLIC_BASE} ({reason[:160]}); building a base from Debian packages")
    tarball = base_image.tarball(work / "mmdebstrap.log")
    tag = f"localhost/measure-cache-base:{run_id}"
    base_image.import_image(tarball, tag)
    created_images.append(tag)
    say(NAME, f"base image {tag} from {tarball}")
    return tag


def build(base: str, tag: str, work: Path) -> float:
    """Build the Dockerfile as ``tag`` on ``base``; return the seconds it took."""
    # Over the base's own bundle, at the path apt and pip read (Debian's pip, and newer pips
    # through the system trust store): a mount over an existing file leaves no trace in a layer.
    mounts: list[str] = []
    if HOST_CA_BUNDLE.is_file():
        mounts = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    started = time.monotonic()
    podman("build", "--format", "docker", "--network", "host", *ULIMITS, *mounts,
           "--build-arg", f"PYTHON_IMAGE={base}", "--tag", tag,
           "--file", str(ROOT / "Dockerfile"), str(ROOT),
           log=work / "build.log", timeout=1800)
    return time.monotonic() - started


def health_status(container: str) -> str:
    """The container's health as podman records it."""
    state = json.loads(podman("inspect", "--type", "container", container).stdout)[0]["State"]
    health = state.get("Health") or state.get("Healthcheck") or {}
    return str(health.get("Status", ""))


def run_checks(args: argparse.Namespace, work: Path, checks: Checks,
               created_images: list[str], containers: list[str], processes: Processes) -> None:
    """Build, run and check the image; record what was created for the cleanup."""
    run_id = f"image-test-{os.getpid()}"
    if args.image:
        tag = base = args.image
    else:
        before = image_ids()
        base = pick_base(run_id, work, created_images)
        tag = f"localhost/measure-cache:{run_id}"
        say(NAME, f"building the Dockerfile on {base} (log: {work / 'build.log'})")
        try:
            build_s = build(base, tag, work)
        finally:
            # Intermediate images of this build: ours to remove, whatever happened.
            created_images.extend(sorted(image_ids() - before - set(created_images)))
        checks.figures["build_s"] = round(build_s, 1)
        say(NAME, f"built {tag} in {build_s:.0f} s")

    # 1. What the image says about itself.
    image = json.loads(podman("image", "inspect", tag).stdout)[0]
    config = image.get("Config", {})
    size = int(image["Size"])
    base_size = int(json.loads(podman("image", "inspect", base).stdout)[0]["Size"])
    # podman reports the Docker-format healthcheck beside Config, not in it.
    healthcheck = image.get("Healthcheck") or config.get("Healthcheck") or {}
    checks.figures.update(
        size_bytes=size, base=base, base_size_bytes=base_size, user=config.get("User"),
        entrypoint=config.get("Entrypoint"), cmd=config.get("Cmd"),
        healthcheck=healthcheck.get("Test"),
        exposed_ports=sorted((config.get("ExposedPorts") or {}).keys()),
    )
    user = str(config.get("User") or "")
    checks.check(bool(user) and user not in {"root", "0"} and not user.startswith("0:"),
                 "the image runs as a non-root USER", f"USER {user or '(none: root)'}")
    checks.check(config.get("Cmd") == ["gunicorn", "-c", "gunicorn.conf.py",
                                       "measure_service.wsgi:app"],
                 "the image's CMD starts gunicorn with gunicorn.conf.py", f"{config.get('Cmd')}")
    checks.check(bool(healthcheck.get("Test")), "the image keeps its HEALTHCHECK",
                 f"{healthcheck.get('Test')}")

    # 2. Start it against the simulator, and wait for the image's own HEALTHCHECK.
    simulator = processes.simulator(latency_ms=20, jitter_ms=5, token=UPSTREAM_TOKEN).url
    port = free_port()
    container = run_id
    env = {
        "HOST": "127.0.0.1", "PORT": str(port), "SCOPE3_API_URL": simulator,
        "SCOPE3_API_TOKEN": UPSTREAM_TOKEN, "API_KEYS": API_KEY, "WEB_CONCURRENCY": "2",
        "WAIT_FOR_MISSING": "true", "WAIT_WINDOW_MS": "10000", "UPSTREAM_RETRIES": "0",
        "ACCESS_LOG": "off",
    }
    env_args = [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]
    started = time.monotonic()
    # --read-only: the service must need no writable path but the /tmp tmpfs podman gives it.
    podman("run", "--detach", "--name", container, "--network", "host", "--read-only", *ULIMITS,
           "--stop-timeout", str(GRACEFUL_TIMEOUT_S + 10), *env_args, tag)
    containers.append(container)
    url = f"http://127.0.0.1:{port}"

    # podman runs HEALTHCHECK from systemd timers; without systemd, run it on the same schedule
    # a user's `podman healthcheck run` would, often, to time the first healthy answer.
    def healthy() -> bool:
        running = podman("inspect", "--type", "container", "--format", "{{.State.Running}}",
                         container).stdout.strip()
        if running != "true":
            raise RuntimeError(f"the container stopped: {podman('logs', container).stdout[-3000:]}")
        return podman("healthcheck", "run", container, check=False, timeout=30).returncode == 0

    wait_until(healthy, 60, "HEALTHCHECK healthy", interval_s=0.2)
    to_healthy = time.monotonic() - started
    checks.figures["healthy_s"] = round(to_healthy, 2)
    status = health_status(container)
    checks.check(status == "healthy" and to_healthy <= HEALTHY_WITHIN_S,
                 f"HEALTHCHECK healthy within {HEALTHY_WITHIN_S:.0f} s of podman run",
                 f"{status} after {to_healthy:.1f} s")

    # 3. Nobody in the container is root.
    top = podman("top", container, "user", "huser", "pid", "args").stdout.splitlines()[1:]
    users = {tuple(line.split()[:2]) for line in top if line.strip()}
    checks.check(bool(users) and all("root" not in pair and "0" not in pair for pair in users),
                 "every process in the container runs as non-root",
                 f"{len(top)} processes as {sorted(users)}")
    uid = podman("exec", container, "id", "-u").stdout.strip()
    checks.figures["uid"] = uid
    inside = podman("exec", container, "sh", "-c",
                    "ls -A /app; command -v gcc cc || true; test -w /app && echo writable; true"
                    ).stdout.split()
    checks.check(inside == ["gunicorn.conf.py"],
                 "/app holds only gunicorn.conf.py, read-only to the user; no compiler",
                 f"found {inside}")

    # 4. A miss, then a hit: one keep-alive connection reaches one worker, hence one cache.
    row = measure_rows(f"image-test-{os.getpid()}", 1)
    with requests.Session() as session:
        first = post_rows(session, url, row)
        second = post_rows(session, url, row)
    first_row = first.json()["rows"][0] if first.ok else {}
    second_row = second.json()["rows"][0] if second.ok else {}
    checks.figures["miss_then_hit"] = [first_row.get("status"), second_row.get("status")]
    checks.check(
        first.ok and first_row.get("status") == "fetched"
        and isinstance(first_row.get("totalEmissions"), float)
        and second.ok and second_row.get("status") == "hit"
        and second_row.get("totalEmissions") == first_row.get("totalEmissions"),
        "a new row misses and is fetched, then the same row hits with the same value",
        f"{first.status_code} {first_row.get('status')} {first_row.get('totalEmissions')}, then "
        f"{second.status_code} {second_row.get('status')} {second_row.get('totalEmissions')}")

    # 5. The metrics saw it. A scrape reaches any worker, and each worker writes its counts to
    # the shared files once a second, so the counts arrive within about a second.
    names = ("measure_cache_hits_total", "measure_cache_misses_total")

    def counted() -> dict[str, float]:
        text = requests.get(f"{url}/metrics", timeout=10).text
        checks.figures["metrics"] = found = _metric_values(text, names)
        return found if min(found.values()) >= 1 else {}

    with contextlib.suppress(RuntimeError):
        wait_until(counted, METRICS_WITHIN_S, "/metrics counts the hit and the miss")
    values = checks.figures.get("metrics", {})
    checks.check(bool(values) and min(values.values()) >= 1,
                 f"/metrics counts the hit and the miss within {METRICS_WITHIN_S:.0f} s",
                 f"{values}")

    # 6. SIGTERM with requests in flight: all answered, exit 0 within the grace period.
    requests.post(f"{simulator}/_reset", timeout=5).raise_for_status()
    requests.post(f"{simulator}/_control", timeout=5, json={
        "latency_ms": IN_FLIGHT_UPSTREAM_LATENCY_MS, "jitter_ms": 0}).raise_for_status()
    results: list[str] = []
    answered_at: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        rows = measure_rows(f"in-flight-{os.getpid()}-{i}", 2)
        try:
            response = requests.post(f"{url}/v2/measure", json={"rows": rows}, timeout=60,
                                     headers={"Authorization": f"Bearer {API_KEY}",
                                              "Connection": "close"})
            statuses = [r.get("status") for r in response.json()["rows"]] if response.ok else []
            outcome = "ok" if statuses == ["fetched", "fetched"] else (
                f"HTTP {response.status_code} {statuses}")
        except (requests.RequestException, ValueError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        with lock:
            results.append(outcome)
            answered_at.append(time.monotonic())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(IN_FLIGHT_REQUESTS)]
    for thread in threads:
        thread.start()
    # In flight for real: every row has reached upstream before the signal.
    wait_until(lambda: requests.get(f"{simulator}/_stats?keys=0&recent=0", timeout=5)
               .json()["rows"] >= 2 * IN_FLIGHT_REQUESTS, 20, "in-flight rows reaching upstream")
    stop_wall = time.time()
    stop_started = time.monotonic()
    podman("stop", "--time", str(GRACEFUL_TIMEOUT_S + 10), container, timeout=120)
    stop_s = time.monotonic() - stop_started
    for thread in threads:
        thread.join(timeout=60)
    failed = [outcome for outcome in results if outcome != "ok"]
    exit_code = podman("inspect", "--type", "container", "--format", "{{.State.ExitCode}}",
                       container).stdout.strip()
    last_answer_s = max(answered_at, default=stop_started) - stop_started
    finished = podman("inspect", "--type", "container", "--format", "{{.State.FinishedAt}}",
                      container).stdout.strip()
    exited_s = _epoch(finished) - stop_wall
    logs = podman("logs", container)
    checks.figures["stop_timeline"] = _stop_timeline(logs.stdout + logs.stderr, stop_wall)
    checks.figures.update(stop_s=round(stop_s, 2), stop_exit_code=exit_code,
                          exited_after_sigterm_s=round(exited_s, 2),
                          last_in_flight_answer_s=round(last_answer_s, 2),
                          in_flight=len(results), in_flight_failed=len(failed))
    checks.check(len(results) == IN_FLIGHT_REQUESTS and not failed,
                 "podman stop answers every request in flight",
                 f"{len(results) - len(failed)}/{IN_FLIGHT_REQUESTS} answered in full"
                 + (f"; failed: {failed[:3]}" if failed else ""))
    checks.check(exit_code == "0" and stop_s < GRACEFUL_TIMEOUT_S,
                 f"SIGTERM ends the container, exit 0, within the {GRACEFUL_TIMEOUT_S} s grace",
                 f"exit {exit_code} {exited_s:.1f} s after SIGTERM, podman stop returned after "
                 f"{stop_s:.1f} s; the last request in flight was "
                 f"answered after {last_answer_s:.1f} s, by an upstream taking "
                 f"{IN_FLIGHT_UPSTREAM_LATENCY_MS / 1000:.0f} s")
    checks.check(not _listening(port), "nothing listens on the service's port after the stop")


def _stop_timeline(logs: str, sigterm_at: float) -> list[str]:
    """gunicorn's shutdown lines, each with its time after SIGTERM: where the stop spent time."""
    import datetime

    timeline = []
    for line in logs.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        message = str(entry.get("message", ""))
        if message.startswith(
                ("Handling signal", "Worker exiting", "Shutting down")):
            at = datetime.datetime.fromisoformat(str(entry["timestamp"])).timestamp()
            timeline.append(f"{at - sigterm_at:+.2f} s {message}")
    return timeline


def _epoch(podman_time: str) -> float:
    """Seconds since the epoch of a podman time: ``2026-01-02 03:04:05.678 +0000 UTC``."""
    import datetime

    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d+)? ([+-]\d{4})", podman_time)
    if match is None:
        raise RuntimeError(f"unreadable time from podman: {podman_time!r}")
    stamp = datetime.datetime.strptime(f"{match[1]} {match[3]}", "%Y-%m-%d %H:%M:%S %z")
    return stamp.timestamp() + float(match[2] or 0)


def _metric_values(text: str, names: tuple[str, ...]) -> dict[str, float]:
    values = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] += float(value)
    return values


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def cleanup(containers: list[str], images: list[str], keep: bool) -> None:
    """Remove what this run created; never fails, says what it could not remove."""
    for container in containers:
        podman("rm", "--force", "--time", "0", container, check=False)
    for image in [] if keep else reversed(images):
        result = podman("rmi", "--force", image, check=False)
        if result.returncode != 0 and "image not known" not in result.stderr:
            say(NAME, f"could not remove image {image}: {result.stderr.strip()[-200:]}")


def main(argv: list[str] | None = None) -> int:
    """Run the image test; 0 when every check passed (or, outside CI, when skipped)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the built images")
    parser.add_argument("--image", help="check this image instead of building one")
    args = parser.parse_args(argv)
    try:
        preflight()
    except Skip as exc:
        return skip_or_fail(NAME, str(exc))

    checks = Checks()
    created_images: list[str] = []
    containers: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="measure-image-test-"))
    processes = Processes(work)
    started = time.monotonic()
    try:
        run_checks(args, work, checks, created_images, containers, processes)
    except (AssertionError, RuntimeError, subprocess.TimeoutExpired, requests.RequestException,
            OSError) as exc:
        say(NAME, f"FAILED: {exc}")
        for container in containers:
            logs = podman("logs", "--tail", "40", container, check=False).stdout
            say(NAME, f"last lines of {container}:\n{logs}")
        build_log = work / "build.log"
        if build_log.exists() and "build_s" not in checks.figures and not args.image:
            say(NAME, "end of the build log:\n"
                + "\n".join(build_log.read_text(errors="replace").splitlines()[-30:]))
        print(f"{NAME}: {checks.passed} passed, 1 failed", flush=True)
        return 1
    finally:
        processes.stop_all()
        cleanup(containers, created_images, args.keep)
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    figures = checks.figures
    print(json.dumps({"image_test": figures}, default=str), flush=True)
    own_mb = (figures["size_bytes"] - figures["base_size_bytes"]) / 1e6
    say(NAME, f"image size {figures['size_bytes'] / 1e6:.0f} MB ({figures['base']}: "
        f"{figures['base_size_bytes'] / 1e6:.0f} MB, + {own_mb:.0f} MB of ours); user "
        f"{figures['user']} (uid {figures['uid']}); healthy after {figures['healthy_s']} s; "
        f"podman stop {figures['stop_s']} s with {figures['in_flight']} requests in flight, "
        f"{figures['in_flight_failed']} failed; "
        f"whole run {time.monotonic() - started:.0f} s")
    print(f"{NAME}: {checks.passed} passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
