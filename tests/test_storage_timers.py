"""Timers and the notification outbox in storage, run against every back end.

Covers round trips, claiming (order, limit, leases, release), the compare-and-set of
``finish_timer`` and ``finish_delivery``, cancellation inside transactions, queries, and
concurrent claimers (threads and processes) that must never fire a timer twice.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.pool import NullPool

from crmflow._errors import StorageError
from crmflow.plugins._storage_api import OutboxRecord, Storage, StorageTx, TimerRecord
from crmflow.plugins.sql_storage import (
    _CLAIMABLE_OUTBOX,
    _CLAIMABLE_TIMERS,
    SCHEMA_VERSION,
    SqlStorage,
    _Compiled,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
CET = timezone(timedelta(hours=1))


def timer(timer_id: str, due: datetime = T0, **changes: Any) -> TimerRecord:
    base = TimerRecord(
        id=timer_id,
        kind="after",
        name="follow_up",
        due_at=due,
        created_at=T0 - timedelta(days=1),
        instance_key="SO-1",
        owner="alice",
        payload={"fire": "escalate"},
    )
    return replace(base, **changes)


def note(outbox_id: str, created: datetime = T0, **changes: Any) -> OutboxRecord:
    base = OutboxRecord(
        id=outbox_id,
        channel="email",
        recipient="bob",
        subject=f"Order {outbox_id}",
        created_at=created,
        instance_key="SO-1",
        event="approved",
        intended="bob",
        address="bob@example.com",
        body="Approved.",
    )
    return replace(base, **changes)


def add_timers(storage: Storage, *timers: TimerRecord) -> None:
    with storage.transaction() as tx:
        tx.insert_timers(list(timers))


def add_outbox(storage: Storage, *records: OutboxRecord) -> None:
    with storage.transaction() as tx:
        tx.insert_outbox(list(records))


def ids(records: list[TimerRecord] | list[OutboxRecord]) -> list[str]:
    return [r.id for r in records]


def claim(storage: Storage, now: datetime, worker: str = "w1", limit: int = 100) -> list[str]:
    return ids(storage.claim_due_timers(now, worker, lease=LEASE, limit=limit))


def finish(storage: Storage, timer_id: str, worker: str, **kwargs: Any) -> bool:
    with storage.transaction() as tx:
        return tx.finish_timer(timer_id, worker, at=kwargs.pop("at", T0), **kwargs)


class Boom(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Timers: round trips
# ---------------------------------------------------------------------------------------------


def test_timer_round_trip_keeps_values_and_instants(storage: Storage) -> None:
    payload = {
        "amount": Decimal("8000.00"),
        "deadline": date(2026, 2, 1),
        "at": datetime(2026, 1, 5, 10, 30, tzinfo=CET),
        "nested": {"$looks_like_a_tag": [1, "x", None]},
    }
    due = datetime(2026, 1, 6, 10, 0, 0, 123456, tzinfo=CET)
    record = timer(
        "t-1",
        due,
        kind="reminder",
        name="call back",
        instance_key=None,
        owner="carol",
        payload=payload,
        created_at=datetime(2026, 1, 5, 8, 0, tzinfo=CET),
    )
    add_timers(storage, record)

    got = storage.get_timer("t-1")
    assert got is not None
    assert got == record  # aware datetimes compare as instants
    assert got.due_at.utcoffset() == timedelta(0)  # compared instants come back in UTC
    assert got.due_at == datetime(2026, 1, 6, 9, 0, 0, 123456, tzinfo=UTC)
    assert got.created_at.utcoffset() == timedelta(hours=1)  # text columns keep the offset
    assert got.payload == payload
    assert type(got.payload["amount"]) is Decimal and str(got.payload["amount"]) == "8000.00"
    assert (got.status, got.fire_count, got.fired_at) == ("pending", 0, None)
    assert (got.claimed_by, got.lease_until) == (None, None)
    assert storage.get_timer("nope") is None


def test_stored_payload_is_not_shared_with_callers(storage: Storage) -> None:
    payload: dict[str, Any] = {"items": [1, 2]}
    add_timers(storage, timer("t-1", payload=payload))
    payload["items"].append(3)
    got = storage.get_timer("t-1")
    assert got is not None and got.payload == {"items": [1, 2]}
    got.payload["items"].append(4)
    again = storage.get_timer("t-1")
    assert again is not None and again.payload == {"items": [1, 2]}


def test_naive_datetimes_and_bad_payloads_are_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="aware"), storage.transaction() as tx:
        tx.insert_timers([timer("t-1", datetime(2026, 1, 5, 9, 0))])
    with pytest.raises(TypeError), storage.transaction() as tx:
        tx.insert_timers([timer("t-2", payload={"bad": {1, 2}})])
    with pytest.raises(ValueError, match="aware"):
        storage.claim_due_timers(datetime(2026, 1, 5), "w1", lease=LEASE, limit=1)
    with pytest.raises(ValueError, match="lease"):
        storage.claim_due_timers(T0, "w1", lease=timedelta(0), limit=1)
    assert storage.count_timers() == 0


def test_duplicate_timer_id_is_a_storage_error(storage: Storage) -> None:
    add_timers(storage, timer("t-1"))
    with pytest.raises(StorageError), storage.transaction() as tx:
        tx.insert_timers([timer("t-1")])
    with pytest.raises(StorageError), storage.transaction() as tx:
        tx.insert_timers([timer("t-2"), timer("t-2")])
    assert ids(storage.timers()) == ["t-1"]


def test_timers_written_in_a_failed_transaction_leave_no_trace(storage: Storage) -> None:
    with pytest.raises(Boom), storage.transaction() as tx:
        tx.insert_timers([timer("t-1"), timer("t-2")])
        tx.insert_outbox([note("o-1")])
        raise Boom
    assert storage.timers() == [] and storage.outbox() == []
    assert storage.count_timers() == 0
    assert claim(storage, T0 + timedelta(days=1)) == []
    assert storage.claim_due_outbox(T0 + timedelta(days=1), "w", lease=LEASE, limit=9) == []


# ---------------------------------------------------------------------------------------------
# Timers: claiming
# ---------------------------------------------------------------------------------------------


def test_claim_takes_due_timers_earliest_first_up_to_the_limit(storage: Storage) -> None:
    m = timedelta(minutes=1)
    add_timers(
        storage,
        timer("t-c", T0 + 2 * m),
        timer("t-b", T0 + 2 * m),  # same due time: by id
        timer("t-a", T0 + 3 * m),
        timer("t-d", T0),
        timer("t-later", T0 + 10 * m),
        timer("t-fired", T0, status="fired"),
        timer("t-cancelled", T0, status="cancelled"),
    )
    now = T0 + 5 * m
    first = storage.claim_due_timers(now, "w1", lease=LEASE, limit=3)
    assert ids(first) == ["t-d", "t-b", "t-c"]
    assert all(t.claimed_by == "w1" and t.lease_until == now + LEASE for t in first)
    assert all(t.status == "pending" for t in first)
    assert claim(storage, now, "w2") == ["t-a"]  # the first three are leased
    assert claim(storage, now, "w3") == []
    stored = storage.get_timer("t-b")
    assert stored is not None and (stored.claimed_by, stored.lease_until) == ("w1", now + LEASE)
    assert storage.claim_due_timers(now, "w1", lease=LEASE, limit=0) == []


def test_a_claim_lasts_until_its_lease_ends(storage: Storage) -> None:
    add_timers(storage, timer("t-1"))
    assert claim(storage, T0, "w1") == ["t-1"]
    assert claim(storage, T0 + LEASE - timedelta(microseconds=1), "w2") == []
    # The worker died: at the end of its lease the timer is claimable again.
    assert claim(storage, T0 + LEASE, "w2") == ["t-1"]
    got = storage.get_timer("t-1")
    assert got is not None and got.claimed_by == "w2"
    assert got.lease_until == T0 + 2 * LEASE


def test_release_makes_a_timer_claimable_at_once(storage: Storage) -> None:
    add_timers(storage, timer("t-1"))
    assert claim(storage, T0, "w1") == ["t-1"]
    storage.release_timer("t-1", "w2")  # not w2's claim: nothing changes
    assert claim(storage, T0, "w2") == []
    storage.release_timer("t-1", "w1")
    got = storage.get_timer("t-1")
    assert got is not None and (got.status, got.claimed_by, got.lease_until) == (
        "pending",
        None,
        None,
    )
    assert claim(storage, T0, "w2") == ["t-1"]
    storage.release_timer("missing", "w1")  # no such timer: nothing to do


# ---------------------------------------------------------------------------------------------
# Timers: finishing, rescheduling, cancelling
# ---------------------------------------------------------------------------------------------


def test_finish_timer_is_a_compare_and_set_on_the_claim(storage: Storage) -> None:
    add_timers(storage, timer("t-1"), timer("t-2"))
    assert not finish(storage, "t-1", "w1")  # not claimed at all
    assert claim(storage, T0, "w1") == ["t-1", "t-2"]
    assert not finish(storage, "t-1", "w2")  # someone else's claim
    at = T0 + timedelta(seconds=3)
    assert finish(storage, "t-1", "w1", at=at)
    got = storage.get_timer("t-1")
    assert got is not None
    assert (got.status, got.fire_count, got.fired_at) == ("fired", 1, at)
    assert (got.claimed_by, got.lease_until) == (None, None)
    assert not finish(storage, "t-1", "w1")  # fired once, never twice
    assert not finish(storage, "missing", "w1")

    # The lease ran out and w2 re-claimed t-2: the late w1 may not finish it any more.
    assert claim(storage, T0 + LEASE, "w2") == ["t-2"]
    assert not finish(storage, "t-2", "w1")
    assert finish(storage, "t-2", "w2")


def test_the_claim_holder_may_finish_after_its_lease(storage: Storage) -> None:
    add_timers(storage, timer("t-1"))
    claim(storage, T0, "w1")
    assert finish(storage, "t-1", "w1", at=T0 + 2 * LEASE)


def test_a_cancelled_timer_cannot_be_finished(storage: Storage) -> None:
    add_timers(storage, timer("t-1"))
    assert claim(storage, T0, "w1") == ["t-1"]
    with storage.transaction() as tx:
        cancelled = tx.cancel_timers("SO-1", at=T0)
    assert ids(cancelled) == ["t-1"]
    assert cancelled[0].status == "cancelled" and cancelled[0].claimed_by is None
    assert not finish(storage, "t-1", "w1")
    got = storage.get_timer("t-1")
    assert got is not None and (got.status, got.fire_count) == ("cancelled", 0)


def test_cancel_timer_by_id(storage: Storage) -> None:
    add_timers(storage, timer("t-1"), timer("t-2"), timer("t-fired", status="fired"))
    claim(storage, T0, "w1", limit=1)
    with storage.transaction() as tx:
        assert tx.cancel_timer("t-1", at=T0)  # claimed, still pending: cancellable
        assert not tx.cancel_timer("t-1", at=T0)  # sees its own cancellation
        assert not tx.cancel_timer("t-fired", at=T0)
        assert not tx.cancel_timer("missing", at=T0)
    got = storage.get_timer("t-1")
    assert got is not None and (got.status, got.claimed_by, got.lease_until) == (
        "cancelled",
        None,
        None,
    )
    assert not finish(storage, "t-1", "w1")
    with pytest.raises(Boom), storage.transaction() as tx:
        assert tx.cancel_timer("t-2", at=T0)
        raise Boom
    assert claim(storage, T0, "w2") == ["t-2"]


def test_finish_with_next_due_reschedules_a_recurring_timer(storage: Storage) -> None:
    day = timedelta(days=1)
    add_timers(storage, timer("t-1", kind="subscription", payload={"cron": "0 9 * * *", "n": 0}))
    assert claim(storage, T0, "w1") == ["t-1"]
    assert finish(storage, "t-1", "w1", at=T0, next_due=T0 + day, payload={"n": Decimal("1")})
    got = storage.get_timer("t-1")
    assert got is not None
    assert (got.status, got.due_at, got.fire_count, got.fired_at) == ("pending", T0 + day, 1, T0)
    assert got.payload == {"n": Decimal("1")}
    assert (got.claimed_by, got.lease_until) == (None, None)
    assert claim(storage, T0 + day - timedelta(seconds=1), "w1") == []
    assert claim(storage, T0 + day, "w2") == ["t-1"]
    # Without a payload the stored one is kept.
    assert finish(storage, "t-1", "w2", at=T0 + day, next_due=T0 + 2 * day)
    got = storage.get_timer("t-1")
    assert got is not None and got.payload == {"n": Decimal("1")} and got.fire_count == 2
    assert claim(storage, T0 + 2 * day, "w1") == ["t-1"]
    assert finish(storage, "t-1", "w1", at=T0 + 2 * day)
    got = storage.get_timer("t-1")
    assert got is not None and (got.status, got.fire_count) == ("fired", 3)
    assert claim(storage, T0 + 9 * day, "w1") == []


def test_cancel_timers_by_name_and_instance(storage: Storage) -> None:
    add_timers(
        storage,
        timer("t-a", T0 + timedelta(hours=2), name="remind"),
        timer("t-b", T0 + timedelta(hours=1), name="escalate"),
        timer("t-c", T0 + timedelta(hours=3), name="remind"),
        timer("t-done", T0, name="remind", status="fired"),
        timer("t-other", T0, name="remind", instance_key="SO-2"),
    )
    at = T0 + timedelta(minutes=30)
    with storage.transaction() as tx:
        cancelled = tx.cancel_timers("SO-1", ["remind"], at=at)
        assert tx.cancel_timers("SO-1", [], at=at) == []
        assert tx.cancel_timers("SO-404", at=at) == []
    assert ids(cancelled) == ["t-a", "t-c"]  # by due time
    assert all(t.status == "cancelled" for t in cancelled)
    statuses = {t.id: t.status for t in storage.timers()}
    assert statuses == {
        "t-a": "cancelled",
        "t-b": "pending",
        "t-c": "cancelled",
        "t-done": "fired",
        "t-other": "pending",
    }
    with storage.transaction() as tx:
        assert ids(tx.cancel_timers("SO-1", at=at)) == ["t-b"]
        assert tx.cancel_timers("SO-1", at=at) == []  # sees its own cancellation
    assert claim(storage, T0 + timedelta(days=1)) == ["t-other"]


def test_cancel_in_a_rolled_back_transaction_leaves_timers_pending(storage: Storage) -> None:
    add_timers(storage, timer("t-1"), timer("t-2"))
    with pytest.raises(Boom), storage.transaction() as tx:
        assert len(tx.cancel_timers("SO-1", at=T0)) == 2
        raise Boom
    assert {t.status for t in storage.timers()} == {"pending"}
    assert claim(storage, T0) == ["t-1", "t-2"]


def test_timers_written_and_changed_in_one_transaction(storage: Storage) -> None:
    with storage.transaction() as tx:
        tx.insert_timers([timer("t-1", name="a"), timer("t-2", name="b")])
        assert ids(tx.cancel_timers("SO-1", ["a"], at=T0)) == ["t-1"]
    assert [(t.id, t.status) for t in storage.timers()] == [
        ("t-1", "cancelled"),
        ("t-2", "pending"),
    ]
    assert claim(storage, T0) == ["t-2"]


def test_timer_queries_filter_and_order(storage: Storage) -> None:
    h = timedelta(hours=1)
    add_timers(
        storage,
        timer("t-3", T0 + h),
        timer("t-1", T0 + 2 * h, owner="bob"),
        timer("t-2", T0 + h, instance_key="SO-2", status="fired"),
        timer("r-1", T0, kind="reminder", instance_key=None, owner="bob", status="cancelled"),
    )
    assert ids(storage.timers()) == ["r-1", "t-2", "t-3", "t-1"]
    assert ids(storage.timers(instance_key="SO-1")) == ["t-3", "t-1"]
    assert ids(storage.timers(owner="bob")) == ["r-1", "t-1"]
    assert ids(storage.timers(statuses=["pending"])) == ["t-3", "t-1"]
    assert ids(storage.timers(statuses=["fired", "cancelled"])) == ["r-1", "t-2"]
    assert ids(storage.timers(owner="bob", statuses={"pending"})) == ["t-1"]
    assert ids(storage.timers(instance_key="SO-2", owner="bob")) == []
    assert storage.count_timers() == 4
    assert storage.count_timers(statuses=["pending"]) == 2
    assert storage.count_timers(statuses=["pending", "fired"]) == 3
    assert storage.count_timers(statuses=[]) == 0


# ---------------------------------------------------------------------------------------------
# Outbox
# ---------------------------------------------------------------------------------------------


def test_outbox_round_trip(storage: Storage) -> None:
    metadata = {
        "delegation": {"from": "bob", "to": "dave", "until": date(2026, 1, 31)},
        "amount": Decimal("12.50"),
    }
    record = note(
        "o-1",
        datetime(2026, 1, 5, 10, 0, tzinfo=CET),
        recipient="dave",
        intended="bob",
        timer_id="t-9",
        metadata=metadata,
        next_attempt_at=datetime(2026, 1, 5, 10, 5, tzinfo=CET),
        attempts=1,
        last_error="timeout",
    )
    add_outbox(storage, record, note("o-2", instance_key=None))
    got = storage.get_outbox("o-1")
    assert got == record
    assert got is not None and got.metadata == metadata
    assert got.created_at.utcoffset() == timedelta(hours=1)
    assert got.next_attempt_at is not None and got.next_attempt_at.utcoffset() == timedelta(0)
    second = storage.get_outbox("o-2")
    assert second is not None and second.next_attempt_at is None and second.instance_key is None
    assert storage.get_outbox("nope") is None
    with pytest.raises(StorageError), storage.transaction() as tx:
        tx.insert_outbox([note("o-1")])


def test_outbox_claim_is_oldest_first_and_skips_future_attempts(storage: Storage) -> None:
    m = timedelta(minutes=1)
    add_outbox(
        storage,
        note("o-3", T0 + 2 * m),
        note("o-1", datetime(2026, 1, 5, 10, 0, tzinfo=CET)),  # = T0: ordered as an instant
        note("o-2", T0 + m),
        note("o-0", T0 + m),  # same time as o-2: by id
        note("o-retry", T0 - m, next_attempt_at=T0 + 10 * m, attempts=1),
        note("o-ready", T0 - 2 * m, next_attempt_at=T0 + m, attempts=1),
        note("o-done", T0 - 3 * m, status="delivered"),
        note("o-dead", T0 - 3 * m, status="dead"),
    )
    now = T0 + 5 * m
    first = storage.claim_due_outbox(now, "w1", lease=LEASE, limit=3)
    assert ids(first) == ["o-ready", "o-1", "o-0"]
    assert all(o.claimed_by == "w1" and o.lease_until == now + LEASE for o in first)
    assert ids(storage.claim_due_outbox(now, "w2", lease=LEASE, limit=10)) == ["o-2", "o-3"]
    assert storage.claim_due_outbox(now, "w3", lease=LEASE, limit=10) == []
    # Leases run out; the retry becomes due too.
    later = now + LEASE + 10 * m
    assert ids(storage.claim_due_outbox(later, "w3", lease=LEASE, limit=10)) == [
        "o-ready",
        "o-retry",
        "o-1",
        "o-0",
        "o-2",
        "o-3",
    ]


def test_finish_delivery_records_attempts_and_retries(storage: Storage) -> None:
    add_outbox(storage, note("o-1"), note("o-2", T0 + timedelta(seconds=1)))
    kwargs: dict[str, Any] = {
        "status": "delivered",
        "attempts": 1,
        "next_attempt_at": None,
        "last_error": "",
        "delivered_at": T0,
    }
    assert not storage.finish_delivery("o-1", "w1", **kwargs)  # not claimed
    assert ids(storage.claim_due_outbox(T0, "w1", lease=LEASE, limit=5)) == ["o-1", "o-2"]
    assert not storage.finish_delivery("o-1", "w2", **kwargs)
    assert not storage.finish_delivery("missing", "w1", **kwargs)
    with pytest.raises(ValueError, match="status"):
        storage.finish_delivery("o-1", "w1", **{**kwargs, "status": "sent"})

    assert storage.finish_delivery("o-1", "w1", **kwargs)
    done = storage.get_outbox("o-1")
    assert done is not None
    assert (done.status, done.attempts, done.delivered_at) == ("delivered", 1, T0)
    assert (done.claimed_by, done.lease_until) == (None, None)
    assert not storage.finish_delivery("o-1", "w1", **kwargs)  # claim already cleared

    retry_at = T0 + timedelta(minutes=2)
    assert storage.finish_delivery(
        "o-2",
        "w1",
        status="pending",
        attempts=1,
        next_attempt_at=retry_at,
        last_error="SMTP 451",
        delivered_at=None,
    )
    waiting = storage.get_outbox("o-2")
    assert waiting is not None
    assert (waiting.status, waiting.attempts, waiting.last_error) == ("pending", 1, "SMTP 451")
    assert waiting.next_attempt_at == retry_at and waiting.claimed_by is None
    assert (
        storage.claim_due_outbox(retry_at - timedelta(seconds=1), "w2", lease=LEASE, limit=5) == []
    )
    assert ids(storage.claim_due_outbox(retry_at, "w2", lease=LEASE, limit=5)) == ["o-2"]
    assert storage.finish_delivery(
        "o-2",
        "w2",
        status="dead",
        attempts=5,
        next_attempt_at=None,
        last_error="gave up",
        delivered_at=None,
    )
    assert storage.claim_due_outbox(T0 + timedelta(days=1), "w2", lease=LEASE, limit=5) == []
    assert ids(storage.outbox(statuses=["dead"])) == ["o-2"]


def test_mark_outbox_sets_read_and_acknowledged_once(storage: Storage) -> None:
    add_outbox(storage, note("o-1"))
    read = T0 + timedelta(minutes=1)
    got = storage.mark_outbox("o-1", read_at=read)
    assert got is not None and (got.read_at, got.acknowledged_at) == (read, None)
    got = storage.mark_outbox("o-1", read_at=read + timedelta(hours=1))
    assert got is not None and got.read_at == read  # the first read counts
    ack = datetime(2026, 1, 5, 11, 0, tzinfo=CET)
    got = storage.mark_outbox("o-1", read_at=T0 + timedelta(days=1), acknowledged_at=ack)
    assert got is not None and (got.read_at, got.acknowledged_at) == (read, ack)
    assert got.acknowledged_at is not None and got.acknowledged_at.utcoffset() == timedelta(hours=1)
    got = storage.mark_outbox("o-1")
    assert got is not None and got.acknowledged_at == ack
    stored = storage.get_outbox("o-1")
    assert stored is not None and (stored.read_at, stored.acknowledged_at) == (read, ack)
    assert storage.mark_outbox("missing", read_at=read) is None
    assert storage.mark_outbox("missing") is None


def test_outbox_queries_filter_and_order(storage: Storage) -> None:
    s = timedelta(seconds=1)
    add_outbox(
        storage,
        note("o-4", T0 + 3 * s, recipient="carol", channel="in_app", timer_id="t-1"),
        note("o-1", T0, status="delivered"),
        note("o-3", T0 + 2 * s, channel="in_app", instance_key="SO-2"),
        note("o-2", T0 + s, recipient="carol", timer_id="t-1"),
    )
    assert ids(storage.outbox()) == ["o-1", "o-2", "o-3", "o-4"]
    assert ids(storage.outbox(recipient="bob")) == ["o-1", "o-3"]
    assert ids(storage.outbox(recipient="carol", channel="in_app")) == ["o-4"]
    assert ids(storage.outbox(channel="email")) == ["o-1", "o-2"]
    assert ids(storage.outbox(instance_key="SO-2")) == ["o-3"]
    assert ids(storage.outbox(statuses=["pending"])) == ["o-2", "o-3", "o-4"]
    assert ids(storage.outbox(statuses=[])) == []
    assert ids(storage.outbox(timer_id="t-1")) == ["o-2", "o-4"]
    assert ids(storage.outbox(timer_id="t-1", statuses={"delivered"})) == []


# ---------------------------------------------------------------------------------------------
# Concurrent claimers
# ---------------------------------------------------------------------------------------------

RACE_TIMERS = 2000
RACE_BATCH = 50


def _seed_race(store: Storage) -> None:
    with store.transaction() as tx:
        tx.insert_timers(
            [timer(f"t-{n:05d}", T0 - timedelta(seconds=n % 97)) for n in range(RACE_TIMERS)]
        )


def _drain(store: Storage, worker: str) -> tuple[list[str], list[str]]:
    """Claim in batches and finish each timer; return what was claimed and finished."""
    claimed: list[str] = []
    finished: list[str] = []
    while True:
        batch = store.claim_due_timers(T0, worker, lease=timedelta(hours=1), limit=RACE_BATCH)
        if not batch:
            return claimed, finished
        for t in batch:
            claimed.append(t.id)
            with store.transaction() as tx:
                if tx.finish_timer(t.id, worker, at=T0):
                    finished.append(t.id)
        # A pause outside any transaction: SQLite's busy handler polls, so without it the
        # running worker would take the write lock back every time and the other would
        # rarely get a turn.
        time.sleep(0.02)


def _check_race(store: Storage, outcomes: list[tuple[list[str], list[str]]]) -> None:
    claims = Counter(i for claimed, _ in outcomes for i in claimed)
    finishes = Counter(i for _, finished in outcomes for i in finished)
    assert len(claims) == RACE_TIMERS and set(claims.values()) == {1}
    assert len(finishes) == RACE_TIMERS and set(finishes.values()) == {1}
    assert store.count_timers(statuses=["pending"]) == 0
    assert store.count_timers(statuses=["fired"]) == RACE_TIMERS
    assert {t.fire_count for t in store.timers()} == {1}


def test_two_threads_fire_every_timer_exactly_once(storage: Storage) -> None:
    _seed_race(storage)
    barrier = threading.Barrier(2)
    outcomes: dict[str, tuple[list[str], list[str]]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            barrier.wait(60)
            outcomes[name] = _drain(storage, name)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    _check_race(storage, list(outcomes.values()))


def _process_drain(url: str, barrier: Any, out: Any) -> None:
    """Runs in a spawned process: a fresh interpreter, its own connections."""
    store = SqlStorage(url)
    try:
        barrier.wait(60)
        out.put(("ok", _drain(store, f"p{os.getpid()}")))
    except BaseException as exc:
        barrier.abort()
        out.put(("error", repr(exc)))
    finally:
        store.close()


def test_two_processes_fire_every_timer_exactly_once(sql_store_url: str) -> None:
    store = SqlStorage(sql_store_url)
    try:
        _seed_race(store)
        ctx = multiprocessing.get_context("spawn")
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_process_drain, args=(sql_store_url, barrier, out)) for _ in range(2)
        ]
        for p in procs:
            p.start()
        results = [out.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert all(kind == "ok" for kind, _ in results), results
        _check_race(store, [outcome for _, outcome in results])
    finally:
        store.close()


@pytest.mark.postgresql
def test_postgresql_claim_skips_rows_locked_by_an_open_transaction(postgres_url: str) -> None:
    store = SqlStorage(postgres_url)
    try:
        add_timers(store, timer("t-1"), timer("t-2", instance_key="SO-2"))
        cancelling = threading.Event()
        release = threading.Event()

        def cancel() -> None:
            with store.transaction() as tx:
                tx.cancel_timers("SO-1", at=T0)
                cancelling.set()
                release.wait(30)

        t = threading.Thread(target=cancel)
        t.start()
        try:
            assert cancelling.wait(30)
            # t-1 is row-locked by the uncommitted cancel: skipped, without waiting.
            assert claim(store, T0) == ["t-2"]
        finally:
            release.set()
            t.join(30)
        assert claim(store, T0, "w2") == []
        got = store.get_timer("t-1")
        assert got is not None and got.status == "cancelled"
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Scale and the query plan
# ---------------------------------------------------------------------------------------------


def test_claim_finds_the_few_due_timers_among_many_later_ones(storage: Storage) -> None:
    far = T0 + timedelta(days=3650)
    with storage.transaction() as tx:
        tx.insert_timers(
            [
                TimerRecord(
                    id=f"later-{n:06d}",
                    kind="after",
                    name="n",
                    due_at=far + timedelta(seconds=n),
                    created_at=T0,
                    instance_key=f"SO-{n}",
                )
                for n in range(200_000)
            ]
        )
        tx.insert_timers([timer(f"due-{n}", T0 - timedelta(minutes=n)) for n in range(10)])
    got = storage.claim_due_timers(T0, "w1", lease=LEASE, limit=100)
    assert ids(got) == [f"due-{n}" for n in range(9, -1, -1)]
    assert claim(storage, T0, "w2") == []
    assert storage.count_timers(statuses=["pending"]) == 200_010


def _sqlite_plan(path: str, stmt: Any) -> str:
    compiled = _Compiled(stmt, sqlite_dialect.dialect())
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN " + compiled.sql, compiled.bind({"now": 0, "limit": 10})
        ).fetchall()
    finally:
        conn.close()
    return " | ".join(str(r[-1]) for r in rows)


def test_sqlite_claims_are_index_range_scans(tmp_path: Path) -> None:
    path = str(tmp_path / "plan.db")
    SqlStorage(f"sqlite:///{path}").close()
    timers_plan = _sqlite_plan(path, _CLAIMABLE_TIMERS)
    # A range on (status, due_us) that also yields the order: no scan, no sort.
    assert "ix_crmflow_timers_status_due (status=? AND due_us<?)" in timers_plan, timers_plan
    assert "SCAN" not in timers_plan and "TEMP B-TREE" not in timers_plan, timers_plan
    outbox_plan = _sqlite_plan(path, _CLAIMABLE_OUTBOX)
    assert "ix_crmflow_outbox_status_due (status=? AND <expr><?)" in outbox_plan, outbox_plan
    assert "SCAN" not in outbox_plan, outbox_plan


@pytest.mark.postgresql
def test_postgresql_claims_use_the_due_indexes(postgres_url: str) -> None:
    store = SqlStorage(postgres_url)
    try:
        far = T0 + timedelta(days=3650)
        add_timers(
            store,
            *[timer(f"later-{n:05d}", far + timedelta(seconds=n)) for n in range(20_000)],
            timer("due-1"),
        )
        add_outbox(
            store,
            *[note(f"retry-{n:05d}", T0, next_attempt_at=far) for n in range(10_000)],
            *[note(f"sent-{n:05d}", T0, status="delivered") for n in range(10_000)],
            note("due-1"),
        )
        engine = create_engine(postgres_url, poolclass=NullPool)
        params = {"now": 1_767_603_600_000_000, "limit": 50, "status_1": "pending"}
        plans = {}
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            for name, stmt in (("timers", _CLAIMABLE_TIMERS), ("outbox", _CLAIMABLE_OUTBOX)):
                sql = stmt.compile(dialect=engine.dialect).string
                rows = conn.exec_driver_sql("EXPLAIN " + sql, params)
                plans[name] = "\n".join(r[0] for r in rows)
        engine.dispose()
        assert "Index Scan using ix_crmflow_timers_status_due" in plans["timers"], plans
        assert "ix_crmflow_outbox_status_due" in plans["outbox"], plans
        assert not any("Seq Scan" in plan for plan in plans.values()), plans
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


def test_opening_a_version_2_database_adds_the_new_tables(sql_store_url: str) -> None:
    SqlStorage(sql_store_url).close()
    engine = create_engine(sql_store_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE crmflow_timers"))
        conn.execute(text("DROP TABLE crmflow_outbox"))
        conn.execute(text("DROP INDEX ix_crmflow_tasks_assignee_status"))
        conn.execute(text("UPDATE crmflow_schema_version SET version = 2"))

    for n in range(2):  # the second open finds everything in place
        store = SqlStorage(sql_store_url)
        try:
            add_timers(store, timer(f"t-{n}"))
            assert claim(store, T0) == [f"t-{n}"]
        finally:
            store.close()
    # The catalogs, not SQLAlchemy's reflection: SQLite's skips expression indexes.
    if engine.dialect.name == "sqlite":
        list_indexes = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        list_indexes = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version FROM crmflow_schema_version")).scalar_one()
        indexes = set(conn.execute(text(list_indexes)).scalars())
    engine.dispose()
    assert version == SCHEMA_VERSION == 3
    assert {
        "ix_crmflow_timers_status_due",
        "ix_crmflow_timers_instance",
        "ix_crmflow_timers_owner",
        "ix_crmflow_outbox_status_due",
        "ix_crmflow_outbox_recipient",
        "ix_crmflow_outbox_instance",
        "ix_crmflow_outbox_timer",
    } <= indexes
    assert "ix_crmflow_tasks_assignee_status" in indexes  # indexes of older tables too


# ---------------------------------------------------------------------------------------------
# Protocol conformance
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tx(storage: Storage) -> Iterator[StorageTx]:
    with storage.transaction() as t:
        yield t


def test_back_ends_implement_the_protocols(storage: Storage, tx: StorageTx) -> None:
    assert isinstance(storage, Storage)
    assert isinstance(tx, StorageTx)


def test_requeue_outbox_makes_only_dead_notifications_pending_again(storage: Storage) -> None:
    add_outbox(
        storage,
        note("o-dead", status="dead", attempts=8, last_error="SMTP 550 mailbox unavailable"),
        note("o-pending", attempts=2, last_error="SMTP 451"),
        note("o-done", status="delivered", attempts=1, delivered_at=T0),
    )
    at = T0 + timedelta(hours=3)
    row = storage.requeue_outbox("o-dead", at)
    assert row is not None
    assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, at)
    assert row.last_error == "SMTP 550 mailbox unavailable"  # kept until the next attempt
    assert storage.get_outbox("o-dead") == row
    # A compare-and-set on 'dead': nothing else changes, a second requeue finds nothing to do.
    assert storage.requeue_outbox("o-dead", at) is None
    assert storage.requeue_outbox("o-pending", at) is None
    assert storage.requeue_outbox("o-done", at) is None
    assert storage.requeue_outbox("missing", at) is None
    pending = storage.get_outbox("o-pending")
    assert pending is not None and (pending.attempts, pending.last_error) == (2, "SMTP 451")
    # Due at `at`, not before.
    assert "o-dead" not in ids(
        storage.claim_due_outbox(at - timedelta(seconds=1), "w", lease=LEASE, limit=9)
    )
    assert "o-dead" in ids(storage.claim_due_outbox(at, "w", lease=LEASE, limit=9))
