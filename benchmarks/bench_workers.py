"""Splitting the cores into workers × threads: the quick grid (``benchmarks/grids/quick.toml``,
what ``make quick`` runs) in one process with every core as a torch thread, in one process with
one thread, and as Dask workers of one thread each, one per core, all measured in the same run.

Run: ``pytest benchmarks/bench_workers.py --benchmark-only -s`` (needs the ``dask`` extra).
Prints the wall time of each split and its speed-up over one process with every core, and
stores them in ``benchmark.extra_info``. The machine's CPU and load are recorded beside them:
on a shared machine every figure moves, so compare the ratios of one run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

GRID = Path(__file__).parent / "grids" / "quick.toml"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def grid_seconds(out: Path, *options: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hcibench.cli", "run", "--grid", str(GRID), "--out", str(out), *options],
        check=True,
        capture_output=True,
        timeout=3600,
    )
    return time.perf_counter() - started


def test_workers_times_threads(benchmark, tmp_path):
    pytest.importorskip("distributed")
    cores = os.cpu_count() or 1
    splits = {
        f"1 process × {cores} threads": ("--set", f"threads={cores}"),
        "1 process × 1 thread": ("--set", "threads=1"),
        f"{cores} Dask workers × 1 thread": (
            "--executor",
            "dask",
            "--workers",
            str(cores),
            "--set",
            "threads=1",
        ),
    }
    seconds = {}

    def run_all():
        for i, (name, options) in enumerate(splits.items()):
            seconds[name] = grid_seconds(tmp_path / f"split{i}-{time.time_ns()}", *options)

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    base = seconds[f"1 process × {cores} threads"]
    print(f"\nquick grid on {cpu_model()} ({cores} cores, load {os.getloadavg()[0]:.1f}):")
    for name, value in seconds.items():
        print(f"  {name:<28} {value:7.1f} s   {base / value:4.2f}× the first")
    benchmark.extra_info.update(
        {
            "cpu": cpu_model(),
            "cores": cores,
            "seconds": seconds,
            "speedup": {k: base / v for k, v in seconds.items()},
        }
    )
