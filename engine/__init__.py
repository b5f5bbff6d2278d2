"""Async, high-throughput batch inference for Databricks model serving.

Quick use::

    import engine

    summary = engine.score("data/*.parquet", endpoint="my-endpoint", output="preds.arrow")
    table = engine.score_table(frame, endpoint="my-endpoint")

Credentials come from DATABRICKS_HOST / DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET unless
given. See ``engine score --help`` for the command line.
"""

import gc as _gc

# The imports below (pyarrow, numpy, aiohttp and the engine) make some 100k long-lived objects
# and no garbage, yet started ~100 cyclic collections that walked them: 22 ms of collections
# in a 0.41 s import on a 2-core machine. The collector is paused while they load (for every
# thread of the process: a host's threads too, for those 0.4 s) and left as it was. Then the
# young generations, where the imports' objects are, go to the oldest one unscanned (frozen,
# then unfrozen), or the first young collection after the imports walks them all (18 ms). A
# host's young garbage is collected first, so it is not moved with them; and a host that froze
# objects itself (a pre-fork server) keeps them frozen: nothing is moved then.
_collecting = _gc.isenabled()
_host_froze = _gc.get_freeze_count() > 0
if _collecting and not _host_froze:
    _gc.collect(1)
_gc.disable()
try:
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
finally:
    if not _host_froze:
        _gc.freeze()
        _gc.unfreeze()
    if _collecting:
        _gc.enable()

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
