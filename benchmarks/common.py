"""What the benchmark scripts share: an emulator in its own process, inputs, child processes.

Nothing here is part of the engine; the scripts import it as a sibling module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ENDPOINT = "demo-regressor"


@dataclass
class EmulatorProcess:
    """``engine emulate --json`` running as a child process."""

    process: subprocess.Popen[str]
    info: dict[str, Any]

    @classmethod
    def start(cls, *flags: str) -> EmulatorProcess:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine", "emulate", "--json", "--no-row-accounting", *flags],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        return cls(process, json.loads(process.stdout.readline()))

    @property
    def env(self) -> dict[str, str]:
        """The environment a client needs: credentials for the emulator, no config file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
        env.update(
            DATABRICKS_HOST=self.info["host"],
            DATABRICKS_CLIENT_ID=self.info["client_id"],
            DATABRICKS_CLIENT_SECRET=self.info["client_secret"],
            DATABRICKS_CONFIG_FILE=os.devnull,
        )
        return env

    def accounting(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.info["host"] + "/debug/accounting", timeout=5) as r:
            return dict(json.loads(r.read())["endpoints"][ENDPOINT])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _high_water_kib(pid: int) -> int:
    """The process's own peak RSS so far (``VmHWM``, KiB); 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1])


def write_input(path: Path, rows: int, *, seed: int = 0) -> Path:
    """``rows`` rows of the demo-regressor's columns, written in 100k-row pieces."""
    from engine.emulator.models import builtin_model

    model = builtin_model(ENDPOINT)
    with pq.ParquetWriter(path, model.sample(1, seed=0).schema) as writer:
        for start in range(0, rows, 100_000):
            writer.write_table(model.sample(min(100_000, rows - start), seed=seed + start))
    return path


@dataclass(frozen=True)
class ChildUsage:
    """What one child process used, read by the parent when it exits."""

    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False  # killed at the deadline: a stalled run, recorded as such


def run_child(cmd: list[str], env: dict[str, str], *, timeout_s: float = 600) -> ChildUsage:
    """Run ``cmd`` and return its own rusage (``wait4``), not the whole tree's.

    Output goes to files, not pipes, so a child that stalls is killed at ``timeout_s``
    instead of blocking the parent on a read. Peak RSS is the child's own ``VmHWM``, sampled
    while it runs: ``wait4``'s ``ru_maxrss`` starts at the parent's RSS (fork + exec carries
    the parent's high-water mark over), so it floors every child at this process's size.
    """
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=errors, text=True)
        status, usage, timed_out, peak_kib = _reap(process, started + timeout_s)
        wall_s = time.monotonic() - started
        out.seek(0)
        errors.seek(0)
        stdout, stderr = out.read(), errors.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildUsage(
        wall_s=wall_s,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=(peak_kib or usage.ru_maxrss) / 1024,
        exit_code=process.returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
    )


def _reap(process: subprocess.Popen[str], deadline: float) -> tuple[int, Any, bool, int]:
    killed, peak_kib = False, 0
    while True:
        peak_kib = max(peak_kib, _high_water_kib(process.pid))
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            return status, usage, killed, peak_kib
        if not killed and time.monotonic() > deadline:
            process.kill()
            killed = True
        time.sleep(0.01)
