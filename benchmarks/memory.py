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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from engine.emulator.models import builtin_model

ROOT = Path(__file__).resolve().parent


def start_emulator() -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulate", "--json", "--no-row-accounting"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    env = {
        **os.environ,
        "DATABRICKS_HOST": info["host"],
        "DATABRICKS_CLIENT_ID": info["client_id"],
        "DATABRICKS_CLIENT_SECRET": info["client_secret"],
    }
    return proc, env


def write_input(path: Path, rows: int) -> None:
    model = builtin_model("demo-regressor")
    with pq.ParquetWriter(path, model.sample(1, seed=0).schema) as writer:
        for start in range(0, rows, 100_000):
            writer.write_table(model.sample(min(100_000, rows - start), seed=start))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, int]:
    """(peak RSS MiB, wall seconds, CPU seconds, exit code) of one child process."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: exec the command; its rusage is read by the parent
        os.execvpe(cmd[0], cmd, env)
    _, status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    wall = time.monotonic() - started
    return usage.ru_maxrss / 1024, wall, cpu, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
    args = parser.parse_args()
    emulator, env = start_emulator()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rows in args.rows:
                src, out = Path(tmp) / f"in-{rows}.parquet", Path(tmp) / f"out-{rows}.arrow"
                write_input(src, rows)
                cmd = [sys.executable, "-m", "engine", "score", str(src), "--endpoint",
                       "demo-regressor", "--output", str(out), "--progress", "off", "--quiet"]
                server_before = cpu_seconds(emulator.pid)
                rss, wall, cpu, code = run_child(cmd, env)
                server_cpu = cpu_seconds(emulator.pid) - server_before
                results.append({"rows": rows, "peak_rss_mib": round(rss, 1),
                                "seconds": round(wall, 2), "exit_code": code,
                                "input_mib": round(src.stat().st_size / 2**20, 1),
                                "client_cpu_us_per_row": round(cpu / rows * 1e6, 2),
                                "server_cpu_us_per_row": round(server_cpu / rows * 1e6, 2)})
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
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
