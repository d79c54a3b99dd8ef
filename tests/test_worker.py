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
from collections.abc import Callable
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


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    "url_fixture", ["sqlite_url", pytest.param("postgres_url", marks=pytest.mark.postgresql)]
)
def test_a_killed_workers_timers_are_taken_over_and_fire_once(
    request: pytest.FixtureRequest, url_fixture: str
) -> None:
    url = str(request.getfixturevalue(url_fixture))
    count = 1000
    _due_reminders(url, count)
    with Engine.from_path(WORKFLOWS, store=url, load_entry_points=False) as watcher:
        store = watcher.store

        def fired() -> int:
            return store.count_timers(statuses={"fired"})

        victim = _worker(url, "--lease", "2s")
        _wait_for(lambda: fired() >= 50 or victim.poll() is not None, "the first fires")
        victim.send_signal(signal.SIGKILL)  # no chance to finish or hand back what it holds
        victim.communicate(timeout=30)
        before = fired()
        assert before < count, "the worker finished before it could be killed"
        held = [t for t in store.timers(statuses={"pending"}) if t.claimed_by]
        assert held, "killed between two batches: nothing left to take over"

        rescuer = _worker(url, "--lease", "2s")
        _wait_for(
            lambda: fired() == count and not store.outbox(statuses={"pending"}),
            "the rescuer to fire and deliver everything",
        )
        rescuer.send_signal(signal.SIGTERM)
        out, err = rescuer.communicate(timeout=60)
    assert rescuer.returncode == 0, err
    # Whatever the killed worker had claimed but not committed was taken over once its lease
    # ran out; what it had committed was not fired again.
    assert f"worker stopped: {count - before} timers fired" in out
    _check_exactly_once(url, count)
