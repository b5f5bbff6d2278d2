"""Delta tables out: scored rows in one commit carrying the run's transaction.

:class:`TableSink` takes results in batch order like any sink, stages them in a local Arrow
IPC file (through :class:`~engine.sink.OrderedWriter`, so ordering and typing are the file
outputs' own), and at ``finish`` writes them to the table in one commit: readers see the whole
run or nothing. The commit carries an application transaction (:class:`RunTransaction`) whose
id is a hash of the run's identity (the input snapshot, the endpoint, served model and model
version, params, kept columns, shard and output table). Before anything is sent, a run whose
transaction the table already holds (a task retried after its commit, a rerun after a crash
between the commit and the exit) writes nothing and says so; ``resume=False``
(``--no-resume``) writes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc

from engine.delta_table import (
    DELTA_LOG,
    deltalake_module,
    display_name,
    is_table,
    storage_options,
    table_uri,
)
from engine.errors import OutputExistsError, StorageError, UsageError, first_line
from engine.location import is_uri, locate
from engine.sink import RESULT_COLUMNS, OrderedWriter, OutputSpec
from engine.source import Source

__all__ = [
    "MODES",
    "OUTPUT_FORMATS",
    "RunTransaction",
    "TableSink",
    "TableWrite",
    "input_snapshot",
]

log = logging.getLogger("engine.delta")

MODES = ("error", "append", "overwrite")
OUTPUT_FORMATS = ("auto", "delta")
#: Prefix of the application transaction ids the engine commits with.
APP_ID_PREFIX = "databricks-batch-engine-"
#: Commit metadata key holding the app id (DESCRIBE HISTORY shows which run wrote what).
APP_ID_KEY = "engine.app_id"


@dataclass(frozen=True, kw_only=True)
class TableWrite:
    """Where and how scored rows are written as a Delta table.

    Attributes:
        uri: the table's directory or URI (created if missing).
        mode: ``"error"`` (the default: refuse an existing table), ``"append"`` or
            ``"overwrite"`` (``--mode``).
        partition_by: output columns to partition by (``--partition-by``); for an append,
            empty means the table's own.
    """

    uri: str
    mode: str = "error"
    partition_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"`mode` {self.mode!r}: choose one of {', '.join(MODES)}")
        if len(set(self.partition_by)) != len(self.partition_by):
            raise UsageError(f"`partition_by` names a column twice: {self.partition_by}")

    @classmethod
    def chosen(
        cls,
        output: str,
        *,
        output_format: str | None,
        mode: str | None,
        partition_by: Sequence[str] | str | None,
        overwrite: bool,
    ) -> TableWrite | None:
        """The Delta output ``output`` is, or ``None`` for a file output.

        A Delta table when ``output_format`` is ``"delta"`` or ``output`` already is one.

        Raises:
            UsageError: an unknown format or mode, or Delta-only options for a file output.
        """
        if (output_format or "auto") not in OUTPUT_FORMATS:
            raise UsageError(
                f"`output_format` {output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}"
                " (auto: a Parquet or Arrow file by extension, or the Delta table already there)"
            )
        columns = _column_list(partition_by)
        if output_format == "delta" or is_table(output):
            chosen_mode = mode or ("overwrite" if overwrite else "error")
            return cls(uri=output, mode=chosen_mode, partition_by=columns)
        if columns or mode == "append":
            flag = "`partition_by`" if columns else "`mode='append'`"
            raise UsageError(
                f"{flag} applies to Delta outputs; {output} is a file: pass "
                "`output_format='delta'` to write a Delta table there"
            )
        if mode is not None and mode not in MODES:
            raise UsageError(f"`mode` {mode!r}: choose one of {', '.join(MODES)}")
        return None

    def check(self) -> None:
        """Refuse an output that cannot be written in this mode, before anything is sent.

        Raises:
            OutputExistsError: the table exists and ``mode`` is ``"error"``.
            UsageError: the path is a file or a directory that is not a Delta table.
        """
        exists = is_table(self.uri)
        if exists and self.mode == "error":
            raise OutputExistsError(
                f"Delta table {display_name(self.uri)} already exists; pass `mode='append'` "
                "to add the scored rows, or `mode='overwrite'` to replace its contents"
            )
        if exists or (is_uri(self.uri) and not self.uri.lower().startswith("file://")):
            return
        path = locate(self.uri).path
        if os.path.isfile(path):
            raise UsageError(
                f"output {self.uri} is a file; a Delta table is a directory: name a new one"
            )
        if os.path.isdir(path) and os.listdir(path):
            raise UsageError(
                f"output {self.uri} is a directory with files in it but no {DELTA_LOG}/: not a "
                "Delta table; name a new or empty directory"
            )

    def check_columns(self, kept: Sequence[str]) -> None:
        """Refuse partition columns the output will not have, and an append whose columns
        differ from the table's, before anything is sent."""
        names = [*kept, *RESULT_COLUMNS]
        missing = [c for c in self.partition_by if c not in kept]
        if missing:
            raise UsageError(
                f"`partition_by` {', '.join(missing)}: not among the output's input columns "
                f"({', '.join(kept) or 'none'}); add them with `keep`, or partition by those"
            )
        if self.mode != "append" or not is_table(self.uri):
            return
        existing = _open_output(self.uri)
        columns = list(pa.schema(existing.schema().to_arrow()).names)
        if sorted(columns) != sorted(names):
            raise UsageError(
                f"`mode='append'`: Delta table {display_name(self.uri)} has columns "
                f"{', '.join(columns)}, the output would have {', '.join(names)}; choose "
                "`keep` to match, or `mode='overwrite'`"
            )
        partitions = list(existing.metadata().partition_columns)
        if self.partition_by and list(self.partition_by) != partitions:
            raise UsageError(
                f"`partition_by` {','.join(self.partition_by)}: Delta table "
                f"{display_name(self.uri)} is partitioned by {','.join(partitions) or 'nothing'}"
                "; drop `partition_by` to append with the table's own"
            )


@dataclass(frozen=True, kw_only=True)
class RunTransaction:
    """The application transaction a run's commit carries (Delta's ``txn`` action).

    Attributes:
        app_id: ``databricks-batch-engine-<hash of the run's identity>``.
        identity: what was hashed, for logs.
    """

    app_id: str
    identity: Mapping[str, Any]
    version: int = 1

    @classmethod
    def for_run(cls, identity: Mapping[str, Any]) -> RunTransaction:
        """The transaction named by ``identity`` (any JSON-able mapping)."""
        text = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS, default=str)
        digest = hashlib.sha256(text)
        return cls(app_id=APP_ID_PREFIX + digest.hexdigest()[:32], identity=dict(identity))

    def committed_in(self, write: TableWrite) -> int | None:
        """The table version in which this run's rows were committed, or ``None``.

        For an overwrite, only when that commit is still the table's latest: a later commit
        changed what the overwrite left, and the rerun must overwrite again.
        """
        if not is_table(write.uri):
            return None
        table = _open_output(write.uri)
        if table.transaction_version(self.app_id) is None:
            return None
        latest = int(table.version())
        version = self._first_version_holding(write.uri, latest)
        return None if write.mode == "overwrite" and version != latest else version

    def _first_version_holding(self, uri: str, latest: int) -> int:
        """Bisect the table's versions for the commit that added this transaction (a txn
        stays in every later snapshot). Not ``history()``: delta-rs holds the GIL there."""
        low, high = 0, latest
        while low < high:
            middle = (low + high) // 2
            if _holds(uri, middle, self.app_id):
                high = middle
            else:
                low = middle + 1
        return high


def _holds(uri: str, version: int, app_id: str) -> bool:
    """True when ``uri`` at ``version`` holds ``app_id``'s transaction (False when that
    version can no longer be loaded: its log was cleaned up)."""
    deltalake = deltalake_module()
    try:
        table = deltalake.DeltaTable(
            table_uri(uri), version=version, storage_options=storage_options(uri)
        )
    except deltalake.exceptions.DeltaError:
        return False
    return table.transaction_version(app_id) is not None


def input_snapshot(source: Source) -> str | None:
    """What names this input's content: a Delta snapshot, or each file's size and mtime;
    ``None`` for in-memory data (which has no name to find it by on a rerun)."""
    if source.snapshot is not None:
        return source.snapshot
    if not source.paths:
        return None
    parts = []
    for path in source.paths:
        info = locate(path).info()
        parts.append(f"{path}:{info.size}:{info.mtime_ns}")
    return "files:" + "|".join(parts)


class TableSink:
    """Stages ordered results in a local Arrow IPC file; ``finish`` commits them to the
    Delta table in one commit with the run's transaction (see the module docstring).

    Args:
        write: the table and mode.
        staging: the local file to stage in (replaced if a crash left one).
        transaction: the run's transaction, or ``None`` (in-memory input: no identity).
        prediction_type, kept_schema: as :class:`~engine.sink.OrderedWriter`.
    """

    def __init__(
        self,
        write: TableWrite,
        staging: Path,
        transaction: RunTransaction | None,
        *,
        prediction_type: pa.DataType | None,
        kept_schema: pa.Schema,
    ) -> None:
        self.write = write
        self.transaction = transaction
        self.version: int | None = None
        self._staged = OrderedWriter(
            OutputSpec(path=str(staging), overwrite=True),
            prediction_type=prediction_type,
            kept_schema=kept_schema,
        )

    def add(self, batch_id: int, table: pa.Table) -> int:
        return self._staged.add(batch_id, table)

    def finish(self) -> str:
        staged = self._staged.finish()
        try:
            self.version = _commit(self.write, staged, self.transaction)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
        return self.write.uri

    def abort(self) -> None:
        self._staged.abort()


def _commit(write: TableWrite, staged: str, transaction: RunTransaction | None) -> int:
    """Write the staged rows as one commit; return the table version it made."""
    deltalake = deltalake_module()
    properties = None
    if transaction is not None:
        properties = deltalake.CommitProperties(
            custom_metadata={APP_ID_KEY: transaction.app_id},
            app_transactions=[deltalake.Transaction(transaction.app_id, transaction.version)],
        )
    name = display_name(write.uri)
    with pa.memory_map(staged) as source:
        file = ipc.open_file(source)
        rows = pa.RecordBatchReader.from_batches(
            file.schema, (file.get_batch(i) for i in range(file.num_record_batches))
        )
        try:
            deltalake.write_deltalake(
                table_uri(write.uri), rows, mode=write.mode,
                partition_by=list(write.partition_by) or None,
                commit_properties=properties, storage_options=storage_options(write.uri),
            )
        except deltalake.exceptions.DeltaError as exc:
            raise StorageError(
                f"cannot commit the scored rows to Delta table {name}: {first_line(exc)}; "
                "nothing was committed: rerun the same command to retry from the checkpoint",
                path=write.uri,
            ) from exc
    version = int(_open_output(write.uri).version())
    log.info("committed the scored rows to Delta table %s as version %d", name, version)
    return version


def _open_output(uri: str) -> Any:
    deltalake = deltalake_module()
    try:
        return deltalake.DeltaTable(table_uri(uri), storage_options=storage_options(uri))
    except deltalake.exceptions.DeltaError as exc:
        raise UsageError(f"cannot open Delta table {display_name(uri)}: {exc}") from exc



# --- helpers --------------------------------------------------------------------------------


def _column_list(columns: Sequence[str] | str | None) -> tuple[str, ...]:
    if columns is None:
        return ()
    if isinstance(columns, str):
        columns = columns.split(",")
    return tuple(c.strip() for c in columns if c.strip())
