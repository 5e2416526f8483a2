"""gunicorn's gevent worker, with two fixes: the listener's address is read once, and the app can
close the connection after its answer.

gunicorn drops the app's own ``Connection: close`` header; the app asks by calling
``environ[api.ENVIRON_CLOSE_CONNECTION]()`` instead (after a body that did not arrive in time, the
rest of it must never be read as the next request).

gunicorn 27 asks the listening socket for its name on every connection it handles. During a
graceful stop (SIGHUP reload, SIGTERM) the worker closes its listener while connections it has
just accepted are still starting; their ``getsockname()`` then fails with EBADF and gunicorn
drops the connection without answering (gunicorn issues #712 and #1877). Measured with
``bench/deploys.py --close``: about 1 lost request in 20 to 40 reloads before, none after.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

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
        """Load the app, wrapped so that each request can ask to close its connection."""
        super().load_wsgi()
        # Imported here, in the worker: the master must not load the app's metrics.
        from measure_service.api import ENVIRON_CLOSE_CONNECTION

        app: Any = getattr(self, "wsgi")  # noqa: B009 (set by gunicorn, untyped)
        self.wsgi: Any = _offering_close(app, ENVIRON_CLOSE_CONNECTION)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        """Handle one request, making it reachable from its environ's close function."""
        token = _REQUEST.set(req)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            _REQUEST.reset(token)


def _offering_close(
    app: Callable[..., Iterable[bytes]], key: str
) -> Callable[..., Iterable[bytes]]:
    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        req = _REQUEST.get(None)
        if req is not None:
            # A request that must close makes gunicorn answer "Connection: close" and hang up.
            environ[key] = req.force_close
        return app(environ, start_response)

    wsgi.__wrapped__ = app  # type: ignore[attr-defined]
    return wsgi
