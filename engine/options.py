"""One settings object for a run, built the same way by every front end.

:class:`RunOptions` holds everything a run is told: what is scored (``inputs``), where the
predictions go (``output`` and the Delta write options), which endpoint scores them and how (a
:class:`ScoreConfig`), who scores them (:class:`Credentials`), which share of the input
(``shard``) and snapshot of a Delta input (:class:`TableRead`), the checkpoint, and what is
recorded (report, MLflow). The CLI builds it from its flags, Airflow's operator from its
arguments, the Python API (``engine.score``/``ascore``) from its keywords, and Spark from its
own; all of them through :meth:`RunOptions.build` and then run it with
:func:`engine.api.arun`.

:meth:`RunOptions.build` is where a pair of arguments that would leave one side silently
ignored is refused, with a :class:`~engine.errors.UsageError` naming both parameters in
backticks (the CLI writes them as its flags):

* ``config`` with a different ``endpoint``;
* ``credentials`` with ``host``/``client_id``/``client_secret``/``profile``/``auth``;
* ``overwrite=True`` with a ``mode`` other than ``"overwrite"`` (``"error"``, ``"append"``);
* ``mlflow_tracking_uri`` without ``mlflow_experiment`` (nothing would be logged).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from engine.config import Credentials, ScoreConfig
from engine.errors import UsageError
from engine.source import parse_shard
from engine.source.delta import TableRead

__all__ = ["RunOptions", "resolve_credentials", "score_config"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """The settings of one run (see the module docstring; build it with :meth:`build`).

    Attributes:
        config: the endpoint and how to score it.
        credentials: the workspace and the identity that scores it.
        inputs: paths, directories, globs, a Delta table, or in-memory data; None where the
            caller streams rows itself (Spark, ``score_table``).
        output: where the predictions are written; None where the caller takes them back.
        overwrite: replace an existing output.
        start_if_stopped: start a stopped endpoint and wait for it.
        checkpoint: where finished batches are kept; None: beside the output.
        resume: False starts clean, discarding an existing checkpoint.
        handle_signals: SIGTERM/SIGINT stop the run gracefully (main thread only).
        shard: ``(i, n)``: score only shard ``i`` of ``n`` of the input.
        table_read: which snapshot and rows of a Delta input to read.
        output_format: ``"auto"``/None or ``"delta"``.
        mode: a Delta output's mode (``"error"``, ``"append"``, ``"overwrite"``), or None.
        partition_by: Delta output columns to partition by.
        report: the run report's path, or None.
        mlflow_experiment: the MLflow experiment to log the run to, or None.
        mlflow_tracking_uri: the MLflow tracking server, or None for the default.
    """

    config: ScoreConfig
    credentials: Credentials
    inputs: Any = None
    output: str | None = None
    overwrite: bool = False
    start_if_stopped: bool = False
    checkpoint: str | None = None
    resume: bool = True
    handle_signals: bool = False
    shard: tuple[int, int] | None = None
    table_read: TableRead = field(default_factory=TableRead)
    output_format: str | None = None
    mode: str | None = None
    partition_by: Sequence[str] | str | None = None
    report: str | None = None
    mlflow_experiment: str | None = None
    mlflow_tracking_uri: str | None = None

    @classmethod
    def build(
        cls,
        *,
        config: ScoreConfig | None = None,
        endpoint: str | None = None,
        options: Mapping[str, Any] | None = None,
        credentials: Credentials | None = None,
        host: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        profile: str | None = None,
        auth: str | None = None,
        shard: tuple[int, int] | str | None = None,
        input_version: int | None = None,
        input_timestamp: str | None = None,
        where: str | None = None,
        output: str | os.PathLike[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        report: str | os.PathLike[str] | None = None,
        **run: Any,
    ) -> RunOptions:
        """The run's settings from the library's keyword arguments.

        Args:
            config, endpoint, options: as :func:`score_config`.
            credentials, host, client_id, client_secret, profile, auth: as
                :func:`resolve_credentials`.
            shard: ``(i, n)`` or ``"i/n"``.
            input_version, input_timestamp, where: the Delta input's :class:`TableRead`.
            output, checkpoint, report: paths (``os.PathLike`` or text).
            run: the other fields of :class:`RunOptions`, by name.

        Raises:
            UsageError: a conflicting pair (see the module docstring).
            TypeError: an unknown option, as for any call with a keyword it does not take.
        """
        # In the order the CLI always checked them: flags, shard, credentials, snapshot.
        config = score_config(config, endpoint, options or {})
        shard = parse_shard(shard) if isinstance(shard, str) else shard
        credentials = resolve_credentials(
            credentials, host=host, client_id=client_id, client_secret=client_secret,
            profile=profile, auth=auth,
        )
        table_read = TableRead(version=input_version, timestamp=input_timestamp, where=where)
        settings = cls(
            config=config, credentials=credentials, shard=shard, table_read=table_read,
            output=_text(output), checkpoint=_text(checkpoint), report=_text(report), **run,
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse a pair of settings of which one would be silently ignored.

        Raises:
            UsageError: naming both parameters.
        """
        if self.overwrite and self.mode not in (None, "overwrite"):
            raise UsageError(
                f"`overwrite` and `mode` {self.mode!r} disagree about an existing output: "
                "pass one of them"
            )
        if self.mlflow_tracking_uri and self.mlflow_experiment is None:
            raise UsageError(
                f"`mlflow_tracking_uri` ({self.mlflow_tracking_uri!r}) is used only with "
                "`mlflow_experiment`: name the experiment to log the run to, or drop the URI"
            )


def _text(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def score_config(
    config: ScoreConfig | None, endpoint: str | None, options: Mapping[str, Any]
) -> ScoreConfig:
    """``config`` with ``options`` applied, or a new :class:`ScoreConfig` of them.

    Raises:
        UsageError: ``endpoint`` names another endpoint than ``config.endpoint``.
    """
    if config is None:
        return ScoreConfig(endpoint=endpoint or "", **options)
    if endpoint is not None and endpoint != config.endpoint:
        raise UsageError(
            f"`endpoint` ({endpoint!r}) and `config` (endpoint {config.endpoint!r}) disagree: "
            "pass the endpoint once, in one of them"
        )
    return replace(config, **options) if options else config


def resolve_credentials(
    credentials: Credentials | None,
    *,
    host: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    profile: str | None = None,
    auth: str | None = None,
) -> Credentials:
    """``credentials`` if given, else :meth:`Credentials.from_env` of the other arguments.

    Raises:
        UsageError: ``credentials`` is given together with any of the other arguments.
    """
    if credentials is None:
        return Credentials.from_env(
            host=host, client_id=client_id, client_secret=client_secret, profile=profile, auth=auth
        )
    given = {"host": host, "client_id": client_id, "client_secret": client_secret}
    given |= {"profile": profile, "auth": auth}
    extra = [f"`{name}`" for name, value in given.items() if value is not None]
    if extra:
        raise UsageError(
            f"`credentials` and {', '.join(extra)} both say who scores: pass `credentials` "
            "alone, or the separate values without it"
        )
    return credentials
