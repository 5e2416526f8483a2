"""gunicorn's gevent worker, with three fixes: the listener's address is read once, the app can
close the connection after its answer, and a chunked body may come in a bounded number of chunks.

gunicorn drops the app's own ``Connection: close`` header; the app calls
``app.extensions[api.CLOSE_CONNECTION]()`` instead (after a body that did not arrive in time, the
rest of it must never be read as the next request).

gunicorn 27 asks the listening socket for its name on every connection it handles. During a
graceful stop (SIGHUP reload, SIGTERM) the worker closes its listener while connections it has
just accepted are still starting; their ``getsockname()`` then fails with EBADF and gunicorn
drops the connection without answering (gunicorn issues #712 and #1877); ``bench/deploys.py``
measures it.

gunicorn reads a chunked body one chunk at a time in Python: a body sent in chunks of a few bytes
costs a worker far more than its size. The worker stops reading after
``Config.max_body_chunks`` chunks, and the app answers 400.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from gunicorn.http.body import ChunkedReader  # type: ignore[import-untyped]
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker  # type: ignore[import-untyped]

# The gunicorn request being handled; each greenlet has its own context.
_REQUEST: ContextVar[Any] = ContextVar("gunicorn_request")


class NamedListener:
    """A listening socket whose ``getsockname()`` answers from a copy taken while it was open."""

    __slots__ = ("_name", "_sock")

    def __init__(self, sock: socket.socket, name: Any) -> None:
        """Wrap ``sock``, answering ``getsockname()`` with ``name``."""
        self._sock = sock
        self._name = name

    def getsockname(self) -> Any:
        """The address the socket was bound to, even after it was closed."""
        return self._name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._sock, attr)


class GeventWorker(_GunicornGeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, safe against the closed-listener race of a graceful stop."""

    def run(self) -> None:
        """Remember each listener's name while it is open, then serve as gunicorn does."""
        self._listeners = {
            id(sock): NamedListener(sock, sock.getsockname()) for sock in self.sockets
        }
        super().run()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Handle one connection, giving gunicorn the listener wrapper with the remembered name."""
        super().handle(self._listeners.get(id(listener), listener), client, addr)

    def load_wsgi(self) -> None:
        """Load the app, let its requests close their own connection, bound their chunks."""
        super().load_wsgi()
        # Imported here, in the worker: the master must not load the app's metrics.
        from measure_service.api import CLOSE_CONNECTION, EXTENSION, TooManyChunks

        self._too_many_chunks = TooManyChunks
        self._max_chunks: int | None = None
        extensions = getattr(getattr(self, "wsgi", None), "extensions", None)
        if isinstance(extensions, dict):
            extensions[CLOSE_CONNECTION] = _close_current_connection
            services = extensions.get(EXTENSION)
            if services is not None:
                self._max_chunks = services.config.max_body_chunks

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        """Handle one request, as the one :func:`_close_current_connection` would close."""
        reader = getattr(getattr(req, "body", None), "reader", None)
        if isinstance(reader, ChunkedReader) and self._max_chunks is not None:
            reader.parser = bounded_chunks(reader.parser, self._max_chunks, self._too_many_chunks)
        token = _REQUEST.set(req)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            _REQUEST.reset(token)


def bounded_chunks(
    pieces: Iterator[bytes], limit: int, error: type[Exception]
) -> Iterator[bytes]:
    """gunicorn's chunk pieces, raising ``error(limit)`` past ``limit`` chunks.

    A piece is a chunk, or part of one split across socket reads (a read of 8 KiB or more splits
    at most one): a sixteenth more pieces than chunks are allowed for them.
    """
    most = limit + limit // 16 + 1
    for count, piece in enumerate(pieces, 1):
        if count > most:
            raise error(limit)
        yield piece


def _close_current_connection() -> None:
    """Make gunicorn answer this greenlet's request with ``Connection: close``, then hang up."""
    req = _REQUEST.get(None)
    if req is not None:
        req.force_close()
