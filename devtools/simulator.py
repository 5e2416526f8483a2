"""A fake Scope3 ``/v2/measure`` API for demos, tests and benchmarks: its command line and server.

Run it with ``python -m devtools.simulator --port 8081``. It answers in Scope3's shape with
deterministic values that scale with impressions (nytimes.com at 1000 impressions is about 66 g),
and can inject faults, switchable at runtime with ``POST /_control``:

=================  ===================================================================
mode               what every ``/v2/measure`` request gets
=================  ===================================================================
``ok``             a normal answer after the latency (subject to the fault *rates*)
``hang``           no answer until the next ``/_control`` or ``/_reset`` (or 10 min)
``500``            HTTP 500
``429``            HTTP 429 with ``Retry-After: <retry_after>``
``malformed``      HTTP 200 with a body that is not JSON
``reset``          the TCP connection is reset, no answer (needs the gevent server)
``slow_body``      headers at once, then the body trickling in over about 5 s
=================  ===================================================================

In mode ``ok``, each request independently hangs, gets 500 or gets 429 with probabilities
``hang_rate``, ``error_rate`` and ``status_429_rate``, drawn from a random source seeded with
``--seed``.

Poisoned rows spoil the whole request they are in, in any mode that answers, as upstreams do
when one row's input breaks them. Each ``poison_<kind>`` field, when set, is a text: a row whose
inventoryId contains it poisons its request with that kind (the first poisoned row decides):

======================  ====================================================================
``poison_5xx``          HTTP 500
``poison_400``          HTTP 400 refusing the whole request
``poison_hang``         no answer until the next ``/_control`` or ``/_reset`` (or 10 min)
``poison_slow``         a right answer, ``poison_slow_ms`` (2500) late
``poison_reset``        the TCP connection is reset, no answer
``poison_malformed``    HTTP 200 with a body that is not JSON
``poison_short``        HTTP 200 whose rows stop before the poisoned row
``poison_identity``     HTTP 200, rows in reverse order, the poisoned row's answer carrying
                        another row's ``rowIdentifier`` (alone: a made-up one)
``poison_row_error``    HTTP 200 in which every row carries an error
======================  ====================================================================

``GET /_stats`` reports what arrived; ``POST /_reset`` clears it and restores the settings
given on the command line.

``GET /_stats`` answers::

    {"requests": 12, "rows": 340, "rows_answered": 300,
     "by_status": {"200": 10, "429": 2},      # HTTP status, or "hang"/"reset" (no answer)
     "keys_truncated": false,                 # true once MAX_TRACKED_KEYS distinct keys are seen
     "max_in_flight": 4,                      # most /v2/measure requests being answered at once
     "repeated_keys_by_agent": {"measure-cache/0.1.0 (pid 7)": 0},  # keys one agent sent twice+
     "control": {"latency_ms": 100.0, ..., "mode": "ok"},
     "rows_per_key": {"nytimes.com|2024-10-30|1000|US||web|pc||gmsf|": 2},   # omit: ?keys=0
     "recent": [{"time": 1732780000.1, "user_agent": "...", "rows": 5, "status": "200"}],
                                              # last RECENT_LOG_SIZE requests; omit: ?recent=0
     "rows_per_key_by_agent": {"<agent>": {"<key>": 1}},                    # only ?by_agent=1
     "max_in_flight_by_agent": {"measure-cache/0.1.0 (pid 7)": 4},          # only ?by_agent=1
     "busy_s_by_agent": {"measure-cache/0.1.0 (pid 7)": 1.5}}               # only ?by_agent=1:
                                              # summed request durations; over a span of
                                              # time, the mean in flight

A key is :func:`row_key`: the fields that change the answer, joined with ``|``.

The parts: ``simulator_answers.py`` (one row's answer and key), ``simulator_faults.py`` (the
settings above and what poison does to an answer), ``simulator_app.py`` (the WSGI app: routes,
faults applied, counts); this module serves the app with gevent.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from typing import Any

from devtools.simulator_answers import measure_row, row_key
from devtools.simulator_app import RESET_HOOK, Scope3Simulator
from devtools.simulator_faults import MODES, POISON_KINDS, Faults

# What tests, benchmarks and the harness import from here; each lives in its own module.
__all__ = ["MODES", "POISON_KINDS", "Faults", "Scope3Simulator", "main", "measure_row", "row_key"]


# --- command line ------------------------------------------------------------------------------

def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Faults]:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.simulator", description="Serve a fake Scope3 API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--jitter-ms", type=float, default=30.0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests -> 500")
    parser.add_argument("--status-429-rate", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=2.0, help="seconds, sent with 429")
    parser.add_argument("--hang-rate", type=float, default=0.0)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--poison-5xx", default="", metavar="TEXT",
                        help="a request with a row whose inventoryId contains TEXT gets 500")
    parser.add_argument("--poison-400", default="", metavar="TEXT",
                        help="a request with a row whose inventoryId contains TEXT gets 400")
    for kind in POISON_KINDS[2:]:
        parser.add_argument(f"--poison-{kind.replace('_', '-')}", default="", metavar="TEXT",
                            help=f"a row whose inventoryId contains TEXT: poison_{kind}")
    parser.add_argument("--poison-slow-ms", type=float, default=2500.0,
                        help="how late poison_slow answers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        faults = Faults(
            latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, error_rate=args.error_rate,
            status_429_rate=args.status_429_rate, retry_after=args.retry_after,
            hang_rate=args.hang_rate, mode=args.mode, poison_slow_ms=args.poison_slow_ms,
            **{f"poison_{kind}": getattr(args, f"poison_{kind}") for kind in POISON_KINDS},
        )
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    return args, faults


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the simulator with gevent until SIGINT or SIGTERM."""
    args, faults = _parse_args(argv)
    import signal
    import socket
    import struct

    import gevent
    import gevent.event
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class ResettableHandler(WSGIHandler):  # type: ignore[misc]
        """Offers the app a way to abort the connection with a TCP reset."""

        def handle(self) -> None:
            # pywsgi writes headers and body in separate sends; with Nagle on, the second waits
            # for the client's delayed ACK (~40 ms) on every reused connection.
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle()

        def get_environ(self) -> dict[str, Any]:
            environ: dict[str, Any] = super().get_environ()
            connection = self.socket

            def reset() -> None:
                # Linger 0 makes close() send RST instead of FIN.
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

            environ[RESET_HOOK] = reset
            return environ

    app = Scope3Simulator(
        faults, token=args.token, seed=args.seed, sleep=gevent.sleep,
        event_factory=gevent.event.Event,
    )
    server = WSGIServer(
        (args.host, args.port), app, handler_class=ResettableHandler, backlog=2048,
        log="default" if args.access_log else None,
    )
    server.start()
    print(f"Scope3 simulator listening on http://{args.host}:{server.server_port}", flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        # stop() waits for open requests (up to 1 s), so it must not run in the signal callback.
        gevent.signal_handler(signum, lambda: gevent.spawn(server.stop, 1))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
