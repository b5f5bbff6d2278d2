"""Ordered, schema-checked Arrow IPC / Parquet writer; atomic finish.

Results arrive out of order (many requests are in flight); :class:`OrderedWriter` keeps
each one until every earlier batch has been written, so the output's rows are in input
order. The caller bounds how many results can be waiting (its in-flight window); this class
does not add a second bound.

The output never appears half-written: rows go to a hidden temporary file beside it
(``.<name>.<random>.tmp``), which ``finish`` flushes, fsyncs and moves into place, then fsyncs
the directory. ``abort`` (and leaving a ``with`` block by an exception) deletes the temporary
file instead.

Output schema: the kept input columns, then ``prediction``, then ``error`` (string; null for a
scored row). Decisions a reader should know:

* Format by extension: ``.parquet``/``.pq`` is Parquet (zstd, row groups of at least
  ``ROW_GROUP_ROWS`` rows where the run is that long); ``.arrow``/``.ipc``/``.feather`` or no
  extension is an uncompressed Arrow IPC file, which readers can memory-map without a decode
  step, in record batches of up to ``IPC_BATCH_ROWS`` rows (small results gathered). Any
  other extension (``out.csv``) is refused before anything is sent, rather than writing Arrow
  IPC under a name that promises another format.
* Files get mode 0666 less the umask, as ``open()`` would give them.
* ``prediction``'s type is ``prediction_type`` when given. Otherwise the first result, in batch
  order, whose predictions are not all-null decides it; results before it (every row
  rejected) wait in a spill file on disk, so memory stays flat however many there are. A
  later result of another type is cast when that is lossless (int64 -> double, a struct
  missing some fields -> nulls there) and refused otherwise. If no result ever has a typed
  prediction, the column is written with Arrow's null type: it unifies with any type when
  outputs are combined later, where a made-up string type would not.
* Without ``overwrite`` the final move never replaces a file: if one appears at the path
  during the run, ``finish`` raises :class:`~engine.errors.OutputExistsError`.

Outputs on object stores (``s3://bucket/out.parquet``, ``gs://``, ``abfss://``, fsspec
URIs; filesystems and credentials as in :mod:`engine.source`) are written the same way:
rows stream to a hidden temporary object beside the output (``.<name>.<random>.tmp``, a
multipart upload on S3), which ``finish`` closes and then moves to the output key (on S3 a
server-side CopyObject, then a delete of the temporary object; on ADLS Gen2 a rename).
Readers therefore see no object, or the whole file: S3 makes an object visible only when the
request creating it (here the copy) has completed. Writing straight to the output key as one
multipart upload would be atomic too, but pyarrow exposes no way to abort an upload from
Python, and closing (even by garbage collection after an error) completes it, so a failed
run would publish a truncated file; with the temporary key, ``abort`` deletes the temporary
object and a killed process leaves only an incomplete upload (invisible; expire it with a
bucket lifecycle rule). The costs: S3 copies at most 5 GiB in one request, so a larger
output fails at ``finish`` (split the run with ``--shard``), and object stores have no
atomic create-if-absent here, so the "never replace" check is made just before the copy,
not with it. Results held for their type spill to the local temporary directory.

Unity Catalog Volumes (``/Volumes/...``) are local files where they are mounted (a cluster),
written as above. Elsewhere the Files API has no rename, so the output is written to a local
temporary file and published by one ``PUT`` (``overwrite=false`` unless ``overwrite``, so the
server refuses to replace a file atomically); see :mod:`engine.volumes`.

The package, one job a module: ``writer`` (:class:`OrderedWriter`: the reorder buffer of
:mod:`engine.ordering` and the steps below), ``columns`` (the output schema, lossless casts),
``predictions`` (the prediction type, with its spill), ``formats`` (Arrow IPC, Parquet),
``publish`` (temporary file or object, then the atomic move), ``spec`` (:class:`OutputSpec`,
checked before the run and read back after); where the output is, :mod:`engine.location`.
"""

from engine.sink.columns import RESULT_COLUMNS
from engine.sink.formats import PARQUET_COMPRESSION, ROW_GROUP_ROWS
from engine.sink.spec import OutputSpec, check_output, read_output
from engine.sink.writer import OrderedWriter

__all__ = [
    "PARQUET_COMPRESSION",
    "RESULT_COLUMNS",
    "ROW_GROUP_ROWS",
    "OrderedWriter",
    "OutputSpec",
    "check_output",
    "read_output",
]
