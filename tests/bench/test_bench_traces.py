"""The trace readers parse each on-disk format, tiny files written in tmp_path."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest
import traces


def _gz(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode("ascii")))
    return path


def _xz(path: Path, data: bytes) -> Path:
    path.write_bytes(lzma.compress(data))
    return path


def test_int_lines_reader_returns_one_key_per_line(tmp_path: Path) -> None:
    path = _gz(tmp_path / "t.trace.gz", "5\n7\n5\n")
    assert traces.read_int_lines(path) == [5, 7, 5]


def test_int_lines_reader_skips_blank_lines_and_star_markers(tmp_path: Path) -> None:
    path = _gz(tmp_path / "t.trace.gz", "1\n\n*\n2\n*\n")
    assert traces.read_int_lines(path) == [1, 2]


def test_int_lines_reader_names_the_file_and_line_of_a_bad_key(tmp_path: Path) -> None:
    path = _gz(tmp_path / "t.trace.gz", "1\nabc\n")
    with pytest.raises(ValueError, match=r"t\.trace\.gz:2"):
        traces.read_int_lines(path)


def test_arc_reader_expands_each_block_into_consecutive_keys(tmp_path: Path) -> None:
    path = _gz(tmp_path / "t.lis.gz", "10 3 0 0\n4 1 0 1\n10 2 0 2\n")
    assert traces.read_arc(path) == [10, 11, 12, 4, 10, 11]


def test_arc_reader_rejects_a_line_without_a_count(tmp_path: Path) -> None:
    path = _gz(tmp_path / "t.lis.gz", "10\n")
    with pytest.raises(ValueError, match="expected 2 fields"):
        traces.read_arc(path)


def test_int32_reader_decodes_big_endian_signed_keys(tmp_path: Path) -> None:
    path = _xz(tmp_path / "t.trace.xz", struct.pack(">3i", 1, 256, -2))
    assert traces.read_int32_be(path) == [1, 256, -2]


def test_int32_reader_rejects_a_truncated_file(tmp_path: Path) -> None:
    path = _xz(tmp_path / "t.trace.xz", struct.pack(">i", 1) + b"\x00\x01")
    with pytest.raises(ValueError, match="multiple of 4"):
        traces.read_int32_be(path)


def test_adapt_size_reader_makes_each_key_and_size_pair_an_object(tmp_path: Path) -> None:
    text = "1 7 100\n2 8 5\n3 7 100\n4 7 120\n"
    path = _xz(tmp_path / "t.trace.xz", text.encode("ascii"))
    objects, sizes = traces.read_adapt_size(path)
    assert objects == [(7, 100), (8, 5), (7, 100), (7, 120)]
    assert sizes == [100, 5, 100, 120]


def test_adapt_size_reader_rejects_a_zero_size(tmp_path: Path) -> None:
    path = _xz(tmp_path / "t.trace.xz", b"1 7 0\n")
    with pytest.raises(ValueError, match="size must be positive"):
        traces.read_adapt_size(path)


def test_distinct_cost_counts_each_object_once() -> None:
    trace = traces.Trace("w", [(7, 100), (8, 5), (7, 100)], [100, 5, 100])
    assert trace.distinct_cost() == 105


def test_distinct_cost_of_a_unit_trace_is_its_distinct_keys() -> None:
    assert traces.Trace("u", [1, 2, 1, 3]).distinct_cost() == 3


def test_head_keeps_the_first_accesses_with_their_costs() -> None:
    trace = traces.Trace("w", ["a", "b", "c"], [1, 2, 3]).head(2)
    assert (trace.keys, trace.costs) == (["a", "b"], [1, 2])


def test_load_trace_reads_a_named_trace_from_the_directory(tmp_path: Path) -> None:
    _gz(tmp_path / "gli.lirs.gz", "3\n4\n")
    trace = traces.load_trace("gli", tmp_path)
    assert trace is not None and trace.keys == [3, 4] and not trace.weighted


def test_load_trace_returns_none_when_the_file_is_missing(tmp_path: Path) -> None:
    assert traces.load_trace("oltp", tmp_path) is None


def test_traces_dir_defaults_to_shared_traces_beside_the_project(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(traces.TRACES_ENV, raising=False)
    project_root = Path(traces.__file__).resolve().parents[1]
    assert traces.resolve_traces_dir() == project_root.parent / "shared" / "traces"


def test_traces_dir_comes_from_the_environment_when_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(traces.TRACES_ENV, str(tmp_path))
    assert traces.resolve_traces_dir() == tmp_path


def test_traces_dir_option_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(traces.TRACES_ENV, "/elsewhere")
    assert traces.resolve_traces_dir(str(tmp_path)) == tmp_path


def test_address_reader_keys_each_access_by_its_hexadecimal_address(tmp_path: Path) -> None:
    path = _gz(tmp_path / "t.trace.gz", "s 0x1f 1\nl 0x20 6\nl 0x1F 1\n")
    assert traces.read_address(path) == [31, 32, 31]


def test_address_reader_names_the_line_of_a_bad_address(tmp_path: Path) -> None:
    path = _gz(tmp_path / "t.trace.gz", "s 0x1f 1\nl zz 6\n")
    with pytest.raises(ValueError, match=r"t\.trace\.gz:2"):
        traces.read_address(path)
