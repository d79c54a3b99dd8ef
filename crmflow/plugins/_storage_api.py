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
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from crmflow._task_types import CostEntry, Task

__all__ = [
    "CostEntry",
    "HistoryDraft",
    "HistoryRecord",
    "InstanceRecord",
    "OutboxRecord",
    "Storage",
    "StorageTx",
    "Task",
    "TimerRecord",
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


@dataclass(frozen=True)
class TimerRecord:
    """A timer waiting in storage until ``due_at``.

    ``kind`` is ``after``, ``before`` or ``sla`` (a workflow timer of ``instance_key``),
    ``automation`` (started by an automation), ``reminder`` (a personal reminder of ``owner``)
    or ``subscription`` (a report ``owner`` subscribed to). ``status`` is ``pending`` until it
    fires for the last time (``fired``) or is cancelled (``cancelled``); a recurring timer stays
    ``pending`` with a later ``due_at`` and a higher ``fire_count``. ``claimed_by`` and
    ``lease_until`` mark a worker that is firing it right now; a lease that ran out can be
    claimed again (the worker died). ``payload`` holds codec values (what to fire or send,
    cron expression, time zone ...). All datetimes are time-zone aware.
    """

    id: str
    kind: str
    name: str
    due_at: datetime
    created_at: datetime
    instance_key: str | None = None
    owner: str | None = None
    status: str = "pending"
    payload: Mapping[str, Any] = field(default_factory=dict)
    fired_at: datetime | None = None
    fire_count: int = 0
    claimed_by: str | None = None
    lease_until: datetime | None = None


@dataclass(frozen=True)
class OutboxRecord:
    """A notification waiting for delivery on one channel to one recipient.

    Written in the transaction of the change that caused it and delivered after commit.
    ``status`` is ``pending`` (queued, perhaps after failed attempts: ``attempts``,
    ``last_error`` and ``next_attempt_at`` say so), ``delivered`` or ``dead`` (given up).
    ``recipient`` receives it; ``intended`` is who it was addressed to (they differ while the
    intended user delegates to a proxy; ``metadata["delegation"]`` says why). ``read_at`` and
    ``acknowledged_at`` track an in-app message or reminder further. ``timer_id`` links a
    reminder's notification to its timer (acknowledging stops the repeats).
    """

    id: str
    channel: str
    recipient: str
    subject: str
    created_at: datetime
    instance_key: str | None = None
    event: str = ""
    intended: str = ""
    address: str = ""
    body: str = ""
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str = ""
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    acknowledged_at: datetime | None = None
    timer_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    claimed_by: str | None = None
    lease_until: datetime | None = None


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
        """Append a history entry with the next ``seq`` and its chained hash.

        The record returned carries the draft's own ``changes`` and ``details`` (equal to what
        a later read returns, not decoded again).
        """

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

    def insert_timers(self, timers: Sequence[TimerRecord]) -> None:
        """Insert new timers (``id`` is new)."""

    def cancel_timers(
        self, instance_key: str, names: Collection[str] | None = None, *, at: datetime
    ) -> list[TimerRecord]:
        """Cancel the instance's pending timers (those named, or all); return them, cancelled."""

    def cancel_timer(self, timer_id: str, *, at: datetime) -> bool:
        """Cancel one pending timer by id; return whether it was pending."""

    def finish_timer(
        self,
        timer_id: str,
        worker: str,
        *,
        at: datetime,
        next_due: datetime | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record that ``worker`` fired its claimed timer at ``at``.

        Only if the timer is still ``pending`` and claimed by ``worker`` (return ``False`` and
        change nothing otherwise: it was cancelled, or its lease ran out and another worker took
        it). With ``next_due`` it stays pending for the next occurrence (claim cleared,
        ``fire_count`` + 1, ``payload`` replaced when given); without, it becomes ``fired``.
        """

    def insert_outbox(self, records: Sequence[OutboxRecord]) -> None:
        """Queue notifications (``id`` is new)."""


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

    def claim_due_timers(
        self, now: datetime, worker: str, *, lease: timedelta, limit: int
    ) -> list[TimerRecord]:
        """Claim up to ``limit`` pending timers due at ``now``, earliest first, for ``worker``.

        A timer is claimable when it is pending, ``due_at <= now`` and it has no live lease.
        Claiming sets ``claimed_by`` and ``lease_until = now + lease`` in a short transaction of
        its own; two workers never claim the same timer (PostgreSQL: ``FOR UPDATE SKIP
        LOCKED``).
        """

    def release_timer(self, timer_id: str, worker: str) -> None:
        """Give a claim back (the timer stays pending and can be claimed at once)."""

    def timers(
        self,
        *,
        instance_key: str | None = None,
        owner: str | None = None,
        statuses: Collection[str] | None = None,
    ) -> list[TimerRecord]:
        """Timers, filtered, ordered by ``due_at`` then ``id``."""

    def get_timer(self, timer_id: str) -> TimerRecord | None:
        """One timer by id."""

    def count_timers(self, *, statuses: Collection[str] | None = None) -> int:
        """How many timers (with one of ``statuses``) there are."""

    def claim_due_outbox(
        self, now: datetime, worker: str, *, lease: timedelta, limit: int
    ) -> list[OutboxRecord]:
        """Claim up to ``limit`` pending notifications whose next attempt is due, oldest first.

        Due means ``next_attempt_at`` is empty or ``<= now``, with no live lease. Same claiming
        rules as :meth:`claim_due_timers`.
        """

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
        """Record a delivery attempt of a claimed notification (claim cleared).

        Only if it is still claimed by ``worker``; returns whether it was.
        """

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

    def get_outbox(self, outbox_id: str) -> OutboxRecord | None:
        """One notification by id."""

    def mark_outbox(
        self,
        outbox_id: str,
        *,
        read_at: datetime | None = None,
        acknowledged_at: datetime | None = None,
    ) -> OutboxRecord | None:
        """Set ``read_at`` / ``acknowledged_at`` (when given and not yet set); return the row."""

    def requeue_outbox(self, outbox_id: str, at: datetime) -> OutboxRecord | None:
        """Make a ``dead`` notification ``pending`` again, due at ``at``, with no attempts.

        ``last_error`` stays until the next attempt replaces it. A compare-and-set on
        ``status = 'dead'``: returns the row, or ``None`` when there is no dead notification
        with that id.
        """

    def close(self) -> None:
        """Release connections; the object is unusable afterwards."""
