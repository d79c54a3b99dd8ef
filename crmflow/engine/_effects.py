"""Everything a change writes besides the instance row: tasks, timers, notifications.

:func:`plan_side_effects` looks at one change (a start, a transition, a task operation, a
timer firing ...) and gathers what it implies: checklist tasks opened or cancelled, workflow
timers started, restarted or cancelled, and what the matching automations do. The runtime
writes the result in the same transaction as the change (:meth:`SideEffects.write`) and
reports it in the result's ``effects`` (:meth:`SideEffects.describe`). Workflows without
checklists, timers and automations pay for none of it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crmflow._task_types import Task
from crmflow._types import Actor
from crmflow.engine._automations import automation_timer_name, run_automations
from crmflow.engine._calendar import BusinessCalendar
from crmflow.engine._model import GateDef
from crmflow.engine._notify import NotificationFactory, summarize
from crmflow.engine._schedule import plan_timers
from crmflow.engine._tasks import task_changes_for_move
from crmflow.plugins._storage_api import OutboxRecord, StorageTx, TimerRecord

if TYPE_CHECKING:
    from crmflow.engine._compile import CompiledWorkflow

__all__ = ["SideEffects", "plan_side_effects", "rule_facts"]


@dataclass
class SideEffects:
    """Rows a change writes besides the instance, and field values automations set."""

    tasks_opened: list[Task] = field(default_factory=list)
    tasks_cancelled: list[Task] = field(default_factory=list)
    tasks_other: list[Task] = field(default_factory=list)
    timers: list[TimerRecord] = field(default_factory=list)
    timers_cancelled: list[str] = field(default_factory=list)
    outbox: list[OutboxRecord] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    automations: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> list[Task]:
        """Every task row to write."""
        return [*self.tasks_opened, *self.tasks_cancelled, *self.tasks_other]

    def write(self, tx: StorageTx, key: str, at: datetime) -> None:
        """Write it all in ``tx`` (cancellations first, so a restarted timer is replaced).

        ``timers_cancelled`` becomes the names of the timers that were pending and are now
        cancelled: call :meth:`describe` after writing.
        """
        if self.timers_cancelled:
            cancelled = tx.cancel_timers(key, self.timers_cancelled, at=at)
            self.timers_cancelled = [timer.name for timer in cancelled]
        if self.tasks_opened or self.tasks_cancelled or self.tasks_other:
            tx.put_tasks(self.tasks)
        if self.timers:
            tx.insert_timers(self.timers)
        if self.outbox:
            tx.insert_outbox(self.outbox)

    def describe(self) -> dict[str, Any]:
        """The result's ``effects`` entries: only what happened."""
        effects: dict[str, Any] = {}
        opened = [t.id for t in self.tasks_opened] + [t.id for t in self.tasks_other]
        if opened:
            effects["tasks_opened"] = opened
        if self.tasks_cancelled:
            effects["tasks_cancelled"] = [t.id for t in self.tasks_cancelled]
        if self.timers:
            effects["timers_set"] = [
                {"name": t.name, "due_at": t.due_at.isoformat()} for t in self.timers
            ]
        if self.timers_cancelled:
            effects["timers_cancelled"] = sorted(set(self.timers_cancelled))
        if self.outbox:
            effects["notifications"] = summarize(self.outbox)
        if self.automations:
            effects["automations"] = list(self.automations)
        return effects


def rule_facts(
    data: Mapping[str, Any],
    *,
    key: str,
    state: str,
    workflow: str,
    owner: str | None,
    actor: Actor,
    now: datetime,
    fields: Collection[str],
) -> dict[str, Any]:
    """What templates and automation conditions read: fields, built-ins, ``actor``, ``now``."""
    facts: dict[str, Any] = dict(data)
    facts.update(key=key, state=state, workflow=workflow)
    if "owner" not in fields:
        facts["owner"] = owner
    facts["actor"] = {"id": actor.id, "roles": sorted(actor.roles), "org": actor.org}
    facts["now"] = now
    return facts


def plan_side_effects(
    compiled: CompiledWorkflow,
    *,
    key: str,
    owner: str | None,
    from_state: str | None,
    to_state: str,
    trigger: str | None,
    event: str | None,
    gates: Sequence[GateDef],
    tasks: Sequence[Task],
    data: Mapping[str, Any],
    changed: Collection[str],
    actor: Actor,
    now: datetime,
    factory: NotificationFactory,
    calendar: BusinessCalendar | None,
) -> SideEffects:
    """What the change from ``from_state`` to ``to_state`` implies; see the module docs."""
    defn = compiled.defn
    effects = SideEffects()
    moved = from_state != to_state
    if defn.checklists and moved:
        effects.tasks_opened, effects.tasks_cancelled = task_changes_for_move(
            defn,
            key=key,
            from_state=from_state,
            to_state=to_state,
            tasks=tasks,
            gates=gates,
            owner=owner,
            now=now,
        )
    if defn.timers:
        started, cancelled = plan_timers(
            defn,
            calendar,
            key=key,
            owner=owner,
            from_state=from_state,
            to_state=to_state,
            trigger=trigger,
            changed=changed,
            data=data,
            now=now,
        )
        effects.timers.extend(started)
        effects.timers_cancelled.extend(cancelled)
    if compiled.automations:
        before = defn.ancestors(from_state) if from_state is not None else ()
        after = defn.ancestors(to_state)
        if moved and from_state is not None:
            # Timers an automation started in a state end when the instance leaves it.
            for state in before:
                if state not in after:
                    effects.timers_cancelled.extend(
                        automation_timer_name(timer, state) for timer in compiled.automation_timers
                    )
        entered = [s for s in after if s not in before] if moved else []
        facts = rule_facts(
            data,
            key=key,
            state=to_state,
            workflow=defn.name,
            owner=owner,
            actor=actor,
            now=now,
            fields=defn.fields,
        )
        outcome = run_automations(
            defn,
            compiled.automations,
            key=key,
            owner=owner,
            state=to_state,
            trigger=trigger,
            entered=entered,
            event=event,
            facts=facts,
            existing_tasks=[*tasks, *effects.tasks_opened],
            factory=factory,
            calendar=calendar,
            now=now,
        )
        effects.outbox.extend(outcome.outbox)
        effects.tasks_other.extend(outcome.tasks)
        effects.timers.extend(outcome.timers)
        effects.timers_cancelled.extend(outcome.restarted)
        effects.data.update(outcome.data)
        effects.automations.extend(outcome.ran)
    if effects.tasks_opened or effects.tasks_other:
        effects.tasks_opened = _delegate(effects.tasks_opened, factory, now)
        effects.tasks_other = _delegate(effects.tasks_other, factory, now)
    return effects


def _delegate(tasks: list[Task], factory: NotificationFactory, now: datetime) -> list[Task]:
    """Tasks for someone away go to their proxy while the delegation lasts (noted on the task)."""
    proxies: dict[str, tuple[str, str] | None] = {}  # one lookup per assignee, not per task
    result: list[Task] = []
    for task in tasks:
        if task.assignee is not None and task.assignee not in proxies:
            found = factory.resolve(
                f"user:{task.assignee}", owner=None, at=now, instance_key=task.key
            )
            proxies[task.assignee] = None
            if isinstance(found, list) and len(found) == 1 and found[0].delegated:
                proxies[task.assignee] = (found[0].user, found[0].reason)
        proxy = proxies.get(task.assignee) if task.assignee is not None else None
        if proxy is not None:
            task = replace(task, assignee=proxy[0], note=f"delegated: {proxy[1]}")
        result.append(task)
    return result
