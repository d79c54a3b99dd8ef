"""Decisions about tasks: which a state change opens or cancels, gates, dependencies, who may act.

Everything here is a pure function of a definition, the instance's tasks and the time; the
runtime writes what these functions return in the same transaction as the state change.

Lifecycle of a checklist's tasks:

* entering a state that opens a checklist opens one task per item (an item whose task was
  cancelled earlier is reopened; done, open and deferred tasks are left alone, so an instance
  that comes back keeps what was already confirmed);
* leaving that state by a transition that requires the checklist (a gate) keeps its unfinished
  tasks: they were deferred on purpose and are still to be done;
* leaving it by any other transition cancels its open and deferred tasks;
* reaching a final state cancels every unfinished task, whatever gates kept them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from crmflow._task_types import UNFINISHED, Progress, Task
from crmflow._types import Actor, Refusal
from crmflow.engine._model import ChecklistItemDef, GateDef, WorkflowDef

__all__ = [
    "SYSTEM_ACTOR",
    "dependency_refusal",
    "dependents_done",
    "gate_refusals",
    "group_progress",
    "may_manage",
    "may_work_on",
    "progress_of",
    "required_roles",
    "task_changes_for_move",
    "unfinished",
]

#: Who closes tasks that a state change cancels.
SYSTEM_ACTOR = "system"


def _positions(defn: WorkflowDef) -> dict[str, int]:
    """Item id -> its order across the workflow's checklists (tasks list in this order)."""
    order: dict[str, int] = {}
    for checklist in defn.checklists.values():
        for item in checklist.items:
            order[item.id] = len(order)
    return order


def _checklists_of(defn: WorkflowDef, states: Iterable[str]) -> list[str]:
    names: list[str] = []
    for state in states:
        for name in defn.states[state].checklists:
            if name not in names:
                names.append(name)
    return names


def open_item(
    checklist: str,
    item: ChecklistItemDef,
    *,
    key: str,
    owner: str | None,
    now: datetime,
    position: int,
) -> Task:
    """A new open task for ``item`` (of the checklist, or ``automation:<name>``, so named)."""
    return Task(
        key=key,
        id=item.id,
        checklist=checklist,
        title=item.title,
        status="open",
        assignee=None if item.role else owner,
        role=item.role,
        required=item.required,
        deferrable=item.deferrable,
        depends_on=item.depends_on,
        due_at=now + item.due if item.due is not None else None,
        result=None,
        note="",
        defer_reason="",
        opened_at=now,
        updated_at=now,
        position=position,
    )


def task_changes_for_move(
    defn: WorkflowDef,
    *,
    key: str,
    from_state: str | None,
    to_state: str,
    tasks: Sequence[Task],
    gates: Sequence[GateDef],
    owner: str | None,
    now: datetime,
) -> tuple[list[Task], list[Task]]:
    """Tasks to open and tasks to cancel when an instance moves ``from_state`` -> ``to_state``.

    ``from_state`` is ``None`` when the instance starts. Returns ``(opened, cancelled)``, each
    holding the new version of the task.
    """
    before = defn.ancestors(from_state) if from_state is not None else ()
    after = defn.ancestors(to_state)
    left = [s for s in before if s not in after]
    entered = [s for s in after if s not in before]
    gated = {g.checklist for g in gates}
    # A checklist also opened by a state the instance stays in (or enters) stays open.
    still_open = set(_checklists_of(defn, after))
    by_id = {t.id: t for t in tasks}
    finished = defn.states[to_state].final
    closing = set(_checklists_of(defn, left)) - gated - still_open
    cancelled: list[Task] = []
    for task in tasks:
        # A finished instance leaves no work behind: even tasks a gate carried along close.
        if task.unfinished and (finished or task.checklist in closing):
            reason = f"the instance finished in {to_state}" if finished else f"left {from_state}"
            cancelled.append(
                replace(
                    task,
                    status="cancelled",
                    updated_at=now,
                    closed_at=now,
                    closed_by=SYSTEM_ACTOR,
                    note=f"cancelled: {reason}",
                )
            )
    positions = _positions(defn)
    opened: list[Task] = []
    for name in _checklists_of(defn, entered):
        checklist = defn.checklists[name]
        for item in checklist.items:
            existing = by_id.get(item.id)
            if existing is not None and existing.status != "cancelled":
                continue
            opened.append(
                open_item(
                    checklist.name,
                    item,
                    key=key,
                    owner=owner,
                    now=now,
                    position=positions[item.id],
                )
            )
    return opened, cancelled


def _describe(tasks: Sequence[Task]) -> str:
    return ", ".join(f"{t.id} ({t.title})" for t in tasks)


def gate_refusals(
    defn: WorkflowDef, gates: Sequence[GateDef], tasks: Sequence[Task]
) -> list[Refusal]:
    """One refusal per gate whose checklist still has required items to finish."""
    refusals: list[Refusal] = []
    for gate in gates:
        checklist = defn.checklists[gate.checklist]
        blocking = [
            t
            for t in tasks
            if t.checklist == gate.checklist
            and t.required
            and t.status != "done"
            and not (gate.allow_deferred and t.deferrable and t.status == "deferred")
        ]
        if not blocking:
            continue
        deferrable = [t.id for t in blocking if t.deferrable and t.status == "open"]
        hint = "complete them"
        if gate.allow_deferred and deferrable:
            hint += f", or defer the deferrable ones ({', '.join(deferrable)})"
        elif not gate.allow_deferred and any(t.status == "deferred" for t in blocking):
            hint += "; this step does not accept deferred items"
        refusals.append(
            Refusal(
                rule=f"checklist:{gate.checklist}",
                effect="block",
                message=(
                    f"checklist {checklist.title!r} has {len(blocking)} unfinished required "
                    f"item{'s' if len(blocking) != 1 else ''}: {_describe(blocking)}"
                ),
                hint=hint,
                items=tuple(t.id for t in blocking),
            )
        )
    return refusals


def dependency_refusal(task: Task, tasks: Sequence[Task]) -> Refusal | None:
    """Why ``task`` cannot be completed yet: the tasks it depends on that are not done."""
    by_id = {t.id: t for t in tasks}
    waiting = [by_id[d] for d in task.depends_on if d in by_id and by_id[d].status != "done"]
    if not waiting:
        return None
    return Refusal(
        rule="depends_on",
        effect="block",
        message=f"{task.id} ({task.title}) waits for {_describe(waiting)}",
        hint="complete " + " and ".join(t.id for t in waiting) + " first",
        items=tuple(t.id for t in waiting),
    )


def dependents_done(task: Task, tasks: Sequence[Task]) -> list[Task]:
    """Done tasks that depend on ``task`` (reopening it would make them premature)."""
    return [t for t in tasks if task.id in t.depends_on and t.status == "done"]


def may_manage(actor: Actor, defn: WorkflowDef, task: Task) -> bool:
    """Whether ``actor`` holds a manager role of the task's checklist."""
    checklist = defn.checklists.get(task.checklist)
    return checklist is not None and bool(
        checklist.manager_roles and actor.has_any_role(checklist.manager_roles)
    )


def may_work_on(actor: Actor, defn: WorkflowDef, task: Task) -> bool:
    """Whether ``actor`` may complete, defer or reopen ``task``.

    The task's assignee, anyone holding the task's role, and the checklist's managers may.
    """
    if task.assignee is not None and task.assignee == actor.id:
        return True
    if task.role is not None and task.role in actor.roles:
        return True
    return may_manage(actor, defn, task)


def required_roles(defn: WorkflowDef, task: Task, *, managing: bool = False) -> tuple[str, ...]:
    """Roles that let someone other than the assignee act on ``task``.

    ``managing`` (handing a task over) needs a manager role; working on it also accepts the
    task's own role.
    """
    roles = [task.role] if task.role and not managing else []
    checklist = defn.checklists.get(task.checklist)
    if checklist is not None:
        roles.extend(r for r in checklist.manager_roles if r not in roles)
    return tuple(roles)


def progress_of(tasks: Iterable[Task], now: datetime) -> Progress:
    """Counts over ``tasks``."""
    progress = Progress()
    for task in tasks:
        progress = progress.add(task, now)
    return progress


def group_progress(
    tasks: Iterable[Task], now: datetime, group: Mapping[str, str] | None = None
) -> dict[str, Progress]:
    """Progress per group, in group order.

    ``group`` maps an instance key to its group (its owner); without it tasks are grouped by
    who holds them (the assignee, or ``role:NAME``).
    """
    result: dict[str, Progress] = {}
    for task in tasks:
        name = task.holder if group is None else group.get(task.key, "unowned")
        result[name] = result.get(name, Progress()).add(task, now)
    return dict(sorted(result.items()))


def unfinished(tasks: Iterable[Task]) -> list[Task]:
    """Open and deferred tasks."""
    return [t for t in tasks if t.status in UNFINISHED]
