"""The built-in SQL storage plugin: SQLite (embedded default) and PostgreSQL (several processes).

URLs::

    sqlite:///crm.db                      relative path; sqlite:////var/lib/crm.db is absolute
    sqlite:///crm.db?synchronous=normal   faster commits; see below
    postgresql://user:pw@host/db          psycopg 3 (same as postgresql+psycopg://)

SQLite runs in WAL mode with a 30 s ``busy_timeout`` and foreign keys on. Every write
transaction starts with ``BEGIN IMMEDIATE``: the engine reads before it writes, and a deferred
transaction that reads first fails its lock upgrade with ``SQLITE_BUSY`` (``busy_timeout`` does
not help there). Reads outside a transaction use a plain deferred ``BEGIN`` and never take the
write lock. ``synchronous=FULL`` (default) makes every commit survive power loss;
``?synchronous=normal`` survives an application crash, but may lose the last commits on power
loss.

PostgreSQL runs at READ COMMITTED. :meth:`SqlTx.update_instance` is a compare-and-set on the
version column and :meth:`SqlTx.lock_instance` is ``SELECT ... FOR UPDATE``; either one holds
the instance's row lock until commit, which is what serialises history appends per instance.

Due timers and notifications are claimed in short transactions of their own: on PostgreSQL
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent claimers take different rows without
waiting), on SQLite under the write lock of ``BEGIN IMMEDIATE``.

See ``docs/storage.md`` for the table layout.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import registry
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlmodel import Field, SQLModel

from crmflow._codec import dumps, iso_text, loads, to_jsonable
from crmflow._errors import (
    ConcurrencyConflict,
    CrmflowError,
    InstanceExists,
    PluginError,
    StorageError,
)
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
    from_epoch_us,
    lease_micros,
    outbox_from_values,
    outbox_to_values,
    timer_from_values,
    timer_to_values,
    to_epoch_us,
)
from crmflow.plugins.hookspecs import hookimpl

__all__ = [
    "SCHEMA_VERSION",
    "CostRow",
    "HistoryRow",
    "IdempotencyRow",
    "InstanceRow",
    "OutboxRow",
    "SchemaVersionRow",
    "SqlStorage",
    "SqlTx",
    "TaskRow",
    "TimerRow",
    "crmflow_open_storage",
]

#: Version of the table layout this module writes; stored in ``crmflow_schema_version``.
#: 2 added ``crmflow_tasks`` and ``crmflow_costs``; 3 added ``crmflow_timers`` and
#: ``crmflow_outbox`` (new tables only, created on open).
SCHEMA_VERSION = 3

#: Seconds a SQLite writer waits for the write lock before failing with "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0

_READ_ONLY = "crmflow_read_only"
_PG_SCHEMA_LOCK = 0x63726D66  # "crmf": advisory lock id serialising concurrent create_all
_PAGE = 500
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}

T = TypeVar("T")
_Claimed = TypeVar("_Claimed", TimerRecord, OutboxRecord)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


class _Base(SQLModel, registry=registry()):
    """Base of crmflow's tables.

    A registry of its own keeps these tables out of ``SQLModel.metadata``, so a host's
    ``SQLModel.metadata.create_all`` does not create them and two libraries cannot clash.
    """


# Timestamps are stored as ISO 8601 text: the hash chain covers ``at`` exactly as given
# (offset included), and neither SQLite nor timestamptz would give the same offset back.


class InstanceRow(_Base, table=True):
    """``crmflow_instances``: one row per workflow instance."""

    __tablename__ = "crmflow_instances"
    __table_args__ = (Index("ix_crmflow_instances_owner", "owner", "workflow"),)

    key: str = Field(primary_key=True)
    workflow: str = Field(index=True)
    workflow_version: int
    definition_digest: str
    state: str
    data: str = Field(sa_column=Column(Text, nullable=False))
    version: int
    owner: str | None = Field(default=None, nullable=True)
    created_at: str
    updated_at: str


class HistoryRow(_Base, table=True):
    """``crmflow_history``: the append-only, hash-chained history; ``seq`` is 1..n per key."""

    __tablename__ = "crmflow_history"
    __table_args__ = (
        UniqueConstraint("instance_key", "seq", name="uq_crmflow_history_instance_seq"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            # SQLite only auto-numbers an INTEGER PRIMARY KEY (the rowid alias), not BIGINT.
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
    )
    instance_key: str
    seq: int
    at: str
    actor: str
    kind: str
    trigger: str
    from_state: str
    to_state: str
    reason: str = Field(sa_column=Column(Text, nullable=False))
    changes: str = Field(sa_column=Column(Text, nullable=False))
    details: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str
    hash: str


class IdempotencyRow(_Base, table=True):
    """``crmflow_idempotency``: the first result of every command sent with a key."""

    __tablename__ = "crmflow_idempotency"

    key: str = Field(primary_key=True)
    instance_key: str = Field(index=True)
    result: str = Field(sa_column=Column(Text, nullable=False))
    created_at: str


class TaskRow(_Base, table=True):
    """``crmflow_tasks``: the tasks of each instance (checklist items and others)."""

    __tablename__ = "crmflow_tasks"
    __table_args__ = (Index("ix_crmflow_tasks_assignee_status", "assignee", "status"),)

    instance_key: str = Field(primary_key=True)
    task_id: str = Field(primary_key=True)
    position: int
    checklist: str
    title: str = Field(sa_column=Column(Text, nullable=False))
    status: str
    assignee: str | None = Field(default=None, nullable=True)
    role: str | None = Field(default=None, nullable=True)
    required: bool = Field(sa_column=Column(Boolean, nullable=False))
    deferrable: bool = Field(sa_column=Column(Boolean, nullable=False))
    depends_on: str = Field(sa_column=Column(Text, nullable=False))
    due_at: str | None = Field(default=None, nullable=True)
    result: str = Field(sa_column=Column(Text, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    defer_reason: str = Field(sa_column=Column(Text, nullable=False))
    opened_at: str
    updated_at: str
    closed_at: str | None = Field(default=None, nullable=True)
    closed_by: str | None = Field(default=None, nullable=True)


class CostRow(_Base, table=True):
    """``crmflow_costs``: costs recorded against instances; ``seq`` is the instance version."""

    __tablename__ = "crmflow_costs"

    instance_key: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    category: str = Field(index=True)
    amount: str  # exact decimal text; sums are taken in Python with Decimal
    actor: str
    at: str
    note: str = Field(sa_column=Column(Text, nullable=False))
    currency: str


class TimerRow(_Base, table=True):
    """``crmflow_timers``: workflow timers, automation timers, reminders and subscriptions.

    ``due_us`` and ``lease_us`` are epoch microseconds (UTC): integers compare and sort
    exactly, and the ``(status, due_us, id)`` index turns "pending and due by now, earliest
    first" into a range scan that never reads the timers due later.
    """

    __tablename__ = "crmflow_timers"
    __table_args__ = (
        Index("ix_crmflow_timers_status_due", "status", "due_us", "id"),
        Index("ix_crmflow_timers_instance", "instance_key", "status"),
        Index("ix_crmflow_timers_owner", "owner"),
    )

    id: str = Field(primary_key=True)
    kind: str
    name: str
    instance_key: str | None = Field(default=None, nullable=True)
    owner: str | None = Field(default=None, nullable=True)
    status: str
    due_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: str
    payload: str = Field(sa_column=Column(Text, nullable=False))
    fired_at: str | None = Field(default=None, nullable=True)
    fire_count: int
    claimed_by: str | None = Field(default=None, nullable=True)
    lease_us: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    cancelled_at: str | None = Field(default=None, nullable=True)


class OutboxRow(_Base, table=True):
    """``crmflow_outbox``: notifications written with the change that caused them.

    ``next_attempt_us`` and ``lease_us`` are epoch microseconds (UTC); ``created_us`` repeats
    ``created_at`` as an integer for exact "oldest first" ordering. ``metadata_json`` is the
    record's ``metadata`` (a column cannot be called ``metadata`` on a declarative class).
    """

    __tablename__ = "crmflow_outbox"
    __table_args__ = (
        Index("ix_crmflow_outbox_recipient", "recipient", "channel"),
        Index("ix_crmflow_outbox_instance", "instance_key"),
        Index("ix_crmflow_outbox_timer", "timer_id"),
    )

    id: str = Field(primary_key=True)
    channel: str
    recipient: str
    subject: str = Field(sa_column=Column(Text, nullable=False))
    created_at: str
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    instance_key: str | None = Field(default=None, nullable=True)
    event: str
    intended: str
    address: str = Field(sa_column=Column(Text, nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    status: str
    attempts: int
    next_attempt_us: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    last_error: str = Field(sa_column=Column(Text, nullable=False))
    delivered_at: str | None = Field(default=None, nullable=True)
    read_at: str | None = Field(default=None, nullable=True)
    acknowledged_at: str | None = Field(default=None, nullable=True)
    timer_id: str | None = Field(default=None, nullable=True)
    metadata_json: str = Field(sa_column=Column(Text, nullable=False))
    claimed_by: str | None = Field(default=None, nullable=True)
    lease_us: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class SchemaVersionRow(_Base, table=True):
    """``crmflow_schema_version``: a single row (id 1) naming the table layout's version."""

    __tablename__ = "crmflow_schema_version"

    id: int = Field(primary_key=True)
    version: int


def _table(model: type[SQLModel]) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


_INST = _table(InstanceRow)
_HIST = _table(HistoryRow)
_IDEM = _table(IdempotencyRow)
_SCHEMA = _table(SchemaVersionRow)
_TASK = _table(TaskRow)
_COST = _table(CostRow)
_TIMER = _table(TimerRow)
_OUTBOX = _table(OutboxRow)

# "Due by now" for a notification is ``next_attempt_us IS NULL OR next_attempt_us <= :now``;
# no index answers an OR with a range scan, so both the index and the claim use the same
# expression, in which a missing next attempt counts as due since the epoch.
# NULL sorts as an instant before any datetime Python can hold (year 1 is -6.2e16), so the
# rewrite is exact; a literal, not a parameter, so that the query matches the index.
_OUTBOX_DUE = func.coalesce(_OUTBOX.c.next_attempt_us, literal_column(str(-(2**62))))
Index("ix_crmflow_outbox_status_due", _OUTBOX.c.status, _OUTBOX_DUE)

#: The metadata holding every crmflow table (for migrations and tooling).
METADATA = _Base.metadata


# ---------------------------------------------------------------------------------------------
# Statements, built once
# ---------------------------------------------------------------------------------------------
# Every statement of the hot path is built here once, with bound parameters only; _rows
# compiles each one once per dialect and runs it with a parameter mapping (no per-call
# statement building, no string formatting of values).

#: Instance columns in the order :func:`_instance_from_row` reads them.
_INST_COLS = (
    _INST.c.key,
    _INST.c.workflow,
    _INST.c.workflow_version,
    _INST.c.definition_digest,
    _INST.c.state,
    _INST.c.data,
    _INST.c.version,
    _INST.c.created_at,
    _INST.c.updated_at,
    _INST.c.owner,
)
#: History columns in the order :func:`_history_from_row` reads them.
_HIST_COLS = (
    _HIST.c.instance_key,
    _HIST.c.seq,
    _HIST.c.at,
    _HIST.c.actor,
    _HIST.c.kind,
    _HIST.c.trigger,
    _HIST.c.from_state,
    _HIST.c.to_state,
    _HIST.c.reason,
    _HIST.c.changes,
    _HIST.c.details,
    _HIST.c.prev_hash,
    _HIST.c.hash,
)
#: Columns update_instance sets (the key and created_at never change).
_INST_SET = (
    "workflow",
    "workflow_version",
    "definition_digest",
    "state",
    "data",
    "version",
    "owner",
    "updated_at",
)

_SELECT_INSTANCE = select(*_INST_COLS).where(_INST.c.key == bindparam("key"))
# SQLite's compiler renders nothing for FOR UPDATE; PostgreSQL takes the row lock.
_LOCK_INSTANCE = _SELECT_INSTANCE.with_for_update()
_SELECT_VERSION = select(_INST.c.version).where(_INST.c.key == bindparam("key"))
# The WHERE parameters are prefixed: plain column names are reserved for the SET clause.
_UPDATE_INSTANCE = (
    update(_INST)
    .where(_INST.c.key == bindparam("w_key"), _INST.c.version == bindparam("w_version"))
    .values({name: bindparam(name) for name in _INST_SET})
    .returning(_INST.c.version)
)
# The unique index on (instance_key, seq) answers this with one index probe, not a scan.
_LAST_HISTORY = (
    select(_HIST.c.seq, _HIST.c.hash)
    .where(_HIST.c.instance_key == bindparam("key"))
    .order_by(_HIST.c.seq.desc())
    .limit(1)
)
_SELECT_HISTORY = (
    select(*_HIST_COLS).where(_HIST.c.instance_key == bindparam("key")).order_by(_HIST.c.seq)
)
_SELECT_IDEMPOTENCY = select(_IDEM.c.result).where(_IDEM.c.key == bindparam("key"))

#: Timer columns of a record, in the order :func:`_timer_from_row` reads them.
_TIMER_COLS = tuple(c for c in _TIMER.c if c.name != "cancelled_at")
_TIMER_NAMES = tuple(c.name for c in _TIMER_COLS)
#: Outbox columns of a record, in the order :func:`_outbox_from_row` reads them.
_OUTBOX_COLS = tuple(_OUTBOX.c)
_OUTBOX_NAMES = tuple(c.name for c in _OUTBOX_COLS)

_PENDING = "pending"
_SELECT_TIMER = select(*_TIMER_COLS).where(_TIMER.c.id == bindparam("id"))
_SELECT_OUTBOX = select(*_OUTBOX_COLS).where(_OUTBOX.c.id == bindparam("id"))
# The (status, due_us, id) index gives both the range and the order: the scan starts at the
# earliest pending timer and stops after ``limit`` claimable ones, never reaching the timers
# due later. SQLite renders nothing for FOR UPDATE SKIP LOCKED (its write lock serialises
# claimers); PostgreSQL skips rows another claimer has locked instead of waiting for them.
_CLAIMABLE_TIMERS = (
    select(*_TIMER_COLS)
    .where(
        _TIMER.c.status == _PENDING,
        _TIMER.c.due_us <= bindparam("now"),
        or_(_TIMER.c.lease_us.is_(None), _TIMER.c.lease_us <= bindparam("now")),
    )
    .order_by(_TIMER.c.due_us, _TIMER.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_CLAIMABLE_OUTBOX = (
    select(*_OUTBOX_COLS)
    .where(
        _OUTBOX.c.status == _PENDING,
        _OUTBOX_DUE <= bindparam("now"),  # noqa: SIM300 (an expression, not a constant)
        or_(_OUTBOX.c.lease_us.is_(None), _OUTBOX.c.lease_us <= bindparam("now")),
    )
    .order_by(_OUTBOX.c.created_us, _OUTBOX.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_CLAIM_TIMERS = (
    update(_TIMER)
    .where(_TIMER.c.id.in_(bindparam("w_ids", expanding=True)))
    .values(claimed_by=bindparam("claimed_by"), lease_us=bindparam("lease_us"))
)
_CLAIM_OUTBOX = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("w_ids", expanding=True)))
    .values(claimed_by=bindparam("claimed_by"), lease_us=bindparam("lease_us"))
)
_RELEASE_TIMER = (
    update(_TIMER)
    .where(
        _TIMER.c.id == bindparam("w_id"),
        _TIMER.c.status == _PENDING,
        _TIMER.c.claimed_by == bindparam("w_worker"),
    )
    .values(claimed_by=null(), lease_us=null())
)
_CANCEL_TIMER = (
    update(_TIMER)
    .where(_TIMER.c.id == bindparam("w_id"), _TIMER.c.status == _PENDING)
    .values(
        status="cancelled",
        cancelled_at=bindparam("cancelled_at"),
        claimed_by=null(),
        lease_us=null(),
    )
    .returning(_TIMER.c.id)
)
# finish_timer: compare-and-set on the claim. The lease is deliberately not checked: the
# worker that still holds the claim may finish a little late; once another worker has
# re-claimed the timer, claimed_by differs and nothing changes.
_FINISH_TIMER_WHERE = (
    _TIMER.c.id == bindparam("w_id"),
    _TIMER.c.status == _PENDING,
    _TIMER.c.claimed_by == bindparam("w_worker"),
)
_FIRE_TIMER = (
    update(_TIMER)
    .where(*_FINISH_TIMER_WHERE)
    .values(
        status="fired",
        fired_at=bindparam("fired_at"),
        fire_count=_TIMER.c.fire_count + 1,
        claimed_by=null(),
        lease_us=null(),
    )
    .returning(_TIMER.c.id)
)
_RESCHEDULE_TIMER = (
    update(_TIMER)
    .where(*_FINISH_TIMER_WHERE)
    .values(
        due_us=bindparam("due_us"),
        fired_at=bindparam("fired_at"),
        fire_count=_TIMER.c.fire_count + 1,
        claimed_by=null(),
        lease_us=null(),
    )
    .returning(_TIMER.c.id)
)
_RESCHEDULE_TIMER_PAYLOAD = _RESCHEDULE_TIMER.values(payload=bindparam("payload"))
_FINISH_DELIVERY = (
    update(_OUTBOX)
    .where(
        _OUTBOX.c.id == bindparam("w_id"),
        _OUTBOX.c.status == _PENDING,
        _OUTBOX.c.claimed_by == bindparam("w_worker"),
    )
    .values(
        {
            **{
                name: bindparam(name)
                for name in (
                    "status",
                    "attempts",
                    "next_attempt_us",
                    "last_error",
                    "delivered_at",
                )
            },
            "claimed_by": null(),
            "lease_us": null(),
        }
    )
    .returning(_OUTBOX.c.id)
)


class _Inserts:
    """The INSERT ... ON CONFLICT DO NOTHING RETURNING statements of one dialect.

    ON CONFLICT DO NOTHING instead of catching IntegrityError: on PostgreSQL an error would
    abort the whole transaction, and the caller may want to carry on. RETURNING tells whether a
    row was written: psycopg's rowcount reads -1 there.
    """

    def __init__(self, insert: Callable[[Table], Any]) -> None:
        self.instance = (
            insert(_INST)
            .values({c.name: bindparam(c.name) for c in _INST_COLS})
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(_INST.c.key)
        )
        self.history = (
            insert(_HIST)
            .values({c.name: bindparam(c.name) for c in _HIST_COLS})
            .on_conflict_do_nothing(index_elements=["instance_key", "seq"])
            .returning(_HIST.c.seq)
        )
        self.idempotency = (
            insert(_IDEM)
            .values(
                {name: bindparam(name) for name in ("key", "instance_key", "result", "created_at")}
            )
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(_IDEM.c.key)
        )


_SQLITE_INSERTS = _Inserts(sqlite_insert)
_PG_INSERTS = _Inserts(pg_insert)


class _Compiled:
    """One statement compiled for one dialect: its SQL text and how to bind its parameters."""

    __slots__ = ("defaults", "names", "sql")

    def __init__(self, stmt: ClauseElement, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        # Parameters SQLAlchemy binds itself (LIMIT 1, OFFSET 0), overridden by the caller's.
        self.defaults = {k: v for k, v in compiled.params.items() if v is not None}
        positions = getattr(compiled, "positiontup", None)  # SQLCompiler: qmark order
        self.names = tuple(positions) if dialect.positional and positions is not None else None

    def bind(self, params: Mapping[str, Any]) -> Any:
        values = {**self.defaults, **params} if self.defaults else params
        if self.names is None:
            return values  # pyformat / named: psycopg takes the mapping
        return tuple([values[name] for name in self.names])  # qmark: SQLite


_COMPILED: dict[tuple[Any, ...], _Compiled] = {}


def _rows(conn: Connection, stmt: ClauseElement, params: Mapping[str, Any]) -> list[Any]:
    """Run one of this module's prepared statements in ``conn``'s transaction; return its rows.

    The statement was built once (above) with bound parameters only; its SQL is compiled once
    per dialect by SQLAlchemy and then handed to the driver's cursor with the parameters, in
    the transaction SQLAlchemy opened on ``conn``. That skips SQLAlchemy's per-execution work
    (cache-key lookup, execution context, result wrapping), which costs far more than the
    SQLite statement itself. None of these columns has a type needing SQLAlchemy's bind or
    result processing (text and integers only). Driver errors are wrapped the way SQLAlchemy
    wraps them, so callers see the same exceptions.
    """
    dialect = conn.dialect
    cache_key = (id(stmt), dialect.name, dialect.driver, dialect.server_version_info)
    compiled = _COMPILED.get(cache_key)
    if compiled is None:
        compiled = _COMPILED[cache_key] = _Compiled(stmt, dialect)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(compiled.sql, compiled.bind(params))
        # fetchall, also after DML ... RETURNING: SQLite finishes the statement only when
        # its rows are exhausted.
        return cursor.fetchall() if cursor.description is not None else []
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            compiled.sql, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True
        ) from exc
    finally:
        cursor.close()


def _first(conn: Connection, stmt: ClauseElement, params: Mapping[str, Any]) -> Any:
    rows = _rows(conn, stmt, params)
    return rows[0] if rows else None


# ---------------------------------------------------------------------------------------------
# Row <-> record
# ---------------------------------------------------------------------------------------------


def _instance_values(record: InstanceRecord) -> dict[str, Any]:
    return {
        "key": record.key,
        "workflow": record.workflow,
        "workflow_version": record.workflow_version,
        "definition_digest": record.definition_digest,
        "state": record.state,
        "data": dumps(record.data),
        "version": record.version,
        "owner": record.owner,
        "created_at": iso_text(record.created_at),
        "updated_at": iso_text(record.updated_at),
    }


def _instance_from_row(row: Sequence[Any]) -> InstanceRecord:
    # Positional: the row holds _INST_COLS in order.
    key, workflow, wf_version, digest, state, data, version, created, updated, owner = row
    return InstanceRecord(
        key=key,
        workflow=workflow,
        workflow_version=wf_version,
        definition_digest=digest,
        state=state,
        data=loads(data),
        version=version,
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        owner=owner,
    )


def _history_from_row(row: Sequence[Any]) -> HistoryRecord:
    # Positional: the row holds _HIST_COLS in order.
    return HistoryRecord(
        instance_key=row[0],
        seq=row[1],
        at=datetime.fromisoformat(row[2]),
        actor=row[3],
        kind=row[4],
        trigger=row[5],
        from_state=row[6],
        to_state=row[7],
        reason=row[8],
        changes=loads(row[9]),
        details=loads(row[10]),
        prev_hash=row[11],
        hash=row[12],
    )


def _timer_from_row(row: Sequence[Any]) -> TimerRecord:
    return timer_from_values(dict(zip(_TIMER_NAMES, row, strict=True)))


def _outbox_from_row(row: Sequence[Any]) -> OutboxRecord:
    return outbox_from_values(dict(zip(_OUTBOX_NAMES, row, strict=True)))


def _describe(exc: SQLAlchemyError) -> str:
    # The driver's own message, without SQLAlchemy's echo of the statement and its
    # parameters (which would copy instance data into logs).
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".strip()
    return f"{type(exc).__name__}: {exc}"


def _guard(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except CrmflowError:
        raise
    except SQLAlchemyError as exc:
        raise StorageError(f"{what} failed: {_describe(exc)}") from exc


# ---------------------------------------------------------------------------------------------
# Transaction
# ---------------------------------------------------------------------------------------------


class SqlTx:
    """The operations of one open SQL transaction (implements ``StorageTx``).

    :attr:`connection` is the SQLAlchemy connection, for plugins that write rows of their own
    tables in the same transaction.
    """

    def __init__(self, connection: Connection, *, postgres: bool) -> None:
        self.connection = connection
        self._pg = postgres
        self._inserts = _PG_INSERTS if postgres else _SQLITE_INSERTS

    def get_instance(self, key: str) -> InstanceRecord | None:
        """Read an instance inside the transaction."""
        return _guard("get_instance", lambda: self._select_instance(key, lock=False))

    def lock_instance(self, key: str) -> InstanceRecord | None:
        """Take the instance's row lock (PostgreSQL) and return the current row.

        On SQLite ``BEGIN IMMEDIATE`` already holds the database's write lock.
        """
        return _guard("lock_instance", lambda: self._select_instance(key, lock=True))

    def _select_instance(self, key: str, *, lock: bool) -> InstanceRecord | None:
        stmt = _LOCK_INSTANCE if lock else _SELECT_INSTANCE
        row = _first(self.connection, stmt, {"key": key})
        return None if row is None else _instance_from_row(row)

    def insert_instance(self, record: InstanceRecord) -> None:
        """Insert a new instance; raise ``InstanceExists`` when the key is taken."""

        def run() -> None:
            stmt = self._inserts.instance
            if _first(self.connection, stmt, _instance_values(record)) is None:
                raise InstanceExists(record.key)

        _guard("insert_instance", run)

    def update_instance(self, record: InstanceRecord, expected_version: int) -> None:
        """Compare-and-set: replace the row only if its version still is ``expected_version``.

        ``record.version`` must be ``expected_version + 1``. Raises ``ConcurrencyConflict``
        (with the version actually found) and changes nothing otherwise.
        """
        if record.version != expected_version + 1:
            raise ValueError(
                f"new version {record.version} must be expected_version + 1 "
                f"({expected_version + 1})"
            )

        def run() -> None:
            params = {
                "w_key": record.key,
                "w_version": expected_version,
                "workflow": record.workflow,
                "workflow_version": record.workflow_version,
                "definition_digest": record.definition_digest,
                "state": record.state,
                "data": dumps(record.data),
                "version": record.version,
                "owner": record.owner,
                "updated_at": iso_text(record.updated_at),
            }
            conn = self.connection
            if _first(conn, _UPDATE_INSTANCE, params) is not None:
                return
            found = _first(conn, _SELECT_VERSION, {"key": record.key})
            actual = None if found is None else found[0]
            raise ConcurrencyConflict(record.key, expected_version, actual)

        _guard("update_instance", run)

    def append_history(self, draft: HistoryDraft) -> HistoryRecord:
        """Append ``draft`` as the instance's next entry (``seq`` = last + 1, hash-chained).

        Call :meth:`update_instance` or :meth:`lock_instance` for the same key first in this
        transaction; that row lock is what keeps two writers from taking the same ``seq``.
        """

        def run() -> HistoryRecord:
            conn = self.connection
            key = draft.instance_key
            last = _first(conn, _LAST_HISTORY, {"key": key})
            if last is None:
                seq, prev_hash = 1, GENESIS
            else:
                seq, prev_hash = last[0] + 1, last[1]
            at_text = iso_text(draft.at)
            # The canonical (sorted) texts are both what is hashed and what is kept, as in the
            # memory store.
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
                to_jsonable(draft.changes),
                to_jsonable(draft.details),
            )
            rec_fields: dict[str, Any] = {
                "instance_key": key,
                "seq": seq,
                "at": datetime.fromisoformat(at_text),
                "actor": draft.actor,
                "kind": draft.kind,
                "trigger": draft.trigger,
                "from_state": draft.from_state,
                "to_state": draft.to_state,
                "reason": draft.reason,
                "changes": draft.changes,
                "details": draft.details,
            }
            params = {
                **rec_fields,
                "at": at_text,
                "changes": changes_text,
                "details": details_text,
                "prev_hash": prev_hash,
                "hash": digest,
            }
            if _first(conn, self._inserts.history, params) is None:
                raise StorageError(
                    f"history seq {seq} of {key!r} was taken by a concurrent "
                    "transaction: call update_instance or lock_instance before append_history"
                )
            return HistoryRecord(**rec_fields, prev_hash=prev_hash, hash=digest)

        return _guard("append_history", run)

    def put_idempotency(
        self,
        idempotency_key: str,
        instance_key: str,
        result: Mapping[str, Any],
        at: datetime | None = None,
    ) -> None:
        """Remember a command's result; raise ``ConcurrencyConflict`` if the key is taken.

        The raised error carries the key in its ``idempotency_key`` attribute; its
        ``expected_version`` is 0 (no instance version is involved).
        """

        def run() -> None:
            params = {
                "key": idempotency_key,
                "instance_key": instance_key,
                "result": dumps(result),
                "created_at": iso_text(at or datetime.now(UTC)),
            }
            if _first(self.connection, self._inserts.idempotency, params) is None:
                raise _idempotency_conflict(idempotency_key, instance_key)

        _guard("put_idempotency", run)

    def put_tasks(self, tasks: Sequence[Task]) -> None:
        """Insert or replace tasks, identified by (``key``, ``id``)."""
        if not tasks:
            return
        insert = pg_insert if self._pg else sqlite_insert

        def run() -> None:
            rows = [task_to_values(t) for t in tasks]
            stmt = insert(_TASK)
            stmt = stmt.on_conflict_do_update(
                index_elements=["instance_key", "task_id"],
                set_={name: stmt.excluded[name] for name in rows[0] if name not in _TASK_PK},
            )
            self.connection.execute(stmt, rows)

        _guard("put_tasks", run)

    def add_cost(self, entry: CostEntry) -> None:
        """Record a cost entry; (``key``, ``seq``) must be new."""
        _guard("add_cost", lambda: self.connection.execute(_COST.insert(), [cost_to_values(entry)]))

    def insert_timers(self, timers: Sequence[TimerRecord]) -> None:
        """Insert new timers (``id`` is new; a taken id is a ``StorageError``)."""
        if not timers:
            return
        rows = [timer_to_values(t) for t in timers]  # encode all before writing any
        _guard("insert_timers", lambda: self.connection.execute(_TIMER.insert(), rows))

    def cancel_timers(
        self, instance_key: str, names: Collection[str] | None = None, *, at: datetime
    ) -> list[TimerRecord]:
        """Cancel the instance's pending timers (those named, or all); return them, cancelled.

        A worker holding a claim on one of them finds it cancelled when it tries to finish
        it (:meth:`finish_timer` returns ``False``). On PostgreSQL the updated rows stay
        locked until commit, so a concurrent claim skips them.
        """
        if names is not None and not names:
            return []

        def run() -> list[TimerRecord]:
            stmt = (
                update(_TIMER)
                .where(_TIMER.c.instance_key == instance_key, _TIMER.c.status == _PENDING)
                .values(
                    status="cancelled", cancelled_at=iso_text(at), claimed_by=None, lease_us=None
                )
                .returning(*_TIMER_COLS)
            )
            if names is not None:
                stmt = stmt.where(_TIMER.c.name.in_(sorted(names)))
            found = [_timer_from_row(r) for r in self.connection.execute(stmt)]
            return sorted(found, key=lambda t: (t.due_at, t.id))

        return _guard("cancel_timers", run)

    def cancel_timer(self, timer_id: str, *, at: datetime) -> bool:
        """Cancel one pending timer by id; return whether it was pending."""
        params = {"w_id": timer_id, "cancelled_at": iso_text(at)}
        return _guard("cancel_timer", lambda: bool(_rows(self.connection, _CANCEL_TIMER, params)))

    def finish_timer(
        self,
        timer_id: str,
        worker: str,
        *,
        at: datetime,
        next_due: datetime | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record that ``worker`` fired its claimed timer; see ``StorageTx.finish_timer``.

        A compare-and-set on ``status = 'pending' AND claimed_by = worker``: returns whether the
        row changed. The lease is not checked, so the claim's holder may finish late as long as
        nobody re-claimed the timer. On PostgreSQL, call it after ``update_instance`` or
        ``lock_instance`` of the timer's instance, in the same order as every other writer of
        that instance, so that two transactions never wait on each other's rows.
        """
        params: dict[str, Any] = {
            "w_id": timer_id,
            "w_worker": worker,
            "fired_at": iso_text(at),
        }
        if next_due is None:
            stmt = _FIRE_TIMER
        else:
            params["due_us"] = to_epoch_us(next_due, "next_due")
            stmt = _RESCHEDULE_TIMER
            if payload is not None:
                params["payload"] = dumps(payload)
                stmt = _RESCHEDULE_TIMER_PAYLOAD
        return _guard("finish_timer", lambda: bool(_rows(self.connection, stmt, params)))

    def insert_outbox(self, records: Sequence[OutboxRecord]) -> None:
        """Queue notifications (``id`` is new; a taken id is a ``StorageError``)."""
        if not records:
            return
        rows = [outbox_to_values(r) for r in records]
        _guard("insert_outbox", lambda: self.connection.execute(_OUTBOX.insert(), rows))


_TASK_PK = ("instance_key", "task_id")


def _idempotency_conflict(idempotency_key: str, instance_key: str) -> ConcurrencyConflict:
    err = ConcurrencyConflict(instance_key, 0, None)
    err.idempotency_key = idempotency_key  # type: ignore[attr-defined]
    err.args = (
        f"idempotency key {idempotency_key!r} was already used (instance {instance_key!r})",
    )
    return err


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


class SqlStorage:
    """A storage back end on SQLite or PostgreSQL (implements ``Storage``).

    The SQLAlchemy engine is created lazily in each process: after ``fork()`` the child builds
    its own pool and never touches the parent's connections.
    """

    url: str

    def __init__(self, url: str) -> None:
        """Open the store at ``url`` and create the tables if needed.

        :raises PluginError: the URL is malformed or names an unsupported option.
        :raises StorageError: the database cannot be reached or has a newer schema.
        """
        self.url = url
        self._sa_url, self._synchronous = _parse_url(url)
        self._pg = self._sa_url.get_backend_name() == "postgresql"
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._reader: Engine | None = None
        self._closed = False
        self._create_schema()

    def __repr__(self) -> str:
        """Show the URL without its password."""
        return f"SqlStorage({self._sa_url.render_as_string(hide_password=True)!r})"

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return "postgresql" if self._pg else "sqlite"

    # -- engines --------------------------------------------------------------------------

    def _engines(self) -> tuple[Engine, Engine]:
        if self._closed:
            raise StorageError(f"{self!r} is closed")
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    if self._engine is not None:
                        # Inherited across fork: forget the parent's connections without
                        # closing them (closing would break the parent's sessions).
                        self._engine.dispose(close=False)
                    self._engine = self._build_engine()
                    self._reader = self._engine.execution_options(**{_READ_ONLY: True})
                    self._pid = pid
        assert self._engine is not None and self._reader is not None
        return self._engine, self._reader

    def _build_engine(self) -> Engine:
        if self._pg:
            return create_engine(self._sa_url, isolation_level="READ COMMITTED", pool_pre_ping=True)
        engine = create_engine(
            self._sa_url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        )
        synchronous = self._synchronous
        busy_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy's documented pysqlite recipe: stop the driver from issuing its own
            # BEGIN, so that _on_begin decides which kind of transaction to open.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                # PRAGMAs take no bound parameters; both values come from this module.
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA synchronous = {synchronous}")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # A read snapshot (deferred BEGIN, no write lock) or the write lock up front.
            sql = "BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE"
            # Straight on the driver connection: a full SQLAlchemy execution costs more than
            # the BEGIN itself. A driver error is wrapped as SQLAlchemy would have wrapped it.
            try:
                conn.connection.driver_connection.execute(sql)  # type: ignore[union-attr]
            except sqlite3.Error as exc:
                raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc

        return engine

    def _create_schema(self) -> None:
        engine, _ = self._engines()

        def run() -> None:
            with engine.begin() as conn:
                if self._pg:
                    # Concurrent CREATE TABLEs race on PostgreSQL's catalog; SQLite's
                    # BEGIN IMMEDIATE already serialises them.
                    conn.execute(select(func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
                METADATA.create_all(conn)
                found = conn.execute(
                    select(_SCHEMA.c.version).where(_SCHEMA.c.id == 1)
                ).scalar_one_or_none()
                if found is None:
                    conn.execute(_SCHEMA.insert().values(id=1, version=SCHEMA_VERSION))
                elif found < SCHEMA_VERSION:
                    # Every change so far only added tables, which create_all has just made,
                    # and indexes, which create_all adds to new tables only.
                    # IF NOT EXISTS rather than checkfirst: SQLite's reflection does not see
                    # expression indexes, so checkfirst would create them a second time.
                    for table in METADATA.sorted_tables:
                        for index in table.indexes:
                            conn.execute(CreateIndex(index, if_not_exists=True))
                    conn.execute(
                        update(_SCHEMA).where(_SCHEMA.c.id == 1).values(version=SCHEMA_VERSION)
                    )
                elif found > SCHEMA_VERSION:
                    raise StorageError(
                        f"database schema version {found} is newer than this crmflow's "
                        f"({SCHEMA_VERSION}); upgrade crmflow"
                    )

        _guard(f"opening {self!r}", run)

    # -- Storage --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        """Open a write transaction: commit on normal exit, roll back on an exception.

        On SQLite this takes the database's write lock (``BEGIN IMMEDIATE``) for its whole
        duration: keep it short and do no network calls inside.
        """
        engine, _ = self._engines()
        try:
            with engine.begin() as conn:
                yield SqlTx(conn, postgres=self._pg)
        except SQLAlchemyError as exc:
            raise StorageError(f"storage transaction failed: {_describe(exc)}") from exc

    def _read(self, what: str, fn: Callable[[Connection], T]) -> T:
        _, reader = self._engines()

        def run() -> T:
            with reader.connect() as conn:
                return fn(conn)

        return _guard(what, run)

    def get_instance(self, key: str) -> InstanceRecord | None:
        """Read an instance's latest committed row."""

        def q(conn: Connection) -> InstanceRecord | None:
            row = _first(conn, _SELECT_INSTANCE, {"key": key})
            return None if row is None else _instance_from_row(row)

        return self._read("get_instance", q)

    def history(self, key: str) -> list[HistoryRecord]:
        """Every history entry of an instance, in ``seq`` order."""

        def q(conn: Connection) -> list[HistoryRecord]:
            return [_history_from_row(r) for r in _rows(conn, _SELECT_HISTORY, {"key": key})]

        return self._read("history", q)

    def get_idempotency(self, idempotency_key: str) -> Mapping[str, Any] | None:
        """Return the remembered result of a command, or ``None``."""

        def q(conn: Connection) -> Mapping[str, Any] | None:
            row = _first(conn, _SELECT_IDEMPOTENCY, {"key": idempotency_key})
            return None if row is None else cast(Mapping[str, Any], loads(row[0]))

        return self._read("get_idempotency", q)

    def iter_instances(self, workflow: str | None = None) -> Iterator[InstanceRecord]:
        """Every instance (of one workflow when given), in key order.

        Reads in pages of a few hundred rows, each in its own short read, so that iterating a
        large store never holds one long reader open (on SQLite that would stop checkpoints).
        """
        after: str | None = None
        while True:

            def q(conn: Connection, after: str | None = after) -> list[InstanceRecord]:
                stmt = select(*_INST_COLS).order_by(_INST.c.key).limit(_PAGE)
                if workflow is not None:
                    stmt = stmt.where(_INST.c.workflow == workflow)
                if after is not None:
                    stmt = stmt.where(_INST.c.key > after)
                return [_instance_from_row(r) for r in conn.execute(stmt)]

            page = self._read("iter_instances", q)
            yield from page
            if len(page) < _PAGE:
                return
            after = page[-1].key

    def count_instances(
        self, *, owner: str, workflow: str | None = None, states: Collection[str] | None = None
    ) -> int:
        """How many instances ``owner`` owns (of ``workflow``, in one of ``states``)."""

        def q(conn: Connection) -> int:
            stmt = select(func.count()).select_from(_INST).where(_INST.c.owner == owner)
            if workflow is not None:
                stmt = stmt.where(_INST.c.workflow == workflow)
            if states is not None:
                stmt = stmt.where(_INST.c.state.in_(sorted(states)))
            return int(conn.execute(stmt).scalar_one())

        return self._read("count_instances", q)

    def tasks(self, instance_key: str) -> list[Task]:
        """The tasks of one instance, in ``position`` order."""

        def q(conn: Connection) -> list[Task]:
            stmt = (
                select(_TASK).where(_TASK.c.instance_key == instance_key).order_by(_TASK.c.position)
            )
            return [task_from_values(dict(row._mapping)) for row in conn.execute(stmt)]

        return self._read("tasks", q)

    def query_tasks(
        self,
        *,
        workflow: str | None = None,
        assignee: str | None = None,
        owner: str | None = None,
        statuses: Collection[str] | None = None,
    ) -> list[Task]:
        """Tasks across instances, filtered; ordered by instance key, then position."""

        def q(conn: Connection) -> list[Task]:
            stmt = select(_TASK).join(_INST, _INST.c.key == _TASK.c.instance_key)
            if workflow is not None:
                stmt = stmt.where(_INST.c.workflow == workflow)
            if owner is not None:
                stmt = stmt.where(_INST.c.owner == owner)
            if assignee is not None:
                stmt = stmt.where(_TASK.c.assignee == assignee)
            if statuses is not None:
                stmt = stmt.where(_TASK.c.status.in_(sorted(statuses)))
            stmt = stmt.order_by(_TASK.c.instance_key, _TASK.c.position)
            return [task_from_values(dict(row._mapping)) for row in conn.execute(stmt)]

        return self._read("query_tasks", q)

    def costs(
        self, *, instance_key: str | None = None, workflow: str | None = None
    ) -> list[CostEntry]:
        """Cost entries (of one instance or workflow), ordered by instance key, then seq."""

        def q(conn: Connection) -> list[CostEntry]:
            stmt = select(_COST)
            if workflow is not None:
                stmt = stmt.join(_INST, _INST.c.key == _COST.c.instance_key).where(
                    _INST.c.workflow == workflow
                )
            if instance_key is not None:
                stmt = stmt.where(_COST.c.instance_key == instance_key)
            stmt = stmt.order_by(_COST.c.instance_key, _COST.c.seq)
            return [cost_from_values(dict(row._mapping)) for row in conn.execute(stmt)]

        return self._read("costs", q)

    # -- timers and outbox ------------------------------------------------------------------

    def _write(self, what: str, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a short write transaction of its own (BEGIN IMMEDIATE on SQLite)."""
        engine, _ = self._engines()

        def run() -> T:
            with engine.begin() as conn:
                return fn(conn)

        return _guard(what, run)

    def claim_due_timers(
        self, now: datetime, worker: str, *, lease: timedelta, limit: int
    ) -> list[TimerRecord]:
        """Claim up to ``limit`` pending timers due at ``now``, earliest first, for ``worker``.

        One short write transaction: select the claimable rows (``FOR UPDATE SKIP LOCKED`` on
        PostgreSQL, so concurrent claimers take different rows without waiting; SQLite's write
        lock serialises claimers), then set ``claimed_by`` and ``lease_until``. The returned
        records carry the claim.
        """
        return self._claim(
            "claim_due_timers",
            _CLAIMABLE_TIMERS,
            _CLAIM_TIMERS,
            _timer_from_row,
            now,
            worker,
            lease,
            limit,
        )

    def _claim(
        self,
        what: str,
        claimable: ClauseElement,
        claim: Executable,
        from_row: Callable[[Sequence[Any]], _Claimed],
        now: datetime,
        worker: str,
        lease: timedelta,
        limit: int,
    ) -> list[_Claimed]:
        """Select the claimable rows and set their claim, in one short write transaction."""
        now_us = to_epoch_us(now, "now")
        until_us = now_us + lease_micros(lease)
        if limit < 1:
            return []

        def run(conn: Connection) -> list[_Claimed]:
            rows = _rows(conn, claimable, {"now": now_us, "limit": limit})
            if not rows:
                return []
            found = [from_row(r) for r in rows]
            conn.execute(
                claim,
                {"w_ids": [r.id for r in found], "claimed_by": worker, "lease_us": until_us},
            )
            lease_until = from_epoch_us(until_us)
            return [replace(r, claimed_by=worker, lease_until=lease_until) for r in found]

        return self._write(what, run)

    def release_timer(self, timer_id: str, worker: str) -> None:
        """Give ``worker``'s claim back; the timer stays pending and is claimable at once."""
        params = {"w_id": timer_id, "w_worker": worker}
        self._write("release_timer", lambda conn: _rows(conn, _RELEASE_TIMER, params))

    def timers(
        self,
        *,
        instance_key: str | None = None,
        owner: str | None = None,
        statuses: Collection[str] | None = None,
    ) -> list[TimerRecord]:
        """Timers, filtered, ordered by ``due_at`` then ``id``."""

        def q(conn: Connection) -> list[TimerRecord]:
            stmt = select(*_TIMER_COLS)
            if instance_key is not None:
                stmt = stmt.where(_TIMER.c.instance_key == instance_key)
            if owner is not None:
                stmt = stmt.where(_TIMER.c.owner == owner)
            if statuses is not None:
                stmt = stmt.where(_TIMER.c.status.in_(sorted(statuses)))
            stmt = stmt.order_by(_TIMER.c.due_us, _TIMER.c.id)
            return [_timer_from_row(r) for r in conn.execute(stmt)]

        return self._read("timers", q)

    def get_timer(self, timer_id: str) -> TimerRecord | None:
        """One timer by id."""

        def q(conn: Connection) -> TimerRecord | None:
            row = _first(conn, _SELECT_TIMER, {"id": timer_id})
            return None if row is None else _timer_from_row(row)

        return self._read("get_timer", q)

    def count_timers(self, *, statuses: Collection[str] | None = None) -> int:
        """How many timers (with one of ``statuses``) there are."""

        def q(conn: Connection) -> int:
            stmt = select(func.count()).select_from(_TIMER)
            if statuses is not None:
                stmt = stmt.where(_TIMER.c.status.in_(sorted(statuses)))
            return int(conn.execute(stmt).scalar_one())

        return self._read("count_timers", q)

    def claim_due_outbox(
        self, now: datetime, worker: str, *, lease: timedelta, limit: int
    ) -> list[OutboxRecord]:
        """Claim up to ``limit`` pending notifications due for an attempt, oldest first.

        Same transaction and locking as :meth:`claim_due_timers`.
        """
        return self._claim(
            "claim_due_outbox",
            _CLAIMABLE_OUTBOX,
            _CLAIM_OUTBOX,
            _outbox_from_row,
            now,
            worker,
            lease,
            limit,
        )

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
        """Record a delivery attempt of ``worker``'s claimed notification; clear the claim.

        A compare-and-set on ``status = 'pending' AND claimed_by = worker``; returns whether
        the row changed.
        """
        if status not in OUTBOX_STATUSES:
            raise ValueError(f"outbox status must be one of {OUTBOX_STATUSES}, not {status!r}")
        params = {
            "w_id": outbox_id,
            "w_worker": worker,
            "status": status,
            "attempts": attempts,
            "next_attempt_us": (
                None if next_attempt_at is None else to_epoch_us(next_attempt_at, "next_attempt_at")
            ),
            "last_error": last_error,
            "delivered_at": None if delivered_at is None else iso_text(delivered_at),
        }
        return self._write(
            "finish_delivery", lambda conn: bool(_rows(conn, _FINISH_DELIVERY, params))
        )

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

        def q(conn: Connection) -> list[OutboxRecord]:
            stmt = select(*_OUTBOX_COLS)
            if instance_key is not None:
                stmt = stmt.where(_OUTBOX.c.instance_key == instance_key)
            if recipient is not None:
                stmt = stmt.where(_OUTBOX.c.recipient == recipient)
            if channel is not None:
                stmt = stmt.where(_OUTBOX.c.channel == channel)
            if statuses is not None:
                stmt = stmt.where(_OUTBOX.c.status.in_(sorted(statuses)))
            if timer_id is not None:
                stmt = stmt.where(_OUTBOX.c.timer_id == timer_id)
            stmt = stmt.order_by(_OUTBOX.c.created_us, _OUTBOX.c.id)
            return [_outbox_from_row(r) for r in conn.execute(stmt)]

        return self._read("outbox", q)

    def get_outbox(self, outbox_id: str) -> OutboxRecord | None:
        """One notification by id."""

        def q(conn: Connection) -> OutboxRecord | None:
            row = _first(conn, _SELECT_OUTBOX, {"id": outbox_id})
            return None if row is None else _outbox_from_row(row)

        return self._read("get_outbox", q)

    def mark_outbox(
        self,
        outbox_id: str,
        *,
        read_at: datetime | None = None,
        acknowledged_at: datetime | None = None,
    ) -> OutboxRecord | None:
        """Set ``read_at`` / ``acknowledged_at`` (when given and not yet set); return the row.

        The first mark wins: a later one never moves a time already recorded. ``None`` when no
        notification has that id.
        """
        values: dict[str, Any] = {}
        if read_at is not None:
            values["read_at"] = func.coalesce(_OUTBOX.c.read_at, iso_text(read_at))
        if acknowledged_at is not None:
            values["acknowledged_at"] = func.coalesce(
                _OUTBOX.c.acknowledged_at, iso_text(acknowledged_at)
            )
        if not values:
            return self.get_outbox(outbox_id)

        def run(conn: Connection) -> OutboxRecord | None:
            stmt = (
                update(_OUTBOX)
                .where(_OUTBOX.c.id == outbox_id)
                .values(values)
                .returning(*_OUTBOX_COLS)
            )
            row = conn.execute(stmt).first()
            return None if row is None else _outbox_from_row(row)

        return self._write("mark_outbox", run)

    def requeue_outbox(self, outbox_id: str, at: datetime) -> OutboxRecord | None:
        """Make a dead notification pending again, due at ``at``; see ``Storage``."""
        due_us = to_epoch_us(at, "at")

        def run(conn: Connection) -> OutboxRecord | None:
            stmt = (
                update(_OUTBOX)
                .where(_OUTBOX.c.id == outbox_id, _OUTBOX.c.status == "dead")
                .values(
                    status=_PENDING,
                    attempts=0,
                    next_attempt_us=due_us,
                    delivered_at=null(),
                    claimed_by=null(),
                    lease_us=null(),
                )
                .returning(*_OUTBOX_COLS)
            )
            row = conn.execute(stmt).first()
            return None if row is None else _outbox_from_row(row)

        return self._write("requeue_outbox", run)

    def dispose(self) -> None:
        """Close pooled connections; the store stays usable and reconnects on demand."""
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = self._reader = None
            self._pid = None

    def close(self) -> None:
        """Release connections; the object is unusable afterwards."""
        if not self._closed:
            self.dispose()
            self._closed = True


def _parse_url(url: str) -> tuple[URL, str]:
    """Split crmflow's own options off ``url``; return the SQLAlchemy URL and synchronous."""
    try:
        sa_url = make_url(url)
    except ArgumentError as exc:
        raise PluginError(f"malformed store URL {url!r}: {exc}") from exc
    backend = sa_url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return sa_url.set(drivername="postgresql+psycopg"), "FULL"
    raw = sa_url.query.get("synchronous", "full")
    value = raw[-1] if isinstance(raw, tuple) else raw
    synchronous = _SYNCHRONOUS.get(value.lower())
    if synchronous is None:
        raise PluginError(
            f"store URL {url!r}: synchronous must be 'full' or 'normal', not {value!r}"
        )
    if sa_url.database in (None, "", ":memory:"):
        raise PluginError(
            f"store URL {url!r}: an in-memory SQLite database is not shared between "
            "connections; use memory:// or a file path"
        )
    return sa_url.difference_update_query(["synchronous"]), synchronous


# ---------------------------------------------------------------------------------------------
# Hook
# ---------------------------------------------------------------------------------------------


@hookimpl
def crmflow_open_storage(url: str) -> SqlStorage | None:
    """Open ``sqlite:///...``, ``postgresql://...`` and ``postgresql+psycopg://...`` URLs."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"):
        return SqlStorage(url)
    return None
