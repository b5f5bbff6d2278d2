"""Async, high-throughput batch inference for Databricks model serving.

Quick use::

    import engine

    summary = engine.score("data/*.parquet", endpoint="my-endpoint", output="preds.arrow")
    table = engine.score_table(frame, endpoint="my-endpoint")

Credentials come from DATABRICKS_HOST / DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET unless
given. See ``engine score --help`` for the command line.
"""

import engine.allocator  # noqa: F401  (first: chooses Arrow's allocator before pyarrow loads)
from engine.api import arun, ascore, ascore_table, score, score_table
from engine.config import Credentials, MetricsConfig, ScoreConfig
from engine.errors import (
    AuthError,
    BatchFailed,
    EndpointError,
    EngineError,
    InputError,
    OutputExistsError,
    RunAborted,
    SchemaError,
    StorageError,
    UsageError,
)
from engine.options import RunOptions
from engine.retry import RetryPolicy
from engine.stats import Summary

__all__ = [
    "AuthError",
    "BatchFailed",
    "Credentials",
    "EndpointError",
    "EngineError",
    "InputError",
    "MetricsConfig",
    "OutputExistsError",
    "RetryPolicy",
    "RunAborted",
    "RunOptions",
    "SchemaError",
    "ScoreConfig",
    "StorageError",
    "Summary",
    "UsageError",
    "arun",
    "ascore",
    "ascore_table",
    "score",
    "score_table",
]

__version__ = "0.1.0"
