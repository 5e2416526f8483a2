"""The load generator counts every request it makes, against a tiny local gevent WSGI server."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import gevent
import loadgen
import pytest
from gevent.pywsgi import WSGIServer

from devtools.harness import free_port

HIT_BODY = b'{"rows":[{"status":"hit"},{"status":"hit"},{"status":"pending"}]}'


class TinyApp:
    """Records every request; ``/flaky`` fails every third one, ``/chunked`` streams, ``/slow``
    never answers in time."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.bodies.append(environ["wsgi.input"].read(length))
        path = environ["PATH_INFO"]
        if path == "/flaky" and len(self.bodies) % 3 == 0:
            start_response("500 Internal Server Error", [("Content-Length", "0")])
            return [b""]
        if path == "/slow":
            gevent.sleep(2)
        if path == "/chunked":
            start_response("200 OK", [("Content-Type", "application/json")])
            return iter([HIT_BODY[:10], HIT_BODY[10:]])
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(HIT_BODY)))]
        )
        return [HIT_BODY]


@pytest.fixture
def app() -> TinyApp:
    return TinyApp()


@pytest.fixture
def server(app: TinyApp) -> Iterator[WSGIServer]:
    srv = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    srv.start()
    yield srv
    srv.stop(timeout=0)


def _target(server: WSGIServer, path: str, **kwargs: Any) -> Any:
    return loadgen.Target(
        host="127.0.0.1", port=server.server_port, path=path, body=b'{"rows":[]}', **kwargs
    )


def test_closed_loop_answers_every_request_it_sends(server: WSGIServer, app: TinyApp) -> None:
    result = loadgen.run_closed(
        _target(server, "/ok"), connections=4, duration_s=30, max_requests=30
    )
    assert result.requests == len(app.bodies) == 30


def test_closed_loop_records_one_latency_per_answer(server: WSGIServer) -> None:
    result = loadgen.run_closed(
        _target(server, "/ok"), connections=4, duration_s=30, max_requests=12
    )
    assert len(result.latencies_s) == result.requests == 12


def test_non_2xx_answers_are_counted_apart_from_errors(server: WSGIServer) -> None:
    result = loadgen.run_closed(
        _target(server, "/flaky"), connections=1, duration_s=30, max_requests=30
    )
    assert (result.requests, result.non_2xx, sum(result.errors.values())) == (30, 10, 0)


def test_non_2xx_answers_are_counted_by_status(server: WSGIServer) -> None:
    result = loadgen.run_closed(_target(server, "/flaky"), connections=1, duration_s=30,
                                max_requests=6)
    assert result.summary()["statuses"] == {"200": 4, "500": 2}


def test_open_loop_sends_rate_times_duration_requests(server: WSGIServer, app: TinyApp) -> None:
    result = loadgen.run_open(_target(server, "/ok"), rate=400, duration_s=0.1, connections=8)
    assert result.requests == len(app.bodies) == 40


def test_open_loop_stops_at_max_requests(server: WSGIServer, app: TinyApp) -> None:
    result = loadgen.run_open(
        _target(server, "/ok"), rate=1000, duration_s=10, connections=2, max_requests=5
    )
    assert result.requests == len(app.bodies) == 5


def test_refused_connections_count_as_connect_errors() -> None:
    target = loadgen.Target(host="127.0.0.1", port=free_port(), path="/")
    result = loadgen.run_closed(target, connections=1, duration_s=30, max_requests=3)
    assert (result.requests, result.errors["connect"]) == (0, 3)


def test_unanswered_requests_count_as_timeouts(server: WSGIServer) -> None:
    result = loadgen.run_closed(
        _target(server, "/slow"), connections=1, duration_s=30, max_requests=1, timeout_s=0.05
    )
    assert (result.requests, result.errors["timeout"]) == (0, 1)


def test_tally_counts_every_match_in_successful_bodies(server: WSGIServer) -> None:
    result = loadgen.run_closed(
        _target(server, "/ok"),
        connections=2,
        duration_s=30,
        max_requests=4,
        tally=r'"status":"(\w+)"',
    )
    assert result.tallies == {"hit": 8, "pending": 4}


def test_chunked_answers_are_read_whole(server: WSGIServer) -> None:
    result = loadgen.run_closed(
        _target(server, "/chunked"),
        connections=1,
        duration_s=30,
        max_requests=3,
        tally=r'"status":"(\w+)"',
    )
    assert result.tallies == {"hit": 6, "pending": 3}


def test_template_gives_each_request_its_own_number(server: WSGIServer, app: TinyApp) -> None:
    target = loadgen.Target(
        host="127.0.0.1", port=server.server_port, path="/ok", body_template='{"id":"k{seq}"}'
    )
    loadgen.run_closed(target, connections=1, duration_s=30, max_requests=3)
    assert app.bodies == [b'{"id":"k0"}', b'{"id":"k1"}', b'{"id":"k2"}']


def test_percentile_uses_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (loadgen.percentile(values, 50), loadgen.percentile(values, 99)) == (50.0, 99.0)


def test_percentile_of_no_values_is_zero() -> None:
    assert loadgen.percentile([], 99) == 0.0


def test_percentile_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match="q must be"):
        loadgen.percentile([1.0], 101)


def test_zero_connections_are_refused() -> None:
    target = loadgen.Target(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="connections"):
        loadgen.run_closed(target, connections=0, duration_s=1)


def test_url_without_http_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="url"):
        loadgen.Target.from_url("https://127.0.0.1/x")
