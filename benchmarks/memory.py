"""Peak RSS (and CPU per row) of `engine score` at two input sizes: memory must stay flat.

    python benchmarks/memory.py                 # 200k and 2M rows
    python benchmarks/memory.py --rows 50000 500000

Starts `engine emulate --json --no-row-accounting` as its own process, writes a Parquet input
of the demo-regressor's columns per size, runs `engine score` as a child process per size and
reads that child's peak RSS (ru_maxrss) when it exits. Prints a Markdown table and writes
benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ENDPOINT, EmulatorProcess, run_child, write_input

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
    args = parser.parse_args()
    emulator = EmulatorProcess.start()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rows in args.rows:
                src, out = Path(tmp) / f"in-{rows}.parquet", Path(tmp) / f"out-{rows}.arrow"
                write_input(src, rows)
                cmd = [sys.executable, "-m", "engine", "score", str(src), "--endpoint",
                       ENDPOINT, "--output", str(out), "--progress", "off", "--quiet"]
                server_before = emulator.cpu_seconds()
                usage = run_child(cmd, emulator.env)
                server_cpu = emulator.cpu_seconds() - server_before
                results.append({"rows": rows, "peak_rss_mib": round(usage.peak_rss_mib, 1),
                                "seconds": round(usage.wall_s, 2), "exit_code": usage.exit_code,
                                "input_mib": round(src.stat().st_size / 2**20, 1),
                                "client_cpu_us_per_row": round(usage.cpu_s / rows * 1e6, 2),
                                "server_cpu_us_per_row": round(server_cpu / rows * 1e6, 2)})
    finally:
        emulator.stop()
    print("| rows | input (Parquet) | peak RSS of `engine score` | time | client CPU/row "
          "| emulator CPU/row | exit |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['rows']:,} | {r['input_mib']} MiB | {r['peak_rss_mib']} MiB | "
              f"{r['seconds']} s | {r['client_cpu_us_per_row']} µs | "
              f"{r['server_cpu_us_per_row']} µs | {r['exit_code']} |")
    out_dir = ROOT / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "memory.json").write_text(json.dumps(
        {"results": results, "cpus": os.cpu_count(), "loadavg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
