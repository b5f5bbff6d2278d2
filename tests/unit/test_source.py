"""engine.source: every input kind becomes one Source; files are found, checked and streamed."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import InputError
from engine.source import Source, open_source


def _table(start: int, rows: int) -> pa.Table:
    ids = list(range(start, start + rows))
    return pa.table({"id": ids, "x": [i * 0.5 for i in ids], "name": [f"n{i}" for i in ids]})


def _parquet(path: Path, start: int = 0, rows: int = 3, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(start, rows), path, **kwargs)
    return path


def _ids(source: Source) -> list[int]:
    return list(source.reader(["id"]).read_all().column("id").to_pylist())


# --- finding files ------------------------------------------------------------------------


def test_single_file_path_reads_all_rows_and_knows_num_rows(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet", rows=5)
    source = open_source(path)
    assert source.paths == (str(path),)
    assert source.num_rows == 5
    assert source.reader().read_all().equals(_table(0, 5))


def test_directory_is_walked_recursively_in_sorted_path_order(tmp_path: Path) -> None:
    _parquet(tmp_path / "b.parquet", start=10)
    _parquet(tmp_path / "a" / "z.pq", start=0)
    _parquet(tmp_path / "c" / "d" / "e.parquet", start=20)
    source = open_source(tmp_path)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in source.paths] == [
        "a/z.pq",
        "b.parquet",
        "c/d/e.parquet",
    ]
    assert _ids(source) == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert source.num_rows == 9


def test_directory_skips_hidden_and_underscore_files_and_directories(tmp_path: Path) -> None:
    _parquet(tmp_path / "part-0.parquet")
    _parquet(tmp_path / ".hidden.parquet", start=100)
    _parquet(tmp_path / "_temporary" / "part-9.parquet", start=200)
    _parquet(tmp_path / ".cache" / "part-8.parquet", start=300)
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / "README.md").write_text("not data")
    assert open_source(tmp_path).paths == (str(tmp_path / "part-0.parquet"),)


def test_glob_matches_are_sorted_and_skip_underscore_files(tmp_path: Path) -> None:
    for i in (2, 0, 1):
        _parquet(tmp_path / f"part-{i}.parquet", start=i * 10)
    (tmp_path / "_SUCCESS").write_bytes(b"")
    source = open_source(str(tmp_path / "*"))
    assert [Path(p).name for p in source.paths] == [f"part-{i}.parquet" for i in (0, 1, 2)]
    assert _ids(source)[::3] == [0, 10, 20]


def test_recursive_glob_finds_nested_files_but_not_underscore_directories(tmp_path: Path) -> None:
    _parquet(tmp_path / "day=1" / "a.parquet")
    _parquet(tmp_path / "day=2" / "b.parquet")
    _parquet(tmp_path / "_temporary" / "c.parquet")
    source = open_source(str(tmp_path / "**" / "*.parquet"))
    assert [Path(p).name for p in source.paths] == ["a.parquet", "b.parquet"]


def test_overlapping_inputs_are_deduplicated(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet")
    source = open_source([path, str(path), tmp_path, str(tmp_path / "*.parquet")])
    assert source.paths == (str(path),)
    assert source.num_rows == 3


def test_explicitly_named_hidden_file_is_read(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "_only.parquet")
    assert open_source(path).paths == (str(path),)


# --- errors while finding files -------------------------------------------------------------


def test_glob_that_matches_nothing_names_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(InputError, match=r"no files match .*\*\.parquet"):
        open_source(pattern)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"input not found: .*missing\.parquet"):
        open_source(tmp_path / "missing.parquet")


def test_empty_sequence_is_refused() -> None:
    with pytest.raises(InputError, match="no input given"):
        open_source([])


def test_directory_without_data_files_says_which_extensions_count(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"holds no \.parquet/\.pq/\.csv/\.csv\.gz files"):
        open_source(tmp_path)


def test_unsupported_extension_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("{}")
    with pytest.raises(InputError, match=r"'\.json'.*supported: \.parquet, \.pq, \.csv, \.csv\.gz"):
        open_source(path)


def test_mixed_formats_are_refused_naming_a_file_of_each(tmp_path: Path) -> None:
    _parquet(tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("id\n1\n")
    with pytest.raises(InputError, match=r"mixes formats.*b\.csv \(csv\).*a\.parquet \(parquet\)"):
        open_source(tmp_path)


def test_format_argument_picks_one_format_from_a_mixed_directory(tmp_path: Path) -> None:
    _parquet(tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("id\n1\n")
    assert [Path(p).name for p in open_source(tmp_path, format="csv").paths] == ["b.csv"]


def test_format_argument_reads_a_file_whatever_its_extension(tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    path.write_text("a,b\n1,2\n")
    assert open_source(path, format="csv").reader().read_all().to_pydict() == {"a": [1], "b": [2]}


def test_unknown_format_argument_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unsupported format 'json'; choose one of: parquet, csv"):
        open_source(tmp_path, format="json")


def test_corrupt_parquet_file_is_named_with_pyarrows_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all, just some bytes")
    with pytest.raises(
        InputError, match=r"cannot read .*bad\.parquet as Parquet: .*(footer|magic)"
    ):
        open_source(path)


def test_truncated_parquet_file_is_named(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "cut.parquet", rows=100)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputError, match=r"cut\.parquet"):
        open_source(path)


# --- schemas across files -------------------------------------------------------------------


def test_files_with_different_columns_name_the_file_and_the_columns(tmp_path: Path) -> None:
    _parquet(tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [1], "x": [1.0], "other": ["o"]}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"b\.parquet has different columns.*'name'.*'other'"):
        open_source(tmp_path)


def test_files_with_incompatible_types_name_the_file_and_column(tmp_path: Path) -> None:
    _parquet(tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["1"], "x": [1.0], "name": ["n"]}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"b\.parquet does not share.*id: int64 in .*, string in"):
        open_source(tmp_path)


def test_widening_types_across_files_are_unified_when_read(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"v": pa.array([1, 2], pa.int32()), "s": ["a", "b"]}), tmp_path / "a.pq"
    )
    pq.write_table(pa.table({"s": ["c"], "v": pa.array([2.5])}), tmp_path / "b.pq")
    pq.write_table(pa.table({"v": pa.nulls(1, pa.null()), "s": ["d"]}), tmp_path / "c.pq")
    source = open_source(tmp_path)
    assert source.schema.field("v").type == pa.float64()
    assert source.schema.names == ["v", "s"]
    table = source.reader().read_all()
    assert table.to_pydict() == {"v": [1.0, 2.0, 2.5, None], "s": ["a", "b", "c", "d"]}


# --- CSV -------------------------------------------------------------------------------------


def test_csv_types_are_consistent_across_files(tmp_path: Path) -> None:
    # Alone, a.csv infers int64 and b.csv double; together both are read as double.
    (tmp_path / "a.csv").write_text("id,v\n1,1\n2,2\n")
    (tmp_path / "b.csv").write_text("id,v\n3,2.5\n4,3\n")
    source = open_source(tmp_path)
    assert source.schema.field("v").type == pa.float64()
    assert source.schema.field("id").type == pa.int64()
    batches = list(source.reader())
    assert all(batch.schema.field("v").type == pa.float64() for batch in batches)
    assert pa.Table.from_batches(batches).column("v").to_pylist() == [1.0, 2.0, 2.5, 3.0]
    assert source.num_rows is None


def test_csv_column_empty_in_the_first_file_takes_the_type_of_later_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,\n")
    (tmp_path / "b.csv").write_text("id,v\n2,7\n")
    assert open_source(tmp_path).reader(["v"]).read_all().column("v").to_pylist() == [None, 7]


def test_csv_column_empty_everywhere_is_read_as_string(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,\n")
    assert open_source(tmp_path).schema.field("v").type == pa.string()


def test_gzipped_csv_is_read(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.csv.gz", "wt") as file:
        file.write("id,name\n1,a\n2,b\n")
    assert open_source(tmp_path).reader().read_all().to_pydict() == {
        "id": [1, 2],
        "name": ["a", "b"],
    }


def test_csv_value_that_does_not_fit_the_inferred_type_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    rows = "".join(f"{i}\n" for i in range(300_000))  # well past the first 1 MiB block
    path.write_text(f"id\n{rows}oops\n")
    reader = open_source(path).reader()
    with pytest.raises(InputError, match=r"late\.csv.*invalid value 'oops'.*first \d+ bytes"):
        reader.read_all()


def test_csv_files_with_conflicting_types_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,day\n1,2024-01-01\n")
    (tmp_path / "b.csv").write_text("id,day\n2,monday\n")
    with pytest.raises(InputError, match=r"b\.csv does not share.*day: date32\[day\] in"):
        open_source(tmp_path)


# --- projection and streaming ----------------------------------------------------------------


def test_reader_reads_only_the_requested_columns_in_the_requested_order(tmp_path: Path) -> None:
    source = open_source(_parquet(tmp_path / "a.parquet"))
    reader = source.reader(["name", "id"])
    assert reader.schema.names == ["name", "id"]
    assert reader.read_all().to_pydict() == {"name": ["n0", "n1", "n2"], "id": [0, 1, 2]}


def test_projection_is_pushed_down_to_the_parquet_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = open_source(_parquet(tmp_path / "a.parquet"))
    asked: list[object] = []
    original = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: object, **kwargs: object) -> object:
        asked.append(kwargs.get("columns"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    source.reader(["x"]).read_all()
    # the probe that measures the rows' width and the read itself: both ask for x alone
    assert asked == [["x"], ["x"]]


@pytest.mark.parametrize(
    ("rows", "group_rows", "batch_rows"),
    [
        (5_000, 5_000, 4_096),  # one large row group: the probe is the head of the first read
        (5_000, 300, 4_096),  # row groups smaller than the probe
        (3_000, 1_000, 700),  # reads smaller than the probe
        (100, 30, 4_096),
        (1_024, 1_024, 1_024),  # the probe is the whole file
        (1_500, 2_000, 16_384),
    ],
)
def test_the_width_probe_is_the_first_read_and_no_row_is_read_twice(
    tmp_path: Path, rows: int, group_rows: int, batch_rows: int
) -> None:
    """The first request need not wait for a whole read: the rows the width probe decoded
    are handed on first, and the reads that follow skip them."""
    from engine.source.parquet import PROBE_ROWS

    path = _parquet(tmp_path / "a.parquet", rows=rows, row_group_size=group_rows)
    batches = list(open_source(path).reader(["id", "name"], batch_rows=batch_rows))
    table = pa.Table.from_batches(batches)
    assert table.column("id").to_pylist() == list(range(rows))
    assert table.column("name").to_pylist() == [f"n{i}" for i in range(rows)]
    assert batches[0].num_rows <= min(PROBE_ROWS, batch_rows, group_rows)


def test_csv_projection_reads_only_the_requested_columns(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a,b,c\n1,2,3\n")
    reader = open_source(tmp_path).reader(["c", "a"])
    assert reader.schema.names == ["c", "a"]
    assert reader.read_all().to_pydict() == {"c": [3], "a": [1]}


def test_zero_columns_still_stream_every_row(tmp_path: Path) -> None:
    source = open_source(_parquet(tmp_path / "a.parquet", rows=7))
    assert source.reader([]).read_all().num_rows == 7


def test_large_parquet_file_is_streamed_in_several_bounded_batches(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "big.parquet", rows=50_000, row_group_size=5_000)
    assert pq.ParquetFile(path).metadata.num_row_groups == 10
    batches = list(open_source(path).reader(["id"], batch_rows=4_096))
    assert len(batches) >= 10
    assert max(batch.num_rows for batch in batches) <= 4_096
    ids = pa.Table.from_batches(batches).column("id").to_pylist()
    assert ids == list(range(50_000))


@pytest.mark.parametrize("dictionary", [True, False])
def test_wide_rows_are_read_a_few_at_a_time_and_narrow_ones_in_full_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dictionary: bool
) -> None:
    """A read holds about READ_BYTES of rows: a read of 16k rows of large documents would
    be gigabytes. Narrow columns of the same file still come in full reads."""
    import engine.source.parquet as parquet_source

    monkeypatch.setattr(parquet_source, "READ_BYTES", 256 * 1024)
    rows, doc_bytes = 2_000, 4_096
    table = pa.table({
        "id": pa.array(range(rows), pa.int64()),
        "doc": [f"{i:06d}".ljust(doc_bytes, "abcdefgh"[i % 8]) for i in range(rows)],
    })
    path = tmp_path / "docs.parquet"
    pq.write_table(table, path, row_group_size=500, use_dictionary=dictionary)
    source = open_source(path)

    wide = list(source.reader(["id", "doc"], batch_rows=16_384))
    assert pa.Table.from_batches(wide).equals(table)
    # first row group by its footer's estimate, the rest by what the first one decoded to
    assert max(batch.nbytes for batch in wide) <= 1.1 * 256 * 1024
    # and no smaller than that: as many reads as the budget needs, plus one a row group end
    per_read = 256 * 1024 // (doc_bytes + 16)
    assert len(wide) <= rows / per_read + 4 + 1, [batch.num_rows for batch in wide]

    narrow = list(source.reader(["id"], batch_rows=16_384))
    assert pa.Table.from_batches(narrow).column("id").to_pylist() == list(range(rows))
    assert max(batch.num_rows for batch in narrow) >= 500  # a row group at a time, or more


def test_reads_are_sized_by_decoded_rows_not_by_a_dictionary_encoded_footer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few long strings repeated (a prompt template) are a few bytes a row in the footer
    (dictionary pages) and 4 KB decoded: a read sized by the footer was 16k rows."""
    import engine.source.parquet as parquet_source

    monkeypatch.setattr(parquet_source, "READ_BYTES", 256 * 1024)
    prompts = [f"prompt {k} ".ljust(4_096, "xyzw"[k % 4]) for k in range(5)]
    table = pa.table({"prompt": [prompts[i % 5] for i in range(3_000)]})
    path = tmp_path / "prompts.parquet"
    pq.write_table(table, path)  # one row group, dictionary-encoded
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 1 and meta.row_group(0).total_byte_size < 100_000

    batches = list(open_source(path).reader(["prompt"], batch_rows=16_384))

    assert pa.Table.from_batches(batches).equals(table)
    assert max(batch.nbytes for batch in batches) <= 1.1 * 256 * 1024


def test_each_reader_call_starts_again_from_the_first_row(tmp_path: Path) -> None:
    source = open_source(_parquet(tmp_path / "a.parquet"))
    assert _ids(source) == _ids(source) == [0, 1, 2]


def test_unknown_column_is_named_with_the_available_ones(tmp_path: Path) -> None:
    source = open_source(_parquet(tmp_path / "a.parquet"))
    with pytest.raises(InputError, match="unknown column 'nope'; available columns: id, x, name"):
        source.reader(["id", "nope"])


def test_repeated_column_is_refused(tmp_path: Path) -> None:
    source = open_source(_parquet(tmp_path / "a.parquet"))
    with pytest.raises(InputError, match="more than once: id"):
        source.reader(["id", "id"])


# --- in-memory inputs ------------------------------------------------------------------------


def test_arrow_table_is_read_in_bounded_batches() -> None:
    source = open_source(_table(0, 10))
    assert source.paths == ()
    assert source.num_rows == 10
    batches = list(source.reader(["id"], batch_rows=4))
    assert [batch.num_rows for batch in batches] == [4, 4, 2]


def test_record_batch_is_accepted() -> None:
    batch = _table(0, 2).to_batches()[0]
    assert open_source(batch).reader().read_all().equals(_table(0, 2))


def test_record_batch_reader_is_projected_and_can_be_read_only_once() -> None:
    table = _table(0, 5)
    source = open_source(pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
    assert source.num_rows is None
    assert source.reader(["x"], batch_rows=2).read_all().column("x").to_pylist() == [
        0.0,
        0.5,
        1.0,
        1.5,
        2.0,
    ]
    with pytest.raises(InputError, match="read only once"):
        source.reader()


def test_polars_dataframe_and_lazyframe_are_read() -> None:
    frame = pl.DataFrame({"id": [1, 2], "name": ["a", "b"]})
    for data in (frame, frame.lazy()):
        source = open_source(data)
        assert source.num_rows == 2
        assert source.reader().read_all().to_pydict() == {"id": [1, 2], "name": ["a", "b"]}


def test_pandas_dataframe_is_read_without_its_index() -> None:
    frame = pd.DataFrame({"id": [1, 2]}, index=[10, 20])
    table = open_source(frame).reader().read_all()
    assert table.column_names == ["id"]
    assert table.column("id").to_pylist() == [1, 2]


def test_pandas_dataframe_that_arrow_cannot_hold_is_an_input_error() -> None:
    frame = pd.DataFrame({"mixed": pd.Series([1, "a"], dtype=object)})
    with pytest.raises(InputError, match="pandas DataFrame"):
        open_source(frame)


def test_unsupported_object_lists_what_is_accepted() -> None:
    with pytest.raises(InputError, match="cannot read a dict; pass paths"):
        open_source({"id": [1]})


def test_format_argument_with_in_memory_data_is_refused() -> None:
    with pytest.raises(InputError, match="file inputs only"):
        open_source(_table(0, 1), format="csv")


def test_paths_may_be_pathlike_or_strings(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet")
    assert open_source(os.fspath(path)).paths == open_source(path).paths


# --- other filesystems (fsspec's in-process memory filesystem; no sockets) -----------------


@pytest.fixture
def memory_fs() -> Iterator[Any]:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")  # one store per process: start and end it empty
    memory.store.clear()
    yield memory
    memory.store.clear()


def _put_parquet(memory: Any, path: str, table: pa.Table) -> None:
    with memory.open(path, "wb") as out:
        pq.write_table(table, out)


def test_schemes_pyarrow_lacks_are_read_through_fsspec(memory_fs: Any) -> None:
    _put_parquet(memory_fs, "/data/b.parquet", _table(10, 2))
    _put_parquet(memory_fs, "/data/a/x.parquet", _table(0, 2))
    _put_parquet(memory_fs, "/data/_tmp/y.parquet", _table(-5, 2))
    source = open_source("memory://data/")
    assert source.paths == ("memory://data/a/x.parquet", "memory://data/b.parquet")
    assert _ids(source) == [0, 1, 10, 11]
    assert _ids(open_source("memory://data/**/*.parquet")) == [0, 1, 10, 11]
    assert _ids(open_source("memory://data/b.parquet", shard=(0, 1))) == [10, 11]


def test_file_uris_are_local_paths(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet")
    source = open_source(path.as_uri())
    assert source.paths == (str(path),)
    assert _ids(source) == [0, 1, 2]


def test_uris_are_shown_without_credentials_or_query_options() -> None:
    from engine.location import _display

    assert _display("s3://KEYID:SECRET@bucket/k/x.parquet?region=eu-west-1") == (
        "s3://bucket/k/x.parquet"
    )
    assert _display("abfss://container:SECRET@acct.dfs.core.windows.net/d") == (
        "abfss://container@acct.dfs.core.windows.net/d"
    )
    assert _display("gs://bucket/data/*.parquet") == "gs://bucket/data/*.parquet"
