"""Anything readable -> one pyarrow ``RecordBatchReader``, once, at the entry.

``open_source`` accepts files, directories, globs, Arrow tables and readers, and polars or
pandas frames, and returns a :class:`Source`: the input's schema, its files, and a way to
stream record batches of just the columns the run needs. Everything after this module sees
one code path: ``source.reader(columns)``.

Rules a reader of the code should know:

* Paths: directories are walked recursively for ``.parquet``/``.pq``/``.csv``/``.csv.gz``
  files; files and directories whose names start with ``.`` or ``_`` (``_SUCCESS``,
  ``_temporary/``, ``.crc``) are skipped, in directories and in glob matches alike. A file
  named explicitly is always read. Files are deduplicated by absolute path and read in
  lexicographic order of that path, each from its first row to its last.
* One format per run: mixing Parquet and CSV is refused (``format=`` picks one explicitly).
* One schema per run: every file must have the same column names (in any order). Types may
  differ only by a lossless-in-practice widening, which is applied when reading: null to any
  type, a narrower to a wider integer, integer or float32 to float64, string to large_string.
  Anything else is an :class:`~engine.errors.InputError` naming the file and the columns.
* CSV: types are inferred from each file's first block (``CSV_BLOCK_BYTES``), unified across
  files by the rule above, and the unified types are then imposed on every file, so a column
  cannot be int64 in one file and double in the next. A column empty in every sampled block is
  read as string. A value later in a file that does not fit its column's type is an
  ``InputError`` naming the file.
* CSV for scoring (``reader(csv_types=...)``): the columns the endpoint types are parsed
  straight into the endpoint's types (so a first MiB of integers does not make a later 1.5
  fail), and a value that still does not parse does not end the run: the reader adds a
  :data:`READ_ERROR_COLUMN` holding, for that row, the file, line and value, and the
  pipeline rejects the row like one the endpoint refused. The fast typed parse is used until
  a file's first bad value; from there on that file is read as text and each column converted
  with the CSV reader's rules (trimmed, its null markers, its true/false words), so only the
  bad values are found. Lines are counted as the file's lines, header first, assuming no
  blank lines (the CSV reader skips those).
* Delta tables: a directory or URI holding ``_delta_log/`` is one snapshot of a table, read
  by :mod:`engine.source.delta` (time travel, ``--where``, shards by file) into the same ``Source``.
* Memory: Parquet is streamed row group by row group (``ParquetFile.iter_batches``), CSV block
  by block (``pyarrow.csv.open_csv``); no file is ever read whole.

Object stores and other filesystems: an input that is a URI (``s3://bucket/prefix/``,
``gs://bucket/data/*.parquet``, ``abfss://container@account.dfs.core.windows.net/dir``, ...)
is opened with ``pyarrow.fs.FileSystem.from_uri``, or with fsspec (``az://``, ``memory://``,
anything with an fsspec implementation installed) when pyarrow does not know the scheme.
Credentials are found the usual way for each store: S3 reads ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` / ``AWS_PROFILE`` / ``AWS_DEFAULT_REGION``,
instance and container roles, and ``AWS_ENDPOINT_URL`` for S3-compatible servers (MinIO,
Ceph, ...); GCS uses Application Default Credentials; Azure uses ``DefaultAzureCredential``
(``AZURE_*`` variables, managed identity). pyarrow's query options also work
(``s3://bucket/key?region=eu-west-1``); credentials in a URI are never printed. Prefixes work
like directories and globs like local globs (``*``, ``**``, ``[...]``; in a URI ``?`` starts
the query options instead): keys are listed, sorted, and names starting with ``.`` or ``_``
skipped. ``file://`` URIs are local paths.

Sharding (``shard=(i, n)``, the CLI's ``--shard I/N``): the input is cut into units in read
order (each Parquet row group; each CSV file whole, since a CSV file cannot be split without
reading it) and the units are dealt into ``n`` contiguous runs of about equal weight (rows
for Parquet, from the footers; bytes for CSV): a unit belongs to the shard its weight's
midpoint falls in. So ``n`` tasks cover every row exactly once; shard ``i``'s rows come
before shard ``i + 1``'s, so the shard outputs concatenated in shard order are the unsharded
output; each shard reads long runs of consecutive row groups (few opens, few object-store
requests). Every shard still reads every file's footer or first block, so all of them agree
on the unified schema. The files must not change while the shards run.

The package, one job a module: ``opening`` (the entry, :func:`open_source`), ``memory``
(in-memory data), ``files`` (files -> one source), ``parquet`` and ``csv`` (the readers),
``schemas`` (unification), ``shards`` (units and dealing), ``base`` (:class:`Source` and the
file reader); where the files are is :mod:`engine.location`'s job, a Delta table
:mod:`engine.source.delta`'s.
"""

from engine.location import FORMATS
from engine.source.base import Source
from engine.source.csv import CSV_BLOCK_BYTES, READ_ERROR_COLUMN, read_errors
from engine.source.opening import Inputs, open_source
from engine.source.shards import check_shard, deal, parse_shard

__all__ = [
    "CSV_BLOCK_BYTES",
    "FORMATS",
    "READ_ERROR_COLUMN",
    "Inputs",
    "Source",
    "check_shard",
    "deal",
    "open_source",
    "parse_shard",
    "read_errors",
]
