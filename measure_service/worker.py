"""gunicorn's gevent worker, with the listener's address read once instead of per connection.

gunicorn 27 asks the listening socket for its name on every connection it handles. During a
graceful stop (SIGHUP reload, SIGTERM) the worker closes its listener while connections it has
just accepted are still starting; their ``getsockname()`` then fails with EBADF and gunicorn
drops the connection without answering (gunicorn issues #712 and #1877). Measured with
``bench/deploys.py --close``: about 1 lost request in 20 to 40 reloads before, none after.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker  # type: ignore[import-untyped]


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
