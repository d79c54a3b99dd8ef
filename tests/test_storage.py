"""The storage contract, run against every back end (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from crmflow._errors import (
    ConcurrencyConflict,
    InstanceExists,
    PluginError,
    StorageError,
)
from crmflow._hashchain import GENESIS, ChainReport, record_hash, verify_chain
from crmflow.plugins._storage_api import (
    HistoryDraft,
    HistoryRecord,
    InstanceRecord,
    Storage,
    StorageTx,
)
from crmflow.plugins.memory_storage import MemoryStorage
from crmflow.plugins.sql_storage import SqlStorage

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def make_record(key: str = "SO-1", **changes: Any) -> InstanceRecord:
    base = InstanceRecord(
        key=key,
        workflow="sales_order",
        workflow_version=1,
        definition_digest="d" * 64,
        state="draft",
        data={"amount": Decimal("8000.00"), "customer_id": "C-7"},
        version=1,
        created_at=T0,
        updated_at=T0,
        owner="alice",
    )
    return replace(base, **changes)


def make_draft(key: str = "SO-1", n: int = 0, **changes: Any) -> HistoryDraft:
    base = HistoryDraft(
        instance_key=key,
        at=T0 + timedelta(minutes=n),
        actor="alice",
        kind="transition",
        trigger="approve",
        from_state="draft",
        to_state="approved",
        reason=f"entry {n}",
        changes={"amount": [Decimal("1.00"), Decimal(n)]},
        details={"n": n},
    )
    return replace(base, **changes)


def start(storage: Storage, key: str = "SO-1", **changes: Any) -> InstanceRecord:
    record = make_record(key, **changes)
    with storage.transaction() as tx:
        tx.insert_instance(record)
        tx.append_history(make_draft(key, kind="start", from_state="", to_state="draft"))
    return record


def raw_sql(url: str, statement: str, **params: Any) -> None:
    """Run SQL behind the store's back (an attacker or an operator editing rows)."""
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=NullPool
    )
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------------


def test_store_implements_protocols(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    with storage.transaction() as tx:
        assert isinstance(tx, StorageTx)


def test_memory_opens_are_independent() -> None:
    from crmflow.plugins import memory_storage

    a = memory_storage.crmflow_open_storage("memory://")
    b = memory_storage.crmflow_open_storage("memory://")
    assert a is not None and b is not None and a is not b
    start(a)
    assert a.get_instance("SO-1") is not None
    assert b.get_instance("SO-1") is None


def test_plugins_decline_other_schemes() -> None:
    from crmflow.plugins import memory_storage, sql_storage

    for url in ("redis://x", "mysql://u@h/db"):
        assert sql_storage.crmflow_open_storage(url) is None
        assert memory_storage.crmflow_open_storage(url) is None
    assert sql_storage.crmflow_open_storage("memory://") is None
    assert memory_storage.crmflow_open_storage("sqlite:///x.db") is None


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///x.db?synchronous=off"]
)
def test_sqlite_rejects_bad_urls(url: str) -> None:
    with pytest.raises(PluginError):
        SqlStorage(url)


def test_open_failure_is_storage_error(tmp_path: Any) -> None:
    with pytest.raises(StorageError) as info:
        SqlStorage(f"sqlite:///{tmp_path}/no/such/dir/crm.db")
    assert info.value.__cause__ is not None


def test_closed_store_refuses(storage: Storage) -> None:
    storage.close()
    with pytest.raises(StorageError):
        storage.get_instance("SO-1")


# ---------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------


def test_insert_and_get(storage: Storage) -> None:
    record = start(storage)
    assert storage.get_instance("SO-1") == record
    assert storage.get_instance("nope") is None
    with storage.transaction() as tx:
        assert tx.get_instance("SO-1") == record
        assert tx.lock_instance("SO-1") == record
        assert tx.lock_instance("nope") is None


def test_iter_instances_in_key_order_and_by_workflow(storage: Storage) -> None:
    with storage.transaction() as tx:
        for key in ("b", "c", "a"):
            tx.insert_instance(make_record(key))
        tx.insert_instance(make_record("d", workflow="lead"))
    assert [r.key for r in storage.iter_instances()] == ["a", "b", "c", "d"]
    assert [r.key for r in storage.iter_instances("sales_order")] == ["a", "b", "c"]
    assert [r.key for r in storage.iter_instances("lead")] == ["d"]
    assert list(storage.iter_instances("none")) == []


def test_duplicate_insert_raises_and_keeps_the_first(storage: Storage) -> None:
    first = start(storage)
    with pytest.raises(InstanceExists) as info, storage.transaction() as tx:
        tx.insert_instance(make_record(state="other"))
    assert info.value.key == "SO-1"
    assert storage.get_instance("SO-1") == first


def test_transaction_stays_usable_after_instance_exists(storage: Storage) -> None:
    # On PostgreSQL a failed statement would poison the transaction; the storage must not
    # let a caught InstanceExists do that.
    start(storage)
    with storage.transaction() as tx:
        with pytest.raises(InstanceExists):
            tx.insert_instance(make_record())
        tx.insert_instance(make_record("SO-2"))
    assert storage.get_instance("SO-2") is not None


def test_cas_update_success(storage: Storage) -> None:
    record = start(storage)
    later = T0 + timedelta(hours=1)
    new = replace(
        record,
        state="approved",
        version=2,
        updated_at=later,
        created_at=later,
        data={"amount": Decimal("9000.50")},
        owner=None,
    )
    with storage.transaction() as tx:
        tx.update_instance(new, expected_version=1)
        assert tx.get_instance("SO-1") == replace(new, created_at=T0)
    got = storage.get_instance("SO-1")
    assert got == replace(new, created_at=T0)  # created_at is set once, by the insert


def test_cas_conflict_changes_nothing(storage: Storage) -> None:
    record = start(storage)
    with storage.transaction() as tx:
        tx.update_instance(replace(record, version=2, state="approved"), 1)
    before = storage.get_instance("SO-1")
    history_before = storage.history("SO-1")
    with pytest.raises(ConcurrencyConflict) as info, storage.transaction() as tx:
        tx.append_history(make_draft(n=5))
        tx.update_instance(replace(record, version=2, state="rejected"), 1)
    assert (info.value.key, info.value.expected_version, info.value.actual_version) == (
        "SO-1",
        1,
        2,
    )
    assert storage.get_instance("SO-1") == before
    assert storage.history("SO-1") == history_before


def test_cas_update_of_missing_row(storage: Storage) -> None:
    with pytest.raises(ConcurrencyConflict) as info, storage.transaction() as tx:
        tx.update_instance(make_record("ghost", version=2), 1)
    assert info.value.actual_version is None


def test_update_requires_version_plus_one(storage: Storage) -> None:
    record = start(storage)
    with pytest.raises(ValueError), storage.transaction() as tx:
        tx.update_instance(replace(record, version=5), 1)


# ---------------------------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_rollback_leaves_no_trace(storage: Storage) -> None:
    with pytest.raises(Boom), storage.transaction() as tx:
        tx.insert_instance(make_record())
        tx.append_history(make_draft())
        tx.put_idempotency("erp-1", "SO-1", {"ok": True})
        assert tx.get_instance("SO-1") is not None  # visible inside the transaction
        raise Boom
    assert storage.get_instance("SO-1") is None
    assert storage.history("SO-1") == []
    assert storage.get_idempotency("erp-1") is None
    assert list(storage.iter_instances()) == []


def test_rollback_of_update_keeps_the_old_row(storage: Storage) -> None:
    record = start(storage)
    with pytest.raises(Boom), storage.transaction() as tx:
        tx.update_instance(replace(record, version=2, state="approved"), 1)
        tx.append_history(make_draft(n=1))
        raise Boom
    assert storage.get_instance("SO-1") == record
    assert [h.seq for h in storage.history("SO-1")] == [1]
    # The next append reuses seq 2: the rolled-back one left no gap.
    with storage.transaction() as tx:
        tx.lock_instance("SO-1")
        assert tx.append_history(make_draft(n=2)).seq == 2


# ---------------------------------------------------------------------------------------------
# History and the hash chain
# ---------------------------------------------------------------------------------------------


def test_history_seq_has_no_gaps(storage: Storage) -> None:
    record = start(storage)
    returned = []
    for n in range(1, 6):
        with storage.transaction() as tx:
            tx.update_instance(replace(record, version=n + 1), n)
            returned.append(tx.append_history(make_draft(n=n)))
            if n % 2:
                returned.append(tx.append_history(make_draft(n=n, kind="refused")))
    history = storage.history("SO-1")
    assert [h.seq for h in history] == list(range(1, len(history) + 1))
    assert history[1:] == returned  # what append returned is what is stored
    assert history[0].prev_hash == GENESIS
    for prev, cur in itertools.pairwise(history):
        assert cur.prev_hash == prev.hash
    assert storage.history("other") == []


def test_history_is_per_instance(storage: Storage) -> None:
    start(storage, "A")
    start(storage, "B")
    with storage.transaction() as tx:
        tx.lock_instance("A")
        assert tx.append_history(make_draft("A", n=1)).seq == 2
    assert [h.seq for h in storage.history("B")] == [1]
    assert storage.history("A")[0].prev_hash == storage.history("B")[0].prev_hash == GENESIS


def test_hash_chain_verifies(storage: Storage) -> None:
    record = start(storage)
    for n in range(1, 4):
        with storage.transaction() as tx:
            tx.update_instance(replace(record, version=n + 1), n)
            tx.append_history(make_draft(n=n))
    history = storage.history("SO-1")
    report = verify_chain(history)
    assert report == ChainReport(ok=True, checked=4)
    assert verify_chain(history, expected_head=history[-1].hash).ok
    assert all(record_hash(h) == h.hash for h in history)


def _chain(storage: Storage, n: int = 4) -> list[HistoryRecord]:
    start(storage)
    for i in range(1, n):
        with storage.transaction() as tx:
            tx.lock_instance("SO-1")
            tx.append_history(make_draft(n=i))
    return storage.history("SO-1")


def test_verify_chain_detects_tampered_records(storage: Storage) -> None:
    good = _chain(storage)
    edited = [*good[:2], replace(good[2], reason="nothing to see"), good[3]]
    assert verify_chain(edited) == ChainReport(
        ok=False,
        checked=2,
        first_bad_seq=3,
        reason="seq 3 does not match its hash: the row was edited",
    )
    changed_money = [good[0], replace(good[1], changes={"amount": [Decimal("1.0"), 1]}), *good[2:]]
    assert verify_chain(changed_money).first_bad_seq == 2

    deleted = [good[0], good[2], good[3]]
    report = verify_chain(deleted)
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "deleted" in report.reason

    reordered = [good[0], good[2], good[1], good[3]]
    assert not verify_chain(reordered).ok

    # A re-numbered, re-hashed row that does not link to its predecessor.
    forged = replace(good[2], prev_hash="f" * 64)
    forged = replace(forged, hash=record_hash(forged))
    report = verify_chain([*good[:2], forged, good[3]])
    assert (report.first_bad_seq, report.reason) == (
        3,
        "seq 3 does not link to the previous entry's hash",
    )

    truncated = good[:3]
    assert verify_chain(truncated).ok  # a shorter chain is valid on its own ...
    assert not verify_chain(truncated, expected_head=good[-1].hash).ok  # ... not against a head

    assert verify_chain([]) == ChainReport(ok=True, checked=0)


def test_verify_chain_detects_rows_edited_in_the_database(sql_store_url: str) -> None:
    store = SqlStorage(sql_store_url)
    try:
        _chain(store)
        assert verify_chain(store.history("SO-1")).ok

        raw_sql(
            sql_store_url,
            "UPDATE crmflow_history SET details = :d WHERE instance_key = :k AND seq = 3",
            d='{"n":99}',
            k="SO-1",
        )
        report = verify_chain(store.history("SO-1"))
        assert (report.ok, report.first_bad_seq, report.checked) == (False, 3, 2)
        assert "edited" in report.reason
    finally:
        store.close()


def test_verify_chain_detects_rows_deleted_or_swapped_in_the_database(sql_store_url: str) -> None:
    store = SqlStorage(sql_store_url)
    try:
        start(store, "A")
        _chain(store)
        raw_sql(
            sql_store_url,
            "DELETE FROM crmflow_history WHERE instance_key = :k AND seq = 2",
            k="SO-1",
        )
        report = verify_chain(store.history("SO-1"))
        assert (report.ok, report.first_bad_seq) == (False, 2)
        assert "deleted" in report.reason

        # Swap seq 3 and 4 (through a free number: the unique constraint forbids a direct swap).
        for old, new in ((3, 1000), (4, 3), (1000, 4)):
            raw_sql(
                sql_store_url,
                "UPDATE crmflow_history SET seq = :new WHERE instance_key = :k AND seq = :old",
                new=new,
                old=old,
                k="SO-1",
            )
        raw_sql(
            sql_store_url,
            "UPDATE crmflow_history SET seq = 2 WHERE instance_key = :k AND seq = 3",
            k="SO-1",
        )
        report = verify_chain(store.history("SO-1"))
        assert (report.ok, report.first_bad_seq) == (False, 2)
        assert verify_chain(store.history("A")).ok  # other instances are untouched
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Idempotency
# ---------------------------------------------------------------------------------------------


def test_idempotency_put_get_duplicate(storage: Storage) -> None:
    start(storage)
    result = {"ok": True, "state": "approved", "total": Decimal("12.30"), "at": T0}
    assert storage.get_idempotency("erp-77") is None
    with storage.transaction() as tx:
        tx.put_idempotency("erp-77", "SO-1", result, at=T0)
    assert storage.get_idempotency("erp-77") == result
    with pytest.raises(ConcurrencyConflict) as info, storage.transaction() as tx:
        tx.put_idempotency("erp-77", "SO-1", {"ok": False})
    assert info.value.idempotency_key == "erp-77"  # type: ignore[attr-defined]
    assert "erp-77" in str(info.value)
    assert storage.get_idempotency("erp-77") == result


def test_idempotency_duplicate_inside_one_transaction(storage: Storage) -> None:
    with storage.transaction() as tx:
        tx.put_idempotency("k1", "SO-1", {"n": 1})
        with pytest.raises(ConcurrencyConflict):
            tx.put_idempotency("k1", "SO-1", {"n": 2})
        tx.put_idempotency("k2", "SO-1", {"n": 3})  # still usable (PostgreSQL)
    assert storage.get_idempotency("k1") == {"n": 1}
    assert storage.get_idempotency("k2") == {"n": 3}


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------

AWKWARD = {
    "amount": Decimal("8000.00"),
    "rate": Decimal("0.1"),
    "tiny": Decimal("1E-28"),
    "big": Decimal("123456789012345678901234567890.123456789"),
    "neg_zero": Decimal("-0.00"),
    "due": date(2026, 2, 28),
    "at": datetime(2026, 1, 5, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    "naive": datetime(2026, 1, 5, 9, 30),
    "lines": [{"sku": "A-1", "price": Decimal("19.99"), "qty": 3}, {"$decimal": "not a tag"}],
    "unicode": "Müller — 東京",
    "none": None,
    "flag": False,
    "float": 0.5,
}


def _assert_exact(a: Any, b: Any) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_exact(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_exact(x, y)
    elif isinstance(a, (Decimal, datetime)):
        assert str(a) == str(b)  # scale and offset kept, not just numerically equal
    else:
        assert a == b


def test_values_round_trip_exactly(storage: Storage) -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=-3)))
    record = start(storage, data=AWKWARD, created_at=at, updated_at=at)
    with storage.transaction() as tx:
        tx.lock_instance("SO-1")
        appended = tx.append_history(make_draft(n=1, at=at, changes=AWKWARD, details=AWKWARD))
    got = storage.get_instance("SO-1")
    assert got is not None
    _assert_exact(dict(got.data), AWKWARD)
    assert got.created_at.isoformat() == at.isoformat() == got.updated_at.isoformat()
    entry = storage.history("SO-1")[1]
    _assert_exact(dict(entry.changes), AWKWARD)
    _assert_exact(dict(entry.details), AWKWARD)
    assert entry.at.isoformat() == at.isoformat()
    assert entry == appended
    assert verify_chain(storage.history("SO-1")).ok
    assert record.data is AWKWARD  # the caller's object was not touched


def test_stored_data_is_isolated_from_the_caller(storage: Storage) -> None:
    data: dict[str, Any] = {"lines": [1, 2]}
    start(storage, data=data)
    data["lines"].append(3)
    got = storage.get_instance("SO-1")
    assert got is not None and got.data == {"lines": [1, 2]}
    got.data["lines"].append(4)  # type: ignore[index]
    again = storage.get_instance("SO-1")
    assert again is not None and again.data == {"lines": [1, 2]}


def test_unstorable_values_are_refused(storage: Storage) -> None:
    with pytest.raises(TypeError), storage.transaction() as tx:
        tx.insert_instance(make_record(data={"s": {1, 2}}))
    assert storage.get_instance("SO-1") is None


# ---------------------------------------------------------------------------------------------
# Concurrency: threads (every back end) and processes (SQLite, PostgreSQL)
# ---------------------------------------------------------------------------------------------


def _contend(
    store: Storage, key: str, rounds: int, wait: Callable[[], object], name: str
) -> list[bool]:
    """Per round: read, meet the other writer, compare-and-set; then a locked append.

    Returns, per round, whether this writer's compare-and-set won.
    """
    won: list[bool] = []
    for i in range(rounds):
        current = store.get_instance(key)
        assert current is not None
        wait()  # both writers now hold the same version
        try:
            with store.transaction() as tx:
                tx.update_instance(
                    replace(current, version=current.version + 1, state=f"{name}-{i}"),
                    current.version,
                )
                tx.append_history(make_draft(key, n=i, actor=name))
            won.append(True)
        except ConcurrencyConflict as exc:
            assert exc.actual_version == current.version + 1
            won.append(False)
        # A refusal-style append (no version change) from both writers at once: a transaction
        # that reads before it writes (SQLite needs BEGIN IMMEDIATE for this one).
        wait()
        with store.transaction() as tx:
            tx.lock_instance(key)
            tx.append_history(make_draft(key, n=i, actor=name, kind="refused"))
    return won


def _check_contention(store: Storage, key: str, rounds: int, results: list[list[bool]]) -> None:
    for i in range(rounds):
        assert sorted(r[i] for r in results) == [False, True], f"round {i}: {results}"
    final = store.get_instance(key)
    assert final is not None and final.version == 1 + rounds
    history = store.history(key)
    assert [h.seq for h in history] == list(range(1, 2 + 3 * rounds))
    assert sum(h.kind == "transition" for h in history) == rounds
    assert verify_chain(history).ok


def test_two_threads_cas_exactly_one_wins(storage: Storage) -> None:
    start(storage)
    rounds = 15
    barrier = threading.Barrier(2)
    results: dict[str, list[bool]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            results[name] = _contend(storage, "SO-1", rounds, lambda: barrier.wait(30), name)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    _check_contention(storage, "SO-1", rounds, list(results.values()))


def _process_worker(url: str, key: str, rounds: int, barrier: Any, out: Any) -> None:
    """Runs in a spawned process: a fresh interpreter, its own connections."""
    store = SqlStorage(url)
    try:
        out.put(("ok", _contend(store, key, rounds, lambda: barrier.wait(60), f"p{os.getpid()}")))
    except BaseException as exc:
        barrier.abort()
        out.put(("error", repr(exc)))
    finally:
        store.close()


def test_two_processes_cas_exactly_one_wins(sql_store_url: str) -> None:
    store = SqlStorage(sql_store_url)
    try:
        start(store)
        rounds = 10
        ctx = multiprocessing.get_context("spawn")
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_process_worker, args=(sql_store_url, "SO-1", rounds, barrier, out))
            for _ in range(2)
        ]
        for p in procs:
            p.start()
        outcomes = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert all(kind == "ok" for kind, _ in outcomes), outcomes
        _check_contention(store, "SO-1", rounds, [won for _, won in outcomes])
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_store_survives_fork(sql_store_url: str) -> None:
    store = SqlStorage(sql_store_url)
    try:
        start(store)  # the parent's pool now holds a connection
        ctx = multiprocessing.get_context("fork")

        def child() -> None:  # runs in the forked child, with the parent's store object
            current = store.get_instance("SO-1")
            assert current is not None
            with store.transaction() as tx:
                tx.update_instance(replace(current, version=2, state="forked"), 1)
                tx.append_history(make_draft(n=1, actor="child"))

        proc = ctx.Process(target=child)
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        # The parent's own connections still work after the child exited.
        got = store.get_instance("SO-1")
        assert got is not None and (got.version, got.state) == (2, "forked")
        with store.transaction() as tx:
            tx.lock_instance("SO-1")
            assert tx.append_history(make_draft(n=2)).seq == 3
    finally:
        store.close()


def test_driver_errors_become_storage_errors(sql_store_url: str) -> None:
    # The write path hands SQLAlchemy-compiled statements to the driver's cursor: a driver
    # error must still surface as StorageError (without the row's values), and roll back.
    store = SqlStorage(sql_store_url)
    try:
        record = start(store)
        raw_sql(sql_store_url, "DROP TABLE crmflow_history")
        failing = pytest.raises(StorageError, match="append_history failed")
        with failing as info, store.transaction() as tx:
            tx.update_instance(replace(record, version=2, state="secret-state"), 1)
            tx.append_history(make_draft(n=1, reason="secret-reason"))
        assert "secret" not in str(info.value)
        got = store.get_instance("SO-1")
        assert got is not None and (got.version, got.state) == (1, "draft")
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# SQLite specifics
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[SqlStorage]:
    store = SqlStorage(sqlite_url)
    yield store
    store.close()


def _pragmas(store: SqlStorage) -> dict[str, Any]:
    with store.transaction() as tx:
        conn = tx.connection  # type: ignore[attr-defined]
        return {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        }


def test_sqlite_settings(sqlite_store: SqlStorage) -> None:
    assert _pragmas(sqlite_store) == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 30000,
        "foreign_keys": 1,
    }


def test_sqlite_synchronous_normal(sqlite_url: str) -> None:
    store = SqlStorage(sqlite_url + "?synchronous=normal")
    try:
        assert _pragmas(store)["synchronous"] == 1
        assert store.url.endswith("?synchronous=normal")
    finally:
        store.close()


def test_sqlite_reads_do_not_wait_for_a_writer(sqlite_store: SqlStorage) -> None:
    start(sqlite_store)
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with sqlite_store.transaction() as tx:  # holds the write lock ...
            tx.lock_instance("SO-1")
            inside.set()
            release.wait(30)  # ... until the reader is done

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert inside.wait(30)
        began = time.monotonic()
        assert sqlite_store.get_instance("SO-1") is not None
        assert len(sqlite_store.history("SO-1")) == 1
        assert time.monotonic() - began < 1.0
    finally:
        release.set()
        t.join(30)


def test_schema_is_created_once_and_checked(sqlite_url: str) -> None:
    SqlStorage(sqlite_url).close()
    store = SqlStorage(sqlite_url)  # reopening is idempotent
    start(store)
    store.close()
    raw_sql(sqlite_url, "UPDATE crmflow_schema_version SET version = 99")
    with pytest.raises(StorageError, match="newer"):
        SqlStorage(sqlite_url)


def test_dispose_keeps_the_store_usable(sqlite_store: SqlStorage) -> None:
    start(sqlite_store)
    sqlite_store.dispose()
    assert sqlite_store.get_instance("SO-1") is not None


# ---------------------------------------------------------------------------------------------
# PostgreSQL / memory specifics
# ---------------------------------------------------------------------------------------------


@pytest.mark.postgresql
def test_postgresql_plain_url_uses_psycopg(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    store = SqlStorage(plain)
    try:
        assert store.dialect == "postgresql"
        start(store)
        assert store.get_instance("SO-1") is not None
    finally:
        store.close()


def test_memory_nested_transaction_is_an_error() -> None:
    store = MemoryStorage()
    with store.transaction(), pytest.raises(StorageError, match="nested"), store.transaction():
        pass


def test_history_reads_back_alike_on_every_back_end(storage: Storage) -> None:
    start(storage)
    draft = make_draft(
        n=1,
        changes={"zeta": [None, 1], "amount": [Decimal("1"), Decimal("2.50")]},
        details={"warnings": [], "actions": [{"z": 1, "a": 2}]},
    )
    with storage.transaction() as tx:
        tx.update_instance(make_record(version=2), expected_version=1)
        tx.append_history(draft)
    entry = storage.history("SO-1")[-1]
    # Kept as the canonical text that is hashed: sorted keys, exact values, a valid chain.
    assert list(entry.changes) == ["amount", "zeta"]
    assert list(entry.details) == ["actions", "warnings"]
    assert list(entry.details["actions"][0]) == ["a", "z"]
    assert entry.changes == draft.changes and entry.details == draft.details
    assert verify_chain(storage.history("SO-1")).ok


def test_a_moment_with_a_sub_second_utc_offset_keeps_the_chain_valid(storage: Storage) -> None:
    # Such an offset does not survive an ISO round trip on every Python; it is stored in UTC.
    odd = timezone(timedelta(microseconds=1))
    start(storage)
    moment = datetime(2026, 1, 5, 9, 0, tzinfo=odd)
    with storage.transaction() as tx:
        tx.update_instance(make_record(version=2), expected_version=1)
        tx.append_history(make_draft(n=1, at=moment, changes={"seen": [None, moment]}))
    entry = storage.history("SO-1")[-1]
    assert entry.at == moment and entry.changes["seen"][1] == moment  # the same instant
    assert verify_chain(storage.history("SO-1")).ok
