"""Figure 8 of ``bench/LIMITS.md``: 1 MB hostile bodies (about 50 kinds, by the class of work
each targets) and 1 MB framed in small chunks; CPU time per request, in process (parse and
validation) and in a real gunicorn worker (everything, from /proc); every 4xx is JSON. Valid
requests of MAX_ROWS rows are measured beside them, as the reference a hostile body is held to.

Run through ``bench/limits.py --scenarios hostile_bodies``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

from limits_client import GOOD, MIB, NO_PARAMS, body_of, post, post_chunked, service

from devtools import probes
from devtools.harness import Processes
from measure_service.rows import BodyError, parse_body, validate_row

Hostile = bytes | Callable[[int], bytes]


def hostile_texts() -> dict[str, Hostile]:
    """1 MB bodies built to make parsing or validation expensive, by the class of work each
    targets: many values, many names, duplicates, nesting, numbers, strings and escapes,
    encodings, the last byte, and rows that each fail (or pass) validation. A callable gives
    a fresh body per request (new keys each time)."""
    def pad(prefix: str, unit: str, suffix: str, size: int = MIB) -> str:
        return prefix + unit * ((size - 200 - len(prefix) - len(suffix)) // len(unit)) + suffix

    def spaced(text: str, tail: str = "}") -> bytes:
        """``text`` (an open top-level object) padded with spaces to about 1 MB."""
        return (text + " " * (MIB - 200 - len(text.encode())) + tail).encode()

    def keys(count: int, start: int = 0) -> str:
        return ",".join(f'"k{i}":1' for i in range(start, start + count))

    good = json.dumps(GOOD)
    many = '{"rows":[' + ",".join([good] * 1000) + "]"
    kinds: dict[str, str | Hostile] = {
        # many values
        "empty objects": pad('{"rows":[', "{},", "{}]}"),
        "floats": pad('{"rows":[', "1.5,", "1]}"),
        "small ints": pad('{"rows":[', "1,", "1]}"),
        "short strings": pad('{"rows":[', '"aaaaaaaa",', '"a"]}'),
        "empty strings": pad('{"rows":[', '"",', '""]}'),
        "nulls in an ignored name": pad('{"rows":[1],"x":[', "null,", "null]}"),
        "objects nested in a row": pad('{"rows":[{"x":[', "{},", "{}]}]}"),
        "empty objects, UTF-8 BOM": "\ufeff" + pad('{"rows":[', "{},", "{}]}"),
        "empty objects, UTF-16": pad('{"rows":[', "{},", "{}]}", MIB // 2).encode("utf-16"),
        # many names, duplicates
        "one key repeated in a row": pad('{"rows":[{', '"k":1,', '"k2":1}]}'),
        "distinct keys in a row": '{"rows":[{' + keys(MIB // 11) + "}]}",
        "distinct top-level keys": "{" + keys(MIB // 11) + ',"rows":[1]}',
        "distinct keys, UTF-32": ('{"rows":[{' + keys(MIB // 48) + "}]}").encode("utf-32"),
        # as many names as the bound allows, read by orjson, then strictly (a lone surrogate
        # or a duplicate key)
        "11.8k keys in a row": spaced('{"rows":[{' + keys(11_800) + "}]"),
        "11.8k keys + a lone surrogate": spaced('{"rows":[{' + keys(11_800)
                                                + ',"x":"\\ud800"}]'),
        "11.8k keys, last one repeated": spaced('{"rows":[{' + keys(11_800) + ',"k0":2}]'),
        "duplicate key at the end": pad('{"rows":[', "{},", '{"a":1,"a":2}]}'),
        "1000 rows, key case twins": spaced('{"rows":[' + ",".join(
            ['{"inventoryId":"a.com","utcDatetime":"2024-10-30","country":"US",'
             '"Country":"FR"}'] * 1000) + "]"),
        # nesting
        "deep nesting": '{"rows":' + "[" * (MIB // 2 - 10) + "]" * (MIB // 2 - 10) + "}",
        "20k deep in an ignored name": spaced('{"rows":[' + good + '],"x":' + "[" * 20_000
                                              + "]" * 20_000),
        "unclosed nesting": '{"rows":' + "[" * (MIB - 100),
        # numbers
        "4299-digit ints": pad('{"rows":[', "1" * 4299 + ",", "1]}"),
        "257-digit ints": pad('{"rows":[', "7" * 257 + ",", "1]}"),
        "256-digit ints, ignored": pad('{"rows":[' + good + '],"x":[', "7" * 256 + ",",
                                       "1]}"),
        "250-digit fractions, ignored": pad('{"rows":[' + good + '],"x":[', "0." + "7" * 250
                                            + ",", "1]}"),
        "1e999 in an ignored name": pad('{"rows":[' + good + '],"x":[', "1e999,", "1]}", 120_000)
                                    + " " * (MIB - 121_000),
        "one 1 MB number": '{"rows":[' + "7" * (MIB - 100) + "]}",
        "NaN literals": pad('{"rows":[', "NaN,", "NaN]}"),
        "1000 rows + NaN at the end": spaced(many + ',"x":NaN'),
        "1000 rows, 256-digit row ids": spaced('{"rows":[' + ",".join(
            f'{{"inventoryId":"a.com","utcDatetime":"2024-10-30","rowIdentifier":'
            f'{"7" * 252}{i:04d}}}' for i in range(1000)) + "]"),
        # strings and escapes
        "escaped characters": '{"rows":[{"inventoryId":"' + "\\u0041" * (MIB // 6 - 20)
                              + '","utcDatetime":"2024-10-30"}]}',
        "escaped surrogate pairs, ignored": pad('{"rows":[' + good + '],"x":"', "\\ud83d\\ude00",
                                                '"}'),
        "escaped quotes, ignored": pad('{"rows":[' + good + '],"x":"', '\\"', '"}'),
        "escaped backslashes, ignored": pad('{"rows":[' + good + '],"x":"', "\\\\", '"}'),
        "structure inside a string": pad('{"rows":[' + good + '],"x":"', ',:{}[]', '"}'),
        "long digit runs in strings": pad('{"rows":[' + good + '],"x":[', '"' + "7" * 300 + '",',
                                          '"7"]}'),
        "lone surrogates x1000": spaced('{"rows":[' + ",".join(
            ['{"inventoryId":"p1-\\ud800.com","utcDatetime":"2024-10-30"}'] * 1000) + "]"),
        "control characters": pad('{"rows":[{"inventoryId":"', "\x01", '"}]}'),
        "one padded field": '{"rows":[{"inventoryId":"nytimes.com","utcDatetime":"2024-10-30'
                            + " " * (MIB - 200) + '"}]}',
        "leading whitespace": " " * (MIB - 100) + '{"rows":[' + good + "]}",
        # the last byte
        "not JSON at the end": pad('{"rows":[', "{},", "{}]") + "!",
        "1000 rows, not JSON at the end": spaced(many, "!"),
        "1000 rows, bad UTF-8 at the end": spaced(many, "}") + b"\xff",
        # rows that each fail, or pass, validation
        "1000 rows of 1 KB names": '{"rows":[' + ",".join(
            '{"inventoryId":"' + "x" * 980 + '.com","utcDatetime":"2024-10-30"}'
            for _ in range(1000)) + "]}",
        "1000 rows, each a different error": spaced('{"rows":[' + ",".join(
            json.dumps(bad) for bad in _failing_rows(1000)) + "]"),
        "1000 rows of 11 unknown names": spaced('{"rows":[' + ",".join(
            "{" + ",".join(f'"{"u" * 40}{i}_{j}":"{"v" * 40}"' for j in range(11)) + "}"
            for i in range(1000)) + "]"),
        "1000 good rows + spaces": spaced(many),
        "1000 valid rows, 512-char names": ('{"rows":[' + ",".join(
            json.dumps({**GOOD, "inventoryId": f"{i:04d}" + "\u0130" * 50 + "x" * 458,
                        "country": "us", "region": "\u00c9" * 64, "channel": "WEB",
                        "deviceType": "phone", "network": "mobile", "weight": 100,
                        "rowIdentifier": "r" * 100}, ensure_ascii=False)
            for i in range(1000)) + "]}").encode(),
        "1000 new rows each time": lambda n: spaced('{"rows":[' + ",".join(
            json.dumps({**GOOD, "inventoryId": f"new-{n}-{i}-{uuid.uuid4().hex}.com"})
            for i in range(1000)) + "]"),
    }
    return {name: kind.encode() if isinstance(kind, str) else kind
            for name, kind in kinds.items()}


# Valid requests of MAX_ROWS rows: not hostile, the reference (reported apart from the verdict).
FULL_REQUESTS = ("1000 good rows + spaces", "1000 valid rows, 512-char names",
                 "1000 new rows each time", "1000 rows, 256-digit row ids")


def _failing_rows(count: int) -> Iterator[dict[str, Any]]:
    """Rows that each fail validation, for a different reason in turn."""
    bad: list[dict[str, Any]] = [
        {"utcDatetime": "2024-10-30"}, {**GOOD, "utcDatetime": "2024-13-45"},
        {**GOOD, "utcDatetime": "x" * 64}, {**GOOD, "impressions": -1},
        {**GOOD, "impressions": 1.5}, {**GOOD, "weight": True}, {**GOOD, "country": "USA"},
        {**GOOD, "channel": "radio"}, {**GOOD, "deviceType": 7}, {**GOOD, "region": "\x00"},
        {**GOOD, "inventoryId": "a\ud800"}, {**GOOD, "rowIdentifier": [1]},
        {**GOOD, "adFormat": "banner"}, {**GOOD, "Country": "US", "country": "FR"},
        {**GOOD, "inventoryId": " "}, {**GOOD, "network": "x" * 65},
    ]
    for i in range(count):
        yield {**bad[i % len(bad)], "rowIdentifier": f"r{i}"} if i % 3 else bad[i % len(bad)]


def _reference_parse(body: bytes) -> Any:
    """A plain stdlib decoder with a Python hook per object and per float, the reference the
    service's parser is compared with in the same run."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        document = dict(pairs)
        if len(document) != len(pairs):
            raise ValueError("duplicate key")
        return document

    decoder = json.JSONDecoder(object_pairs_hook=unique, parse_float=float)
    return decoder.decode(body.decode(json.detect_encoding(body)))


def _best_cpu_ms(work: Callable[[], Any], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        with suppress(BodyError, ValueError, RecursionError):
            work()
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


def hostile_bodies(procs: Processes, repeats: int = 10) -> dict[str, Any]:
    """Figure 8: CPU per 1 MB hostile body, in process and in a gunicorn worker."""
    kinds = hostile_texts()

    def body_of_kind(kind: Hostile, n: int) -> bytes:
        return kind(n) if callable(kind) else kind

    too_big = [name for name, kind in kinds.items() if len(body_of_kind(kind, 0)) > MIB]
    assert not too_big, f"over MAX_BODY_BYTES: {too_big}"
    rows: dict[str, dict[str, Any]] = {}
    for name, kind in kinds.items():
        body = body_of_kind(kind, 0)
        best = float("inf")
        outcome = ""
        for _ in range(5):
            started = time.process_time()
            try:
                parsed = parse_body(body, 1000)
                results = [validate_row(raw, NO_PARAMS) for raw in parsed]
                outcome = f"200 ({sum(r.key is None for r in results)} invalid)"
            except BodyError as exc:
                outcome = f"400 {str(exc)[:40]}"
            best = min(best, time.process_time() - started)
        rows[name] = {"bytes": len(body), "in_process_ms": round(best * 1000, 1),
                      "outcome": outcome,
                      "reference_parse_ms": _best_cpu_ms(lambda body=body: _reference_parse(body))}
    sim = procs.simulator(latency_ms=5, jitter_ms=1)
    server, pid = service(procs, sim.url)
    non_json_4xx = 0
    for name, kind in kinds.items():
        post(server, body_of_kind(kind, 1))  # warm: first-use allocations are not the cost
        bodies = [body_of_kind(kind, 2 + n) for n in range(repeats)]
        before = probes.cpu_seconds(pid)
        statuses: set[int] = set()
        for body in bodies:
            status, content_type, answer = post(server, body)
            statuses.add(status)
            if 400 <= status < 500 and not (
                content_type.startswith("application/json") and "error" in json.loads(answer)
            ):
                non_json_4xx += 1
        rows[name]["worker_ms"] = round((probes.cpu_seconds(pid) - before) / repeats * 1000, 1)
        rows[name]["statuses"] = sorted(statuses)
    # The same body, framed in small chunks: the server's chunk reader is the cost.
    one_row = body_of(GOOD)
    padded = one_row[:-1] + b" " * (MIB - 100 - len(one_row)) + b"}"
    for chunk in (4, 64, 256, 4096):
        post_chunked(server, padded, chunk)
        before = probes.cpu_seconds(pid)
        statuses = {post_chunked(server, padded, chunk) for _ in range(repeats)}
        rows[f"1 MB in {chunk}-byte chunks"] = {
            "bytes": len(padded), "in_process_ms": 0.0, "reference_parse_ms": 0.0,
            "outcome": "chunked", "statuses": sorted(statuses),
            "worker_ms": round((probes.cpu_seconds(pid) - before) / repeats * 1000, 1),
        }
    hostile = {name: r for name, r in rows.items() if name not in FULL_REQUESTS}
    worst_name = max(hostile, key=lambda name: hostile[name]["worker_ms"])
    worst_worker = hostile[worst_name]["worker_ms"]
    worst_process = max(r["in_process_ms"] for r in hostile.values())
    full_name = max(FULL_REQUESTS, key=lambda name: rows[name]["worker_ms"])
    return {
        "figure": f"{len(hostile)} hostile kinds: worst in-process {worst_process} ms, worst "
                  f"worker {worst_worker} ms ({worst_name}) per request (CPU, /proc ticks over "
                  f"{repeats} requests); non-JSON 4xx {non_json_4xx}; valid {len(FULL_REQUESTS)}"
                  f"-kind reference of MAX_ROWS rows: worst {rows[full_name]['worker_ms']} ms "
                  f"({full_name})",
        "target": "<= 30 ms; 0 non-JSON 4xx",
        "passed": worst_worker <= 30 and non_json_4xx == 0,
        "bodies": rows,
    }
