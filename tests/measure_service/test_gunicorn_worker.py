from __future__ import annotations

import socket
from typing import Any

import pytest

from measure_service import gunicorn_worker
from measure_service.gunicorn_worker import GeventWorker, NamedListener


def test_a_named_listener_still_answers_its_name_after_the_socket_is_closed() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    listener = NamedListener(sock, sock.getsockname())
    name = sock.getsockname()
    sock.close()
    assert listener.getsockname() == name


def test_a_named_listener_passes_everything_else_to_the_socket() -> None:
    with socket.socket() as sock:
        listener = NamedListener(sock, ("127.0.0.1", 1))
        assert listener.fileno() == sock.fileno()


def test_the_worker_hands_gunicorn_the_named_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(
        gunicorn_worker._GunicornGeventWorker, "handle", lambda self, listener, client, addr:
        seen.append(listener),
    )
    sock = object()
    named = NamedListener(sock, ("127.0.0.1", 3000))  # type: ignore[arg-type]
    gevent_worker = GeventWorker.__new__(GeventWorker)
    gevent_worker._listeners = {id(sock): named}
    gevent_worker.handle(sock, None, None)
    assert seen == [named]


def test_bounded_chunks_passes_the_bound_and_split_pieces_then_raises_naming_it() -> None:
    pieces = gunicorn_worker.bounded_chunks(iter([b"x"] * 100), 32, ValueError)
    assert b"".join(next(pieces) for _ in range(32 + 2 + 1)) == b"x" * 35
    with pytest.raises(ValueError, match="32"):
        next(pieces)
