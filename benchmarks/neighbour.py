"""Two jobs on one endpoint: the engine as its own neighbour.

    python benchmarks/neighbour.py                       # bucket 40/s, burst 4, 30 ms, 5 runs
    python benchmarks/neighbour.py --qps 200 --burst 20 --runs 1

Two ``engine score`` processes, with default flags, against one strict emulator endpoint (a
token bucket, no Retry-After). Job A starts alone; job B starts ``--delay`` seconds later and
scores ``--rows-b`` rows while A is still running. While both run, the endpoint's capacity is
theirs to share: what a team sees when two nightly jobs (two backfills, two Airflow tasks)
hit one endpoint. The emulator's own counters give what the endpoint accepted a second while
B's process ran (A alone while B starts up); B's ``--summary`` gives B's own accepted
requests a second over its run. A B still running after ``--timeout`` is stopped (gracefully)
and reported as such.

Reported per run: both jobs together as a fraction of capacity while B ran, B's share of
what was accepted (a fair split is one half), B's 429 share, and the same fraction for A
alone in the second before B started. Results go to ``results/neighbour.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ENDPOINT, EmulatorProcess, write_input

ROOT = Path(__file__).resolve().parent
BATCH_ROWS = 100


def _ok(emulator: EmulatorProcess) -> int:
    return int(emulator.accounting()["requests_by_status"].get("200", 0))


def _job(emulator: EmulatorProcess, src: Path, out: Path, summary: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "engine", "score", str(src), "--endpoint", ENDPOINT,
        "--output", str(out), "--overwrite", "--progress", "off", "--quiet",
        "--batch-rows", str(BATCH_ROWS), "--summary", str(summary),
    ]
    return subprocess.Popen(
        cmd, env=emulator.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )


def one_run(
    args: argparse.Namespace, inputs: tuple[Path, Path], tmp: Path, number: int
) -> dict[str, Any]:
    a_src, b_src = inputs
    run_dir = tmp / f"run{number}"  # a run never reads the outputs of the one before
    run_dir.mkdir()
    flags = ("--qps", f"{args.qps:g}", "--qps-burst", f"{args.burst:g}",
             "--latency-ms", str(args.latency_ms), "--retry-after", "none")
    emulator = EmulatorProcess.start(*flags)
    a: subprocess.Popen[str] | None = None
    b: subprocess.Popen[str] | None = None
    timed_out = False
    try:
        a = _job(emulator, a_src, run_dir / "a.arrow", run_dir / "a.json")
        time.sleep(args.delay - 1.0)
        alone_ok, alone_at = _ok(emulator), time.monotonic()
        time.sleep(1.0)
        start_ok, start_at = _ok(emulator), time.monotonic()
        a_alone = (start_ok - alone_ok) / (start_at - alone_at) / args.qps
        b = _job(emulator, b_src, run_dir / "b.arrow", run_dir / "b.json")
        try:
            b.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True  # B is stopped below, gracefully: it still writes its summary
        end_ok, end_at = _ok(emulator), time.monotonic()
        if a.poll() is not None:
            raise SystemExit("job A ended before job B: raise --rows-a")  # A must outlast B
    finally:
        for job in (b, a):
            if job is not None and job.poll() is None:
                job.terminate()  # the engine stops sending, lets what is in flight land
                try:
                    job.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    job.kill()
                    job.wait()
        emulator.stop()
    summary = json.loads((run_dir / "b.json").read_text())
    if not timed_out and summary["exit_code"] != 0:
        raise SystemExit(f"job B failed (exit {summary['exit_code']}): {summary.get('error')}")
    both = (end_ok - start_ok) / (end_at - start_at)
    # B's own rate over its own run (its summary's clock starts after its imports), the
    # endpoint's over B's whole process: A fills B's start-up, so the two compare.
    b_rate = summary["requests_ok"] / summary["elapsed_s"] if summary["elapsed_s"] else 0.0
    return {
        "run": number,
        "b_seconds": round(end_at - start_at, 2),
        "b_timed_out": timed_out,
        "a_alone_fraction": round(a_alone, 3),
        "both_fraction": round(both / args.qps, 3),
        "b_share": round(b_rate / both, 3) if both else 0.0,
        "b_429_share": summary["throttled_share"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qps", type=float, default=40.0)
    parser.add_argument("--burst", type=float, default=4.0)
    parser.add_argument("--latency-ms", type=int, default=30)
    parser.add_argument(
        "--delay", type=float, default=5.0, help="seconds before job B starts (at least 1)"
    )
    parser.add_argument("--rows-b", type=int, default=None, help="default: 2 s of capacity")
    parser.add_argument(
        "--rows-a", type=int, default=None, help="default: --timeout s of capacity (A outlasts B)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="the most B may take")
    parser.add_argument("--output", default=str(ROOT / "results" / "neighbour.json"))
    args = parser.parse_args()
    if args.delay < 1.0:
        parser.error("--delay must be at least 1 s (A's pace alone is read over the last second)")
    args.rows_b = args.rows_b or int(args.qps * BATCH_ROWS * 2)
    args.rows_a = args.rows_a or int(args.qps * BATCH_ROWS * (args.delay + args.timeout))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = (  # the same rows every run: what they hold does not change the endpoint's pace
            write_input(Path(tmp) / "a.parquet", args.rows_a, seed=1),
            write_input(Path(tmp) / "b.parquet", args.rows_b, seed=2),
        )
        for number in range(1, args.runs + 1):
            run = one_run(args, inputs, Path(tmp), number)
            runs.append(run)
            print(json.dumps(run), flush=True)
    setup = (f"bucket {args.qps:g}/s burst {args.burst:g}, {args.latency_ms} ms, B started "
             f"{args.delay:g} s after A, {args.rows_b:,} rows for B in {BATCH_ROWS}-row requests")
    command = "python benchmarks/neighbour.py " + " ".join(sys.argv[1:])
    lines = [
        f"Two engine jobs on one endpoint ({setup}), `{command.strip()}`:",
        "",
        "| run | A alone, s before B (of capacity) | both while B ran (of capacity) "
        "| B's share of that | B's 429 share | B's seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        timed_out = " (stopped: --timeout)" if run["b_timed_out"] else ""
        lines.append(
            f"| {run['run']} | {run['a_alone_fraction']:.2f} | {run['both_fraction']:.2f} | "
            f"{run['b_share']:.2f} | {run['b_429_share']:.1%} | {run['b_seconds']:.1f}"
            f"{timed_out} |"
        )
    Path(args.output).parent.mkdir(exist_ok=True)
    Path(args.output).write_text(
        json.dumps({"setup": setup, "command": command.strip(), "runs": runs}, indent=2) + "\n"
    )
    Path(args.output).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
