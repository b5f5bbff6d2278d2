"""A pace the user tells (``--qps``): how much of it the engine sends.

    python benchmarks/told_pace.py                        # --qps 180 and 100, 2 runs each
    python benchmarks/told_pace.py --qps 180 --runs 4 --rows 200000
    python benchmarks/told_pace.py --qps 180 --bucket 200 1   # a strict endpoint under it

``engine score`` as a user runs it, in 100-row requests, against an ``engine emulate`` with no
limit of its own (10 ms latency): the only bound is the user's ``--qps``, so requests/s over
the run (the summary's ``requests_per_s``) divided by ``--qps`` is what the pacer delivers of
it. At 180 requests/s the turns are 5.6 ms apart, and an event-loop timer that wakes up to a
millisecond late costs a tenth of the pace unless the pacer makes the wait precise.

With ``--bucket RATE BURST`` the emulator is strict instead: a token bucket of RATE requests/s
holding BURST, answering 429 without ``Retry-After``, as issue 11's independent workspace. A
pace just under such a bucket's rate is where waking on time matters most, and where it can
cost refusals (two requests that leave closer than 1/RATE apart meet a burst of one).

Reported per ``--qps``: each run's requests/s and its fraction of ``--qps``, the share of
requests answered 429, and the wall time of the whole process. Results go to
``results/told_pace.json``.
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


def one_run(
    qps: float, src: Path, tmp: Path, bucket: tuple[float, float] | None
) -> dict[str, Any]:
    strict = ()
    if bucket is not None:
        strict = ("--qps", f"{bucket[0]:g}", "--qps-burst", f"{bucket[1]:g}",
                  "--retry-after", "none")
    emulator = EmulatorProcess.start("--latency-ms", "10", *strict)
    summary = tmp / "summary.json"
    try:
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable, "-m", "engine", "score", str(src), "--endpoint", ENDPOINT,
                "--output", str(tmp / "out.arrow"), "--overwrite", "--no-resume",
                "--progress", "off", "--quiet", "--batch-rows", str(BATCH_ROWS),
                "--qps", f"{qps:g}", "--summary", str(summary),
            ],
            env=emulator.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.monotonic() - started
    finally:
        emulator.stop()
    done = json.loads(summary.read_text())
    rate = float(done["requests_per_s"])
    return {
        "qps": qps,
        "requests_per_s": rate,
        "fraction": rate / qps,
        "throttled_share": float(done["throttled_share"]),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qps", type=float, nargs="+", default=[180.0, 100.0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--bucket", type=float, nargs=2, metavar=("RATE", "BURST"),
        help="a strict endpoint: a token bucket of RATE req/s with BURST, no Retry-After",
    )
    parser.add_argument("--output", default=str(ROOT / "results" / "told_pace.json"))
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        src = write_input(tmp / "input.parquet", args.rows)
        for number in range(args.runs):
            for qps in args.qps:
                run = one_run(qps, src, tmp, args.bucket)
                runs.append(run)
                print(
                    f"run {number + 1}: --qps {qps:g}: {run['requests_per_s']:.1f} requests/s "
                    f"({run['fraction']:.3f} of it), {run['throttled_share']:.1%} 429s, "
                    f"wall {run['wall_s']:.2f} s",
                    flush=True,
                )
    result = {"rows": args.rows, "bucket": args.bucket, "runs": runs}
    Path(args.output).write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
