"""The engine's operations on the work around an instance: tasks, progress, costs, hand-over.

:class:`WorkOperations` is a base class of :class:`~crmflow.engine._runtime.Engine`; it uses
the engine's storage, clock and rule evaluation. Every operation that changes something bumps
the instance's version and appends one history entry in the same transaction, like a fire:
so a gate that read the tasks cannot pass on a stale view (the version check fails), and the
history's entry count still equals the instance's version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from typing import TYPE_CHECKING, Any

from crmflow._errors import (
    ConcurrencyConflict,
    CrmflowError,
    InvalidData,
    PermissionDenied,
    UnknownTask,
)
from crmflow._suggest import suggest
from crmflow._task_types import (
    TASK_STATUSES,
    UNFINISHED,
    CostEntry,
    OwnerLoad,
    Progress,
    ReassignPreview,
    Task,
    TaskOutcome,
)
from crmflow._types import Actor, FireResult, Refusal
from crmflow.engine._data import coerce_value
from crmflow.engine._notify import summarize
from crmflow.engine._tasks import (
    dependency_refusal,
    dependents_done,
    group_progress,
    may_manage,
    may_work_on,
    progress_of,
    required_roles,
    unfinished,
)
from crmflow.plugins._storage_api import HistoryDraft, InstanceRecord, OutboxRecord, StorageTx

if TYPE_CHECKING:
    from crmflow._clock import Clock
    from crmflow.engine._compile import CompiledTransition, CompiledWorkflow
    from crmflow.engine._effects import SideEffects
    from crmflow.engine._model import GateDef
    from crmflow.engine._notify import NotificationFactory
    from crmflow.plugins._storage_api import Storage
    from crmflow.rules import Verdict

__all__ = ["WorkOperations"]

log = logging.getLogger("crmflow")

#: Task operations automations can listen to, by the event they raise.
_TASK_EVENTS = {"complete": "task_completed", "defer": "task_deferred"}

#: Task operations and the statuses each may start from.
_FROM_STATUSES: Mapping[str, frozenset[str]] = {
    "complete": frozenset({"open", "deferred"}),
    "defer": frozenset({"open", "deferred"}),
    "reopen": frozenset({"done", "deferred"}),
    "reassign": frozenset({"open", "deferred"}),
}


class WorkOperations:
    """Tasks, checklist progress, costs and reassignment (mixed into ``Engine``)."""

    if TYPE_CHECKING:
        store: Storage
        clock: Clock
        _notifications: NotificationFactory

        def _side_effects(
            self,
            compiled: CompiledWorkflow,
            record: InstanceRecord,
            *,
            to_state: str,
            trigger: str | None,
            event: str | None,
            gates: Sequence[GateDef] = (),
            tasks: Sequence[Task] = (),
            data: Mapping[str, Any],
            changed: Collection[str] = (),
            actor: Actor,
            now: datetime,
        ) -> SideEffects: ...

        def _record(self, key: str) -> InstanceRecord: ...
        def _compiled_for(self, record: InstanceRecord) -> CompiledWorkflow: ...
        def _facts_for(
            self,
            compiled: CompiledWorkflow,
            ct: CompiledTransition,
            record: InstanceRecord,
            data: Mapping[str, Any],
            actor: Actor,
            given: Mapping[str, Any] | None,
        ) -> dict[str, Any]: ...
        def _verdicts(self, ct: CompiledTransition, facts: Mapping[str, Any]) -> list[Verdict]: ...
        @staticmethod
        def _judge(
            verdicts: Sequence[Verdict], actor: Actor, override: str | None
        ) -> tuple[list[Refusal], list[Refusal], list[Any]]: ...
        def _record_refusal(
            self,
            record: InstanceRecord,
            actor: Actor,
            trigger: str,
            kind: str,
            reason: str,
            details: Mapping[str, Any],
            *,
            in_tx: Callable[[StorageTx], None] | None = None,
            outbox: Sequence[OutboxRecord] = (),
        ) -> None: ...
        def _replay(
            self, earlier: Mapping[str, Any], key: str, trigger: str, idempotency_key: str
        ) -> FireResult: ...

    # -- reading tasks --------------------------------------------------------------------

    def tasks(
        self, key: str, *, checklist: str | None = None, status: str | Collection[str] | None = None
    ) -> list[Task]:
        """The instance's tasks in checklist order, optionally of one checklist or status."""
        record = self._record(key)
        statuses = {status} if isinstance(status, str) else status
        for name in statuses or ():
            if name not in TASK_STATUSES:
                raise InvalidData(
                    "status", f"{name!r} is not a task status", suggest(name, TASK_STATUSES)
                )
        if checklist is not None:
            known = self._compiled_for(record).defn.checklists
            if checklist not in known and not checklist.startswith("automation:"):
                raise InvalidData(
                    "checklist",
                    f"{checklist!r} is not a checklist of {record.workflow!r}",
                    suggest(checklist, list(known)),
                )
        return [
            t
            for t in self.store.tasks(key)
            if (checklist is None or t.checklist == checklist)
            and (statuses is None or t.status in statuses)
        ]

    def task(self, key: str, task_id: str) -> Task:
        """One task of the instance; raises :class:`UnknownTask` (with suggestions)."""
        self._record(key)
        return _find(key, task_id, self.store.tasks(key))

    # -- task operations ------------------------------------------------------------------

    def complete_task(
        self,
        key: str,
        task_id: str,
        *,
        actor: Actor,
        result: Any = None,
        note: str = "",
    ) -> TaskOutcome:
        """Mark a task done, with its result and a note.

        Refused (``ok=False``) while a task it depends on is not done, naming them; refused
        when it is already done or cancelled. An item that declares a ``result`` type needs
        a result of that type (:class:`InvalidData` otherwise).
        """

        def change(task: Task, tasks: list[Task], record: InstanceRecord) -> Task | Refusal:
            blocked = dependency_refusal(task, tasks)
            if blocked is not None:
                return blocked
            value = self._task_result(record, task, result)
            now = self.clock.now()
            return replace(
                task,
                status="done",
                result=value,
                note=note,
                defer_reason="",
                updated_at=now,
                closed_at=now,
                closed_by=actor.id,
            )

        return self._task_operation(key, task_id, actor, "complete", change, note)

    def defer_task(
        self,
        key: str,
        task_id: str,
        *,
        actor: Actor,
        reason: str,
        due: datetime | None = None,
    ) -> TaskOutcome:
        """Defer a deferrable task with a reason, optionally moving its due time."""
        if not reason or not reason.strip():
            raise InvalidData("reason", "a deferral needs a reason")
        if due is not None and due.tzinfo is None:
            raise InvalidData("due", "give a time-zone-aware datetime")

        def change(task: Task, tasks: list[Task], record: InstanceRecord) -> Task | Refusal:
            if not task.deferrable:
                return Refusal(
                    "deferrable",
                    "block",
                    f"{task.id} ({task.title}) cannot be deferred",
                    "only items marked 'deferrable: true' can be deferred; complete it",
                )
            return replace(
                task,
                status="deferred",
                defer_reason=reason,
                note=reason,
                due_at=due if due is not None else task.due_at,
                updated_at=self.clock.now(),
            )

        return self._task_operation(key, task_id, actor, "defer", change, reason)

    def reopen_task(self, key: str, task_id: str, *, actor: Actor, note: str = "") -> TaskOutcome:
        """Open a done or deferred task again (refused while done tasks depend on it)."""

        def change(task: Task, tasks: list[Task], record: InstanceRecord) -> Task | Refusal:
            after = dependents_done(task, tasks)
            if after:
                names = ", ".join(t.id for t in after)
                return Refusal(
                    "depends_on",
                    "block",
                    f"{names} depend{'s' if len(after) == 1 else ''} on {task.id} and "
                    f"{'is' if len(after) == 1 else 'are'} done",
                    f"reopen {names} first",
                    items=tuple(t.id for t in after),
                )
            return replace(
                task,
                status="open",
                result=None,
                note=note,
                defer_reason="",
                updated_at=self.clock.now(),
                closed_at=None,
                closed_by=None,
            )

        return self._task_operation(key, task_id, actor, "reopen", change, note)

    def reassign_task(
        self, key: str, task_id: str, *, to: str, actor: Actor, note: str = ""
    ) -> TaskOutcome:
        """Hand an unfinished task to user ``to`` (the checklist's managers or its holder)."""
        if not to:
            raise InvalidData("to", "name the user who takes the task")

        def change(task: Task, tasks: list[Task], record: InstanceRecord) -> Task | Refusal:
            if task.assignee == to:
                return Refusal("assignee", "block", f"{task.id} is already assigned to {to}")
            return replace(task, assignee=to, note=note, updated_at=self.clock.now())

        return self._task_operation(key, task_id, actor, "reassign", change, note)

    def _task_result(self, record: InstanceRecord, task: Task, value: Any) -> Any:
        item = self._compiled_for(record).defn.task_item(task.id)
        if item is None or item.result is None:
            return value
        if value is None:
            raise InvalidData(
                f"{task.id}.result", f"completing {task.id} needs a result ({item.result})"
            )
        return coerce_value(f"{task.id}.result", item.result, value)

    def _task_operation(
        self,
        key: str,
        task_id: str,
        actor: Actor,
        operation: str,
        change: Any,
        reason: str,
    ) -> TaskOutcome:
        record = self._record(key)
        compiled = self._compiled_for(record)
        defn = compiled.defn
        tasks = self.store.tasks(key)
        task = _find(key, task_id, tasks)
        allowed = (
            may_manage(actor, defn, task) or task.assignee == actor.id
            if operation == "reassign"
            else may_work_on(actor, defn, task)
        )
        name = f"{operation}_task"
        if not allowed:
            roles = required_roles(defn, task, managing=operation == "reassign")
            who = f"only {task.holder}" if not roles else f"{task.holder} or the roles "
            self._record_refusal(
                record,
                actor,
                name,
                "denied",
                f"{operation} {task.id}: {who}{', '.join(roles)} may",
                {"task": task.id},
            )
            raise PermissionDenied(
                actor.id, f"{operation} task {task.id}", roles, sorted(actor.roles)
            )
        outcome: Task | Refusal
        if defn.states[record.state].final:
            outcome = Refusal(
                "state",
                "block",
                f"{key} is finished ({record.state}); its tasks can no longer change",
            )
        elif task.status not in _FROM_STATUSES[operation]:
            outcome = _status_refusal(task, operation)
        else:
            outcome = change(task, tasks, record)
        if isinstance(outcome, Refusal):
            self._record_refusal(
                record,
                actor,
                name,
                "refused",
                outcome.message,
                {"task": task.id, "refusals": [outcome.as_dict()]},
            )
            return TaskOutcome(
                ok=False,
                key=key,
                task_id=task.id,
                operation=operation,
                task=task,
                version=record.version,
                refusals=(outcome,),
            )
        changes = _task_changes(task, outcome)
        version, _ = self._write_change(
            record,
            actor,
            kind="task",
            trigger=name,
            reason=reason,
            details={"task": task.id, "operation": operation, "changes": changes},
            tasks=[outcome],
            existing=tasks,
            event=_TASK_EVENTS.get(operation),
        )
        return TaskOutcome(
            ok=True, key=key, task_id=task.id, operation=operation, task=outcome, version=version
        )

    def _write_change(
        self,
        record: InstanceRecord,
        actor: Actor,
        *,
        kind: str,
        trigger: str,
        reason: str,
        details: Mapping[str, Any],
        tasks: Sequence[Task] = (),
        cost: CostEntry | None = None,
        owner: str | None = None,
        idempotency: tuple[str, Mapping[str, Any]] | None = None,
        existing: Sequence[Task] = (),
        event: str | None = None,
        outbox: Sequence[OutboxRecord] = (),
        in_tx: Callable[[StorageTx], None] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Bump the instance's version and write the change with its history entry.

        ``event`` lets automations listening to it act in the same transaction. Returns the
        new version and the change's effects (as a fire result lists them).
        """
        now = self.clock.now()
        updated = replace(
            record,
            version=record.version + 1,
            updated_at=now,
            owner=owner if owner is not None else record.owner,
        )
        side = self._side_effects(
            self._compiled_for(record),
            updated,
            to_state=record.state,
            trigger=None,
            event=event,
            tasks=existing,
            data=record.data,
            actor=actor,
            now=now,
        )
        side.outbox[:0] = list(outbox)
        changes: dict[str, Any] = {}
        if side.data:
            data = dict(record.data)
            for name, value in side.data.items():
                if data.get(name) != value:
                    changes[name] = [data.get(name), value]
                    data[name] = value
            updated = replace(updated, data=data)
        with self.store.transaction() as tx:
            tx.update_instance(updated, expected_version=record.version)
            if in_tx is not None:
                in_tx(tx)
            if tasks:
                tx.put_tasks(tasks)
            side.write(tx, record.key, now)
            described = side.describe()
            if changes:
                described["data_changed"] = changes
            if cost is not None:
                tx.add_cost(replace(cost, seq=updated.version, at=now))
            tx.append_history(
                HistoryDraft(
                    instance_key=record.key,
                    at=now,
                    actor=actor.id,
                    kind=kind,
                    trigger=trigger,
                    from_state=record.state,
                    to_state=record.state,
                    reason=reason,
                    changes=changes,
                    details={**details, **described, "roles": sorted(actor.roles)},
                )
            )
            if idempotency is not None:
                tx.put_idempotency(idempotency[0], record.key, idempotency[1], at=now)
        return updated.version, described

    # -- progress -------------------------------------------------------------------------

    def progress(self, key: str, *, checklist: str | None = None) -> Progress:
        """Done / open / deferred / overdue counts and a percentage for one instance."""
        return progress_of(self.tasks(key, checklist=checklist), self.clock.now())

    def progress_by_checklist(self, key: str) -> dict[str, Progress]:
        """The instance's progress per checklist."""
        now = self.clock.now()
        result: dict[str, Progress] = {}
        for task in self.tasks(key):
            result[task.checklist] = result.get(task.checklist, Progress()).add(task, now)
        return result

    def progress_report(
        self,
        *,
        by: str = "assignee",
        workflow: str | None = None,
        checklist: str | None = None,
    ) -> dict[str, Progress]:
        """Progress across instances, grouped ``by`` ``"assignee"`` or ``"owner"``.

        Grouped by assignee, tasks held by a role are listed under ``role:NAME``. Grouped by
        owner, every task of an instance counts for the instance's owner.
        """
        if by not in ("assignee", "owner"):
            raise ValueError(f"by must be 'assignee' or 'owner', not {by!r}")
        tasks = [
            t
            for t in self.store.query_tasks(workflow=workflow)
            if checklist is None or t.checklist == checklist
        ]
        now = self.clock.now()
        if by == "assignee":
            return group_progress(tasks, now)
        owners = {r.key: r.owner or "unowned" for r in self.store.iter_instances(workflow)}
        return group_progress(tasks, now, owners)

    # -- costs ----------------------------------------------------------------------------

    def record_cost(
        self,
        key: str,
        category: str,
        amount: Decimal | int | str,
        *,
        actor: Actor,
        note: str = "",
        idempotency_key: str | None = None,
    ) -> CostEntry:
        """Record a cost against the instance under one of the workflow's cost categories.

        ``amount`` is exact (a Decimal, an int or decimal text; a float is refused because it
        cannot hold money exactly); a negative amount records a correction. Raises
        :class:`InvalidData` for an unknown category or a bad amount, and
        :class:`PermissionDenied` when ``costs.roles`` excludes the actor.
        """
        value = _money(amount)
        if idempotency_key is not None:
            earlier = self.store.get_idempotency(idempotency_key)
            if earlier is not None:
                return self._replay_cost(earlier, key, idempotency_key, category, value)
        record = self._record(key)
        defn = self._compiled_for(record).defn
        spec = defn.costs
        if spec is None:
            raise CrmflowError(
                f"workflow {defn.name!r} declares no cost categories; add a 'costs' section"
            )
        if category not in spec.categories:
            raise InvalidData(
                "category",
                f"{category!r} is not a cost category of {defn.name!r}",
                suggest(category, list(spec.categories)),
            )
        if not actor.has_any_role(spec.roles):
            self._record_refusal(
                record, actor, "record_cost", "denied", "recording costs needs a cost role", {}
            )
            raise PermissionDenied(actor.id, "record a cost", spec.roles, sorted(actor.roles))
        entry = CostEntry(
            key=key,
            seq=0,
            category=category,
            amount=value,
            actor=actor.id,
            at=self.clock.now(),
            note=note,
            currency=spec.currency,
        )
        stored = {"cost": {"key": key, "category": category, "amount": str(value), "note": note}}
        try:
            version, _ = self._write_change(
                record,
                actor,
                kind="cost",
                event="cost_recorded",
                trigger="record_cost",
                reason=note,
                details={"category": category, "amount": value, "currency": spec.currency},
                cost=entry,
                idempotency=(
                    (idempotency_key, {**stored, "version": record.version + 1})
                    if idempotency_key is not None
                    else None
                ),
            )
        except ConcurrencyConflict:
            if idempotency_key is not None:
                earlier = self.store.get_idempotency(idempotency_key)
                if earlier is not None:
                    return self._replay_cost(earlier, key, idempotency_key, category, value)
            raise
        return replace(entry, seq=version)

    def _replay_cost(
        self,
        earlier: Mapping[str, Any],
        key: str,
        idempotency_key: str,
        category: str,
        amount: Decimal,
    ) -> CostEntry:
        cost = earlier.get("cost")
        same = isinstance(cost, Mapping) and (
            cost.get("key"),
            cost.get("category"),
            Decimal(str(cost.get("amount"))),
        ) == (key, category, amount)
        if same:
            for entry in self.store.costs(instance_key=key):
                if entry.seq == earlier.get("version"):
                    return entry
        raise CrmflowError(
            f"idempotency key {idempotency_key!r} was used for another command; use a new key "
            "per command"
        )

    def costs(self, key: str) -> list[CostEntry]:
        """The cost entries of one instance, oldest first."""
        self._record(key)
        return self.store.costs(instance_key=key)

    def cost_totals(
        self, key: str | None = None, *, workflow: str | None = None, by: str = "category"
    ) -> dict[str, Decimal]:
        """Summed costs, ``by`` ``"category"`` or ``"instance"``, of one instance or workflow."""
        if by not in ("category", "instance"):
            raise ValueError(f"by must be 'category' or 'instance', not {by!r}")
        if key is not None:
            self._record(key)
        totals: dict[str, Decimal] = {}
        entries = self.store.costs(instance_key=key, workflow=workflow)
        currencies = sorted({e.currency for e in entries})
        if len(currencies) > 1:
            raise CrmflowError(
                f"costs in several currencies ({', '.join(c or '(none)' for c in currencies)}) "
                "cannot be added up; total one workflow at a time (workflow=...)"
            )
        # Amounts are bounded (below 10**15, at most 6 places), so 60 digits keep any
        # realistic sum exact; Inexact is trapped so that an impossible one fails loudly.
        with localcontext() as ctx:
            ctx.prec = 60
            ctx.traps[Inexact] = True
            for entry in entries:
                group = entry.category if by == "category" else entry.key
                totals[group] = totals.get(group, Decimal(0)) + entry.amount
        return dict(sorted(totals.items()))

    # -- reassignment ---------------------------------------------------------------------

    def _reassign_check(
        self,
        record: InstanceRecord,
        compiled: CompiledWorkflow,
        actor: Actor,
        facts: Mapping[str, Any] | None,
    ) -> tuple[list[Refusal], list[Refusal]]:
        # The role is checked before this (_check_reassign_role): only the rules remain.
        ct = compiled.reassign
        assert ct is not None  # compile_workflow always builds it
        verdicts = self._verdicts(
            ct, self._facts_for(compiled, ct, record, dict(record.data), actor, facts)
        )
        refusals, warnings, _ = self._judge(verdicts, actor, None)
        return refusals, warnings

    def _owner_load(self, compiled: CompiledWorkflow, owner: str) -> OwnerLoad:
        defn = compiled.defn
        live = [s.name for s in defn.states.values() if not s.final and not s.children]
        return OwnerLoad(
            owner=owner,
            instances=self.store.count_instances(owner=owner, workflow=defn.name, states=live),
            open_tasks=len(self.store.query_tasks(assignee=owner, statuses=UNFINISHED)),
        )

    def preview_reassign(
        self,
        key: str,
        to_owner: str,
        *,
        actor: Actor,
        facts: Mapping[str, Any] | None = None,
    ) -> ReassignPreview:
        """What reassigning ``key`` to ``to_owner`` would do; nothing is written.

        Says whether the reassignment rules pass (and why not), how many unfinished
        instances of this workflow and open tasks each owner has now, and lists the
        instance's unfinished tasks to choose from.
        """
        record = self._record(key)
        compiled = self._compiled_for(record)
        self._check_reassign_role(record, compiled, actor, to_owner, record_denial=False)
        refusals, warnings = self._reassign_check(record, compiled, actor, facts)
        return ReassignPreview(
            key=key,
            from_owner=record.owner,
            to_owner=to_owner,
            allowed=not refusals,
            refusals=tuple(refusals),
            warnings=tuple(warnings),
            current=self._owner_load(compiled, record.owner) if record.owner else None,
            new=self._owner_load(compiled, to_owner),
            open_tasks=tuple(unfinished(self.store.tasks(key))),
        )

    def reassign(
        self,
        key: str,
        to_owner: str,
        *,
        actor: Actor,
        keep: Collection[str] = (),
        reason: str = "",
        facts: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> FireResult:
        """Give the instance to ``to_owner``, with its open tasks except those in ``keep``.

        Tasks the current owner holds move to the new owner unless their id is in ``keep``
        (they stay with the current owner); tasks held by a role or by someone else stay
        where they are. Ownership, tasks and the history entry (who decided, what moved, what
        stayed) are written in one transaction. A refusal by the reassignment rules returns
        ``ok=False`` with the rule's message, as a trigger would. The result's
        ``effects["notifications"]`` names who is told: both owners and the current owner's
        manager.
        """
        if isinstance(keep, str):
            raise InvalidData("keep", "pass a set of task ids, not one string")
        if idempotency_key is not None:
            earlier = self.store.get_idempotency(idempotency_key)
            if earlier is not None:
                return self._replay_reassign(earlier, key, to_owner, idempotency_key)
        record = self._record(key)
        compiled = self._compiled_for(record)
        # As with a trigger: who may do it is checked before anything about the instance.
        self._check_reassign_role(record, compiled, actor, to_owner, record_denial=True)
        if expected_version is not None and record.version != expected_version:
            raise ConcurrencyConflict(key, expected_version, record.version)
        if not to_owner:
            raise InvalidData("to_owner", "name the new owner")
        if to_owner == record.owner:
            raise InvalidData("to_owner", f"{to_owner!r} already owns {key!r}")
        tasks = self.store.tasks(key)
        by_id = {t.id: t for t in tasks}
        open_ids = [t.id for t in unfinished(tasks)]
        for task_id in keep:
            if task_id in by_id and task_id not in open_ids:
                raise InvalidData(
                    "keep", f"task {task_id!r} is {by_id[task_id].status}: nothing to keep"
                )
            if task_id not in open_ids:
                raise UnknownTask(key, task_id, suggest(task_id, open_ids))
            if by_id[task_id].assignee != record.owner:
                raise InvalidData(
                    "keep",
                    f"task {task_id!r} is held by {by_id[task_id].holder}, not by "
                    f"{record.owner}: only the owner's tasks move, so it stays where it is",
                )
        refusals, warnings = self._reassign_check(record, compiled, actor, facts)
        if refusals:
            message = "; ".join(r.message for r in refusals)
            notice = self._notifications.build(
                to=["manager"],
                subject=f"Reassigning {key} to {to_owner} was refused",
                body=f"{actor.id} asked to hand {key} from {record.owner} to {to_owner}: {message}",
                channels=(),
                owner=record.owner,
                instance_key=key,
                event="reassign_refused",
                at=self.clock.now(),
                skip=actor.id,
            )
            self._record_refusal(
                record,
                actor,
                "reassign",
                "refused",
                message,
                {"to_owner": to_owner, "refusals": [r.as_dict() for r in refusals]},
                outbox=notice,
            )
            return FireResult(
                ok=False,
                key=key,
                trigger="reassign",
                state=record.state,
                previous_state=record.state,
                version=record.version,
                refusals=tuple(refusals),
                warnings=tuple(warnings),
                effects={"notifications": summarize(notice)},
            )
        old = record.owner
        now = self.clock.now()
        moved = [
            replace(t, assignee=to_owner, updated_at=now)
            for t in unfinished(tasks)
            if t.assignee is not None and t.assignee == old and t.id not in keep
        ]
        kept = [t.id for t in unfinished(tasks) if t.id in keep and t.assignee == old]
        moved_text = ", ".join(t.id for t in moved) or "none"
        notices = self._notifications.build(
            to=[f"user:{old}", f"user:{to_owner}", "manager"] if old else [f"user:{to_owner}"],
            subject=f"{key} moved from {old} to {to_owner}",
            body=f"Decided by {actor.id}. {reason}\nTasks moved: {moved_text}. "
            f"Tasks kept by {old}: {', '.join(kept) or 'none'}.",
            channels=(),
            owner=old,
            instance_key=key,
            event="reassign",
            at=now,
            skip=actor.id,
        )
        effects: dict[str, Any] = {
            "owner_changed": [old, to_owner],
            "tasks_moved": [t.id for t in moved],
            "tasks_kept": kept,
            "notifications": summarize(notices),
        }
        result = FireResult(
            ok=True,
            key=key,
            trigger="reassign",
            state=record.state,
            previous_state=record.state,
            version=record.version + 1,
            warnings=tuple(warnings),
            effects=effects,
        )
        try:
            self._write_change(
                record,
                actor,
                kind="reassign",
                trigger="reassign",
                reason=reason,
                details={
                    "owner": [old, to_owner],
                    "tasks_moved": effects["tasks_moved"],
                    "tasks_kept": kept,
                    "warnings": [w.as_dict() for w in warnings],
                },
                tasks=moved,
                owner=to_owner,
                existing=tasks,
                event="reassigned",
                outbox=notices,
                idempotency=(
                    (idempotency_key, result.as_dict()) if idempotency_key is not None else None
                ),
            )
        except ConcurrencyConflict:
            if idempotency_key is not None:
                earlier = self.store.get_idempotency(idempotency_key)
                if earlier is not None:
                    return self._replay(earlier, key, "reassign", idempotency_key)
            raise
        return result

    def _check_reassign_role(
        self,
        record: InstanceRecord,
        compiled: CompiledWorkflow,
        actor: Actor,
        to_owner: str,
        *,
        record_denial: bool,
    ) -> None:
        defn = compiled.defn
        if "reassignment" not in defn.positions:
            # Owners were never changeable before a workflow said who may change them.
            raise PermissionDenied(
                actor.id,
                "reassign",
                (),
                sorted(actor.roles),
                reason=f"workflow {defn.name!r} has no 'reassignment' section, so its owners "
                "stay as they are; add 'reassignment: {roles: [...]}' to let those roles "
                "change them",
            )
        assert compiled.reassign is not None  # compile_workflow always builds it
        roles = compiled.reassign.defn.roles
        if actor.has_any_role(roles):
            return
        if record_denial:
            self._record_refusal(
                record,
                actor,
                "reassign",
                "denied",
                f"requires one of the roles {', '.join(roles)}",
                {"to_owner": to_owner},
            )
        raise PermissionDenied(actor.id, "reassign", roles, sorted(actor.roles))

    def _replay_reassign(
        self, earlier: Mapping[str, Any], key: str, to_owner: str, idempotency_key: str
    ) -> FireResult:
        result = self._replay(earlier, key, "reassign", idempotency_key)
        changed = result.effects.get("owner_changed") or [None, None]
        if result.ok and changed[1] != to_owner:
            raise CrmflowError(
                f"idempotency key {idempotency_key!r} gave {key!r} to {changed[1]!r}, not "
                f"{to_owner!r}; use a new key per command"
            )
        return result


def _find(key: str, task_id: str, tasks: Sequence[Task]) -> Task:
    for task in tasks:
        if task.id == task_id:
            return task
    raise UnknownTask(key, task_id, suggest(task_id, [t.id for t in tasks]))


def _status_refusal(task: Task, operation: str) -> Refusal:
    if task.status == "done":
        who = f" by {task.closed_by}" if task.closed_by else ""
        when = f" at {task.closed_at.isoformat()}" if task.closed_at else ""
        message = f"{task.id} is already done{who}{when}"
        hint = "reopen it first" if operation != "reopen" else ""
    elif task.status == "cancelled":
        message = f"{task.id} was cancelled when the instance left its state"
        hint = "it opens again when the instance re-enters the state"
    else:
        message = f"{task.id} is {task.status}"
        hint = ""
    return Refusal("status", "block", message, hint)


def _task_changes(before: Task, after: Task) -> dict[str, list[Any]]:
    changes: dict[str, list[Any]] = {}
    for name in ("status", "assignee", "result", "due_at", "defer_reason"):
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            changes[name] = [old, new]
    return changes


#: Bounds that keep every sum of amounts exact (see cost_totals).
_MAX_AMOUNT = Decimal(10) ** 15
_MAX_DECIMALS = 6


def _money(amount: Decimal | int | str) -> Decimal:
    if isinstance(amount, bool | float):
        raise InvalidData(
            "amount", "a float cannot hold money exactly; pass a Decimal, an int or text"
        )
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount).strip())
    except InvalidOperation:
        raise InvalidData("amount", f"{amount!r} is not a decimal number") from None
    if not value.is_finite() or value == 0:
        raise InvalidData("amount", f"{amount!r} is not a non-zero finite amount")
    exponent = value.as_tuple().exponent
    if abs(value) >= _MAX_AMOUNT or (isinstance(exponent, int) and exponent < -_MAX_DECIMALS):
        raise InvalidData(
            "amount",
            f"{amount!r} is out of range: below {_MAX_AMOUNT:,} with at most "
            f"{_MAX_DECIMALS} decimal places",
        )
    return value
