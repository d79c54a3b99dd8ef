"""The storage contract every storage back end implements.

A back end is returned by the ``crmflow_open_storage`` hook. The engine reads outside a
transaction, decides, then writes everything a command changes inside one
:meth:`Storage.transaction`. Writes use optimistic versions: :meth:`StorageTx.update_instance`
succeeds only when the stored version still equals the version the engine read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from crmflow._task_types import CostEntry, Task

__all__ = [
    "CostEntry",
    "HistoryDraft",
    "HistoryRecord",
    "InstanceRecord",
    "Storage",
    "StorageTx",
    "Task",
]


@dataclass(frozen=True)
class InstanceRecord:
    """A stored workflow instance.

    ``data`` holds the values :mod:`crmflow._codec` can store (JSON types plus Decimal, date
    and datetime, nested in dicts and lists); the back end encodes them and returns the same
    values (already-tagged data round-trips unchanged too). ``version`` starts at 1 and grows
    by one with every committed change.
    """

    key: str
    workflow: str
    workflow_version: int
    definition_digest: str
    state: str
    data: Mapping[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    owner: str | None = None


@dataclass(frozen=True)
class HistoryDraft:
    """A history entry before storage numbers and chains it.

    ``kind`` is one of ``start``, ``transition``, ``override``, ``refused``, ``denied`` (and
    later kinds added by features); ``changes`` and ``details`` hold values
    :mod:`crmflow._codec` can store, like :attr:`InstanceRecord.data`.
    """

    instance_key: str
    at: datetime
    actor: str
    kind: str
    trigger: str = ""
    from_state: str = ""
    to_state: str = ""
    reason: str = ""
    changes: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryRecord:
    """A stored history entry: ``seq`` counts 1, 2, 3 ... per instance with no gap.

    ``hash`` is the SHA-256 of ``prev_hash`` and the entry's canonical JSON, so that editing
    any stored row breaks the chain (see :func:`crmflow._hashchain.verify_chain`).
    """

    instance_key: str
    seq: int
    at: datetime
    actor: str
    kind: str
    trigger: str
    from_state: str
    to_state: str
    reason: str
    changes: Mapping[str, Any]
    details: Mapping[str, Any]
    prev_hash: str
    hash: str


@runtime_checkable
class StorageTx(Protocol):
    """Operations inside one storage transaction; all commit together or none does."""

    def get_instance(self, key: str) -> InstanceRecord | None:
        """Read an instance inside the transaction."""

    def insert_instance(self, record: InstanceRecord) -> None:
        """Insert a new instance; raise ``InstanceExists`` when the key is taken."""

    def update_instance(self, record: InstanceRecord, expected_version: int) -> None:
        """Replace the instance when its stored version equals ``expected_version``.

        ``record.version`` is the new version. Raise ``ConcurrencyConflict`` (and change
        nothing) when the stored version differs or the row is gone.
        """

    def lock_instance(self, key: str) -> InstanceRecord | None:
        """Serialise history appends that do not change the instance (refusals).

        Takes the row lock where the database has one and returns the current row.
        """

    def append_history(self, draft: HistoryDraft) -> HistoryRecord:
        """Append a history entry with the next ``seq`` and its chained hash."""

    def put_idempotency(
        self,
        idempotency_key: str,
        instance_key: str,
        result: Mapping[str, Any],
        at: datetime | None = None,
    ) -> None:
        """Remember the result of a command; raise ``ConcurrencyConflict`` if the key is taken.

        ``at`` is when the command ran, from the engine's clock (stored for operators, e.g. to
        prune old keys; the wall clock when omitted). The raised error carries the key in an
        ``idempotency_key`` attribute and has ``expected_version`` 0.
        """

    def put_tasks(self, tasks: Sequence[Task]) -> None:
        """Insert or replace tasks, identified by (``key``, ``id``).

        The engine changes tasks only together with their instance's version (in the same
        transaction), so the instance's compare-and-set already serialises task writers.
        """

    def add_cost(self, entry: CostEntry) -> None:
        """Record a cost entry; (``key``, ``seq``) is unique."""


@runtime_checkable
class Storage(Protocol):
    """A storage back end (SQLite file, PostgreSQL, memory ...)."""

    url: str

    def transaction(self) -> AbstractContextManager[StorageTx]:
        """Open a write transaction: commit on normal exit, roll back on an exception."""

    def get_instance(self, key: str) -> InstanceRecord | None:
        """Read an instance's latest committed row."""

    def history(self, key: str) -> list[HistoryRecord]:
        """Every history entry of an instance, in ``seq`` order."""

    def get_idempotency(self, idempotency_key: str) -> Mapping[str, Any] | None:
        """Return the remembered result of a command, or ``None``."""

    def iter_instances(self, workflow: str | None = None) -> Iterator[InstanceRecord]:
        """Every instance (of one workflow when given), in key order."""

    def count_instances(
        self, *, owner: str, workflow: str | None = None, states: Collection[str] | None = None
    ) -> int:
        """How many instances ``owner`` owns (of ``workflow``, in one of ``states``)."""

    def tasks(self, instance_key: str) -> list[Task]:
        """The tasks of one instance, in ``position`` order."""

    def query_tasks(
        self,
        *,
        workflow: str | None = None,
        assignee: str | None = None,
        owner: str | None = None,
        statuses: Collection[str] | None = None,
    ) -> list[Task]:
        """Tasks across instances, filtered; ordered by instance key, then position.

        ``owner`` filters on the owner of the task's instance, ``workflow`` on its workflow.
        """

    def costs(
        self, *, instance_key: str | None = None, workflow: str | None = None
    ) -> list[CostEntry]:
        """Cost entries (of one instance or workflow), ordered by instance key, then seq."""

    def close(self) -> None:
        """Release connections; the object is unusable afterwards."""
