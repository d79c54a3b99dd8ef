"""The benchmarks run end to end (short versions; timings are printed, never asserted)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from crmflow import Engine

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


TICK_BENCH = BENCH.parent / "bench_tick.py"


@pytest.fixture(scope="module")
def bench_tick() -> Iterator[ModuleType]:
    """``benchmarks/bench_tick.py`` imported as a module (the directory is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_tick", TICK_BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _rates_ok(values: list[float], count: int) -> None:
    assert len(values) == count
    assert all(math.isfinite(v) and v > 0 for v in values), values


def test_tick_benchmark_fires_every_timer_once(
    bench_tick: ModuleType, sql_store_url: str, tmp_path: Path
) -> None:
    timers, rounds = 200, 2
    result = bench_tick.measure_throughput(sql_store_url, timers, rounds)
    assert result.timers == timers
    for rates in (result.raw, result.deliver, result.no_deliver):
        _rates_ok(rates, rounds)

    # Two ticks a round (with and without delivery), each firing its own batch.
    expected = 2 * timers * rounds
    with Engine([], store=sql_store_url, load_entry_points=False) as engine:
        fired = engine.store.timers(statuses={"fired"})
        assert len(fired) == expected
        assert {t.fire_count for t in fired} == {1}
        assert {t.kind for t in fired} == {"reminder"}
        assert engine.store.count_timers(statuses={"pending"}) == 0
        rows = engine.store.outbox()
        assert len(rows) == expected
        assert sorted(r.timer_id or "" for r in rows) == sorted(t.id for t in fired)
        assert {(r.channel, r.status) for r in rows} == {("inbox", "delivered")}

    # Ticks that find nothing due: one store without timers, one with 20,000 not due.
    if sql_store_url.startswith("sqlite"):
        empty, loaded = (f"sqlite:///{tmp_path / name}" for name in ("empty.db", "loaded.db"))
    else:
        empty, loaded = (
            bench_tick.postgres_schema(sql_store_url, name) for name in ("idle_a", "idle_b")
        )
    pending = 20_000
    idle = bench_tick.measure_not_due(empty, loaded, pending, 0.2, 2)
    assert idle.pending == pending
    assert math.isfinite(idle.fill_seconds) and idle.fill_seconds > 0
    assert idle.empty and idle.loaded
    assert all(math.isfinite(s) and s > 0 for s in idle.empty + idle.loaded)
    with Engine([], store=loaded, load_entry_points=False) as engine:
        assert engine.store.count_timers(statuses={"pending"}) == pending
    with Engine([], store=empty, load_entry_points=False) as engine:
        assert engine.store.count_timers() == 0


def test_tick_benchmark_runs_and_prints_ratios() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(TICK_BENCH),
            *("--timers", "50", "--rounds", "2", "--seconds", "0.1", "--pending", "2000"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ratio") == 3
    assert "raw sqlite3" in proc.stdout and "2,000 pending, not due" in proc.stdout


FAULTS_BENCH = BENCH.parent / "bench_faults.py"


def test_faults_benchmark_kills_workers_and_every_timer_fires_once() -> None:
    # A session of its own: if the run hangs, its worker processes are killed with it.
    running = subprocess.Popen(
        [
            sys.executable,
            str(FAULTS_BENCH),
            *("--timers", "300", "--workers", "2", "--kills", "2", "--kill-every", "0.3"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = running.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(running.pid, signal.SIGKILL)
        running.communicate()
        raise
    proc = subprocess.CompletedProcess(running.args, running.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("exactly once: PASS") == 2, proc.stdout
    assert "FAIL" not in proc.stdout
    kills = re.search(r"(\d+) kills;", proc.stdout)
    assert kills is not None and int(kills.group(1)) >= 1, proc.stdout
    assert "ratio baseline/fault" in proc.stdout


SCENARIO_BENCH = BENCH.parent / "bench_scenarios.py"


@pytest.fixture(scope="module")
def bench_scenarios() -> Iterator[ModuleType]:
    """``benchmarks/bench_scenarios.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location("bench_scenarios", SCENARIO_BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_scenario_benchmark_direct_calls_match_simulate(bench_scenarios: ModuleType) -> None:
    import crmflow.engine._simulate as simulate_module

    files = bench_scenarios.load_files()
    assert [Path(f.source).name for f in files] == [
        "complaint.yaml",
        "deal.yaml",
        "onboarding.yaml",
        "receivable.yaml",
        "sales_order.yaml",
    ]
    steps = sum(len(s.steps) for f in files for s in f.scenarios)
    assert steps >= 100
    # Every scenario passes, and the direct calls leave what run_scenario() leaves.
    assert bench_scenarios.verify(files) == steps
    assert simulate_module.Engine is Engine
    # Each way runs every step of every scenario.
    assert bench_scenarios.run_direct(files) == steps
    assert bench_scenarios.run_loaded(files) == steps
    assert bench_scenarios.load_and_run() == steps


def test_scenario_benchmark_notices_a_call_left_out(
    bench_scenarios: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = bench_scenarios.load_files()
    monkeypatch.setitem(bench_scenarios.CALLS, "record_cost", bench_scenarios.CALLS["wait"])
    with pytest.raises(AssertionError, match="the direct calls left a different outcome"):
        bench_scenarios.verify(files)


def test_scenario_benchmark_times_every_way(bench_scenarios: ModuleType) -> None:
    import crmflow.engine._simulate as simulate_module

    files = bench_scenarios.load_files()
    timings = bench_scenarios.measure(files, 0.0, 2)
    assert simulate_module.Engine is Engine
    assert timings.scenarios == sum(len(f.scenarios) for f in files) >= 15
    for way in (timings.direct, timings.run_only, timings.load_and_run):
        _rates_ok(way.total, 2)
        _rates_ok(way.setup, 2)
        # Each way builds its engines through TimedEngine, so setup is part of every pass.
        assert all(s < t for s, t in zip(way.setup, way.total, strict=True))
    _rates_ok(timings.load.total, 2)
    assert timings.load.setup == [0.0, 0.0]
    lines = bench_scenarios.report(timings)
    assert sum("ratio" in line for line in lines) == 2
    assert sum("direct engine calls (baseline)" in line for line in lines) == 2
    assert any("simulate(): load + run" in line for line in lines)


def test_scenario_benchmark_runs_and_prints_ratios() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCENARIO_BENCH), "--seconds", "0.01", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[whole pass]" in proc.stdout and "[steps alone]" in proc.stdout
    assert proc.stdout.count("1.000") == 2  # the baseline row of each table
    assert "loading the files alone" in proc.stdout
