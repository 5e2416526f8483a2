"""JSON logs: trace ids, their propagation into greenlets, and the access line's fields."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
from pythonjsonlogger.json import JsonFormatter

from measure_service import logs


def test_a_safe_client_trace_id_is_kept() -> None:
    assert logs.trace_id_from_header("abc.DEF_123-x") == "abc.DEF_123-x"


@pytest.mark.parametrize("value", [None, "", "has space", "x" * 129, "semi;colon", "\u00e9"])
def test_an_absent_or_unsafe_trace_id_is_replaced_by_a_uuid_hex(value: str | None) -> None:
    new = logs.trace_id_from_header(value)
    assert new != value
    assert len(new) == 32 and int(new, 16) >= 0


def test_new_trace_ids_are_distinct_hex_across_batches() -> None:
    new = [logs.trace_id_from_header(None) for _ in range(1000)]
    assert len(set(new)) == len(new)
    assert all(len(one) == 32 and int(one, 16) >= 0 for one in new)


def test_a_forked_worker_makes_trace_ids_its_parent_does_not() -> None:
    logs.trace_id_from_header(None)  # the parent holds ids drawn before the fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, " ".join(logs.trace_id_from_header(None) for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        in_child = set(pipe.read().split())
    os.waitpid(child, 0)
    in_parent = {logs.trace_id_from_header(None) for _ in range(3)}
    assert len(in_child) == 3 and not in_child & in_parent


def test_set_and_reset_restore_the_previous_trace_id() -> None:
    token = logs.set_trace_id("outer")
    inner = logs.set_trace_id("inner")
    logs.reset_trace_id(inner)
    assert logs.current_trace_id() == "outer"
    logs.reset_trace_id(token)





def capture(logger: logging.Logger) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.json_formatter())
    handler.addFilter(logs.TraceIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return stream


def test_application_lines_are_json_with_level_timestamp_and_trace_id() -> None:
    stream = capture(logging.getLogger("test.logs.app"))
    token = logs.set_trace_id("req-9")
    try:
        logging.getLogger("test.logs.app").info("hello", extra={"rows": 3})
    finally:
        logs.reset_trace_id(token)
    line = json.loads(stream.getvalue())
    assert (line["level"], line["message"], line["trace_id"], line["rows"]) == (
        "INFO", "hello", "req-9", 3
    )
    assert "timestamp" in line


def test_a_secret_is_redacted_from_every_part_of_a_line_including_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.json_formatter(secrets=["s3cret-token"]))
    logger = logging.getLogger("test.logs.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise RuntimeError("upstream said s3cret-token")
    except RuntimeError:
        logger.exception("failed with s3cret-token", extra={"body": "s3cret-token"})
    assert "s3cret-token" not in stream.getvalue()
    assert logs.REDACTED in json.loads(stream.getvalue())["message"]


def test_access_lines_carry_the_shared_field_names() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.AccessFormatter())
    logger = logging.getLogger("test.logs.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    atoms = {
        "m": "POST", "U": "/v2/measure", "s": "200", "D": 1500, "h": "127.0.0.1",
        "{measure.trace_id}e": "t-1", "{measure.rows}e": 3, "{measure.hits}e": 2,
        "{measure.misses}e": 1,
    }
    logger.info("%(s)s", atoms)
    line = json.loads(stream.getvalue())
    assert {name: line[name] for name in logs.FIELDS if name != "timestamp"} == {
        "level": "INFO", "trace_id": "t-1", "method": "POST", "path": "/v2/measure",
        "status": 200, "duration_ms": 1.5, "rows": 3, "hits": 2, "misses": 1,
    }


def test_sampling_keeps_the_chosen_fraction() -> None:
    draws = iter([0.05, 0.5, 0.09, 0.95])
    sample = logs.SampleFilter(0.1, rand=lambda: next(draws))
    record = logging.makeLogRecord({})
    assert [sample.filter(record) for _ in range(4)] == [True, False, True, False]


def test_sampling_at_zero_keeps_nothing_and_at_one_keeps_everything() -> None:
    record = logging.makeLogRecord({})
    assert logs.SampleFilter(0.0).filter(record) is False
    assert logs.SampleFilter(1.0).filter(record) is True


def test_a_sampling_rate_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        logs.SampleFilter(1.5)


def test_configuring_twice_leaves_one_handler() -> None:
    logs.configure_logging("DEBUG")
    logger = logs.configure_logging("INFO")
    ours = [h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 1
    assert logger.level == logging.INFO


def test_a_formatter_given_a_variable_name_redacts_that_variables_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_SECRET_TOKEN", "s3cr3t-value")
    formatter = logs.json_formatter(secret_variables=["TEST_SECRET_TOKEN"])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "echo s3cr3t-value", None, None)
    record.trace_id = "t"
    assert "s3cr3t-value" not in formatter.format(record)
