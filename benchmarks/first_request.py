"""How long `engine score` takes before its first answer, against a workspace with real latency.

    python benchmarks/first_request.py                       # 0, 50 and 150 ms, 5 runs each
    python benchmarks/first_request.py --latency-ms 100 --runs 9
    python benchmarks/first_request.py --checkout /tmp/old   # the engine of another checkout

Start-up is interpreter start, imports, and the calls made before any row is sent: the
workspace token, the endpoint's description, its OpenAPI schema and the data-plane token. On
the emulator those answer in a millisecond, which hides how many of them wait for each other;
a real control plane answers in tens to hundreds of milliseconds. So each run starts a fresh
``engine emulate --control-latency-ms L --token-latency-ms L`` (every ``/api/...`` call and
every token takes L), then times ``engine score`` as a whole process on 100 rows (one request,
data plane at 10 ms): its wall time is start-up plus the calls plus one request.

``--checkout DIR`` runs ``python -m engine score`` from DIR (another git checkout, e.g. a
``git worktree`` of an older commit), so a before/after is two runs of this file; the
emulator is the `engine` package of the current directory (run a copy of this file from the other
checkout to time that one's emulator too, at 0 ms: older ones have no control-plane latency).
Prints the median and range per latency; ``--output``
writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ENDPOINT, EmulatorProcess, write_input

ROOT = Path(__file__).resolve().parent.parent


def one_run(latency_ms: float, src: Path, out: Path, checkout: Path) -> float:
    slow = ["--control-latency-ms", str(latency_ms), "--token-latency-ms", str(latency_ms)]
    emulator = EmulatorProcess.start("--latency-ms", "10", *(slow if latency_ms else []))
    try:
        cmd = [
            sys.executable, "-m", "engine", "score", str(src), "--endpoint", ENDPOINT,
            "--output", str(out), "--overwrite", "--progress", "off", "--quiet",
        ]
        started = time.perf_counter()
        done = subprocess.run(cmd, env=emulator.env, cwd=checkout, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"engine score failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return wall
    finally:
        emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0, 150.0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        src = write_input(Path(tmp) / "in.parquet", 100)
        out = Path(tmp) / "out.arrow"
        one_run(0.0, src, out, args.checkout)  # bytecode compiled, files cached
        for latency in args.latency_ms:
            walls = [one_run(latency, src, out, args.checkout) for _ in range(args.runs)]
            row = {
                "latency_ms": latency,
                "median_s": round(statistics.median(walls), 3),
                "min_s": round(min(walls), 3),
                "max_s": round(max(walls), 3),
                "runs": [round(w, 3) for w in walls],
            }
            results.append(row)
            print(
                f"control plane and tokens at {latency:g} ms: median {row['median_s']:.3f} s "
                f"({row['min_s']:.3f}-{row['max_s']:.3f}, {args.runs} runs)",
                flush=True,
            )
    if args.output:
        payload = {"checkout": str(args.checkout), "results": results}
        args.output.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
