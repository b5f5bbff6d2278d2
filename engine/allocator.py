"""Arrow's buffers from jemalloc, chosen before pyarrow is imported.

With pyarrow's default pool (mimalloc) the kernel zeroed fresh pages for much of a run: 17 % of
the text table's CPU samples under ``perf`` were ``clear_page_erms`` in page faults. With
jemalloc, measured A/B (``engine score`` against ``benchmarks/tables.py serve``, alternated
runs, 2-core machine): system CPU on the text table 0.65-0.82 -> 0.48-0.57 s, embeddings
0.74-0.78 -> 0.32-0.38 s, narrow 0.35-0.43 -> 0.23-0.26 s (peak RSS 190 -> 132 MiB).

Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, when pyarrow is imported (``set_memory_pool``
later reaches only pyarrow's own allocations, not the Parquet reader's: measured, half the
gain), so this runs when this module is imported, first thing in ``import engine``: it sets
the variable, imports pyarrow, and removes the variable again, so that no child process (an
Airflow task's shell, a Spark worker) inherits the choice. It changes nothing when the
variable is set, when pyarrow is already imported (the host process chose first), or off
x86-64 Linux: pyarrow's wheels for other systems, and for ARM Linux since Arrow 18, are built
without jemalloc, and Arrow would print a warning at import.
"""

from __future__ import annotations

import os
import platform
import sys

__all__ = ["prefer_jemalloc"]

POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def has_jemalloc_wheels() -> bool:
    """Whether pyarrow's wheels for this system include jemalloc (x86-64 Linux)."""
    return sys.platform.startswith("linux") and platform.machine().lower() in {"x86_64", "amd64"}


def prefer_jemalloc() -> None:
    if "pyarrow" in sys.modules or POOL_VARIABLE in os.environ or not has_jemalloc_wheels():
        return
    os.environ[POOL_VARIABLE] = "jemalloc"
    try:
        import pyarrow  # noqa: F401  (reads the variable now, once)
    finally:
        del os.environ[POOL_VARIABLE]


prefer_jemalloc()
