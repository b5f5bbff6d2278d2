"""Command line: argument parsing -> config objects -> the library. No logic of its own.

(Over 400 lines because every flag's definition and help text lives here.)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from engine.config import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_MAX_BUFFER_MIB,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PUSHGATEWAY_JOB,
    DEFAULT_REQUEST_TIMEOUT_S,
    Credentials,
    MetricsConfig,
    ScoreConfig,
)
from engine.durable import check_writable_file
from engine.errors import EngineError, UsageError, storage_error
from engine.logs import emit, setup_logging
from engine.options import RunOptions
from engine.retry import DEFAULT_MAX_RETRY_AFTER_S, RetryPolicy
from engine.stats import RunStats, Summary

log = logging.getLogger("engine")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; for a ``command`` other than ``emulate`` the emulator (70 ms of imports,
    aiohttp.web among them) is left unimported and ``emulate`` gets no flags."""
    parser = argparse.ArgumentParser(
        prog="engine",
        description="Async batch inference for Databricks model serving.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_score(commands)
    _add_validate(commands)
    _add_describe(commands)
    _add_demo(commands)
    _add_emulate(commands, with_flags=command in (None, "emulate"))
    return parser


def _add_emulate(commands: Any, *, with_flags: bool) -> None:
    emulate = commands.add_parser(
        "emulate",
        help="run the local Databricks serving emulator",
        description="Serve a local stand-in for Databricks' OAuth, control plane and "
        "route-optimized data plane until SIGINT/SIGTERM.",
    )
    if with_flags:
        from engine.emulator import cli as emulator_cli

        emulator_cli.add_arguments(emulate)
        emulate.set_defaults(run=emulator_cli.run)


def _command(argv: Sequence[str] | None) -> str | None:
    """The subcommand named on the command line, or None (then every parser is built)."""
    words = [word for word in (sys.argv[1:] if argv is None else argv) if word[:1] != "-"]
    return words[0] if words else None


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "workspace (default: DATABRICKS_* environment variables, then ~/.databrickscfg)"
    )
    group.add_argument("--profile", help="~/.databrickscfg profile (DATABRICKS_CONFIG_PROFILE)")
    group.add_argument(
        "--auth",
        choices=["oauth-m2m", "pat", "databricks-sdk"],
        help="how to authenticate (DATABRICKS_AUTH_TYPE; default: a service principal's OAuth "
        "secret if set, else DATABRICKS_TOKEN for describe/validate). databricks-sdk: every "
        "auth type the SDK supports (pip install 'databricks-batch-engine[sdk]')",
    )
    group.add_argument("--host", help="workspace URL (DATABRICKS_HOST)")
    group.add_argument("--client-id", help="service principal's client id (DATABRICKS_CLIENT_ID)")
    group.add_argument(
        "--client-secret",
        help="service principal's OAuth secret (DATABRICKS_CLIENT_SECRET; prefer the env var)",
    )


def _add_tuning_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("requests")
    group.add_argument(
        "--batch-rows",
        type=int,
        default=DEFAULT_BATCH_ROWS,
        metavar="N",
        help=f"rows per request (default {DEFAULT_BATCH_ROWS})",
    )
    group.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="BYTES",
        help="split requests above this size (default 12 MiB; Databricks' limit is 16 MB)",
    )
    group.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="requests in flight (default: found adaptively from the endpoint's answers, "
        f"up to {DEFAULT_MAX_CONCURRENCY})",
    )
    group.add_argument(
        "--qps",
        type=float,
        metavar="RATE",
        help="hard cap on requests per second, never exceeded (default: none; the rate that "
        "the endpoint accepts is found adaptively)",
    )
    group.add_argument(
        "--max-attempts",
        type=int,
        default=10,
        metavar="N",
        help="attempts per request before the batch fails (default 10); 429/503 answers, the "
        "endpoint's pace, have their own bound of 100 and wait longer each time",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="S",
        help="longest a request may take (default 300: Databricks ends a request at 297 s); "
        "one far slower than the endpoint's usual latency is abandoned and sent again sooner",
    )
    group.add_argument(
        "--no-hedge",
        dest="hedge",
        action="store_false",
        help="never send a second copy of a request that is far slower than the endpoint's "
        "usual latency (by default one goes after 3x its p99, at least 1 s, for at most ~2%% "
        "of requests, and the first answer is kept); for endpoints where each request costs "
        "or acts beyond its answer",
    )
    group.add_argument(
        "--max-retry-after",
        type=float,
        default=DEFAULT_MAX_RETRY_AFTER_S,
        metavar="S",
        help="cap on a server's Retry-After (default 300); reaching it is a warning",
    )
    group.add_argument("--params", metavar="JSON", help="model params sent with every request")


def _add_score(commands: Any) -> None:
    score = commands.add_parser(
        "score",
        help="score Parquet/CSV files or a Delta table with a serving endpoint",
        description="Read INPUT (files, directories, globs), send it to a route-optimized "
        "serving endpoint in dataframe_split batches and write every prediction next to its "
        "input row. Exit codes: 0 all rows scored, 3 some rows rejected, 1 failed, "
        "2 usage/config/auth/schema error (nothing was sent).",
    )
    score.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="Parquet/CSV files, dirs, globs, or a Delta table's directory or URI",
    )
    score.add_argument("--endpoint", required=True, metavar="NAME", help="serving endpoint name")
    score.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT",
        help="output file: Arrow IPC, or Parquet when it ends in .parquet; or a Delta table "
        "(--output-format delta)",
    )
    score.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    score.add_argument(
        "--keep", metavar="COL,...", help="input columns copied to the output (default: all)"
    )
    score.add_argument(
        "--served-model",
        metavar="NAME",
        help="send every request to this served model of the endpoint, not through its "
        "traffic split (names: engine describe ENDPOINT)",
    )
    score.add_argument(
        "--max-error-rows",
        type=int,
        metavar="N",
        help="stop (exit 1) once more than N rows are rejected",
    )
    score.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for a not-ready endpoint (default: fail at once; with "
        "--start-if-stopped, wait up to 30 min)",
    )
    score.add_argument(
        "--start-if-stopped",
        action="store_true",
        help="start a stopped endpoint and wait for it to be READY (up to 30 min, or "
        "--wait-ready SECONDS)",
    )
    score.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="keep finished batches here so a rerun resumes (default: .OUT.checkpoint beside "
        "the output, removed after a successful run)",
    )
    score.add_argument(
        "--shard",
        metavar="I/N",
        help="score only shard I of N (0 <= I < N), split by row group (CSV: by file) so N "
        "tasks cover every row once; --qps is then the total, each shard taking 1/N",
    )
    score.add_argument(
        "--encoders",
        type=int,
        metavar="N",
        help="processes encoding request bodies off the event loop (default 0: encode on "
        "the loop, which measured faster on 2 cores)",
    )
    score.add_argument(
        "--max-buffer-mib",
        type=float,
        default=DEFAULT_MAX_BUFFER_MIB,
        metavar="MIB",
        help="memory for input rows and request bodies read ahead of the writer (default "
        f"{DEFAULT_MAX_BUFFER_MIB:g}); the reader waits beyond it",
    )
    score.add_argument(
        "--no-resume",
        action="store_true",
        help="ignore and discard an existing checkpoint; start clean",
    )
    _add_delta_flags(score)
    _add_connection_flags(score)
    _add_tuning_flags(score)
    _add_output_flags(score)
    _add_record_flags(score)
    _add_metrics_flags(score)
    score.set_defaults(run=_run_score)


def _add_record_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run record")
    group.add_argument(
        "--report",
        metavar="PATH.html",
        help="write a self-contained HTML report of the run (charts over time, rejected rows "
        "by message, retries, settings, summary), also for a stopped or failed run",
    )
    group.add_argument(
        "--mlflow-experiment",
        metavar="PATH",
        help="log the run to this MLflow experiment (created when missing), e.g. "
        "/Users/me@example.com/nightly-scoring: params, metrics, the timeline, the summary "
        "and the report; a failure to log is a warning",
    )
    group.add_argument(
        "--mlflow-tracking-uri",
        metavar="URI",
        help="the MLflow tracking server (MLFLOW_TRACKING_URI; default: databricks, the "
        "workspace the run uses, with its credentials), e.g. http://127.0.0.1:5000",
    )


def _add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "metrics (pip install 'databricks-batch-engine[otel]' or '[prometheus]')"
    )
    group.add_argument(
        "--otel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export OpenTelemetry metrics and a span over OTLP/HTTP (default: on when "
        "OTEL_EXPORTER_OTLP_ENDPOINT or _METRICS_/_TRACES_ENDPOINT is set; --otel without one "
        "sends to http://localhost:4318); OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES apply",
    )
    group.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push the run's figures to this Prometheus Pushgateway every progress interval "
        "and at the end, e.g. http://pushgateway:9091",
    )
    group.add_argument(
        "--pushgateway-job",
        default=DEFAULT_PUSHGATEWAY_JOB,
        metavar="NAME",
        help=f"the pushed group's job label (default {DEFAULT_PUSHGATEWAY_JOB})",
    )
    group.add_argument(
        "--pushgateway-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another grouping label, e.g. instance=nightly (repeatable; a sharded run adds "
        "shard=I/N)",
    )


def _add_table_read_flags(parser: argparse.ArgumentParser) -> Any:
    """--input-version, --input-timestamp, --where: which rows of an input Delta table."""
    group = parser.add_argument_group(
        "Delta tables (pip install 'databricks-batch-engine[delta]')"
    )
    group.add_argument(
        "--input-version",
        type=int,
        metavar="N",
        help="read version N of the input Delta table (default: the latest)",
    )
    group.add_argument(
        "--input-timestamp",
        metavar="T",
        help="read the input Delta table as of time T (RFC 3339, e.g. 2025-01-31T00:00:00Z)",
    )
    group.add_argument(
        "--where",
        metavar="EXPR",
        help="score only the input Delta table's rows matching this SQL predicate, e.g. "
        "\"day = '2025-01-31' AND amount > 0\" (partition filters skip whole files)",
    )
    return group


def _add_delta_flags(parser: argparse.ArgumentParser) -> None:
    group = _add_table_read_flags(parser)
    group.add_argument(
        "--output-format",
        choices=["auto", "delta"],
        default="auto",
        help="delta: write OUT as a Delta table, in one commit (default auto: a file by "
        "extension, or the Delta table already at OUT)",
    )
    group.add_argument(
        "--mode",
        choices=["error", "append", "overwrite"],
        help="for a Delta output: error (default) if the table exists, append, or overwrite; "
        "a rerun of a run that committed appends nothing twice",
    )
    group.add_argument(
        "--partition-by", metavar="COL,...", help="partition the Delta output by these columns"
    )


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("feedback")
    group.add_argument("--summary", metavar="PATH", help="write the run summary as JSON to PATH")
    group.add_argument(
        "--progress",
        choices=["auto", "bar", "log", "off"],
        default="auto",
        help="progress bar on a terminal, log lines otherwise (default auto)",
    )
    group.add_argument("--quiet", "-q", action="store_true", help="warnings and errors only")
    group.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line (progress, warnings, summary, error) for log "
        "pipelines",
    )
    _add_debug_flag(group)


def _add_debug_flag(parser: Any) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, also print the Python traceback (for a bug report)",
    )


def _add_validate(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check INPUT against the endpoint's schema, sending no rows",
        description="The schema check `engine score` runs first, alone: exit 0 when INPUT fits "
        "the endpoint's signature, 2 with every problem listed when it does not.",
    )
    validate.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="Parquet/CSV files, dirs, globs"
    )
    validate.add_argument("--endpoint", required=True, metavar="NAME", help="serving endpoint name")
    validate.add_argument(
        "--full",
        action="store_true",
        help="CSV: check every value against the endpoint's types (default: the first rows; "
        "later values are checked as they are read while scoring)",
    )
    _add_table_read_flags(validate)
    _add_connection_flags(validate)
    _add_debug_flag(validate)
    validate.set_defaults(run=_run_validate)


def _add_describe(commands: Any) -> None:
    describe = commands.add_parser(
        "describe",
        help="show an endpoint's state, URLs, served models and schema",
    )
    describe.add_argument("endpoint", metavar="NAME", help="serving endpoint name")
    _add_connection_flags(describe)
    _add_debug_flag(describe)
    describe.set_defaults(run=_run_describe)


def _credentials(args: argparse.Namespace) -> Credentials:
    return Credentials.from_env(
        host=args.host,
        client_id=args.client_id,
        client_secret=args.client_secret,
        profile=args.profile,
        auth=args.auth,
    )


def _run_validate(args: argparse.Namespace) -> int:
    from engine.describe import avalidate
    from engine.source.delta import TableRead

    table = TableRead(
        version=args.input_version, timestamp=args.input_timestamp, where=args.where
    )
    plan = asyncio.run(
        avalidate(args.inputs, args.endpoint, _credentials(args), full=args.full, table=table)
    )
    print(f"OK: the input fits endpoint '{args.endpoint}'")
    for line in plan.describe():
        print(f"  {line}")
    return 0


def _run_describe(args: argparse.Namespace) -> int:
    from engine.describe import adescribe

    description = asyncio.run(adescribe(args.endpoint, _credentials(args)))
    print("\n".join(description.lines()))
    return 0


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="score a sample dataset on the embedded emulator (no workspace needed)",
        description="Start the local emulator, write a sample dataset, score it, and show "
        "the summary and where the output is.",
    )
    demo.add_argument("--rows", type=int, default=200_000, help="rows in the sample (200000)")
    demo.add_argument("--dir", default="engine-demo", help="where to write files (engine-demo)")
    _add_output_flags(demo)
    demo.set_defaults(run=_run_demo)


def _score_config(args: argparse.Namespace) -> ScoreConfig:
    params = None
    if args.params:
        try:
            params = orjson.loads(args.params)
        except orjson.JSONDecodeError as exc:
            raise UsageError(
                f"--params is not valid JSON ({exc}); e.g. --params '{{\"k\": 1}}'"
            ) from None
        if not isinstance(params, dict):
            raise UsageError("--params must be a JSON object, e.g. --params '{\"k\": 1}'")
    keep = tuple(c.strip() for c in args.keep.split(",") if c.strip()) if args.keep else None
    if args.max_attempts < 1:
        raise UsageError(f"--max-attempts must be at least 1, got {args.max_attempts}")
    return ScoreConfig(
        endpoint=args.endpoint,
        batch_rows=args.batch_rows,
        max_request_bytes=args.max_request_bytes,
        concurrency=args.concurrency,
        qps=args.qps,
        encoders=args.encoders,
        max_buffer_mib=args.max_buffer_mib,
        keep=keep,
        served_model=args.served_model,
        params=params,
        retry=RetryPolicy(max_attempts=args.max_attempts, max_retry_after_s=args.max_retry_after),
        request_timeout_s=args.request_timeout,
        hedge=args.hedge,
        max_error_rows=args.max_error_rows,
        wait_ready_s=args.wait_ready,
        progress=args.progress,
        metrics=_metrics_config(args),
    )


def _metrics_config(args: argparse.Namespace) -> MetricsConfig:
    grouping: dict[str, str] = {}
    for pair in args.pushgateway_label:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value:
            raise UsageError(
                f"--pushgateway-label {pair!r} is not KEY=VALUE, e.g. --pushgateway-label "
                "instance=nightly"
            )
        grouping[key.strip()] = value
    return MetricsConfig(
        otel=args.otel,
        pushgateway_url=args.pushgateway,
        pushgateway_job=args.pushgateway_job,
        pushgateway_grouping=grouping,
    )


def _check_summary_path(path: str | None) -> None:
    """Refuse a --summary file that could not be written, before anything is sent."""
    if path:
        check_writable_file(path, "--summary", "summary.json")


def _run_score(args: argparse.Namespace) -> int:
    from engine.api import arun

    _check_summary_path(args.summary)
    summary = asyncio.run(arun(_run_options(args)))
    return _report(summary, args.summary, json_logs=args.log_format == "json")


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The run's settings from ``engine score``'s flags: the same object the library takes."""
    return RunOptions.build(
        config=_score_config(args),
        host=args.host, client_id=args.client_id, client_secret=args.client_secret,
        profile=args.profile, auth=args.auth,
        inputs=args.inputs,
        output=args.output,
        overwrite=args.overwrite,
        start_if_stopped=args.start_if_stopped,
        checkpoint=args.checkpoint,
        resume=not args.no_resume,
        handle_signals=True,
        shard=args.shard or None,
        input_version=args.input_version,
        input_timestamp=args.input_timestamp,
        where=args.where,
        output_format=args.output_format,
        mode=args.mode,
        partition_by=args.partition_by,
        report=args.report,
        mlflow_experiment=args.mlflow_experiment,
        mlflow_tracking_uri=args.mlflow_tracking_uri,
    )


def _report(
    summary: Summary, summary_path: str | None, *, show: bool = True, json_logs: bool = False
) -> int:
    if json_logs:
        emit("summary", "run finished", **summary.to_dict())
    for line in summary.lines() if show and not json_logs else ():
        print(line, file=sys.stderr)
    if summary.exit_code == 3:
        print(
            f"{summary.rows_rejected} row(s) were rejected by the endpoint: their `error` column "
            "holds the server's message (exit code 3)",
            file=sys.stderr,
        )
    _write_summary(summary, summary_path)
    return summary.exit_code


def _write_summary(summary: Summary, path: str | None) -> None:
    if not path:
        return
    try:
        Path(path).write_bytes(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2))
    except OSError as exc:
        print(f"warning: {storage_error('write the summary', path, exc)}", file=sys.stderr)


def _run_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    _check_summary_path(args.summary)
    summary = asyncio.run(
        run_demo(rows=args.rows, directory=Path(args.dir), progress=args.progress)
    )
    return _report(summary, args.summary, show=False)


def command() -> int:
    """The ``engine`` command and ``python -m engine``: :func:`main`, then ready to exit.

    Everything is written and closed by then; the interpreter's last act would be a full
    collection over every object the imports made (pyarrow, numpy, aiohttp), about 40 ms
    after each run: measured from the summary's last line to the process's exit, 53-67 ->
    15-24 ms (text and narrow tables, three runs each). Frozen, they are left to the OS.
    atexit handlers (log flushing, telemetry) run as before.

    The objects the imports made are frozen first, too: the run's full collections then walk
    only what the run made (a 2M-row run here: its one full collection took 26-32 ms).
    """
    gc.freeze()
    code = main()
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    json_logs = getattr(args, "log_format", "text") == "json"
    setup_logging(quiet=getattr(args, "quiet", False), log_format="json" if json_logs else "text")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except EngineError as exc:
        return _failed(args, exc, exc.exit_code, json_logs=json_logs)
    except OSError as exc:  # an environment problem nothing translated: still no traceback
        error = storage_error("use", exc.filename or "a file", exc)
        error.__cause__ = exc
        return _failed(args, error, 1, json_logs=json_logs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _write_summary(_failure_summary(args, "interrupted (SIGINT)", 130), _summary_path(args))
        return 130


#: The library's parameters and the flags that set them: its errors name a parameter in
#: backticks (`batch_rows`, `max_error_rows=2`, `overwrite=True`), which a person at the
#: command line knows as --batch-rows, --max-error-rows 2, --overwrite.
FLAGS = {
    "endpoint": "--endpoint",
    "output": "--output",
    "batch_rows": "--batch-rows",
    "max_request_bytes": "--max-request-bytes",
    "concurrency": "--concurrency",
    "qps": "--qps",
    "encoders": "--encoders",
    "max_buffer_mib": "--max-buffer-mib",
    "keep": "--keep",
    "params": "--params",
    "served_model": "--served-model",
    "max_attempts": "--max-attempts",
    "max_retry_after_s": "--max-retry-after",
    "request_timeout_s": "--request-timeout",
    "hedge": "--no-hedge",
    "max_error_rows": "--max-error-rows",
    "wait_ready_s": "--wait-ready",
    "start_if_stopped": "--start-if-stopped",
    "progress": "--progress",
    "shard": "--shard",
    "overwrite": "--overwrite",
    "checkpoint": "--checkpoint",
    "input_version": "--input-version",
    "input_timestamp": "--input-timestamp",
    "where": "--where",
    "output_format": "--output-format",
    "mode": "--mode",
    "partition_by": "--partition-by",
    "report": "--report",
    "mlflow_experiment": "--mlflow-experiment",
    "mlflow_tracking_uri": "--mlflow-tracking-uri",
    "otel": "--otel",
    "pushgateway_url": "--pushgateway",
    "pushgateway_job": "--pushgateway-job",
    "pushgateway_grouping": "--pushgateway-label",
    "host": "--host",
    "client_id": "--client-id",
    "client_secret": "--client-secret",
    "profile": "--profile",
    "auth": "--auth",
}

#: Switches: ``name=True`` is the flag alone; ``name=False`` its negation, where there is one.
SWITCHES = {
    "overwrite": {"True": "--overwrite"},
    "start_if_stopped": {"True": "--start-if-stopped"},
    "resume": {"False": "--no-resume"},
    "otel": {"True": "--otel", "False": "--no-otel"},
}

_PARAMETER = re.compile(r"`(\w+)(?:=([^`]*))?`")
_QUOTES = "'\""


def in_flags(message: str) -> str:
    """``message`` with each `parameter` (or `parameter=value`) the CLI sets by a flag written
    as that flag (``--flag value``); other backticked names are left as they are."""

    def flag(match: re.Match[str]) -> str:
        name, value = match[1], match[2]
        if value is None:
            return FLAGS.get(name, match[0])
        if name in SWITCHES:
            return SWITCHES[name].get(value, match[0])
        if name in FLAGS:
            return f"{FLAGS[name]} {value.strip(_QUOTES)}"
        return match[0]

    return _PARAMETER.sub(flag, message)


def _failed(args: argparse.Namespace, exc: EngineError, code: int, *, json_logs: bool) -> int:
    """Print the error (and the traceback with --debug), write --summary, return the code."""
    if getattr(args, "debug", False):
        traceback.print_exception(exc, file=sys.stderr)
    message = in_flags(str(exc))
    if json_logs:
        emit("error", message, level=logging.ERROR, exit_code=code)
    else:
        print(f"error: {message}", file=sys.stderr)
    # The --summary file says what the terminal said: the flags, not the parameters.
    summary = (
        dataclasses.replace(exc.summary, error=message)
        if exc.summary is not None
        else _failure_summary(args, message, code)
    )
    if json_logs:
        emit("summary", "run failed", **summary.to_dict())
    path = _summary_path(args)
    if path and not _summary_refused(path):  # a refused --summary path: nowhere to write
        _write_summary(summary, path)
    return code


def _summary_path(args: argparse.Namespace) -> str | None:
    path = getattr(args, "summary", None)
    return str(path) if path else None


def _summary_refused(path: str) -> bool:
    try:
        _check_summary_path(path)
    except UsageError:
        return True
    return False


def _failure_summary(args: argparse.Namespace, error: str, code: int) -> Summary:
    """The summary of a run that failed before it had counted anything."""
    endpoint = str(getattr(args, "endpoint", "") or "")
    return RunStats().summary(
        endpoint=endpoint, output=None, token_refreshes=0, exit_code=code, error=error
    )


if __name__ == "__main__":
    sys.exit(main())
