"""Automations: on an event or transition, if a condition holds, do actions in the same change.

Compiled once per workflow version (conditions and notification templates are type-checked
against the instance's fields, so a typo is a load-time :class:`DefinitionError`). At run time
:func:`run_automations` turns the matching automations of one change into what the change must
also write: outbox rows, tasks, field values and timers. They commit with the change or not at
all, and they never trigger further automations (one pass, no cascades).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from typing import Any

from crmflow._task_types import Task
from crmflow.engine._calendar import ALWAYS, BusinessCalendar
from crmflow.engine._data import coerce_value
from crmflow.engine._model import AutomationDef, TimerDef, WorkflowDef
from crmflow.engine._notify import (
    CompiledNotify,
    NotificationFactory,
    compile_condition,
    compile_notify,
    condition_holds,
)
from crmflow.engine._schedule import due_time, timer_record
from crmflow.engine._tasks import open_item
from crmflow.plugins._storage_api import OutboxRecord, TimerRecord
from crmflow.rules import CompiledRule, Schema
from crmflow.rules._evaluate import truth
from crmflow.rules._rule import make_env

__all__ = [
    "AutomationOutcome",
    "CompiledAutomation",
    "automation_timer_name",
    "compile_automations",
    "compile_timer_notifies",
    "run_automations",
]


@dataclass(frozen=True)
class CompiledAutomation:
    """An automation with its condition and notification templates compiled."""

    index: int
    defn: AutomationDef
    condition: CompiledRule | None
    #: action index -> the compiled notification of a ``notify`` or ``start_timer`` action
    notifies: Mapping[int, CompiledNotify] = field(default_factory=dict)

    def matches(self, *, trigger: str | None, entered: Collection[str], event: str | None) -> bool:
        """Whether this change is one the automation listens to."""
        d = self.defn
        if trigger is not None and ("*" in d.on_transitions or trigger in d.on_transitions):
            return True
        if any(state in d.on_enter for state in entered):
            return True
        return event is not None and event in d.on_events


@dataclass
class AutomationOutcome:
    """What the matching automations add to a change."""

    outbox: list[OutboxRecord] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    timers: list[TimerRecord] = field(default_factory=list)
    #: Names of started timers whose earlier pending copy is replaced (restarted, not doubled).
    restarted: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)


def automation_timer_name(timer: TimerDef, state: str) -> str:
    """The stored name of a timer an automation started in ``state`` (cancelled on leaving it)."""
    return f"{timer.name}@{state}"


def compile_automations(defn: WorkflowDef, schema: Schema) -> list[CompiledAutomation]:
    """Compile every automation of ``defn``; raises :class:`DefinitionError` on a bad template."""
    compiled: list[CompiledAutomation] = []
    for index, auto in enumerate(defn.automations):
        path = auto.pos.path or f"automations[{index}]"
        condition = None
        if auto.condition:
            condition = compile_condition(
                auto.condition,
                defn,
                schema,
                name=f"{auto.name}_if",
                pos=auto.positions.get("if", auto.pos),
                path=f"{path}.if",
            )
        notifies: dict[int, CompiledNotify] = {}
        for number, action in enumerate(auto.actions):
            notify = action.notify or (action.timer.notify if action.timer else None)
            if notify is not None:
                notifies[number] = compile_notify(
                    notify, defn, schema, name=f"{auto.name}_{number}", path=f"{path}.do[{number}]"
                )
        compiled.append(
            CompiledAutomation(index=index, defn=auto, condition=condition, notifies=notifies)
        )
    return compiled


def compile_timer_notifies(defn: WorkflowDef, schema: Schema) -> dict[str, CompiledNotify]:
    """The compiled notification of every workflow timer that sends one, by timer name."""
    return {
        timer.name: compile_notify(
            timer.notify, defn, schema, name=f"timer_{timer.name}", path=f"timers.{timer.name}"
        )
        for timer in defn.timers
        if timer.notify is not None
    }


def render(
    notify: CompiledNotify, facts: Mapping[str, Any], zone: tzinfo | None = None
) -> tuple[str, str] | None:
    """Subject and body rendered over ``facts`` (``None`` when its condition does not hold).

    Date-times are shown in ``zone`` (the business calendar's), with their offset.
    """
    rule = notify.rule
    env = make_env(rule, facts)
    env.zone = zone
    if not truth(rule.when, env):
        return None
    return rule.message.render(env), rule.hint.render(env)


def run_automations(
    defn: WorkflowDef,
    automations: Sequence[CompiledAutomation],
    *,
    key: str,
    owner: str | None,
    state: str,
    trigger: str | None,
    entered: Collection[str],
    event: str | None,
    facts: Mapping[str, Any],
    existing_tasks: Sequence[Task],
    factory: NotificationFactory,
    calendar: BusinessCalendar | None,
    now: datetime,
) -> AutomationOutcome:
    """Run every automation the change matches; see the module docs."""
    outcome = AutomationOutcome()
    by_id = {t.id: t for t in existing_tasks}
    for auto in automations:
        if not auto.matches(trigger=trigger, entered=entered, event=event):
            continue
        if auto.condition is not None and not condition_holds(auto.condition, facts):
            continue
        outcome.ran.append(auto.defn.name)
        event_name = f"transition:{trigger}" if trigger else (event or "automation")
        for number, action in enumerate(auto.defn.actions):
            if action.kind == "notify":
                assert action.notify is not None
                rendered = render(auto.notifies[number], facts, calendar.zone if calendar else None)
                if rendered is not None:
                    outcome.outbox.extend(
                        factory.build(
                            to=action.notify.to,
                            subject=rendered[0],
                            body=rendered[1],
                            channels=action.notify.channels,
                            owner=owner,
                            instance_key=key,
                            event=event_name,
                            at=now,
                            skip=(facts.get("actor") or {}).get("id"),
                        )
                    )
            elif action.kind == "set":
                assert action.set_field is not None
                spec = defn.fields[action.set_field]
                outcome.data[action.set_field] = coerce_value(
                    action.set_field, spec.type, action.set_value
                )
            elif action.kind == "create_task":
                assert action.task is not None
                item = action.task
                current = by_id.get(item.id)
                if current is not None and current.unfinished:
                    continue  # already open: an automation does not open it twice
                task = open_item(
                    f"automation:{auto.defn.name}",
                    item,
                    key=key,
                    owner=owner,
                    now=now,
                    position=10_000 + len(by_id),
                )
                if current is not None:
                    task = replace(task, position=current.position)
                by_id[item.id] = task
                outcome.tasks.append(task)
            elif action.kind == "start_timer":
                assert action.timer is not None
                due = due_time(action.timer, calendar or ALWAYS, data=facts, now=now)
                outcome.restarted.append(automation_timer_name(action.timer, state))
                if due is not None:
                    outcome.timers.append(
                        replace(
                            timer_record(
                                action.timer,
                                key=key,
                                owner=owner,
                                due=due,
                                now=now,
                                kind="automation",
                                payload={"automation": auto.index, "action": number},
                            ),
                            name=automation_timer_name(action.timer, state),
                        )
                    )
    return outcome
