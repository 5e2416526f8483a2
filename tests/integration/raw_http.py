"""A raw HTTP/1.1 client for tests that send what well-behaved clients never would."""

from __future__ import annotations

import select
import socket
from urllib.parse import urlsplit

from devtools.harness import Service


class Raw:
    """One HTTP/1.1 exchange over a plain socket: send bytes as given, read to the close."""

    def __init__(self, service: Service) -> None:
        url = urlsplit(service.url)
        self.address = (url.hostname or "127.0.0.1", url.port or 80)
        self.auth = f"Authorization: Bearer {service.api_key}\r\n".encode()

    def exchange(
        self, head: bytes, body: bytes = b"", *, close: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        """Send ``head`` (request line and headers, without the blank line) and ``body``.

        With ``close=False`` the request does not ask to close: the server must end it.
        """
        received = b""
        with socket.create_connection(self.address, timeout=10) as sock:
            sock.sendall(head + (b"Connection: close\r\n" if close else b"") + b"\r\n")
            # The server may answer (413) and close before reading everything: stop sending then.
            for start in range(0, len(body), 16384):
                if select.select([sock], [], [], 0)[0]:
                    break
                try:
                    sock.sendall(body[start:start + 16384])
                except OSError:
                    break
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass  # unread bytes of ours make the close a reset; the answer came before it
        header_block, _, payload = received.partition(b"\r\n\r\n")
        status_line, *lines = header_block.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, payload

    def measure(
        self, extra_headers: bytes, body: bytes, *, path: bytes = b"/v2/measure", close: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` to ``path`` with the API key, JSON content type and ``extra_headers``."""
        head = (b"POST " + path + b" HTTP/1.1\r\nHost: test\r\n" + self.auth
                + b"Content-Type: application/json\r\n" + extra_headers)
        return self.exchange(head, body, close=close)
