"""Sharding: N shards of a file input cover every row exactly once, in input order."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import UsageError
from engine.source import Source, check_shard, open_source, parse_shard


def _ids(source: Source) -> list[int]:
    return list(source.reader(["id"]).read_all().column("id").to_pylist())


@pytest.fixture
def parquet_dataset(tmp_path: Path) -> Path:
    """Six files of uneven size and row groups (one empty file, one hidden file)."""
    start = 0
    layout = [(37, 10), (5, 5), (0, 5), (120, 16), (1, 1), (64, 7)]  # (rows, rows per group)
    for number, (rows, group_rows) in enumerate(layout):
        ids = list(range(start, start + rows))
        table = pa.table({"id": pa.array(ids, pa.int64()), "x": [i * 0.25 for i in ids]})
        sub = tmp_path / f"part={number % 2}"
        sub.mkdir(exist_ok=True)
        pq.write_table(table, sub / f"f{number:02d}.parquet", row_group_size=group_rows)
        start += rows
    pq.write_table(pa.table({"id": [-1], "x": [0.0]}), tmp_path / "_hidden.parquet")
    return tmp_path


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_cover_every_parquet_row_exactly_once(parquet_dataset: Path, count: int) -> None:
    whole = _ids(open_source(parquet_dataset))
    shards = [open_source(parquet_dataset, shard=(i, count)) for i in range(count)]
    rows = [_ids(shard) for shard in shards]
    assert Counter(row for shard in rows for row in shard) == Counter(whole)
    assert [row for shard in rows for row in shard] == whole  # shard order is input order
    assert [shard.num_rows for shard in shards] == [len(r) for r in rows]
    assert sum(shard.num_rows or 0 for shard in shards) == open_source(parquet_dataset).num_rows


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_cover_every_row_through_a_projection_and_small_batches(
    parquet_dataset: Path, count: int
) -> None:
    whole = open_source(parquet_dataset).reader(["x", "id"], batch_rows=7).read_all()
    parts = [
        open_source(parquet_dataset, shard=(i, count)).reader(["x", "id"], batch_rows=7)
        for i in range(count)
    ]
    assert pa.concat_tables([part.read_all() for part in parts]).equals(whole)


def test_shards_split_files_by_row_group_and_balance_rows(tmp_path: Path) -> None:
    table = pa.table({"id": list(range(1000))})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=100)  # ten row groups
    shards = [open_source(tmp_path / "one.parquet", shard=(i, 4)) for i in range(4)]
    assert [shard.num_rows for shard in shards] == [200, 300, 200, 300]
    assert all(shard.paths == (str(tmp_path / "one.parquet"),) for shard in shards)


def test_shards_are_the_same_whichever_process_computes_them(parquet_dataset: Path) -> None:
    first = [_ids(open_source(parquet_dataset, shard=(i, 3))) for i in range(3)]
    again = [_ids(open_source([str(parquet_dataset)], shard=(i, 3))) for i in range(3)]
    assert first == again


def test_more_shards_than_row_groups_leaves_some_shards_empty(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2, 3]}), tmp_path / "a.parquet")
    shards = [open_source(tmp_path, shard=(i, 3)) for i in range(3)]
    assert [shard.num_rows for shard in shards] == [0, 3, 0]
    empty = shards[0]
    assert empty.paths == ()
    assert empty.schema.names == ["id"]
    assert empty.reader().read_all().num_rows == 0


def test_a_shard_keeps_the_schema_unified_over_all_files(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": pa.array([1], pa.int32())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([2], pa.int64())}), tmp_path / "b.parquet")
    first = open_source(tmp_path, shard=(0, 2))
    assert first.paths == (str(tmp_path / "a.parquet"),)
    assert first.schema.field("id").type == pa.int64()
    assert first.reader().read_all().column("id").type == pa.int64()


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_csv_shards_take_whole_files_and_cover_every_row(tmp_path: Path, count: int) -> None:
    start = 0
    for number, rows in enumerate([40, 3, 0, 25, 90, 7, 12]):
        lines = "id,x\n" + "".join(f"{i},{i * 2}\n" for i in range(start, start + rows))
        if number == 4:
            (tmp_path / f"f{number}.csv.gz").write_bytes(gzip.compress(lines.encode()))
        else:
            (tmp_path / f"f{number}.csv").write_text(lines)
        start += rows
    whole = _ids(open_source(tmp_path))
    shards = [open_source(tmp_path, shard=(i, count)) for i in range(count)]
    assert [row for shard in shards for row in _ids(shard)] == whole
    assert all(shard.num_rows is None for shard in shards)
    paths = [path for shard in shards for path in shard.paths]
    assert sorted(paths) == paths and len(set(paths)) == len(paths) == 7


def test_parse_shard_reads_i_slash_n() -> None:
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3 / 8 ") == (3, 8)


@pytest.mark.parametrize("text", ["", "1", "1/", "/4", "a/b", "-1/4", "1/2/3", "1.0/2"])
def test_parse_shard_refuses_malformed_text_naming_the_parameter(text: str) -> None:
    with pytest.raises(UsageError, match=r"`shard` .*I/N"):
        parse_shard(text)


@pytest.mark.parametrize("shard", [(4, 4), (5, 4), (0, 0), (-1, 3), (1, -2)])
def test_out_of_range_shard_is_a_usage_error_naming_the_parameter(shard: tuple[int, int]) -> None:
    with pytest.raises(UsageError, match=r"`shard` .*0 <= I < N"):
        check_shard(shard)


def test_open_source_checks_the_shard_before_reading_anything(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="`shard` 2/2"):
        open_source(tmp_path / "missing.parquet", shard=(2, 2))


def test_non_integer_shard_is_refused() -> None:
    with pytest.raises(UsageError, match="`shard`"):
        check_shard((True, 2))
    with pytest.raises(UsageError, match="`shard`"):
        check_shard((0.5, 2))  # type: ignore[arg-type]


def test_in_memory_data_cannot_be_sharded() -> None:
    with pytest.raises(UsageError, match="`shard` applies to file inputs"):
        open_source(pa.table({"id": [1]}), shard=(0, 2))
