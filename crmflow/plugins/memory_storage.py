"""The built-in in-memory storage plugin (``memory://``), for tests, simulations and demos.

It keeps the SQL back ends' semantics: values go through the same JSON codec (so what cannot
be stored in SQLite cannot be stored here either, and callers never share mutable data with
the store), versions are compare-and-set, history is numbered and hash-chained, and a
transaction is all or nothing: writes go to an overlay that is merged on commit and dropped
on rollback. One lock serialises transactions, like SQLite's write lock.

Every ``memory://`` URL opened gives a new, independent, empty store; nothing is kept at
module level.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

from crmflow._codec import from_jsonable, to_jsonable
from crmflow._errors import ConcurrencyConflict, InstanceExists, StorageError
from crmflow._hashchain import GENESIS, encoded_entry_hash
from crmflow.plugins._storage_api import (
    CostEntry,
    HistoryDraft,
    HistoryRecord,
    InstanceRecord,
    Task,
)
from crmflow.plugins._task_codec import (
    cost_from_values,
    cost_to_values,
    task_from_values,
    task_to_values,
)
from crmflow.plugins.hookspecs import hookimpl

__all__ = ["MemoryStorage", "MemoryTx", "crmflow_open_storage"]


@dataclass(frozen=True)
class _StoredInstance:
    record: InstanceRecord  # data and all; ``data`` below is the encoded copy that is served
    data: Any


@dataclass(frozen=True)
class _StoredHistory:
    record: HistoryRecord  # changes/details are served from the encoded copies below
    changes: Any
    details: Any


# Values are kept in the codec's tagged form (the JSON model without the text): encoding
# refuses what SQL storage could not store, and decoding builds fresh containers, so callers
# never share mutable data with the store.


def _decode_instance(stored: _StoredInstance) -> InstanceRecord:
    r = stored.record
    return InstanceRecord(
        key=r.key,
        workflow=r.workflow,
        workflow_version=r.workflow_version,
        definition_digest=r.definition_digest,
        state=r.state,
        data=from_jsonable(stored.data),
        version=r.version,
        created_at=r.created_at,
        updated_at=r.updated_at,
        owner=r.owner,
    )


def _decode_history(stored: _StoredHistory) -> HistoryRecord:
    return replace(
        stored.record,
        changes=from_jsonable(stored.changes),
        details=from_jsonable(stored.details),
    )


class MemoryTx:
    """One open in-memory transaction (implements ``StorageTx``); writes go to an overlay."""

    def __init__(self, store: MemoryStorage) -> None:
        self._store = store
        self._instances: dict[str, _StoredInstance] = {}
        self._history: dict[str, list[_StoredHistory]] = {}
        self._idempotency: dict[str, tuple[str, Any, str]] = {}
        self._tasks: dict[tuple[str, str], dict[str, Any]] = {}
        self._costs: list[dict[str, Any]] = []

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
        self._instances[record.key] = _StoredInstance(record, to_jsonable(record.data))

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
        self._instances[record.key] = _StoredInstance(record, to_jsonable(record.data))

    def append_history(self, draft: HistoryDraft) -> HistoryRecord:
        """Append ``draft`` as the instance's next entry (``seq`` = last + 1, hash-chained)."""
        key = draft.instance_key
        pending = self._history.setdefault(key, [])
        last = pending[-1] if pending else None
        if last is None:
            committed = self._store._history.get(key)
            last = committed[-1] if committed else None
        seq = 1 if last is None else last.record.seq + 1
        prev_hash = GENESIS if last is None else last.record.hash
        # Encode once: the tagged form is both what is hashed and what is kept.
        changes, details = to_jsonable(draft.changes), to_jsonable(draft.details)
        fields: dict[str, Any] = {
            "instance_key": key,
            "seq": seq,
            "at": datetime.fromisoformat(draft.at.isoformat()),
            "actor": draft.actor,
            "kind": draft.kind,
            "trigger": draft.trigger,
            "from_state": draft.from_state,
            "to_state": draft.to_state,
            "reason": draft.reason,
        }
        digest = encoded_entry_hash(prev_hash, **fields, changes=changes, details=details)
        record = HistoryRecord(
            **fields, changes=draft.changes, details=draft.details, prev_hash=prev_hash, hash=digest
        )
        pending.append(_StoredHistory(record, changes, details))
        return record

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
        created = (at or datetime.now(UTC)).isoformat()
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

    def _commit(self) -> None:
        store = self._store
        with store._state_lock:
            store._instances.update(self._instances)
            for key, entries in self._history.items():
                if entries:
                    store._history.setdefault(key, []).extend(entries)
            store._idempotency.update(self._idempotency)
            store._tasks.update(self._tasks)
            store._costs.extend(self._costs)


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
        self._tasks: dict[tuple[str, str], dict[str, Any]] = {}
        self._costs: list[dict[str, Any]] = []
        self._closed = False

    def __repr__(self) -> str:
        """Show the URL and the number of instances."""
        return f"MemoryStorage({self.url!r}, instances={len(self._instances)})"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self!r} is closed")

    @contextmanager
    def transaction(self) -> Iterator[MemoryTx]:
        """Open a write transaction: commit on normal exit, roll back on an exception."""
        self._check_open()
        if self._writer == threading.get_ident():
            # Waiting on our own lock would hang forever; SQLite would fail after its timeout.
            raise StorageError("nested transaction on the same store in one thread")
        with self._write_lock:
            self._writer = threading.get_ident()
            try:
                tx = MemoryTx(self)
                yield tx
                tx._commit()
            finally:
                self._writer = None

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
        return [_decode_history(e) for e in entries]

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
            rows = [v for (key, _), v in self._tasks.items() if key == instance_key]
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
            rows = list(self._tasks.values())
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

    def close(self) -> None:
        """Drop the data; the object is unusable afterwards."""
        self._closed = True
        with self._state_lock:
            self._instances.clear()
            self._history.clear()
            self._idempotency.clear()
            self._tasks.clear()
            self._costs.clear()


@hookimpl
def crmflow_open_storage(url: str) -> MemoryStorage | None:
    """Open a new, empty store for ``memory://`` URLs (anything after ``//`` is a label)."""
    if url.split(":", 1)[0].lower() == "memory":
        return MemoryStorage(url)
    return None
