"""Delta in/out against Parquet in/out: the same rows, ``engine score`` as a whole process.

Writes ``--rows`` rows of demo-regressor's columns once as a Parquet file and once as a Delta
table (the same data), and the Parquet file again into a Unity Catalog Volume the emulator
serves through its Files API (``--volumes-root``), starts the emulator with no faults in its
own process, then runs ``engine score`` for each pairing (parquet->parquet, delta->parquet,
parquet->delta, delta->delta, and volume->volume: ``/Volumes/...`` in and out through the
Files API, not mounted), ``--repeats`` times in rotating order, and prints the median
wall-clock rows/s (interpreter start-up, imports, reading, scoring, writing and, for Delta,
the commit included), the engine's own rows/s from its summary, CPU seconds and peak RSS.

    .venv/bin/python benchmarks/delta_io.py [--rows 500000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import ENDPOINT, EmulatorProcess, run_child, write_input

PAIRS = (
    ("parquet", "parquet"),
    ("delta", "parquet"),
    ("parquet", "delta"),
    ("delta", "delta"),
    ("volume", "volume"),
)
VOLUME = "/Volumes/main/default/bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    results = Path(__file__).parent / "results"
    parser.add_argument("--out", type=Path, default=results / "delta.json")
    args = parser.parse_args()
    from deltalake import write_deltalake

    work = Path(tempfile.mkdtemp(prefix="engine-delta-bench-"))
    served = work / "served"
    (served / "main" / "default" / "bench").mkdir(parents=True)
    emulator = EmulatorProcess.start("--volumes-root", str(served))
    try:
        inputs: dict[str, Path | str] = {
            "parquet": write_input(work / "in.parquet", args.rows)
        }
        shutil.copy(inputs["parquet"], served / "main" / "default" / "bench" / "in.parquet")
        inputs["volume"] = f"{VOLUME}/in.parquet"
        inputs["delta"] = work / "in_delta"
        parquet = pq.ParquetFile(inputs["parquet"])
        batches = pa.RecordBatchReader.from_batches(parquet.schema_arrow, parquet.iter_batches())
        write_deltalake(str(inputs["delta"]), batches)
        runs: dict[str, list[dict[str, float]]] = {f"{a}->{b}": [] for a, b in PAIRS}
        for repeat in range(args.repeats):
            for shift in range(len(PAIRS)):
                source, target = PAIRS[(repeat + shift) % len(PAIRS)]
                runs[f"{source}->{target}"].append(
                    _run(emulator, inputs[source], target, work, args.rows)
                )
        report = {name: _median(samples) for name, samples in runs.items()}
        report["rows"] = args.rows  # type: ignore[assignment]
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        for name, figures in report.items():
            print(name, figures)
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)


def _run(
    emulator: EmulatorProcess, source: Path | str, target: str, work: Path, rows: int
) -> dict[str, float]:
    output = work / ("out_delta" if target == "delta" else "out.parquet")
    if target == "volume":
        output = work / "served" / "main" / "default" / "bench" / "out.parquet"
    shutil.rmtree(output, ignore_errors=True)
    output.unlink(missing_ok=True)
    named = f"{VOLUME}/out.parquet" if target == "volume" else str(output)
    summary_path = work / "summary.json"
    cmd = [
        sys.executable, "-m", "engine", "score", str(source), "--endpoint", ENDPOINT,
        "-o", named, "--progress", "off", "--summary", str(summary_path),
    ]
    if target == "delta":
        cmd += ["--output-format", "delta"]
    usage = run_child(cmd, emulator.env)
    if usage.exit_code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({usage.exit_code}): {usage.stderr[-2000:]}")
    summary = json.loads(summary_path.read_text())
    assert summary["rows_scored"] == rows, summary
    return {
        "wall_s": usage.wall_s,
        "rows_per_s_process": rows / usage.wall_s,
        "rows_per_s_engine": summary["rows_per_s"],
        "cpu_s": usage.cpu_s,
        "peak_rss_mib": usage.peak_rss_mib,
    }


def _median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(s[key] for s in samples), 2) for key in samples[0]}


if __name__ == "__main__":
    main()
