"""Tasks and cost entries as flat, storable values, shared by the storage back ends.

Timestamps become ISO 8601 text (offset kept), ``result`` goes through the JSON codec (so a
Decimal or a date survives), ``depends_on`` becomes JSON text, amounts become decimal text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from crmflow._codec import dumps, loads
from crmflow._task_types import CostEntry, Task, TaskStatus

__all__ = ["cost_from_values", "cost_to_values", "task_from_values", "task_to_values"]


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def task_to_values(task: Task) -> dict[str, Any]:
    """A task as column values: text, integers and booleans only."""
    return {
        "instance_key": task.key,
        "task_id": task.id,
        "position": task.position,
        "checklist": task.checklist,
        "title": task.title,
        "status": task.status,
        "assignee": task.assignee,
        "role": task.role,
        "required": task.required,
        "deferrable": task.deferrable,
        "depends_on": dumps(list(task.depends_on)),
        "due_at": _time(task.due_at),
        "result": dumps(task.result),
        "note": task.note,
        "defer_reason": task.defer_reason,
        "opened_at": task.opened_at.isoformat(),
        "updated_at": task.updated_at.isoformat(),
        "closed_at": _time(task.closed_at),
        "closed_by": task.closed_by,
    }


def task_from_values(values: Mapping[str, Any]) -> Task:
    """The task stored by :func:`task_to_values`."""
    opened = _parse_time(values["opened_at"])
    updated = _parse_time(values["updated_at"])
    assert opened is not None and updated is not None  # NOT NULL columns
    return Task(
        key=values["instance_key"],
        id=values["task_id"],
        checklist=values["checklist"],
        title=values["title"],
        status=cast(TaskStatus, values["status"]),
        assignee=values["assignee"],
        role=values["role"],
        required=bool(values["required"]),
        deferrable=bool(values["deferrable"]),
        depends_on=tuple(loads(values["depends_on"])),
        due_at=_parse_time(values["due_at"]),
        result=loads(values["result"]),
        note=values["note"],
        defer_reason=values["defer_reason"],
        opened_at=opened,
        updated_at=updated,
        closed_at=_parse_time(values["closed_at"]),
        closed_by=values["closed_by"],
        position=int(values["position"]),
    )


def cost_to_values(entry: CostEntry) -> dict[str, Any]:
    """A cost entry as column values; the amount as exact decimal text."""
    return {
        "instance_key": entry.key,
        "seq": entry.seq,
        "category": entry.category,
        "amount": str(entry.amount),
        "actor": entry.actor,
        "at": entry.at.isoformat(),
        "note": entry.note,
        "currency": entry.currency,
    }


def cost_from_values(values: Mapping[str, Any]) -> CostEntry:
    """The cost entry stored by :func:`cost_to_values`."""
    return CostEntry(
        key=values["instance_key"],
        seq=int(values["seq"]),
        category=values["category"],
        amount=Decimal(values["amount"]),
        actor=values["actor"],
        at=datetime.fromisoformat(values["at"]),
        note=values["note"],
        currency=values["currency"],
    )
