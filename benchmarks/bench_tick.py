"""``Engine.tick()``: due timers fired per second, and the cost of timers that are not due yet.

1. **Throughput.** Each round stores ``--timers`` personal one-shot reminders (the records
   ``add_reminder(user, message=..., at=...)`` writes, inbox channel) due an hour ago, then
   times one ``tick()`` firing them all: with delivery (the inbox rows are marked delivered)
   and with ``tick(deliver=False)``. The baseline, measured in the same rounds, is raw
   ``sqlite3`` running one transaction per timer on the same tables: UPDATE the timer row,
   INSERT its outbox row, COMMIT. Same durability as the engine's default (WAL,
   ``synchronous=FULL``, ``BEGIN IMMEDIATE``). The ratio is crmflow/raw. Every timer is
   checked to have fired exactly once, with one delivered inbox row.
2. **Timers not due cost nothing.** The median time of a ``tick()`` that finds nothing to do,
   on a store without pending timers and on one holding ``--pending`` reminders due in ten
   years (stored in one transaction through ``StorageTx.insert_timers``). A ratio near 1.0
   means the pending timers cost nothing measurable.

With ``--postgresql URL`` both parts also run on that PostgreSQL database, each store in a
schema of its own (``bench_tick_*``, dropped afterwards); the raw baseline is then psycopg on
copies of the two tables.

Run: ``python benchmarks/bench_tick.py [--timers 1000] [--rounds 5] [--seconds 3]
[--pending 1000000] [--postgresql postgresql://user@host/db]``. Ratios matter, not
absolute numbers: these machines are noisy, so both sides of each ratio run in the same
process, interleaved round by round.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from crmflow import Engine
from crmflow.plugins._storage_api import TimerRecord
from crmflow.plugins._timer_codec import timer_to_values

USERS = 97
CHUNK = 50_000


# ---------------------------------------------------------------------------------------------
# Timers
# ---------------------------------------------------------------------------------------------


def reminders(count: int, due: datetime, prefix: str = "") -> list[TimerRecord]:
    """``count`` one-shot reminders due at ``due``, as ``add_reminder`` would store them.

    One reminder is made by ``add_reminder`` on a memory engine; the others copy it with their
    own id, name, user and message, so the records match what the API writes.
    """
    with Engine([], store="memory://", load_entry_points=False) as scratch:
        template = scratch.add_reminder("user0", message="reminder", at=due)
    return [
        replace(
            template,
            id=f"{prefix}{n:08d}" if prefix else uuid.uuid4().hex,
            name=f"reminder-{n}",
            owner=f"user{n % USERS}",
            payload={**template.payload, "message": f"reminder {n}"},
        )
        for n in range(count)
    ]


def store_timers(engine: Engine, timers: Sequence[TimerRecord]) -> float:
    """Insert ``timers`` in one transaction, in chunks; return the seconds it took."""
    start = time.perf_counter()
    with engine.store.transaction() as tx:
        for first in range(0, len(timers), CHUNK):
            tx.insert_timers(timers[first : first + CHUNK])
    return time.perf_counter() - start


def fill_pending(engine: Engine, count: int) -> float:
    """``count`` reminders due in ten years, in one transaction; return the seconds."""
    far = datetime.now(UTC) + timedelta(days=3650)
    return store_timers(engine, reminders(count, far, prefix="later-"))


# ---------------------------------------------------------------------------------------------
# The raw baseline
# ---------------------------------------------------------------------------------------------


class RawBaseline:
    """One transaction per timer on the bare driver: UPDATE the timer, INSERT the outbox row.

    On SQLite it works in a file of its own (tables created by crmflow, so the same columns
    and indexes); on PostgreSQL in copies of crmflow's two tables (``LIKE ... INCLUDING ALL``)
    in the schema of ``crm_url``.
    """

    def __init__(self, crm_url: str) -> None:
        self.postgres = crm_url.startswith("postgresql")
        if self.postgres:
            import psycopg

            self.conn: Any = psycopg.connect(libpq_url(crm_url))
            self.timers, self.outbox = "raw_timers", "raw_outbox"
            for copy, table in ((self.timers, "crmflow_timers"), (self.outbox, "crmflow_outbox")):
                self.conn.execute(f"DROP TABLE IF EXISTS {copy}")
                self.conn.execute(f"CREATE TABLE {copy} (LIKE {table} INCLUDING ALL)")
            self.conn.commit()
            self.mark = "%s"
        else:
            path = Path(make_url(crm_url).database or "")
            raw_path = path.with_name(f"{path.stem}-raw{path.suffix}")
            Engine([], store=f"sqlite:///{raw_path}", load_entry_points=False).close()
            self.conn = sqlite3.connect(raw_path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.timers, self.outbox = "crmflow_timers", "crmflow_outbox"
            self.mark = "?"
        self.fired = 0

    def _sql(self, text: str) -> str:
        return text.replace("?", self.mark)

    def add(self, timers: Sequence[TimerRecord]) -> None:
        """Store the timers the next :meth:`fire` fires (not timed)."""
        rows = [timer_to_values(t) for t in timers]
        names = list(rows[0])
        sql = self._sql(
            f"INSERT INTO {self.timers} ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        if self.postgres:
            with self.conn.cursor() as cur:
                cur.executemany(sql, [tuple(r.values()) for r in rows])
            self.conn.commit()
        else:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(sql, [tuple(r.values()) for r in rows])
            self.conn.execute("COMMIT")

    def fire(self, timers: Sequence[TimerRecord]) -> float:
        """Fire ``timers`` one transaction each; return the seconds it took."""
        update = self._sql(
            f"UPDATE {self.timers} SET status = 'fired', fired_at = ?, "
            "fire_count = fire_count + 1, claimed_by = NULL, lease_us = NULL "
            "WHERE id = ? AND status = 'pending'"
        )
        insert = self._sql(
            f"INSERT INTO {self.outbox} (id, channel, recipient, subject, created_at, "
            "created_us, instance_key, event, intended, address, body, status, attempts, "
            "last_error, timer_id, metadata_json) "
            "VALUES (?, 'inbox', ?, ?, ?, ?, NULL, 'reminder', ?, '', '', 'pending', 0, '', ?, ?)"
        )
        conn, postgres = self.conn, self.postgres
        start = time.perf_counter()
        for timer in timers:
            now = datetime.now(UTC)
            stamp = now.isoformat()
            user = timer.owner
            meta = json.dumps({"occurrence": timer.due_at.isoformat(), "spec": f"user:{user}"})
            if not postgres:
                conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(update, (stamp, timer.id))
            assert cur.rowcount == 1, timer.id
            conn.execute(
                insert,
                (
                    uuid.uuid4().hex,
                    user,
                    timer.payload["message"],
                    stamp,
                    int(now.timestamp() * 1_000_000),
                    user,
                    timer.id,
                    meta,
                ),
            )
            if postgres:
                conn.commit()
            else:
                conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        self.fired += len(timers)
        return elapsed

    def check(self) -> None:
        """Every timer fired once, with one outbox row each."""
        fired = self.conn.execute(
            f"SELECT count(*) FROM {self.timers} WHERE status = 'fired' AND fire_count = 1"
        ).fetchone()[0]
        rows, distinct = self.conn.execute(
            f"SELECT count(*), count(DISTINCT timer_id) FROM {self.outbox}"
        ).fetchone()
        if self.postgres:
            self.conn.commit()
        assert fired == rows == distinct == self.fired, (fired, rows, distinct, self.fired)

    def close(self) -> None:
        """Drop the PostgreSQL copies; close the connection."""
        if self.postgres:
            self.conn.execute(f"DROP TABLE IF EXISTS {self.timers}, {self.outbox}")
            self.conn.commit()
        self.conn.close()


# ---------------------------------------------------------------------------------------------
# 1. Throughput
# ---------------------------------------------------------------------------------------------


@dataclass
class Throughput:
    """Timers fired per second, one number per round and side."""

    timers: int
    raw: list[float] = field(default_factory=list)
    deliver: list[float] = field(default_factory=list)
    no_deliver: list[float] = field(default_factory=list)


def check_fired(engine: Engine, expected: int) -> None:
    """Every timer fired exactly once, with exactly one delivered inbox row."""
    fired = engine.store.timers(statuses={"fired"})
    assert len(fired) == expected, (len(fired), expected)
    assert all(t.fire_count == 1 for t in fired)
    assert engine.store.count_timers(statuses={"pending"}) == 0
    rows = engine.store.outbox()
    assert len(rows) == expected, (len(rows), expected)
    assert {r.timer_id for r in rows} == {t.id for t in fired}
    assert all(r.status == "delivered" and r.channel == "inbox" for r in rows)


def timed_tick(engine: Engine, count: int, *, deliver: bool) -> float:
    """Store ``count`` due reminders, then time the one ``tick()`` that fires them."""
    store_timers(engine, reminders(count, datetime.now(UTC) - timedelta(hours=1)))
    start = time.perf_counter()
    report = engine.tick(deliver=deliver)
    elapsed = time.perf_counter() - start
    assert report.fired == count, report
    assert report.delivered == (count if deliver else 0), report
    if not deliver:  # deliver the inbox rows now (not timed), so the next round starts clean
        assert engine.deliver_outbox().delivered == count
    return elapsed


def measure_throughput(url: str, timers: int, rounds: int) -> Throughput:
    """Interleave raw, ``tick()`` and ``tick(deliver=False)``, ``rounds`` times."""
    result = Throughput(timers)
    with Engine([], store=url, load_entry_points=False) as engine:
        raw = RawBaseline(url)
        try:
            for _ in range(rounds):
                batch = reminders(timers, datetime.now(UTC) - timedelta(hours=1))
                raw.add(batch)
                result.raw.append(timers / raw.fire(batch))
                result.deliver.append(timers / timed_tick(engine, timers, deliver=True))
                result.no_deliver.append(timers / timed_tick(engine, timers, deliver=False))
            raw.check()
        finally:
            raw.close()
        check_fired(engine, 2 * timers * rounds)
    return result


# ---------------------------------------------------------------------------------------------
# 2. Ticks that find nothing due
# ---------------------------------------------------------------------------------------------


@dataclass
class NotDue:
    """Seconds per idle ``tick()``, without and with the pending timers."""

    pending: int
    fill_seconds: float = 0.0
    empty: list[float] = field(default_factory=list)
    loaded: list[float] = field(default_factory=list)


def idle_ticks(engine: Engine, seconds: float, into: list[float]) -> None:
    """Time single idle ticks for about ``seconds``; append each one's duration."""
    clock = time.perf_counter
    deadline = clock() + seconds
    while True:
        for _ in range(20):
            start = clock()
            report = engine.tick()
            into.append(clock() - start)
            assert report.idle, report
        if clock() >= deadline:
            return


def measure_not_due(
    empty_url: str, loaded_url: str, pending: int, seconds: float, rounds: int
) -> NotDue:
    """Idle ``tick()`` time on a store without timers and one with ``pending`` not due.

    The two are measured interleaved, ``rounds`` blocks each, about ``seconds`` per store.
    """
    result = NotDue(pending)
    per_block = seconds / rounds
    with (
        Engine([], store=empty_url, load_entry_points=False) as empty,
        Engine([], store=loaded_url, load_entry_points=False) as loaded,
    ):
        for engine in (empty, loaded):
            assert engine.store.count_timers() == 0, "needs stores without timers"
        result.fill_seconds = fill_pending(loaded, pending)
        assert loaded.store.count_timers(statuses={"pending"}) == pending
        for engine in (empty, loaded):
            idle_ticks(engine, 0.1, [])  # warm up
        for _ in range(rounds):
            idle_ticks(empty, per_block, result.empty)
            idle_ticks(loaded, per_block, result.loaded)
    return result


def postgres_schema(url: str, schema: str) -> str:
    """(Re)create ``schema`` in the database of ``url``; return ``url`` working in it."""
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return scoped.render_as_string(hide_password=False)


def drop_postgres_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it."""
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def libpq_url(url: str) -> str:
    """A crmflow/SQLAlchemy PostgreSQL URL as psycopg takes it (no ``+driver``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> str:
    """Median and range of per-round rates."""
    span = f"({min(values):,.0f}-{max(values):,.0f})"
    return f"{statistics.median(values):>8,.0f}/s {span:<15}"


def print_throughput(raw_name: str, t: Throughput) -> None:
    """The throughput table of one back end."""
    raw = statistics.median(t.raw)
    print(f"  {raw_name:<46} {spread(t.raw)}")
    for label, rates in (
        ("crmflow tick(), delivery included", t.deliver),
        ("crmflow tick(deliver=False)", t.no_deliver),
    ):
        ratio = statistics.median(rates) / raw
        print(f"  {label:<46} {spread(rates)} ratio {ratio:.3f}")


def print_not_due(n: NotDue) -> None:
    """The idle-tick table of one back end."""
    empty_us = statistics.median(n.empty) * 1e6
    loaded_us = statistics.median(n.loaded) * 1e6
    print(f"  filled {n.pending:,} pending timers in {n.fill_seconds:.1f} s")
    print(f"  {'no pending timers':<30} {empty_us:>8,.1f} µs/tick   ({len(n.empty):,} ticks)")
    print(
        f"  {f'{n.pending:,} pending, not due':<30} {loaded_us:>8,.1f} µs/tick   "
        f"({len(n.loaded):,} ticks)   ratio {loaded_us / empty_us:.3f}"
    )


def main() -> None:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timers", type=int, default=1000, help="due timers per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each measurement")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="time per side of the idle-tick comparison"
    )
    parser.add_argument(
        "--pending", type=int, default=1_000_000, help="pending timers not due for part 2"
    )
    parser.add_argument(
        "--postgresql",
        metavar="URL",
        help="also measure on this PostgreSQL database (in schemas bench_tick_*, dropped after)",
    )
    args = parser.parse_args()

    print(
        f"1. due reminders fired per second: {args.timers:,} per round, {args.rounds} rounds, "
        "median (min-max)\n2. idle tick(): median time per tick, without and with "
        f"{args.pending:,} pending timers due in ten years"
    )
    with tempfile.TemporaryDirectory() as tmp:
        print("\n[sqlite] WAL, synchronous=FULL (the default); one file per store")
        t = measure_throughput(f"sqlite:///{Path(tmp) / 'crm.db'}", args.timers, args.rounds)
        print_throughput("raw sqlite3: UPDATE + INSERT, commit per timer", t)
        n = measure_not_due(
            f"sqlite:///{Path(tmp) / 'empty.db'}",
            f"sqlite:///{Path(tmp) / 'loaded.db'}",
            args.pending,
            args.seconds,
            args.rounds,
        )
        print_not_due(n)

    if args.postgresql:
        print("\n[postgresql] one schema per store")
        names = ("bench_tick_fire", "bench_tick_empty", "bench_tick_loaded")
        try:
            fire, empty, loaded = (postgres_schema(args.postgresql, name) for name in names)
            t = measure_throughput(fire, args.timers, args.rounds)
            print_throughput("raw psycopg: UPDATE + INSERT, commit per timer", t)
            print_not_due(measure_not_due(empty, loaded, args.pending, args.seconds, args.rounds))
        finally:
            for name in names:
                drop_postgres_schema(args.postgresql, name)


if __name__ == "__main__":
    main()
