"""``crmflow worker`` processes sharing one database: every due timer fires exactly once.

The timers are one-shot personal reminders due in the past; each firing writes one outbox row
in the same transaction as marking the timer fired, so counting rows in the database shows
whether any timer fired twice or not at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmflow import Engine
from crmflow.plugins._storage_api import TimerRecord

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"


def _due_reminders(url: str, count: int) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    with Engine.from_path(WORKFLOWS, store=url, load_entry_points=False) as engine:
        timers = [
            TimerRecord(
                id=f"t{n:06d}-{uuid.uuid4().hex[:6]}",
                kind="reminder",
                name=f"r{n}",
                due_at=past,
                created_at=past,
                owner=f"user{n % 97}",
                payload={"message": f"reminder {n}", "timezone": "UTC"},
            )
            for n in range(count)
        ]
        with engine.store.transaction() as tx:
            tx.insert_timers(timers)


def _worker(url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crmflow.cli",
            "worker",
            "--store",
            url,
            "--workflows",
            str(WORKFLOWS),
            "--interval",
            "0.2",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _check_exactly_once(url: str, count: int) -> None:
    with Engine.from_path(WORKFLOWS, store=url, load_entry_points=False) as engine:
        store = engine.store
        assert store.count_timers(statuses={"pending"}) == 0
        assert store.count_timers(statuses={"fired"}) == count
        rows = store.outbox()
        assert len(rows) == count
        assert len({r.timer_id for r in rows}) == count
        assert {r.status for r in rows} == {"delivered"}


@pytest.mark.postgresql
def test_two_workers_on_postgresql_fire_10000_timers_exactly_once(postgres_url: str) -> None:
    count = 10_000
    _due_reminders(postgres_url, count)
    workers = [_worker(postgres_url, "--until-idle") for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
        assert "worker stopped" in out
    fired = [int(out.split(":")[1].split("timers fired")[0]) for out, _ in outputs]
    assert sum(fired) == count
    _check_exactly_once(postgres_url, count)


def test_two_workers_on_one_sqlite_file_fire_each_timer_once(sqlite_url: str) -> None:
    count = 600
    _due_reminders(sqlite_url, count)
    workers = [_worker(sqlite_url, "--until-idle") for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    _check_exactly_once(sqlite_url, count)


def test_a_worker_stops_gracefully_on_sigterm(sqlite_url: str) -> None:
    with Engine.from_path(WORKFLOWS, store=sqlite_url, load_entry_points=False):
        pass  # create the tables before the worker starts
    worker = _worker(sqlite_url)
    time.sleep(1.5)
    assert worker.poll() is None  # it keeps running while idle
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "worker stopped: 0 timers fired" in out
