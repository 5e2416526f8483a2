"""JSON logs with a per-request trace id carried by a contextvar, including into greenlets.

Application lines and gunicorn's access lines share the field names in :data:`FIELDS`, so one
query finds every line of a request.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from gunicorn.glogging import Logger as GunicornLogger  # type: ignore[import-untyped]
from pythonjsonlogger.json import JsonFormatter

# Field names shared by application and access log lines.
FIELDS = (
    "timestamp", "level", "trace_id", "method", "path", "status", "duration_ms", "rows", "hits",
    "misses",
)
LOGGER_NAME = "measure_service"
# Keys a view stores in the WSGI environ so gunicorn's access line can report them.
ENVIRON_TRACE_ID = "measure.trace_id"
ENVIRON_ROWS = "measure.rows"
ENVIRON_HITS = "measure.hits"
ENVIRON_MISSES = "measure.misses"

# gunicorn names an environ value "{key}e" among its access log atoms.
_ATOM_TRACE_ID = "{" + ENVIRON_TRACE_ID + "}e"
_ATOM_ROWS = "{" + ENVIRON_ROWS + "}e"
_ATOM_HITS = "{" + ENVIRON_HITS + "}e"
_ATOM_MISSES = "{" + ENVIRON_MISSES + "}e"

# What a secret (the upstream token) is replaced with wherever it would be logged or returned.
REDACTED = "[redacted]"

_TRACE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
_VALID_TRACE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def trace_id_from_header(value: str | None) -> str:
    """The client's trace id if it is a safe token, else a new random one (32 hex digits)."""
    if value is not None and _VALID_TRACE_ID.fullmatch(value):
        return value
    return next(_new_ids, None) or _draw_ids()


# New trace ids are drawn a batch at a time: one request then takes the next one for a single
# call, where drawing its own would cost three.
_IDS_PER_DRAW = 256
_new_ids: Iterator[str] = iter(())


def _draw_ids() -> str:
    """Draw the next batch of ids and return its first."""
    global _new_ids
    # 128 random bits each like uuid4, from the Mersenne twister (reseeded in each forked worker)
    # rather than os.urandom: a trace id must be unique, not secret, and this skips a syscall.
    digits = random.getrandbits(128 * _IDS_PER_DRAW).to_bytes(16 * _IDS_PER_DRAW, "big").hex()
    _new_ids = iter([digits[start : start + 32] for start in range(0, len(digits), 32)])
    return next(_new_ids)


def _forget_ids_in_child() -> None:
    """A forked worker draws its own ids: ids left from its parent's draw would repeat."""
    global _new_ids
    _new_ids = iter(())


os.register_at_fork(after_in_child=_forget_ids_in_child)


# The context variable's own methods, called on every request: a wrapper function would add a
# Python frame to each call.
set_trace_id: Callable[[str], contextvars.Token[str | None]] = _TRACE_ID.set
"""Make a trace id the current one; pass the token to :func:`reset_trace_id` when done."""
reset_trace_id: Callable[[contextvars.Token[str | None]], None] = _TRACE_ID.reset
"""Restore the trace id that was current before :func:`set_trace_id`."""
current_trace_id: Callable[[], str | None] = _TRACE_ID.get
"""The trace id of the request being handled here, if any."""


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` to every record passing through the handler it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record with the current trace id; never drops a record."""
        if not hasattr(record, "trace_id"):
            record.trace_id = _TRACE_ID.get()
        return True


class SampleFilter(logging.Filter):
    """Lets through a random fraction ``rate`` of records (access log sampling)."""

    def __init__(self, rate: float = 1.0, rand: Callable[[], float] = random.random) -> None:
        """Keep a record with probability ``rate`` (0 keeps none, 1 keeps all)."""
        super().__init__()
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in 0..1, got {rate!r}")
        self._rate = rate
        self._rand = rand

    def filter(self, record: logging.LogRecord) -> bool:
        """True for the sampled records."""
        return self.keep()

    def keep(self) -> bool:
        """Draw once: True for the sampled fraction of calls."""
        return self._rate >= 1.0 or (self._rate > 0.0 and self._rand() < self._rate)


class SampledAccessLogger(GunicornLogger):  # type: ignore[misc]
    """gunicorn's logger, deciding whether to keep an access line before building it.

    gunicorn builds every access line's atoms (a dict of each header and environ entry) before
    any logging filter sees the record; dropping most lines in a filter still paid for them all,
    a visible share of a worker's CPU on the hit path. Use :func:`sampled_access_logger`.
    """

    sampler = SampleFilter(1.0)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Log the sampled fraction of requests (ACCESS_LOG); skip the rest before any work."""
        if self.sampler.keep():
            super().access(resp, req, environ, request_time)


def sampled_access_logger(rate: float) -> type[SampledAccessLogger]:
    """A logger class for gunicorn's ``logger_class`` keeping a fraction ``rate`` (0..1)."""
    return type("SampledAccessLogger", (SampledAccessLogger,), {"sampler": SampleFilter(rate)})


class RedactingFormatter(JsonFormatter):
    """A JSON formatter that removes ``secrets`` from the finished line.

    The last step of every line, so no field, exception text or traceback can carry a secret
    out, whichever call site logged it. Log lines are off the hit path, so the scan is cheap.
    """

    def __init__(self, *args: Any, secrets: Iterable[str] = (), **kwargs: Any) -> None:
        """``secrets``: strings never to write (empty ones are ignored)."""
        super().__init__(*args, **kwargs)
        self._secrets = tuple(secret for secret in secrets if secret)

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line, with each secret replaced by :data:`REDACTED`."""
        line = super().format(record)
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        return line


def json_formatter(
    secrets: Iterable[str] = (), secret_variables: Iterable[str] = ()
) -> RedactingFormatter:
    """The formatter of application lines: timestamp, level, logger, message, trace_id, extras.

    ``secret_variables`` names environment variables whose values are secrets too: a logging
    configuration can then name them without holding them (gunicorn prints its settings).
    """
    return RedactingFormatter(
        "%(levelname)s %(name)s %(message)s %(trace_id)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="timestamp",
        secrets=(*secrets, *_values_of(secret_variables)),
    )


def _values_of(variables: Iterable[str]) -> list[str]:
    # A URL's secret is its password: the rest of it (host, port, database) is fit to log.
    secrets = []
    for name in variables:
        value = os.environ.get(name, "").strip()
        try:
            password = urlsplit(value).password if "://" in value else None
        except ValueError:
            password = None
        secrets.append(password or value)
    return secrets


class AccessFormatter(RedactingFormatter):
    """Formats gunicorn's access records (whose args are its atoms) with the shared field names."""

    def __init__(self, secrets: Iterable[str] = (), secret_variables: Iterable[str] = ()) -> None:
        """The field list is fixed: :data:`FIELDS` plus ``remote_addr``.

        ``secret_variables`` as for :func:`json_formatter`.
        """
        super().__init__(
            "%(levelname)s", rename_fields={"levelname": "level"}, timestamp="timestamp",
            secrets=(*secrets, *_values_of(secret_variables)),
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Turn the atoms into fields instead of printing the format string."""
        super().add_fields(log_data, record, message_dict)
        log_data.pop("message", None)
        atoms = record.args if isinstance(record.args, Mapping) else {}
        log_data["trace_id"] = _atom(atoms, _ATOM_TRACE_ID)
        log_data["method"] = _atom(atoms, "m")
        log_data["path"] = _atom(atoms, "U")
        log_data["status"] = _as_int(_atom(atoms, "s"))
        micros = _atom(atoms, "D")
        log_data["duration_ms"] = micros / 1000 if isinstance(micros, int) else None
        log_data["rows"] = _as_int(_atom(atoms, _ATOM_ROWS))
        log_data["hits"] = _as_int(_atom(atoms, _ATOM_HITS))
        log_data["misses"] = _as_int(_atom(atoms, _ATOM_MISSES))
        log_data["remote_addr"] = _atom(atoms, "h")


def configure_logging(level: str, secrets: Iterable[str] = ()) -> logging.Logger:
    """Send the ``measure_service`` loggers to stdout as JSON lines at ``level``; idempotent.

    ``secrets`` never appear in a line (see :class:`RedactingFormatter`).
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, "_measure_service", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler._measure_service = True  # type: ignore[attr-defined]
    handler.setFormatter(json_formatter(secrets))
    handler.addFilter(TraceIdFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def _atom(atoms: Mapping[str, Any], name: str) -> Any:
    value = atoms.get(name)
    return None if value == "-" else value


def _as_int(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
