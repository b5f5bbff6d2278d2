"""Arrow's buffers from jemalloc, chosen before pyarrow is imported.

With pyarrow's default pool (mimalloc) the kernel zeroed fresh pages for much of a run: 17 % of
the text table's CPU samples under ``perf`` were ``clear_page_erms`` in page faults. With
jemalloc, measured A/B (``engine score`` against ``benchmarks/tables.py serve``, alternated
runs, 2-core machine): system CPU on the text table 0.65-0.82 -> 0.48-0.57 s, embeddings
0.74-0.78 -> 0.32-0.38 s, narrow 0.35-0.43 -> 0.23-0.26 s (peak RSS 190 -> 132 MiB).

Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, when pyarrow is imported (``set_memory_pool``
later reaches only pyarrow's own allocations, not the Parquet reader's: measured, half the
gain), so it runs when this module is imported, first thing in ``import engine``. It changes
nothing when the variable is set, when pyarrow is already imported (the host process chose
first), or off Linux (pyarrow's wheels for other systems are built without jemalloc, and Arrow
would warn).
"""

from __future__ import annotations

import os
import sys

__all__ = ["prefer_jemalloc"]

POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def prefer_jemalloc() -> None:
    if "pyarrow" in sys.modules or not sys.platform.startswith("linux"):
        return
    os.environ.setdefault(POOL_VARIABLE, "jemalloc")


prefer_jemalloc()
