"""Timers survive worker crashes: draining due timers while workers are killed with SIGKILL.

Each run stores ``--timers`` one-shot personal reminders due an hour ago (the records
``add_reminder(user, message=..., at=...)`` writes, inbox channel: each fires one inbox
notification), starts ``--workers`` ``crmflow worker --store URL --workflows workflows/
--lease 2s`` processes against that store and times how long it takes from their start until
every timer fired and no outbox row is pending. It polls every 0.1 s, from one engine:
``store.count_timers(statuses={"fired"})``, then, once all fired, a ``count(*)`` of the
pending outbox rows, confirmed by ``store.outbox(statuses={"pending"})`` when it reaches 0.

1. **Baseline.** The workers drain the store undisturbed.
2. **Faults.** A fresh store with the same timers, the same number of workers; every
   ``--kill-every`` seconds one worker picked at random (seeded with ``--seed``) is killed
   with SIGKILL and a new one started in its place, ``--kills`` times or until the store is
   drained. What a killed worker had claimed but not committed waits for its lease to run out
   and is then taken over by another worker; the benchmark counts those claims (timers and
   notifications) right after each kill.

After each run it checks exactly once: ``--timers`` fired timers and none pending, as many
outbox rows, one per timer, all delivered. It prints PASS or FAIL for each run and exits with
1 on a FAIL. The ratio printed is baseline/fault time: the share of the undisturbed speed that
survives the crashes.

Each run works on a fresh SQLite file in a temporary directory; with ``--postgresql URL`` on
that PostgreSQL database instead, each run in a schema of its own (``bench_faults_*``,
dropped afterwards).

Run: ``python benchmarks/bench_faults.py [--timers 20000] [--workers 3] [--kills 5]
[--kill-every 1.0] [--lease 2s] [--seed 1] [--postgresql postgresql://user@host/db]``.
Ratios matter, not absolute numbers: these machines are noisy, so both runs happen in the
same invocation, one right after the other, with the same timers and workers.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import sqlalchemy
from bench_tick import drop_postgres_schema, postgres_schema, reminders, store_timers

from crmflow import Engine
from crmflow.plugins._storage_api import Storage

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
POLL = 0.1
STALL = 120.0  # give up when neither the fired count nor the pending outbox moved for this long
STOP_WAIT = 30.0

LEFT_BEHIND = tuple(
    sqlalchemy.text(
        f"SELECT count(*) FROM {table} WHERE status = 'pending' AND claimed_by LIKE :claimant"
    )
    for table in ("crmflow_timers", "crmflow_outbox")
)
PENDING_OUTBOX = sqlalchemy.text("SELECT count(*) FROM crmflow_outbox WHERE status = 'pending'")


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


class Workers:
    """The ``crmflow worker`` processes of one run, all logging to one file."""

    def __init__(self, url: str, lease: str, log: IO[bytes]) -> None:
        self.url, self.lease, self.log = url, lease, log
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1) -> None:
        """Start ``count`` more workers."""
        for _ in range(count):
            self.running.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "crmflow.cli",
                        "worker",
                        *("--store", self.url, "--workflows", str(WORKFLOWS)),
                        *("--lease", self.lease),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=self.log,
                    env={
                        **os.environ,
                        "PYTHONPATH": os.pathsep.join(
                            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
                        ),
                    },
                )
            )

    def kill_one(self, rng: random.Random) -> int:
        """SIGKILL a worker picked by ``rng`` and start another; return the victim's pid.

        The victim gets no chance to finish or hand back what it claimed.
        """
        victim = self.running.pop(rng.randrange(len(self.running)))
        victim.kill()
        victim.wait()
        self.start()
        return victim.pid

    def exited(self) -> int | None:
        """The exit code of a worker that stopped by itself, if one did."""
        for worker in self.running:
            if worker.poll() is not None:
                return worker.returncode
        return None

    def stop(self) -> None:
        """SIGTERM every worker, wait for them; SIGKILL those that do not stop in time."""
        for worker in self.running:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        for worker in self.running:
            try:
                worker.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def left_behind(counter: sqlalchemy.Engine, pid: int) -> tuple[int, int]:
    """Pending timers and notifications still claimed by the (dead) worker process ``pid``.

    Claimants are named ``host:pid:random/n`` (``default_worker``); two ``count(*)`` queries.
    """
    pattern = {"claimant": f"{socket.gethostname()}:{pid}:%"}
    with counter.connect() as conn:
        timers, notifications = (
            int(conn.execute(sql, pattern).scalar_one()) for sql in LEFT_BEHIND
        )
    return timers, notifications


def log_tail(path: Path, chars: int = 3000) -> str:
    """The end of the workers' log."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one run measured and found."""

    label: str
    timers: int
    seconds: float = 0.0
    kills: int = 0
    left_timers: int = 0
    left_notifications: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every timer fired exactly once, with one delivered notification."""
        return not self.problems


@dataclass
class Faults:
    """How a run kills workers: ``kills`` times, ``every`` seconds (none: the baseline)."""

    kills: int = 0
    every: float = 1.0
    rng: random.Random = field(default_factory=random.Random)


def drained(store: Storage, counter: sqlalchemy.Engine, count: int) -> tuple[bool, tuple[int, int]]:
    """Whether every timer fired and no notification is pending; and the progress seen.

    The pending outbox is counted only once every timer fired, with a ``count(*)``: reading
    thousands of pending rows through ``store.outbox`` every 0.1 s would take the polling
    process half a core in the delivery phase, CPU the workers then lack. When the count is
    0, ``store.outbox(statuses={"pending"})`` confirms it.
    """
    fired = store.count_timers(statuses={"fired"})
    if fired < count:
        return False, (fired, -1)
    with counter.connect() as conn:
        pending = int(conn.execute(PENDING_OUTBOX).scalar_one())
    return pending == 0 and not store.outbox(statuses={"pending"}), (fired, pending)


def exactly_once(store: Storage, count: int) -> list[str]:
    """What is wrong with the store after a run: nothing when each timer fired exactly once."""
    problems = []
    fired = store.count_timers(statuses={"fired"})
    if fired != count:
        problems.append(f"{fired:,} timers fired, expected {count:,}")
    pending = store.count_timers(statuses={"pending"})
    if pending:
        problems.append(f"{pending:,} timers still pending")
    rows = store.outbox()
    if len(rows) != count:
        problems.append(f"{len(rows):,} outbox rows, expected {count:,}")
    distinct = len({r.timer_id for r in rows})
    if distinct != count:
        problems.append(f"{distinct:,} distinct timers in the outbox rows, expected {count:,}")
    undelivered = sum(r.status != "delivered" for r in rows)
    if undelivered:
        problems.append(f"{undelivered:,} outbox rows not delivered")
    return problems


def run(url: str, label: str, args: argparse.Namespace, faults: Faults, log_path: Path) -> Run:
    """Store the timers on ``url``, time the workers draining them, then check the store."""
    result = Run(label, args.timers)
    with (
        Engine.from_path(WORKFLOWS, store=url, load_entry_points=False) as engine,
        log_path.open("ab") as log,
    ):
        store = engine.store
        store_timers(engine, reminders(args.timers, datetime.now(UTC) - timedelta(hours=1)))
        counter = sqlalchemy.create_engine(url)
        workers = Workers(url, args.lease, log)
        try:
            clock = time.perf_counter
            start = clock()
            workers.start(args.workers)
            next_kill = start + faults.every
            seen, moved = (-1, -1), start
            while True:
                done, progress = drained(store, counter, args.timers)
                now = clock()
                if done:
                    result.seconds = now - start
                    break
                if progress != seen:
                    seen, moved = progress, now
                elif now - moved > STALL:
                    raise RuntimeError(f"{label}: stuck at {progress}\n{log_tail(log_path)}")
                code = workers.exited()
                if code is not None:
                    raise RuntimeError(f"{label}: a worker exited ({code})\n{log_tail(log_path)}")
                if result.kills < faults.kills and now >= next_kill:
                    timers, notifications = left_behind(counter, workers.kill_one(faults.rng))
                    result.left_timers += timers
                    result.left_notifications += notifications
                    result.kills += 1
                    next_kill += faults.every
                time.sleep(POLL)
        finally:
            workers.stop()
            counter.dispose()
        result.problems = exactly_once(store, args.timers)
    return result


@contextmanager
def stores(tmp: Path, postgresql: str | None, names: tuple[str, ...]) -> Iterator[list[str]]:
    """One fresh store URL per name: SQLite files in ``tmp``, or PostgreSQL schemas."""
    if postgresql is None:
        yield [f"sqlite:///{tmp / f'{name}.db'}" for name in names]
        return
    try:
        yield [postgres_schema(postgresql, name) for name in names]
    finally:
        for name in names:
            with suppress(Exception):
                drop_postgres_schema(postgresql, name)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def print_run(r: Run) -> None:
    """One run's line, and what went wrong if anything did."""
    verdict = "PASS" if r.passed else "FAIL"
    print(
        f"  {r.label:<30} drained in {r.seconds:>7.2f} s  {r.timers / r.seconds:>7,.0f} timers/s"
        f"   exactly once: {verdict}"
    )
    for problem in r.problems:
        print(f"    {problem}")


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Run the baseline and the fault run, print the results; exit 1 unless both pass."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timers", type=int, default=20_000, help="due reminders per run")
    parser.add_argument("--workers", type=int, default=3, help="worker processes at any time")
    parser.add_argument("--kills", type=int, default=5, help="workers killed in the fault run")
    parser.add_argument(
        "--kill-every", type=float, default=1.0, help="seconds between two kills (from the start)"
    )
    parser.add_argument("--lease", default="2s", help="the workers' --lease")
    parser.add_argument("--seed", type=int, default=1, help="seed of the choice of victims")
    parser.add_argument(
        "--postgresql",
        metavar="URL",
        help="run on this PostgreSQL database (in schemas bench_faults_*, dropped after)",
    )
    args = parser.parse_args()
    # Stopped with SIGTERM (a timeout, Ctrl-C's sibling): unwind, so that the workers are
    # stopped and the temporary stores removed by the finally blocks.
    signal.signal(signal.SIGTERM, _exit_on_signal)

    backend = "postgresql" if args.postgresql else "sqlite"
    print(
        f"{args.timers:,} due reminders drained by {args.workers} workers "
        f"(crmflow worker --lease {args.lease}); fault run: one killed with SIGKILL and "
        f"replaced every {args.kill_every:g} s, up to {args.kills} times (seed {args.seed})"
    )
    print(f"\n[{backend}] a fresh {'schema' if args.postgresql else 'file'} per run")
    with (
        tempfile.TemporaryDirectory() as tmp,
        stores(Path(tmp), args.postgresql, ("bench_faults_base", "bench_faults_kill")) as urls,
    ):
        log = Path(tmp) / "workers.log"
        base = run(urls[0], "no faults", args, Faults(), log)
        print_run(base)
        faults = Faults(args.kills, args.kill_every, random.Random(args.seed))
        hit = run(urls[1], f"a worker killed every {args.kill_every:g} s", args, faults, log)
        print_run(hit)
    print(
        f"  {hit.kills} kills; their claims taken over when the lease ran out: "
        f"{hit.left_timers:,} timers, {hit.left_notifications:,} notifications"
    )
    print(f"  ratio baseline/fault {base.seconds / hit.seconds:.3f}")
    if not (base.passed and hit.passed):
        print("exactly once: FAIL")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
