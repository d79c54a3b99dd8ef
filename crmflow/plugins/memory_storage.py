"""The built-in in-memory storage plugin (``memory://``), for tests, simulations and demos.

It keeps the SQL back ends' semantics: values go through the same JSON codec (so what cannot
be stored in SQLite cannot be stored here either, and callers never share mutable data with
the store), versions are compare-and-set, history is numbered and hash-chained, and a
transaction is all or nothing: writes go to an overlay that is merged on commit and dropped
on rollback. One lock serialises transactions, like SQLite's write lock; claims of due timers
and notifications take the same lock, so they never interleave with a transaction.

Pending timers are also kept in a heap ordered by (due time, id): a claim pops only the
timers that are due, so the timers due later cost it nothing (like the SQL index).

Every ``memory://`` URL opened gives a new, independent, empty store; nothing is kept at
module level.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, cast

from crmflow._codec import dumps, from_jsonable, iso_text, loads, to_jsonable
from crmflow._errors import ConcurrencyConflict, InstanceExists, StorageError
from crmflow._hashchain import GENESIS, hashed_entry_texts
from crmflow.plugins._storage_api import (
    CostEntry,
    HistoryDraft,
    HistoryRecord,
    InstanceRecord,
    OutboxRecord,
    Task,
    TimerRecord,
)
from crmflow.plugins._task_codec import (
    cost_from_values,
    cost_to_values,
    task_from_values,
    task_to_values,
)
from crmflow.plugins._timer_codec import (
    OUTBOX_STATUSES,
    lease_micros,
    outbox_from_values,
    outbox_to_values,
    timer_from_values,
    timer_to_values,
    to_epoch_us,
)
from crmflow.plugins.hookspecs import hookimpl

__all__ = ["MemoryStorage", "MemoryTx", "crmflow_open_storage"]


class _StoredInstance(NamedTuple):
    record: InstanceRecord  # for the metadata only: its ``data`` is the caller's, never served
    data: Any  # the store's own copy: see _own_data
    flat: bool


# Values are kept in the codec's tagged form (the JSON model without the text): encoding
# refuses what SQL storage could not store, and decoding builds fresh containers, so callers
# never share mutable data with the store. Instance data made only of immutable scalars that
# survive the codec unchanged is the common case; it is kept as a plain private copy instead,
# which is what the round trip would give back, without paying for it on every fire.

_UNCHANGED = frozenset({str, int, bool, type(None), date})


def _own_data(data: Mapping[str, Any]) -> tuple[Any, bool]:
    """The store's copy of instance data, and whether it is flat (see above)."""
    for name, value in data.items():
        kind = type(value)
        if type(name) is not str:
            break
        if kind in _UNCHANGED:
            continue
        if kind is Decimal or kind is float:
            if value.is_finite() if kind is Decimal else math.isfinite(value):
                continue
            break
        # The ISO round trip keeps only UTC and naive moments exactly (an offset-only zone
        # would replace any other tzinfo object, and fold would be lost).
        if kind is datetime and (value.tzinfo is None or value.tzinfo is UTC) and not value.fold:
            continue
        break
    else:
        return dict(data), True
    return to_jsonable(data), False


def _decode_instance(stored: _StoredInstance) -> InstanceRecord:
    r = stored.record
    return InstanceRecord(
        key=r.key,
        workflow=r.workflow,
        workflow_version=r.workflow_version,
        definition_digest=r.definition_digest,
        state=r.state,
        data=dict(stored.data) if stored.flat else from_jsonable(stored.data),
        version=r.version,
        created_at=r.created_at,
        updated_at=r.updated_at,
        owner=r.owner,
    )


# A history entry is kept as a plain tuple of strings, numbers and a datetime, with changes and
# details as their JSON text (as SQL storage keeps them): the garbage collector stops tracking
# such a tuple, so a long history costs the collector nothing. Layout:
# (seq, at, actor, kind, trigger, from_state, to_state, reason, changes, details, prev, hash)
_StoredHistory = tuple[int, datetime, str, str, str, str, str, str, str, str, str, str]


def _decode_history(key: str, stored: _StoredHistory) -> HistoryRecord:
    seq, at, actor, kind, trigger, from_state, to_state, reason, changes, details, prev, digest = (
        stored
    )
    return HistoryRecord(
        instance_key=key,
        seq=seq,
        at=at,
        actor=actor,
        kind=kind,
        trigger=trigger,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        changes=loads(changes),
        details=loads(details),
        prev_hash=prev,
        hash=digest,
    )


def _cancelled(values: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    """A pending timer's values once cancelled (a new dict: stored ones are never changed)."""
    return {
        **values,
        "status": "cancelled",
        "cancelled_at": iso_text(at),
        "claimed_by": None,
        "lease_us": None,
    }


class MemoryTx:
    """One open in-memory transaction (implements ``StorageTx``); writes go to an overlay."""

    def __init__(self, store: MemoryStorage) -> None:
        self._store = store
        self._instances: dict[str, _StoredInstance] = {}
        self._history: dict[str, list[_StoredHistory]] = {}
        self._idempotency: dict[str, tuple[str, Any, str]] = {}
        self._tasks: dict[tuple[str, str], dict[str, Any]] = {}
        self._costs: list[dict[str, Any]] = []
        # Timers and notifications as their column values (see _timer_codec), new or changed
        # in this transaction. A stored dict is never changed in place: every change makes
        # a new one, so the committed dicts stay as they were until commit.
        self._timers: dict[str, dict[str, Any]] = {}
        self._outbox: dict[str, dict[str, Any]] = {}

    # The store's committed dicts are read without the state lock: only the transaction
    # holding the write lock (this one) ever changes them.

    def _current(self, key: str) -> _StoredInstance | None:
        if key in self._instances:
            return self._instances[key]
        return self._store._instances.get(key)

    def get_instance(self, key: str) -> InstanceRecord | None:
        """Read an instance, including this transaction's own writes."""
        stored = self._current(key)
        return None if stored is None else _decode_instance(stored)

    def lock_instance(self, key: str) -> InstanceRecord | None:
        """Return the current row; the store's write lock already serialises writers."""
        return self.get_instance(key)

    def insert_instance(self, record: InstanceRecord) -> None:
        """Insert a new instance; raise ``InstanceExists`` when the key is taken."""
        if self._current(record.key) is not None:
            raise InstanceExists(record.key)
        self._instances[record.key] = _StoredInstance(record, *_own_data(record.data))

    def update_instance(self, record: InstanceRecord, expected_version: int) -> None:
        """Compare-and-set on the version; see ``SqlTx.update_instance``."""
        if record.version != expected_version + 1:
            raise ValueError(
                f"new version {record.version} must be expected_version + 1 "
                f"({expected_version + 1})"
            )
        current = self._current(record.key)
        if current is None or current.record.version != expected_version:
            actual = None if current is None else current.record.version
            raise ConcurrencyConflict(record.key, expected_version, actual)
        # created_at is set once, by the insert (as on the SQL back ends).
        if record.created_at != current.record.created_at:
            record = replace(record, created_at=current.record.created_at)
        self._instances[record.key] = _StoredInstance(record, *_own_data(record.data))

    def append_history(self, draft: HistoryDraft) -> HistoryRecord:
        """Append ``draft`` as the instance's next entry (``seq`` = last + 1, hash-chained)."""
        key = draft.instance_key
        pending = self._history.get(key)
        if pending is None:
            pending = self._history[key] = []
        last = pending[-1] if pending else None
        if last is None:
            committed = self._store._history.get(key)
            last = committed[-1] if committed else None
        seq = 1 if last is None else last[0] + 1
        prev_hash = GENESIS if last is None else last[11]
        # Encode once: the tagged form is both what is hashed and what is kept (as text).
        changes, details = to_jsonable(draft.changes), to_jsonable(draft.details)
        at = draft.at
        at_text = iso_text(at)
        if type(at) is not datetime or not (at.tzinfo is UTC or at.tzinfo is None) or at.fold:
            at = datetime.fromisoformat(at_text)  # what a read of the stored text gives
        # The canonical (sorted) texts are both what is hashed and what is kept.
        changes_text, details_text, digest = hashed_entry_texts(
            prev_hash,
            seq,
            key,
            at_text,
            draft.actor,
            draft.kind,
            draft.trigger,
            draft.from_state,
            draft.to_state,
            draft.reason,
            changes,
            details,
        )
        pending.append(
            (
                seq,
                at,
                draft.actor,
                draft.kind,
                draft.trigger,
                draft.from_state,
                draft.to_state,
                draft.reason,
                changes_text,
                details_text,
                prev_hash,
                digest,
            )
        )
        return HistoryRecord(
            instance_key=key,
            seq=seq,
            at=at,
            actor=draft.actor,
            kind=draft.kind,
            trigger=draft.trigger,
            from_state=draft.from_state,
            to_state=draft.to_state,
            reason=draft.reason,
            changes=draft.changes,
            details=draft.details,
            prev_hash=prev_hash,
            hash=digest,
        )

    def put_idempotency(
        self,
        idempotency_key: str,
        instance_key: str,
        result: Mapping[str, Any],
        at: datetime | None = None,
    ) -> None:
        """Remember a command's result; raise ``ConcurrencyConflict`` if the key is taken."""
        if idempotency_key in self._idempotency or idempotency_key in self._store._idempotency:
            err = ConcurrencyConflict(instance_key, 0, None)
            err.idempotency_key = idempotency_key  # type: ignore[attr-defined]
            err.args = (
                f"idempotency key {idempotency_key!r} was already used (instance {instance_key!r})",
            )
            raise err
        created = iso_text(at or datetime.now(UTC))
        self._idempotency[idempotency_key] = (instance_key, to_jsonable(result), created)

    def put_tasks(self, tasks: Sequence[Task]) -> None:
        """Insert or replace tasks, identified by (``key``, ``id``)."""
        for task in tasks:
            self._tasks[(task.key, task.id)] = task_to_values(task)

    def add_cost(self, entry: CostEntry) -> None:
        """Record a cost entry; (``key``, ``seq``) must be new."""
        values = cost_to_values(entry)
        taken = {(c["instance_key"], c["seq"]) for c in (*self._store._costs, *self._costs)}
        if (entry.key, entry.seq) in taken:
            raise StorageError(f"cost entry {entry.seq} of {entry.key!r} already exists")
        self._costs.append(values)

    def _timer(self, timer_id: str) -> dict[str, Any] | None:
        found = self._timers.get(timer_id)
        return self._store._timers.get(timer_id) if found is None else found

    def insert_timers(self, timers: Sequence[TimerRecord]) -> None:
        """Insert new timers (``id`` is new; a taken id is a ``StorageError``)."""
        rows = [timer_to_values(t) for t in timers]  # encode all before keeping any
        seen: set[str] = set()
        for values in rows:
            timer_id = values["id"]
            if timer_id in seen or self._timer(timer_id) is not None:
                raise StorageError(f"timer {timer_id!r} already exists")
            seen.add(timer_id)
        for values in rows:
            self._timers[values["id"]] = values

    def cancel_timers(
        self, instance_key: str, names: Collection[str] | None = None, *, at: datetime
    ) -> list[TimerRecord]:
        """Cancel the instance's pending timers (those named, or all); return them, cancelled."""
        ids = set(self._store._timers_by_instance.get(instance_key, ()))
        ids.update(i for i, v in self._timers.items() if v["instance_key"] == instance_key)
        cancelled = []
        for timer_id in ids:
            values = self._timer(timer_id)
            if values is None or values["status"] != "pending":
                continue
            if names is not None and values["name"] not in names:
                continue
            values = _cancelled(values, at)
            self._timers[timer_id] = values
            cancelled.append(values)
        cancelled.sort(key=lambda v: (v["due_us"], v["id"]))
        return [timer_from_values(v) for v in cancelled]

    def cancel_timer(self, timer_id: str, *, at: datetime) -> bool:
        """Cancel one pending timer by id; return whether it was pending."""
        values = self._timer(timer_id)
        if values is None or values["status"] != "pending":
            return False
        self._timers[timer_id] = _cancelled(values, at)
        return True

    def finish_timer(
        self,
        timer_id: str,
        worker: str,
        *,
        at: datetime,
        next_due: datetime | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> bool:
        """Compare-and-set on the claim; see ``SqlTx.finish_timer``."""
        changes: dict[str, Any] = {}
        if next_due is not None:
            changes["due_us"] = to_epoch_us(next_due, "next_due")
            if payload is not None:
                changes["payload"] = dumps(payload)
        else:
            changes["status"] = "fired"
        values = self._timer(timer_id)
        if values is None or values["status"] != "pending" or values["claimed_by"] != worker:
            return False
        self._timers[timer_id] = {
            **values,
            **changes,
            "fired_at": iso_text(at),
            "fire_count": values["fire_count"] + 1,
            "claimed_by": None,
            "lease_us": None,
        }
        return True

    def insert_outbox(self, records: Sequence[OutboxRecord]) -> None:
        """Queue notifications (``id`` is new; a taken id is a ``StorageError``)."""
        rows = [outbox_to_values(r) for r in records]
        seen: set[str] = set()
        for values in rows:
            outbox_id = values["id"]
            if outbox_id in seen or outbox_id in self._outbox or outbox_id in self._store._outbox:
                raise StorageError(f"notification {outbox_id!r} already exists")
            seen.add(outbox_id)
        for values in rows:
            self._outbox[values["id"]] = values

    def _commit(self) -> None:
        store = self._store
        with store._state_lock:
            store._instances.update(self._instances)
            for key, entries in self._history.items():
                if entries:
                    store._history.setdefault(key, []).extend(entries)
            store._idempotency.update(self._idempotency)
            for (key, task_id), values in self._tasks.items():
                store._tasks.setdefault(key, {})[task_id] = values
            store._costs.extend(self._costs)
            for timer_id, values in self._timers.items():
                store._put_timer(timer_id, values)
            for outbox_id, values in self._outbox.items():
                store._put_outbox(outbox_id, values)


class _Transaction:
    """What ``MemoryStorage.transaction()`` returns; see ``MemoryStorage._exclusive``.

    A class rather than a generator-based context manager: every fire opens one, and the
    generator machinery cost more than the rest of an empty transaction.
    """

    __slots__ = ("_store", "_tx")

    def __init__(self, store: MemoryStorage) -> None:
        self._store = store
        self._tx: MemoryTx | None = None

    def __enter__(self) -> MemoryTx:
        store = self._store
        store._check_open()
        me = threading.get_ident()
        if store._writer == me:
            raise StorageError("nested transaction on the same store in one thread")
        store._write_lock.acquire()
        store._writer = me
        try:
            self._tx = MemoryTx(store)
        except BaseException:
            store._writer = None
            store._write_lock.release()
            raise
        return self._tx

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        store = self._store
        try:
            if exc_type is None and self._tx is not None:
                self._tx._commit()
        finally:
            self._tx = None
            store._writer = None
            store._write_lock.release()


class MemoryStorage:
    """An in-memory store (implements ``Storage``); see the module docstring."""

    url: str

    def __init__(self, url: str = "memory://") -> None:
        """Create an empty store; ``url`` is kept for display only."""
        self.url = url
        self._write_lock = threading.Lock()
        self._writer: int | None = None
        self._state_lock = threading.Lock()
        self._instances: dict[str, _StoredInstance] = {}
        self._history: dict[str, list[_StoredHistory]] = {}
        self._idempotency: dict[str, tuple[str, Any, str]] = {}
        # Instance key -> task id -> values: an instance's tasks are read on every fire.
        self._tasks: dict[str, dict[str, dict[str, Any]]] = {}
        self._costs: list[dict[str, Any]] = []
        self._timers: dict[str, dict[str, Any]] = {}
        self._timers_by_instance: dict[str, set[str]] = {}
        # (due_us, id) of pending timers. An entry goes stale when its timer fires, is
        # cancelled or is rescheduled; claims drop stale entries as they meet them.
        self._timer_heap: list[tuple[int, str]] = []
        self._outbox: dict[str, dict[str, Any]] = {}
        self._outbox_pending: set[str] = set()
        self._closed = False

    def __repr__(self) -> str:
        """Show the URL and the number of instances."""
        return f"MemoryStorage({self.url!r}, instances={len(self._instances)})"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self!r} is closed")

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the write lock (what a transaction or a claim needs)."""
        self._check_open()
        if self._writer == threading.get_ident():
            # Waiting on our own lock would hang forever; SQLite would fail after its timeout.
            raise StorageError("nested transaction on the same store in one thread")
        with self._write_lock:
            self._writer = threading.get_ident()
            try:
                yield
            finally:
                self._writer = None

    def transaction(self) -> _Transaction:
        """Open a write transaction: commit on normal exit, roll back on an exception."""
        return _Transaction(self)

    # Called with the state lock held.

    def _put_timer(self, timer_id: str, values: dict[str, Any]) -> None:
        previous = self._timers.get(timer_id)
        self._timers[timer_id] = values
        key = values["instance_key"]
        if key is not None:
            self._timers_by_instance.setdefault(key, set()).add(timer_id)
        if values["status"] == "pending" and (
            previous is None
            or previous["status"] != "pending"
            or previous["due_us"] != values["due_us"]
        ):
            heapq.heappush(self._timer_heap, (values["due_us"], timer_id))

    def _put_outbox(self, outbox_id: str, values: dict[str, Any]) -> None:
        self._outbox[outbox_id] = values
        if values["status"] == "pending":
            self._outbox_pending.add(outbox_id)
        else:
            self._outbox_pending.discard(outbox_id)

    def get_instance(self, key: str) -> InstanceRecord | None:
        """Read an instance's latest committed row."""
        self._check_open()
        with self._state_lock:
            stored = self._instances.get(key)
        return None if stored is None else _decode_instance(stored)

    def history(self, key: str) -> list[HistoryRecord]:
        """Every history entry of an instance, in ``seq`` order."""
        self._check_open()
        with self._state_lock:
            entries = list(self._history.get(key, ()))
        return [_decode_history(key, e) for e in entries]

    def get_idempotency(self, idempotency_key: str) -> Mapping[str, Any] | None:
        """Return the remembered result of a command, or ``None``."""
        self._check_open()
        with self._state_lock:
            found = self._idempotency.get(idempotency_key)
        return None if found is None else cast(Mapping[str, Any], from_jsonable(found[1]))

    def iter_instances(self, workflow: str | None = None) -> Iterator[InstanceRecord]:
        """Every instance (of one workflow when given), in key order (a snapshot)."""
        self._check_open()
        with self._state_lock:
            stored = [self._instances[k] for k in sorted(self._instances)]
        for s in stored:
            if workflow is None or s.record.workflow == workflow:
                yield _decode_instance(s)

    def count_instances(
        self, *, owner: str, workflow: str | None = None, states: Collection[str] | None = None
    ) -> int:
        """How many instances ``owner`` owns (of ``workflow``, in one of ``states``)."""
        self._check_open()
        with self._state_lock:
            records = [s.record for s in self._instances.values()]
        return sum(
            1
            for r in records
            if r.owner == owner
            and (workflow is None or r.workflow == workflow)
            and (states is None or r.state in states)
        )

    def tasks(self, instance_key: str) -> list[Task]:
        """The tasks of one instance, in ``position`` order."""
        self._check_open()
        with self._state_lock:
            rows = list(self._tasks.get(instance_key, {}).values())
        return sorted((task_from_values(v) for v in rows), key=lambda t: t.position)

    def query_tasks(
        self,
        *,
        workflow: str | None = None,
        assignee: str | None = None,
        owner: str | None = None,
        statuses: Collection[str] | None = None,
    ) -> list[Task]:
        """Tasks across instances, filtered; ordered by instance key, then position."""
        self._check_open()
        with self._state_lock:
            rows = [values for tasks in self._tasks.values() for values in tasks.values()]
            instances = {k: s.record for k, s in self._instances.items()}
        found = []
        for values in rows:
            record = instances.get(values["instance_key"])
            if record is None:
                continue
            if workflow is not None and record.workflow != workflow:
                continue
            if owner is not None and record.owner != owner:
                continue
            if assignee is not None and values["assignee"] != assignee:
                continue
            if statuses is not None and values["status"] not in statuses:
                continue
            found.append(task_from_values(values))
        return sorted(found, key=lambda t: (t.key, t.position))

    def costs(
        self, *, instance_key: str | None = None, workflow: str | None = None
    ) -> list[CostEntry]:
        """Cost entries (of one instance or workflow), ordered by instance key, then seq."""
        self._check_open()
        with self._state_lock:
            rows = list(self._costs)
            workflows = {k: s.record.workflow for k, s in self._instances.items()}
        entries = [
            cost_from_values(v)
            for v in rows
            if (instance_key is None or v["instance_key"] == instance_key)
            and (workflow is None or workflows.get(v["instance_key"]) == workflow)
        ]
        return sorted(entries, key=lambda c: (c.key, c.seq))

    def claim_due_timers(
        self, now: datetime, worker: str, *, lease: timedelta, limit: int
    ) -> list[TimerRecord]:
        """Claim up to ``limit`` pending timers due at ``now``, earliest first, for ``worker``.

        Under the write lock, like a transaction. Pops the heap only while its head is due, so
        the cost grows with the due (and live-leased) timers, never with those due later.
        """
        now_us = to_epoch_us(now, "now")
        until_us = now_us + lease_micros(lease)
        if limit < 1:
            return []
        claimed: list[dict[str, Any]] = []
        with self._exclusive(), self._state_lock:
            heap = self._timer_heap
            # Entries of timers still pending go back after the loop: a claimed timer stays
            # pending until it is finished, and is claimable again once its lease runs out.
            keep: list[tuple[int, str]] = []
            seen: set[str] = set()
            while heap and heap[0][0] <= now_us and len(claimed) < limit:
                due_us, timer_id = heapq.heappop(heap)
                values = self._timers.get(timer_id)
                if (
                    values is None
                    or values["status"] != "pending"
                    or values["due_us"] != due_us
                    or timer_id in seen
                ):
                    continue  # stale or duplicate entry: drop it
                seen.add(timer_id)
                keep.append((due_us, timer_id))
                lease_us = values["lease_us"]
                if lease_us is not None and lease_us > now_us:
                    continue
                values = {**values, "claimed_by": worker, "lease_us": until_us}
                self._timers[timer_id] = values
                claimed.append(values)
            for entry in keep:
                heapq.heappush(heap, entry)
        return [timer_from_values(v) for v in claimed]

    def release_timer(self, timer_id: str, worker: str) -> None:
        """Give ``worker``'s claim back; the timer stays pending and is claimable at once."""
        with self._exclusive(), self._state_lock:
            values = self._timers.get(timer_id)
            if (
                values is not None
                and values["status"] == "pending"
                and values["claimed_by"] == worker
            ):
                self._timers[timer_id] = {**values, "claimed_by": None, "lease_us": None}

    def timers(
        self,
        *,
        instance_key: str | None = None,
        owner: str | None = None,
        statuses: Collection[str] | None = None,
    ) -> list[TimerRecord]:
        """Timers, filtered, ordered by ``due_at`` then ``id``."""
        self._check_open()
        with self._state_lock:
            if instance_key is None:
                rows = list(self._timers.values())
            else:
                ids = self._timers_by_instance.get(instance_key, ())
                rows = [self._timers[i] for i in ids]
        found = [
            v
            for v in rows
            if (instance_key is None or v["instance_key"] == instance_key)
            and (owner is None or v["owner"] == owner)
            and (statuses is None or v["status"] in statuses)
        ]
        found.sort(key=lambda v: (v["due_us"], v["id"]))
        return [timer_from_values(v) for v in found]

    def get_timer(self, timer_id: str) -> TimerRecord | None:
        """One timer by id."""
        self._check_open()
        with self._state_lock:
            values = self._timers.get(timer_id)
        return None if values is None else timer_from_values(values)

    def count_timers(self, *, statuses: Collection[str] | None = None) -> int:
        """How many timers (with one of ``statuses``) there are."""
        self._check_open()
        with self._state_lock:
            if statuses is None:
                return len(self._timers)
            return sum(1 for v in self._timers.values() if v["status"] in statuses)

    def claim_due_outbox(
        self, now: datetime, worker: str, *, lease: timedelta, limit: int
    ) -> list[OutboxRecord]:
        """Claim up to ``limit`` pending notifications due for an attempt, oldest first."""
        now_us = to_epoch_us(now, "now")
        until_us = now_us + lease_micros(lease)
        if limit < 1:
            return []
        with self._exclusive(), self._state_lock:
            due = [
                v
                for v in (self._outbox[i] for i in self._outbox_pending)
                if (v["next_attempt_us"] is None or v["next_attempt_us"] <= now_us)
                and (v["lease_us"] is None or v["lease_us"] <= now_us)
            ]
            due.sort(key=lambda v: (v["created_us"], v["id"]))
            claimed = [{**v, "claimed_by": worker, "lease_us": until_us} for v in due[:limit]]
            for values in claimed:
                self._outbox[values["id"]] = values
        return [outbox_from_values(v) for v in claimed]

    def finish_delivery(
        self,
        outbox_id: str,
        worker: str,
        *,
        status: str,
        attempts: int,
        next_attempt_at: datetime | None,
        last_error: str,
        delivered_at: datetime | None,
    ) -> bool:
        """Record a delivery attempt of ``worker``'s claimed notification; clear the claim."""
        if status not in OUTBOX_STATUSES:
            raise ValueError(f"outbox status must be one of {OUTBOX_STATUSES}, not {status!r}")
        next_us = (
            None if next_attempt_at is None else to_epoch_us(next_attempt_at, "next_attempt_at")
        )
        with self._exclusive(), self._state_lock:
            values = self._outbox.get(outbox_id)
            if values is None or values["status"] != "pending" or values["claimed_by"] != worker:
                return False
            self._put_outbox(
                outbox_id,
                {
                    **values,
                    "status": status,
                    "attempts": attempts,
                    "next_attempt_us": next_us,
                    "last_error": last_error,
                    "delivered_at": None if delivered_at is None else iso_text(delivered_at),
                    "claimed_by": None,
                    "lease_us": None,
                },
            )
        return True

    def outbox(
        self,
        *,
        instance_key: str | None = None,
        recipient: str | None = None,
        channel: str | None = None,
        statuses: Collection[str] | None = None,
        timer_id: str | None = None,
    ) -> list[OutboxRecord]:
        """Notifications, filtered, ordered by ``created_at`` then ``id``."""
        self._check_open()
        with self._state_lock:
            rows = list(self._outbox.values())
        found = [
            v
            for v in rows
            if (instance_key is None or v["instance_key"] == instance_key)
            and (recipient is None or v["recipient"] == recipient)
            and (channel is None or v["channel"] == channel)
            and (statuses is None or v["status"] in statuses)
            and (timer_id is None or v["timer_id"] == timer_id)
        ]
        found.sort(key=lambda v: (v["created_us"], v["id"]))
        return [outbox_from_values(v) for v in found]

    def get_outbox(self, outbox_id: str) -> OutboxRecord | None:
        """One notification by id."""
        self._check_open()
        with self._state_lock:
            values = self._outbox.get(outbox_id)
        return None if values is None else outbox_from_values(values)

    def mark_outbox(
        self,
        outbox_id: str,
        *,
        read_at: datetime | None = None,
        acknowledged_at: datetime | None = None,
    ) -> OutboxRecord | None:
        """Set ``read_at`` / ``acknowledged_at`` (when given and not yet set); return the row."""
        with self._exclusive(), self._state_lock:
            values = self._outbox.get(outbox_id)
            if values is None:
                return None
            changes: dict[str, Any] = {}
            if read_at is not None and values["read_at"] is None:
                changes["read_at"] = iso_text(read_at)
            if acknowledged_at is not None and values["acknowledged_at"] is None:
                changes["acknowledged_at"] = iso_text(acknowledged_at)
            if changes:
                values = {**values, **changes}
                self._outbox[outbox_id] = values
        return outbox_from_values(values)

    def requeue_outbox(self, outbox_id: str, at: datetime) -> OutboxRecord | None:
        """Make a dead notification pending again, due at ``at``; see ``Storage``."""
        due_us = to_epoch_us(at, "at")
        with self._exclusive(), self._state_lock:
            values = self._outbox.get(outbox_id)
            if values is None or values["status"] != "dead":
                return None
            values = {
                **values,
                "status": "pending",
                "attempts": 0,
                "next_attempt_us": due_us,
                "delivered_at": None,
                "claimed_by": None,
                "lease_us": None,
            }
            self._put_outbox(outbox_id, values)
        return outbox_from_values(values)

    def close(self) -> None:
        """Drop the data; the object is unusable afterwards."""
        self._closed = True
        with self._state_lock:
            self._instances.clear()
            self._history.clear()
            self._idempotency.clear()
            self._tasks.clear()
            self._costs.clear()
            self._timers.clear()
            self._timers_by_instance.clear()
            self._timer_heap.clear()
            self._outbox.clear()
            self._outbox_pending.clear()


@hookimpl
def crmflow_open_storage(url: str) -> MemoryStorage | None:
    """Open a new, empty store for ``memory://`` URLs (anything after ``//`` is a label)."""
    if url.split(":", 1)[0].lower() == "memory":
        return MemoryStorage(url)
    return None
