"""Cost of claiming due timers, with and without a million timers that are not due yet.

A scheduler tick claims the due timers (``Storage.claim_due_timers``). Pending timers due
later (reminders for next year, SLA deadlines weeks away) must not slow that claim down: the
SQL back ends answer it with a range scan of the ``(status, due_us, id)`` index, the memory
store pops a heap. For each back end this measures the same claim (10 due timers, limit 50)
on a store holding only those 10 and on one that also holds ``--timers`` pending timers due
in ten years, and prints the ratio of the two claim times (1.0 means no cost at all).

Run: ``python benchmarks/bench_tick_storage.py [--seconds 3] [--timers 1000000]
[--postgresql postgresql://user@host/empty_db]``. Ratios matter, not absolute numbers: both
sides of each ratio run in the same process, interleaved (PostgreSQL: one after the other, in
the one database given). SQLite runs with ``synchronous=normal`` so that the fsync of each
claim's commit does not hide the cost of the query itself.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crmflow.plugins._storage_api import Storage, TimerRecord
from crmflow.plugins.memory_storage import MemoryStorage
from crmflow.plugins.sql_storage import SqlStorage

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
FAR = T0 + timedelta(days=3650)
DUE = 10
LEASE = timedelta(seconds=1)
CHUNK = 50_000


def rate(fn: Callable[[], None], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()  # warm up
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(10):
            fn()
        count += 10
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def add_due(store: Storage) -> None:
    """The timers every claim finds: due before ``T0``."""
    with store.transaction() as tx:
        tx.insert_timers(
            [
                TimerRecord(
                    id=f"due-{n}",
                    kind="after",
                    name="follow_up",
                    due_at=T0 - timedelta(minutes=n),
                    created_at=T0,
                    instance_key=f"SO-{n}",
                )
                for n in range(DUE)
            ]
        )


def add_later(store: Storage, count: int) -> float:
    """``count`` pending timers due in ten years, in one transaction; return the seconds."""
    start = time.perf_counter()
    with store.transaction() as tx:
        for first in range(0, count, CHUNK):
            tx.insert_timers(
                [
                    TimerRecord(
                        id=f"later-{n:08d}",
                        kind="after",
                        name="follow_up",
                        due_at=FAR + timedelta(seconds=n),
                        created_at=T0,
                        instance_key=f"L-{n}",
                    )
                    for n in range(first, min(first + CHUNK, count))
                ]
            )
    return time.perf_counter() - start


def claimer(store: Storage) -> Callable[[], None]:
    """One tick's claim; each call is a lease later, so the previous claims have run out."""
    tick = [0]

    def claim() -> None:
        tick[0] += 1
        now = T0 + tick[0] * LEASE
        got = store.claim_due_timers(now, "bench", lease=LEASE, limit=50)
        assert len(got) == DUE, len(got)

    return claim


def compare(
    name: str, empty: Callable[[], None], loaded: Callable[[], None], secs: float, rounds: int
) -> None:
    """Interleave the two measurements; print the median time per claim and their ratio."""
    base_rates, loaded_rates = [], []
    for _ in range(rounds):
        base_rates.append(rate(empty, secs / rounds))
        loaded_rates.append(rate(loaded, secs / rounds))
    base_us = 1e6 / statistics.median(base_rates)
    loaded_us = 1e6 / statistics.median(loaded_rates)
    print(f"  {name:<10} 0 later: {base_us:>9,.1f} µs/claim")
    print(
        f"  {name:<10} with later: {loaded_us:>6,.1f} µs/claim   ratio {loaded_us / base_us:.3f}"
        "   (target <= 1.5)"
    )


def main() -> None:
    """Run every measurement and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--timers", type=int, default=1_000_000, help="pending timers not due yet")
    parser.add_argument(
        "--postgresql", metavar="URL", help="also measure on this (empty) PostgreSQL database"
    )
    args = parser.parse_args()
    secs, later = args.seconds, args.timers
    rounds = 3

    print(f"claim of {DUE} due timers, alone and next to {later:,} pending timers not due")

    print("\n[memory]")
    empty_mem, loaded_mem = MemoryStorage(), MemoryStorage()
    add_due(empty_mem)
    add_due(loaded_mem)
    print(f"  filled in {add_later(loaded_mem, later):.1f} s")
    compare("memory", claimer(empty_mem), claimer(loaded_mem), secs, rounds)
    empty_mem.close()
    loaded_mem.close()

    print("\n[sqlite] WAL, synchronous=normal")
    with tempfile.TemporaryDirectory() as tmp:
        empty_sql = SqlStorage(f"sqlite:///{Path(tmp) / 'empty.db'}?synchronous=normal")
        loaded_sql = SqlStorage(f"sqlite:///{Path(tmp) / 'loaded.db'}?synchronous=normal")
        add_due(empty_sql)
        add_due(loaded_sql)
        print(f"  filled in {add_later(loaded_sql, later):.1f} s")
        compare("sqlite", claimer(empty_sql), claimer(loaded_sql), secs, rounds)
        empty_sql.close()
        loaded_sql.close()

    if args.postgresql:
        print("\n[postgresql] one database: without, then with the later timers")
        pg = SqlStorage(args.postgresql)
        try:
            add_due(pg)
            claim = claimer(pg)
            base_us = 1e6 / rate(claim, secs)
            print(f"  filled in {add_later(pg, later):.1f} s")
            loaded_us = 1e6 / rate(claim, secs)
            print(f"  postgresql 0 later: {base_us:>9,.1f} µs/claim")
            print(
                f"  postgresql with later: {loaded_us:>6,.1f} µs/claim   ratio "
                f"{loaded_us / base_us:.3f}   (target <= 1.5)"
            )
        finally:
            pg.close()


if __name__ == "__main__":
    main()
