"""Which workflow timers a change starts, restarts or cancels, and when each falls due.

A timer runs while the instance is inside its scope (``in_state``: those states and everything
below them; the whole life of the instance when empty). Entering the scope starts it, leaving
it cancels it, both in the transaction of the state change. Inside the scope an ``after`` timer
restarts when one of its ``reset_on`` triggers fires, and a ``before`` timer follows its date
field when a change writes that field.

Due times: ``after`` and ``sla`` count from the moment of the change, in working time when the
timer says ``working_time`` (the business calendar's hours and holidays); ``before`` counts back
from the field's date and, with ``working_time``, moves a due time outside working hours to the
next working moment. Nothing is skipped: a due time already in the past fires at the next tick.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any

from crmflow.engine._calendar import ALWAYS, BusinessCalendar
from crmflow.engine._model import TimerDef, WorkflowDef
from crmflow.engine._notify import new_id
from crmflow.plugins._storage_api import TimerRecord

__all__ = ["due_time", "in_scope", "plan_timers", "timer_record"]


def in_scope(defn: WorkflowDef, timer: TimerDef, state: str | None) -> bool:
    """Whether an instance in leaf ``state`` is inside ``timer``'s scope."""
    if state is None or defn.states[state].final:
        return False
    if not timer.states:
        return True
    chain = defn.ancestors(state)
    return any(s in chain for s in timer.states)


def _moment(value: Any, calendar: BusinessCalendar) -> datetime | None:
    """A date field's value as an aware moment (a date means midnight in the calendar's zone)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=calendar.zone)
        return value
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=calendar.zone)
    return None


def due_time(
    timer: TimerDef, calendar: BusinessCalendar, *, data: Mapping[str, Any], now: datetime
) -> datetime | None:
    """When ``timer`` falls due if started at ``now`` with ``data``; ``None``: no timer."""
    working = timer.working_time
    if timer.kind == "after":
        assert timer.after is not None  # the loader requires it for this kind
        if working:
            return calendar.add_working_time(now, timer.after)
        return now + timer.after
    if timer.kind == "before":
        assert timer.before is not None and timer.date_field is not None
        moment = _moment(data.get(timer.date_field), calendar)
        if moment is None:
            return None
        due = moment - timer.before
        if working:
            due = calendar.next_working_moment(due)
        return max(due, now)
    value = data.get(timer.sla_by) if timer.sla_by else None
    hours = timer.sla_hours.get(str(value)) if value is not None else None
    if hours is None:
        hours = timer.sla_default
    if hours is None:
        return None
    span = timedelta(hours=hours)
    return calendar.add_working_time(now, span) if working else now + span


def timer_record(
    timer: TimerDef,
    *,
    key: str,
    owner: str | None,
    due: datetime,
    now: datetime,
    kind: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> TimerRecord:
    """A new pending timer row for ``timer`` on instance ``key``."""
    return TimerRecord(
        id=new_id(),
        kind=kind or timer.kind,
        name=timer.name,
        due_at=due,
        created_at=now,
        instance_key=key,
        owner=owner,
        payload=dict(payload or {}),
    )


def plan_timers(
    defn: WorkflowDef,
    calendar: BusinessCalendar | None,
    *,
    key: str,
    owner: str | None,
    from_state: str | None,
    to_state: str,
    trigger: str | None,
    changed: Collection[str],
    data: Mapping[str, Any],
    now: datetime,
) -> tuple[list[TimerRecord], list[str]]:
    """Timers to start and timer names to cancel for one change; see the module docs.

    A restarted timer appears in both lists: cancel the old row, then insert the new one.
    """
    cal = calendar or ALWAYS
    start: list[TimerRecord] = []
    cancel: list[str] = []
    for timer in defn.timers:
        was = in_scope(defn, timer, from_state)
        now_in = in_scope(defn, timer, to_state)
        if was and (not now_in or (trigger is not None and trigger in timer.cancel_on)):
            cancel.append(timer.name)
            continue
        reset = (timer.kind == "after" and trigger is not None and trigger in timer.reset_on) or (
            timer.kind == "before" and timer.date_field in changed
        )
        restart = now_in and (not was or reset)
        if not restart:
            continue
        if was:
            cancel.append(timer.name)
        due = due_time(timer, cal, data=data, now=now)
        if due is not None:
            start.append(timer_record(timer, key=key, owner=owner, due=due, now=now))
    return start, cancel
