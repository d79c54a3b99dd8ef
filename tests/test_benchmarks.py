"""The benchmark runs end to end (a short version; timings are printed, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fire.py"


def test_fire_benchmark_runs_and_prints_ratios() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "0.05"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ratio") >= 4
    assert "raw transitions" in proc.stdout and "raw sqlite3" in proc.stdout
