"""Inputs and outputs on S3, for real, against moto's S3 server on loopback.

The server is moto's ``ThreadedMotoServer`` on 127.0.0.1 (a free port), started once for the
module and stopped at its end. The engine finds it the way it finds any S3-compatible server:
``AWS_ENDPOINT_URL`` and the usual ``AWS_*`` credentials (fake ones here).
"""

from __future__ import annotations

import gzip
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import engine
from engine.emulator import Emulator
from engine.errors import EngineError, InputError, OutputExistsError, UsageError
from engine.sink import OrderedWriter, OutputSpec, check_output, read_output
from engine.source import Source, open_source
from tests.helpers import credentials_for, expected_predictions, regressor_table

moto_server = pytest.importorskip("moto.server")

ENDPOINT = "demo-regressor"
_bucket_numbers = itertools.count()


@dataclass
class S3:
    """The running server: a filesystem to set up and inspect buckets, and a fresh bucket."""

    endpoint_url: str
    filesystem: pafs.S3FileSystem

    def new_bucket(self) -> str:
        name = f"bucket-{next(_bucket_numbers)}"
        self.filesystem.create_dir(name)
        return name

    def put(self, key: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(key, compression=None) as out:
            out.write(data)

    def put_parquet(self, key: str, table: pa.Table, **options: object) -> None:
        pq.write_table(table, key, filesystem=self.filesystem, **options)

    def keys(self, bucket: str) -> list[str]:
        infos = self.filesystem.get_file_info(pafs.FileSelector(bucket, recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3]:
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
            env.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            env.setenv("AWS_ENDPOINT_URL", endpoint_url)
            env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never look for an instance role
            env.delenv("AWS_PROFILE", raising=False)
            env.delenv("AWS_SESSION_TOKEN", raising=False)
            admin = pafs.S3FileSystem(
                endpoint_override=endpoint_url,
                scheme="http",
                allow_bucket_creation=True,
                allow_bucket_deletion=True,
            )
            yield S3(endpoint_url, admin)
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture
def s3(s3_server: S3) -> S3:
    return s3_server


def _table(start: int, rows: int) -> pa.Table:
    ids = list(range(start, start + rows))
    return pa.table({"id": ids, "x": [i * 0.5 for i in ids], "name": [f"n{i}" for i in ids]})


def _ids(source: Source) -> list[int]:
    return list(source.reader(["id"]).read_all().column("id").to_pylist())


def _result(batch_id: int, rows: int = 3) -> pa.Table:
    ids = [batch_id * 100 + i for i in range(rows)]
    return pa.table(
        {
            "id": ids,
            "prediction": [i * 2.0 for i in ids],
            "error": pa.array([None] * rows, pa.string()),
        }
    )


# --- reading ------------------------------------------------------------------------------


def test_parquet_prefix_is_read_like_a_directory_sorted_and_skipping_hidden_keys(s3: S3) -> None:
    bucket = s3.new_bucket()
    s3.put_parquet(f"{bucket}/data/b.parquet", _table(10, 3))
    s3.put_parquet(f"{bucket}/data/a/z.pq", _table(0, 3), row_group_size=2)
    s3.put_parquet(f"{bucket}/data/c/d/e.parquet", _table(20, 3))
    s3.put_parquet(f"{bucket}/data/_temporary/0/part.parquet", _table(-10, 3))
    s3.put_parquet(f"{bucket}/data/.hidden.parquet", _table(-20, 3))
    s3.put(f"{bucket}/data/_SUCCESS", b"")
    s3.put(f"{bucket}/data/notes.txt", b"not data")
    s3.put_parquet(f"{bucket}/data-other/x.parquet", _table(-30, 3))  # same prefix, not below

    for uri in (f"s3://{bucket}/data/", f"s3://{bucket}/data"):
        source = open_source(uri)
        assert source.paths == (
            f"s3://{bucket}/data/a/z.pq",
            f"s3://{bucket}/data/b.parquet",
            f"s3://{bucket}/data/c/d/e.parquet",
        )
        assert source.num_rows == 9
        assert _ids(source) == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    expected = pa.concat_tables([_table(0, 3), _table(10, 3), _table(20, 3)])
    assert source.reader().read_all().equals(expected)


def test_parquet_globs_match_keys_like_local_globs(s3: S3) -> None:
    bucket = s3.new_bucket()
    for day, start in (("2026-11-02", 10), ("2026-11-01", 0), ("2026-12-01", 90)):
        s3.put_parquet(f"{bucket}/export/{day}/part-0.parquet", _table(start, 2))
        s3.put_parquet(f"{bucket}/export/{day}/_part-9.parquet", _table(-1, 1))
    s3.put_parquet(f"{bucket}/export/2026-11-03/_tmp/part-0.parquet", _table(-5, 1))

    source = open_source(f"s3://{bucket}/export/2026-11-*/part-*.parquet")
    assert _ids(source) == [0, 1, 10, 11]
    assert _ids(open_source(f"s3://{bucket}/export/**/*.parquet")) == [0, 1, 10, 11, 90, 91]
    assert _ids(open_source(f"s3://{bucket}/export/2026-1[12]-01")) == [0, 1, 90, 91]
    both = [f"s3://{bucket}/export/2026-11-0[12]", f"s3://{bucket}/export/2026-11-01/"]
    assert _ids(open_source(both)) == [0, 1, 10, 11]  # overlapping inputs read once


def test_csv_from_a_prefix_and_a_glob_with_gzip(s3: S3) -> None:
    bucket = s3.new_bucket()
    s3.put(f"{bucket}/csv/a.csv", b"id,x\n1,0.5\n2,1.5\n")
    s3.put(f"{bucket}/csv/b.csv.gz", gzip.compress(b"id,x\n3,2.5\n"))
    s3.put(f"{bucket}/csv/_SUCCESS", b"")
    by_prefix = open_source(f"s3://{bucket}/csv/")
    assert by_prefix.schema == pa.schema([("id", pa.int64()), ("x", pa.float64())])
    assert by_prefix.num_rows is None
    assert by_prefix.reader().read_all().to_pydict() == {"id": [1, 2, 3], "x": [0.5, 1.5, 2.5]}
    assert _ids(open_source(f"s3://{bucket}/csv/*.csv*")) == [1, 2, 3]
    assert _ids(open_source(f"s3://{bucket}/csv/b.csv.gz")) == [3]


def test_shards_of_an_s3_dataset_cover_every_row_once(s3: S3) -> None:
    bucket = s3.new_bucket()
    for number in range(4):
        s3.put_parquet(f"{bucket}/d/f{number}.parquet", _table(number * 50, 50), row_group_size=9)
    whole = _ids(open_source(f"s3://{bucket}/d/"))
    shards = [open_source(f"s3://{bucket}/d/", shard=(i, 3)) for i in range(3)]
    assert [row for shard in shards for row in _ids(shard)] == whole == list(range(200))
    assert sum(shard.num_rows or 0 for shard in shards) == 200


def test_missing_keys_and_empty_globs_are_named(s3: S3) -> None:
    bucket = s3.new_bucket()
    s3.put(f"{bucket}/only/notes.txt", b"x")
    with pytest.raises(InputError, match=rf"input not found: s3://{bucket}/nothing/here"):
        open_source(f"s3://{bucket}/nothing/here")
    with pytest.raises(InputError, match=r"no files match .*\*\.parquet"):
        open_source(f"s3://{bucket}/only/*.parquet")
    with pytest.raises(InputError, match=rf"s3://{bucket}/only holds no .*parquet.* files"):
        open_source(f"s3://{bucket}/only/")


def test_credentials_in_a_uri_never_appear_in_paths_or_errors(s3: S3) -> None:
    bucket = s3.new_bucket()
    s3.put_parquet(f"{bucket}/k/a.parquet", _table(0, 2))
    secret = "testing-secret-key"
    uri = f"s3://testing-key-id:{secret}@{bucket}/k/?endpoint_override={s3.endpoint_url}"
    source = open_source(uri)
    assert source.paths == (f"s3://{bucket}/k/a.parquet",)
    with pytest.raises(InputError) as caught:
        open_source(f"s3://testing-key-id:{secret}@{bucket}/missing")
    assert secret not in str(caught.value)


def test_unknown_scheme_without_fsspec_support_is_a_clear_input_error() -> None:
    with pytest.raises(InputError, match=r"cannot open nosuchfs://x/y"):
        open_source("nosuchfs://x/y.parquet")


# --- writing ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.arrow", "out.parquet"])
def test_output_is_written_to_s3_in_batch_order_and_only_at_finish(s3: S3, name: str) -> None:
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/results/{name}"
    writer = OrderedWriter(OutputSpec(uri))
    for batch_id in (2, 0, 1):
        writer.add(batch_id, _result(batch_id))
    assert f"{bucket}/results/{name}" not in s3.keys(bucket)  # only a hidden temporary object
    assert writer.finish() == uri
    assert s3.keys(bucket) == [f"{bucket}/results/{name}"]  # the temporary object is gone
    expected = pa.concat_tables([_result(i) for i in range(3)])
    assert read_output(uri).equals(expected)
    with s3.filesystem.open_input_file(f"{bucket}/results/{name}") as raw:
        if name.endswith(".parquet"):
            assert pq.read_metadata(raw).row_group(0).column(0).compression == "ZSTD"
        else:
            assert ipc.open_file(raw).read_all().equals(expected)


def test_abort_leaves_no_object_and_no_temporary_object(s3: S3) -> None:
    bucket = s3.new_bucket()
    writer = OrderedWriter(OutputSpec(f"s3://{bucket}/out.parquet"))
    writer.add(0, _result(0))
    writer.add(1, _result(1))
    assert len(s3.keys(bucket)) in (0, 1)  # an upload in progress is not an object yet
    writer.abort()
    assert s3.keys(bucket) == []


def test_an_exception_in_the_with_block_publishes_nothing(s3: S3) -> None:
    bucket = s3.new_bucket()
    with pytest.raises(RuntimeError), OrderedWriter(OutputSpec(f"s3://{bucket}/o.arrow")) as w:
        w.add(0, _result(0))
        raise RuntimeError("the run failed")
    assert s3.keys(bucket) == []


def test_existing_object_is_refused_without_overwrite_and_replaced_with_it(s3: S3) -> None:
    bucket = s3.new_bucket()
    s3.put(f"{bucket}/out.arrow", b"old")
    uri = f"s3://{bucket}/out.arrow"
    with pytest.raises(OutputExistsError, match=rf"{uri} already exists.*`overwrite=True`"):
        check_output(OutputSpec(uri))
    with pytest.raises(OutputExistsError):
        OrderedWriter(OutputSpec(uri))
    with OrderedWriter(OutputSpec(uri, overwrite=True)) as writer:
        writer.add(0, _result(0))
        with s3.filesystem.open_input_stream(f"{bucket}/out.arrow") as old:
            assert old.read() == b"old"  # replaced only at finish
    assert read_output(uri).equals(_result(0))
    assert s3.keys(bucket) == [f"{bucket}/out.arrow"]


def test_an_object_that_appears_during_the_run_is_not_clobbered(s3: S3) -> None:
    bucket = s3.new_bucket()
    writer = OrderedWriter(OutputSpec(f"s3://{bucket}/out.arrow"))
    writer.add(0, _result(0))
    s3.put(f"{bucket}/out.arrow", b"someone else's")
    with pytest.raises(OutputExistsError, match="appeared while the run was writing"):
        writer.finish()
    writer.abort()
    assert s3.keys(bucket) == [f"{bucket}/out.arrow"]
    with s3.filesystem.open_input_stream(f"{bucket}/out.arrow") as kept:
        assert kept.read() == b"someone else's"


def test_output_checks_name_the_bucket_and_prefix_problems(s3: S3) -> None:
    bucket = s3.new_bucket()
    s3.put(f"{bucket}/dir/part.parquet", b"x")
    with pytest.raises(UsageError, match="bucket or container 'no-such-bucket' not found"):
        check_output(OutputSpec("s3://no-such-bucket/out.parquet"))
    with pytest.raises(UsageError, match=r"is a directory .*predictions\.parquet"):
        check_output(OutputSpec(f"s3://{bucket}/dir", overwrite=True))
    with pytest.raises(UsageError, match="names no object"):
        check_output(OutputSpec(f"s3://{bucket}"))
    check_output(OutputSpec(f"s3://{bucket}/new/deep/out.parquet"))  # prefixes need no creating


def test_results_waiting_for_their_type_spill_locally_and_land_on_s3(s3: S3) -> None:
    bucket = s3.new_bucket()
    rejected = _result(0).set_column(1, "prediction", pa.nulls(3))
    with OrderedWriter(OutputSpec(f"s3://{bucket}/typed.parquet")) as writer:
        writer.add(0, rejected)
        writer.add(1, _result(1))
    table = read_output(f"s3://{bucket}/typed.parquet")
    assert table.column("prediction").type == pa.float64()
    assert table.column("prediction").to_pylist()[:4] == [None, None, None, 200.0]


def test_read_output_of_a_missing_object_is_an_input_error(s3: S3) -> None:
    bucket = s3.new_bucket()
    with pytest.raises(InputError, match=rf"no output file at s3://{bucket}/none\.arrow"):
        read_output(f"s3://{bucket}/none.arrow")


def test_a_failed_upload_publishes_nothing(s3: S3) -> None:
    bucket = s3.new_bucket()
    writer = OrderedWriter(OutputSpec(f"s3://{bucket}/out.arrow"))
    writer.add(0, _result(0))
    s3.filesystem.delete_dir(bucket)  # the bucket goes away under the run
    with pytest.raises(EngineError, match=rf"cannot finish writing s3://{bucket}/out\.arrow"):
        writer.finish()
    writer.abort()
    s3.filesystem.create_dir(bucket)
    assert s3.keys(bucket) == []


# --- end to end ---------------------------------------------------------------------------


async def test_score_reads_an_s3_prefix_and_writes_an_s3_output(
    s3: S3, emulator: Emulator, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    table = regressor_table(emulator, 3_000, seed=3)
    for number, start in enumerate(range(0, 3_000, 1_000)):
        part = table.slice(start, 1_000)
        s3.put_parquet(f"{bucket}/in/part-{number}.parquet", part, row_group_size=400)
    output = f"s3://{bucket}/out/predictions.parquet"
    summary = await engine.ascore(
        f"s3://{bucket}/in/",
        output=output,
        endpoint=ENDPOINT,
        credentials=credentials_for(emulator),
        checkpoint=tmp_path / "checkpoint",
        batch_rows=500,
        progress="off",
    )
    assert summary.exit_code == 0 and summary.rows_scored == 3_000
    result = read_output(output)
    assert result.select(table.column_names).equals(table)
    assert result.column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    written = [key for key in s3.keys(bucket) if "/out/" in key]
    assert written == [f"{bucket}/out/predictions.parquet"]  # no temporary object left


# --- Delta tables on S3 -------------------------------------------------------------------


async def test_a_delta_table_on_s3_is_scored_into_a_delta_table_on_s3_exactly_once(
    s3: S3, emulator: Emulator
) -> None:
    deltalake = pytest.importorskip("deltalake")
    bucket = s3.new_bucket()
    options = {"AWS_ENDPOINT_URL": s3.endpoint_url, "AWS_ALLOW_HTTP": "true"}
    first, second = (regressor_table(emulator, n, seed=s) for n, s in ((400, 1), (300, 2)))
    deltalake.write_deltalake(f"s3://{bucket}/in", first, storage_options=options)
    deltalake.write_deltalake(f"s3://{bucket}/in", second, mode="append", storage_options=options)
    run = dict(
        output=f"s3://{bucket}/scored", endpoint=ENDPOINT, credentials=credentials_for(emulator),
        progress="off", output_format="delta", mode="append", input_version=0,
    )

    summary = await engine.ascore(f"s3://{bucket}/in", **run)
    again = await engine.ascore(f"s3://{bucket}/in", **run)

    assert (summary.rows_scored, summary.output_version) == (400, 0)
    assert (again.rows_scored, again.requests, again.output_version) == (0, 0, 0)
    scored = deltalake.DeltaTable(f"s3://{bucket}/scored", storage_options=options)
    written = pa.table(scored.to_pyarrow_table())
    assert scored.version() == 0 and written.num_rows == 400
    assert sorted(written.column("prediction").to_pylist()) == sorted(
        expected_predictions(emulator, ENDPOINT, first)
    )
