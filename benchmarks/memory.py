"""Peak RSS (and CPU per row) of `engine score` at two input sizes: memory must stay flat.

    python benchmarks/memory.py                 # 200k and 2M rows
    python benchmarks/memory.py --rows 50000 500000
    python benchmarks/memory.py --table embeddings --rows 30000 120000 --qps 10

Default: starts `engine emulate --json --no-row-accounting` as its own process, writes a
Parquet input of the demo-regressor's columns per size, runs `engine score` as a child
process per size and reads that child's peak RSS when it exits; writes
benchmarks/results/memory.json.

With ``--table`` (one of benchmarks/tables.py's: narrow, wide, text, embeddings,
small-batches) the input is that table and the server is tables.py's (any columns, orjson);
``--qps`` holds the endpoint's pace under what the client could send, so batches pile up
between the reader and the writer as they do against a slow endpoint, which is where wide
rows used to make memory grow (results/memory-TABLE.json). Extra arguments after ``--`` go
to `engine score` (e.g. ``-- --max-buffer-mib 64``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ENDPOINT, EmulatorProcess, run_child, write_input

ROOT = Path(__file__).resolve().parent


def _measure(cmd: list[str], env: dict[str, str], rows: int, src: Path,
             server_cpu: Any = None) -> dict[str, Any]:
    before = server_cpu() if server_cpu else 0.0
    usage = run_child(cmd, env)
    result = {"rows": rows, "peak_rss_mib": round(usage.peak_rss_mib, 1),
              "seconds": round(usage.wall_s, 2), "exit_code": usage.exit_code,
              "input_mib": round(src.stat().st_size / 2**20, 1),
              "client_cpu_us_per_row": round(usage.cpu_s / rows * 1e6, 2)}
    if server_cpu:
        result["server_cpu_us_per_row"] = round((server_cpu() - before) / rows * 1e6, 2)
    if usage.exit_code != 0:
        raise SystemExit(f"engine score failed ({usage.exit_code}):\n{usage.stderr[-2000:]}")
    return result


def _score_cmd(src: Path, out: Path, extra: list[str], endpoint: str = ENDPOINT) -> list[str]:
    return [sys.executable, "-m", "engine", "score", str(src), "--endpoint", endpoint,
            "--output", str(out), "--overwrite", "--progress", "off", "--quiet", *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--table", help="a table of benchmarks/tables.py, against its server")
    parser.add_argument("--qps", type=float, help="engine score --qps (with --table)")
    parser.add_argument("extra", nargs="*", help="after --: more engine score arguments")
    args = parser.parse_args()
    extra = list(args.extra) + (["--qps", f"{args.qps:g}"] if args.qps else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.table:
            import tables

            server = tables.Server("orjson")
            try:
                for rows in args.rows:
                    src = tables.write_table(args.table, rows, Path(tmp) / f"in-{rows}.parquet")
                    out = Path(tmp) / f"out-{rows}.arrow"
                    cmd = _score_cmd(src, out, extra, tables.ENDPOINT)
                    results.append(_measure(cmd, tables._env(server.url), rows, src))
            finally:
                server.stop()
        else:
            emulator = EmulatorProcess.start()
            try:
                for rows in args.rows:
                    src, out = Path(tmp) / f"in-{rows}.parquet", Path(tmp) / f"out-{rows}.arrow"
                    write_input(src, rows)
                    results.append(_measure(_score_cmd(src, out, extra), emulator.env, rows,
                                            src, emulator.cpu_seconds))
            finally:
                emulator.stop()
    print("| rows | input (Parquet) | peak RSS of `engine score` | time | client CPU/row "
          "| server CPU/row | exit |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        server = f"{r['server_cpu_us_per_row']} µs" if "server_cpu_us_per_row" in r else "-"
        print(f"| {r['rows']:,} | {r['input_mib']} MiB | {r['peak_rss_mib']} MiB | "
              f"{r['seconds']} s | {r['client_cpu_us_per_row']} µs | {server} | "
              f"{r['exit_code']} |")
    out_dir = ROOT / "results"
    out_dir.mkdir(exist_ok=True)
    name = f"memory-{args.table}.json" if args.table else "memory.json"
    (out_dir / name).write_text(json.dumps(
        {"results": results, "table": args.table or "demo-regressor", "engine_args": extra,
         "cpus": os.cpu_count(), "loadavg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
