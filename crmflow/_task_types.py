"""Plain data about tasks, checklist progress, costs and reassignment, as hosts receive it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from crmflow._types import Refusal

__all__ = [
    "TASK_STATUSES",
    "UNFINISHED",
    "CostEntry",
    "OwnerLoad",
    "Progress",
    "ReassignPreview",
    "Task",
    "TaskOutcome",
    "TaskStatus",
]

TaskStatus = Literal["open", "deferred", "done", "cancelled"]
#: Every task status, in the order reports list them.
TASK_STATUSES: tuple[str, ...] = ("open", "deferred", "done", "cancelled")
#: Statuses of a task that still has to be done by someone.
UNFINISHED: frozenset[str] = frozenset({"open", "deferred"})


@dataclass(frozen=True)
class Task:
    """One task of an instance, usually opened from a checklist item.

    Attributes:
        key: the instance the task belongs to.
        id: the task's id within the instance (the checklist item's id).
        checklist: the checklist it was opened from.
        title: what to do.
        status: ``open``, ``deferred``, ``done`` or ``cancelled``.
        assignee: the user who holds it; ``None`` when it is held by ``role``.
        role: the role that may work on it (an item with ``role:`` is held by the role).
        required: whether a checklist gate waits for it.
        deferrable: whether it may be deferred (and then let a gate with
            ``allow_deferred`` pass).
        depends_on: ids of the tasks that must be done before this one can be completed.
        due_at: when it is due (``None``: no due date).
        result: the value recorded on completion (typed when the item declares ``result``).
        note: the last note given with an operation.
        defer_reason: why it was deferred (while deferred).
        opened_at: when it was (last) opened.
        updated_at: when it last changed.
        closed_at: when it was completed or cancelled.
        closed_by: who completed it (or ``"system"`` when a state change cancelled it).
        position: its order within the instance's tasks.

    """

    key: str
    id: str
    checklist: str
    title: str
    status: TaskStatus
    assignee: str | None
    role: str | None
    required: bool
    deferrable: bool
    depends_on: tuple[str, ...]
    due_at: datetime | None
    result: Any
    note: str
    defer_reason: str
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    closed_by: str | None = None
    position: int = 0

    @property
    def unfinished(self) -> bool:
        """Whether someone still has to do it (open or deferred)."""
        return self.status in UNFINISHED

    @property
    def holder(self) -> str:
        """Who holds it, for reports: the assignee, or ``role:NAME``."""
        if self.assignee is not None:
            return self.assignee
        return f"role:{self.role}" if self.role else "unassigned"

    def overdue(self, now: datetime) -> bool:
        """Whether it is unfinished and past its due time at ``now``."""
        return self.unfinished and self.due_at is not None and self.due_at < now

    def as_dict(self) -> dict[str, Any]:
        """A JSON-compatible summary (without timestamps other than the due time)."""
        return {
            "key": self.key,
            "id": self.id,
            "checklist": self.checklist,
            "title": self.title,
            "status": self.status,
            "assignee": self.assignee,
            "role": self.role,
            "due_at": self.due_at.isoformat() if self.due_at else None,
        }


@dataclass(frozen=True)
class TaskOutcome:
    """What a task operation (complete, defer, reopen, reassign) did.

    A refusal (a dependency still open, a task already done) is not an exception: ``ok`` is
    false and ``refusals`` says why, as with a trigger.
    """

    ok: bool
    key: str
    task_id: str
    operation: str
    task: Task
    version: int
    refusals: tuple[Refusal, ...] = ()
    replayed: bool = False

    def explain(self) -> str:
        """A short human-readable account."""
        if self.ok:
            return f"{self.key}: {self.operation} {self.task_id} done ({self.task.status})"
        reasons = "; ".join(r.message for r in self.refusals)
        return f"{self.key}: {self.operation} {self.task_id} refused: {reasons}"


@dataclass(frozen=True)
class Progress:
    """Task counts and completion for one checklist, instance, assignee or owner.

    ``total`` counts the tasks still in play (done, open and deferred; cancelled ones are
    not work anyone has to do). ``overdue`` counts open and deferred tasks past their due time,
    so it overlaps ``open`` and ``deferred``. ``percent`` is done / total, 100 with no tasks.
    """

    done: int = 0
    open: int = 0
    deferred: int = 0
    overdue: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        """Done + open + deferred."""
        return self.done + self.open + self.deferred

    @property
    def percent(self) -> float:
        """Share of done tasks in :attr:`total`, rounded to one decimal."""
        if self.total == 0:
            return 100.0
        return round(100.0 * self.done / self.total, 1)

    def add(self, task: Task, now: datetime) -> Progress:
        """A copy of these counts with ``task`` counted too."""
        return Progress(
            done=self.done + (task.status == "done"),
            open=self.open + (task.status == "open"),
            deferred=self.deferred + (task.status == "deferred"),
            overdue=self.overdue + task.overdue(now),
            cancelled=self.cancelled + (task.status == "cancelled"),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-compatible form, with the total and the percentage."""
        return {
            "done": self.done,
            "open": self.open,
            "deferred": self.deferred,
            "overdue": self.overdue,
            "cancelled": self.cancelled,
            "total": self.total,
            "percent": self.percent,
        }


@dataclass(frozen=True)
class CostEntry:
    """A cost recorded against an instance (customer development, holiday sponsorship ...).

    ``seq`` is the instance version the recording produced, so entries of one instance are
    numbered in the order they were recorded.
    """

    key: str
    seq: int
    category: str
    amount: Decimal
    actor: str
    at: datetime
    note: str = ""
    currency: str = ""


@dataclass(frozen=True)
class OwnerLoad:
    """How much an owner carries: unfinished instances of the workflow and open tasks."""

    owner: str
    instances: int
    open_tasks: int


@dataclass(frozen=True)
class ReassignPreview:
    """What :meth:`Engine.reassign` would do, for the manager deciding it.

    ``allowed`` is false when the actor lacks the role or a reassignment rule refuses
    (``refusals`` says why, with the rule's message). ``open_tasks`` are the instance's
    unfinished tasks, so the manager can choose which stay with the current owner.
    """

    key: str
    from_owner: str | None
    to_owner: str
    allowed: bool
    refusals: tuple[Refusal, ...]
    warnings: tuple[Refusal, ...]
    current: OwnerLoad | None
    new: OwnerLoad
    open_tasks: tuple[Task, ...]
