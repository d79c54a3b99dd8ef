"""The engine: start instances, fire triggers, list what is available, read history.

One ``fire`` reads the instance outside any transaction, decides (roles, rules, the machine),
then writes the new state, the history entry and the idempotency record in one storage
transaction guarded by the version it read. Nothing the engine keeps is global: two engines in
one process share no workflows, rules or plugins.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from crmflow._clock import Clock, SystemClock
from crmflow._errors import (
    ConcurrencyConflict,
    CrmflowError,
    InvalidData,
    MissingFact,
    PermissionDenied,
    PluginError,
    UnknownInstance,
    UnknownTrigger,
)
from crmflow._hashchain import ChainReport, verify_chain
from crmflow._suggest import suggest
from crmflow._task_types import Task
from crmflow._types import (
    Actor,
    FireResult,
    Instance,
    Override,
    Refusal,
    TransitionContext,
    TriggerOption,
)
from crmflow.engine._calendar import BusinessCalendar, load_calendar_file
from crmflow.engine._compile import (
    CompiledTransition,
    CompiledWorkflow,
    check_actions,
    compile_workflow,
)
from crmflow.engine._data import coerce_value, merge_data, validate_new_data
from crmflow.engine._effects import SideEffects, plan_side_effects
from crmflow.engine._loader import load_definitions
from crmflow.engine._model import ActionDef, GateDef, WorkflowDef
from crmflow.engine._notify import NotificationFactory, summarize
from crmflow.engine._tasks import gate_refusals
from crmflow.engine._timer_ops import DEFAULT_LEASE, TimerOperations
from crmflow.engine._work import WorkOperations
from crmflow.plugins._manager import make_plugin_manager
from crmflow.plugins._storage_api import (
    HistoryDraft,
    HistoryRecord,
    InstanceRecord,
    OutboxRecord,
    Storage,
    StorageTx,
)
from crmflow.plugins.directory import OrgDirectoryPlugin
from crmflow.plugins.notifiers import Channel, LogChannel, RetryPolicy
from crmflow.plugins.org_directory import OrgDirectory, load_org_file
from crmflow.rules import FunctionSpec, RuleEvaluationError, Verdict, make_backend

__all__ = ["Engine"]

log = logging.getLogger("crmflow")

#: History kinds that record an attempt without changing the instance or its version.
_NON_CHANGING_KINDS = frozenset({"refused", "denied"})


class _Same:
    """Marker: the change starts from the instance's current state."""


_SAME = _Same()


class Engine(WorkOperations, TimerOperations):
    """An embeddable workflow engine for one client configuration.

    Args:
        definitions: validated workflow definitions (see :meth:`from_path`).
        store: a storage URL: ``memory://`` (default), ``sqlite:///path.db``,
            ``postgresql://user@host/db``, or any scheme a storage plugin handles.
        clock: where time comes from (default: the wall clock in UTC).
        plugins: plugin objects or modules implementing hooks from
            :mod:`crmflow.plugins.hookspecs`.
        rules_backend: ``"auto"`` (durable_rules when installed, else pure Python),
            ``"durable"`` or ``"python"``.
        load_entry_points: also load plugins installed under the ``crmflow`` entry-point group.
        name: a label for logs and hook contexts (default: a random id).
        org: the org directory (an :class:`~crmflow.plugins.org_directory.OrgDirectory` or a
            YAML file) that resolves ``owner``, ``manager``, ``role:X`` recipients and
            delegations; without one only ``owner`` and ``user:ID`` resolve.
        calendar: the business calendar timers with ``working_time`` follow (a
            :class:`~crmflow.engine._calendar.BusinessCalendar` or a YAML file); a workflow's
            own ``calendar:`` wins. Default: every moment is working time.
        channels: notification channels (e-mail, webhook ...) besides the built-in ``inbox``
            and ``log``, and those plugins return from ``crmflow_notification_channels``.
        default_channels: channels used when a notification names none; each must be
            configured (built in, in ``channels`` or from a plugin), or the engine refuses to
            start.
        retry: how failed deliveries are retried (default: :class:`RetryPolicy`'s defaults).
        lease: how long a tick's claim on a timer or notification lasts (default five minutes;
            a duration such as ``"30s"`` or a timedelta): the work of a worker that died is
            taken over when its lease runs out (at most a day). Make it more than twice the
            longest one delivery can take: a worker hands back what is left of a batch once
            half the lease is gone.

    """

    def __init__(
        self,
        definitions: Iterable[WorkflowDef],
        *,
        store: str = "memory://",
        clock: Clock | None = None,
        plugins: Sequence[object] = (),
        rules_backend: str = "auto",
        load_entry_points: bool = True,
        name: str | None = None,
        org: OrgDirectory | str | Path | None = None,
        calendar: BusinessCalendar | str | Path | None = None,
        channels: Sequence[Channel] = (),
        default_channels: Sequence[str] = ("inbox",),
        retry: RetryPolicy | None = None,
        lease: timedelta | str = DEFAULT_LEASE,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.name = name or f"engine-{self.id}"
        self.clock: Clock = clock or SystemClock()
        if isinstance(org, str | Path):
            org = load_org_file(org)
        self.org: OrgDirectory | None = org
        if isinstance(calendar, str | Path):
            calendar = load_calendar_file(calendar)
        self.calendar: BusinessCalendar | None = calendar
        extra = [OrgDirectoryPlugin(org)] if org is not None else []
        self.plugins = make_plugin_manager([*extra, *plugins], load_entry_points=load_entry_points)
        self.channels: dict[str, Channel] = {"log": LogChannel()}
        for channel in [
            *(
                c
                for batch in self.plugins.hook.crmflow_notification_channels()
                for c in batch or ()
            ),
            *channels,
        ]:
            self.channels[channel.name] = channel
        known_channels = sorted({"inbox", *self.channels})
        for name in default_channels:
            if name not in known_channels:
                # Every notification naming no channel would be dead on arrival.
                hints = suggest(name, known_channels)
                raise CrmflowError(
                    f"default channel {name!r} is not configured"
                    + (f" (did you mean {hints[0]!r}?)" if hints else "")
                    + f"; configured channels: {', '.join(known_channels)}"
                )
        self.retry = retry or RetryPolicy()
        self._init_timers(lease)
        self._notifications = NotificationFactory(
            self.plugins,
            default_channels=default_channels,
            channels=[*self.channels, "inbox"],
        )
        self._rules = make_backend(rules_backend, namespace=f"crmflow_{self.id}")
        self.rules_backend = self._rules.name
        self._functions = self._collect_functions()
        self.known_actions: frozenset[str] = frozenset(
            name for batch in self.plugins.hook.crmflow_known_actions() for name in batch or ()
        )
        self._workflows: dict[tuple[str, int], CompiledWorkflow] = {}
        self._latest: dict[str, int] = {}
        self._warned: set[tuple[str, str]] = set()
        for defn in definitions:
            self.add_definition(defn)
        storage = self.plugins.hook.crmflow_open_storage(url=store)
        if storage is None:
            raise PluginError(
                f"no storage plugin handles {store!r}; use memory://, sqlite:///FILE or "
                "postgresql://..., or register a plugin implementing crmflow_open_storage"
            )
        self.store: Storage = storage

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | Path, **options: Any) -> Engine:
        """Load every workflow under ``path`` (a file or a directory) and build an engine."""
        return cls(load_definitions(path), **options)

    def _collect_functions(self) -> dict[str, FunctionSpec]:
        functions: dict[str, FunctionSpec] = {}
        for batch in self.plugins.hook.crmflow_rule_functions():
            for spec in batch or ():
                if spec.name in functions:
                    raise PluginError(f"two plugins register the rule function {spec.name!r}")
                functions[spec.name] = spec
        return functions

    def add_definition(self, defn: WorkflowDef) -> None:
        """Load one more workflow version; instances keep the version they started on."""
        key = (defn.name, defn.version)
        if key in self._workflows:
            raise CrmflowError(f"workflow {defn.name!r} version {defn.version} is already loaded")
        check_actions(defn, self.known_actions)
        self._workflows[key] = compile_workflow(defn, self._rules, self._functions)
        self._latest[defn.name] = max(self._latest.get(defn.name, 0), defn.version)

    @property
    def workflows(self) -> dict[str, WorkflowDef]:
        """The newest loaded version of each workflow, by name."""
        return {name: self._workflows[(name, v)].defn for name, v in self._latest.items()}

    def definition(self, workflow: str, version: int | None = None) -> WorkflowDef:
        """A loaded workflow definition (the newest version unless ``version`` is given)."""
        return self._compiled(workflow, version).defn

    def _compiled(self, workflow: str, version: int | None = None) -> CompiledWorkflow:
        if workflow not in self._latest:
            raise CrmflowError(
                f"no workflow named {workflow!r} is loaded"
                + _did_you_mean(suggest(workflow, list(self._latest)))
            )
        wanted = self._latest[workflow] if version is None else version
        try:
            return self._workflows[(workflow, wanted)]
        except KeyError:
            raise CrmflowError(
                f"workflow {workflow!r} version {wanted} is not loaded; instances keep the "
                "version they started on, so load it beside the newer one"
            ) from None

    def _compiled_for(self, record: InstanceRecord) -> CompiledWorkflow:
        """The definition an instance runs on: the version it started with (invariant 8)."""
        compiled = self._compiled(record.workflow, record.workflow_version)
        digest = compiled.defn.digest
        if record.definition_digest != digest and (record.workflow, digest) not in self._warned:
            # Same version number, different text: the file was edited in place. Running on
            # is usually what the operator wants, but it should never go unnoticed.
            self._warned.add((record.workflow, digest))
            log.warning(
                "instance %s started on a different text of %s version %s; give changed "
                "definitions a new version so running instances keep theirs",
                record.key,
                record.workflow,
                record.workflow_version,
            )
        return compiled

    def close(self) -> None:
        """Release storage connections, rules-engine resources and channels' connections.

        Closing a channel only drops the connection it holds (a channel shared with another
        engine opens a new one when it next delivers).
        """
        for channel in self.channels.values():
            try:
                channel.close()
            except Exception:
                # Closing must go on: the store and the rules still need releasing.
                log.exception("channel %s failed to close", channel.name)
        self.store.close()
        self._rules.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------

    def _record(self, key: str) -> InstanceRecord:
        record = self.store.get_instance(key)
        if record is None:
            raise UnknownInstance(key)
        return record

    def _instance(self, record: InstanceRecord) -> Instance:
        defn = self._compiled(record.workflow, record.workflow_version).defn
        return Instance(
            key=record.key,
            workflow=record.workflow,
            workflow_version=record.workflow_version,
            state=record.state,
            data=dict(record.data),
            version=record.version,
            created_at=record.created_at,
            updated_at=record.updated_at,
            owner=record.owner,
            final=defn.states[record.state].final,
        )

    def get(self, key: str, actor: Actor | None = None) -> Instance:
        """The instance with ``key``; raises :class:`UnknownInstance` when there is none.

        ``actor`` is reserved for record scope by org tree and field masks; this version does
        not apply them, so every caller is given the whole instance. A host that must hide
        records or fields checks ``actor`` against ``Instance.owner`` itself for now.
        """
        return self._instance(self._record(key))

    def history(self, key: str) -> list[HistoryRecord]:
        """The instance's history, oldest first."""
        self._record(key)
        return self.store.history(key)

    def verify(self, key: str) -> ChainReport:
        """Check the instance's hash-chained history against the instance itself.

        ``ok`` is false when a row was edited, reordered or deleted, including the newest
        rows: every committed change adds one state-changing entry, so their count must equal
        the instance's version, and the chain must begin with the ``start`` entry.
        """
        record = self._record(key)
        history = self.store.history(key)
        report = verify_chain(history)
        if not report.ok:
            return report
        if not history or history[0].kind != "start":
            return ChainReport(
                ok=False, checked=0, first_bad_seq=1, reason="the start entry is missing"
            )
        changes = sum(1 for h in history if h.kind not in _NON_CHANGING_KINDS)
        if changes != record.version:
            return ChainReport(
                ok=False,
                checked=len(history),
                first_bad_seq=len(history) + 1,
                reason=f"the instance is at version {record.version} but its history records "
                f"{changes} changes: entries are missing",
            )
        return report

    # -- starting -------------------------------------------------------------------------

    def start(
        self,
        workflow: str,
        key: str,
        *,
        actor: Actor,
        data: Mapping[str, Any] | None = None,
        version: int | None = None,
        owner: str | None = None,
    ) -> Instance:
        """Create an instance of ``workflow`` in its initial state.

        Raises :class:`InstanceExists` when ``key`` is taken, :class:`InvalidData` when data
        does not match the declared fields, :class:`PermissionDenied` when ``start_roles``
        excludes the actor.
        """
        compiled = self._compiled(workflow, version)
        defn = compiled.defn
        if not actor.has_any_role(defn.start_roles):
            raise PermissionDenied(
                actor.id, f"start a {workflow}", defn.start_roles, sorted(actor.roles)
            )
        values = validate_new_data(defn.fields, data or {})
        state = defn.leaf_state(defn.initial_state)
        now = self.clock.now()
        owner = owner if owner is not None else actor.id
        record = InstanceRecord(
            key=key,
            workflow=defn.name,
            workflow_version=defn.version,
            definition_digest=defn.digest,
            state=state,
            data=values,
            version=1,
            created_at=now,
            updated_at=now,
            owner=owner,
        )
        side = self._side_effects(
            compiled,
            record,
            from_state=None,
            to_state=state,
            trigger=None,
            event="started",
            data=values,
            changed=list(values),
            actor=actor,
            now=now,
        )
        if side.data:
            values = {**values, **side.data}
            record = replace(record, data=values)
        details: dict[str, Any] = {"workflow": defn.name, "version": defn.version}
        with self.store.transaction() as tx:
            tx.insert_instance(record)
            side.write(tx, key, now)
            details.update(side.describe())
            tx.append_history(
                HistoryDraft(
                    instance_key=key,
                    at=now,
                    actor=actor.id,
                    kind="start",
                    to_state=state,
                    changes={k: [None, v] for k, v in values.items() if v is not None},
                    details=details,
                )
            )
        return self._instance(record)

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
        from_state: str | _Same | None = _SAME,
    ) -> SideEffects:
        """Tasks, timers and automation effects of one change (nothing for plain workflows)."""
        defn = compiled.defn
        if not (defn.checklists or defn.timers or compiled.automations):
            return SideEffects()
        return plan_side_effects(
            compiled,
            key=record.key,
            owner=record.owner,
            from_state=record.state if isinstance(from_state, _Same) else from_state,
            to_state=to_state,
            trigger=trigger,
            event=event,
            gates=gates,
            tasks=tasks,
            data=data,
            changed=changed,
            actor=actor,
            now=now,
            factory=self._notifications,
            calendar=defn.calendar or self.calendar,
        )

    # -- rules ----------------------------------------------------------------------------

    def _facts_for(
        self,
        compiled: CompiledWorkflow,
        ct: CompiledTransition,
        record: InstanceRecord,
        data: Mapping[str, Any],
        actor: Actor,
        given: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        defn = compiled.defn
        facts: dict[str, Any] = dict(data)
        facts["key"] = record.key
        facts["state"] = record.state
        facts["workflow"] = record.workflow
        if "owner" not in defn.fields:
            facts["owner"] = record.owner
        # Only what a rule reads: building the actor and reading the clock cost on every fire.
        if ct.reads_actor:
            facts["actor"] = {"id": actor.id, "roles": sorted(actor.roles), "org": actor.org}
        if ct.reads_now:
            facts["now"] = self.clock.now()
        if given:
            for namespace in given:
                if namespace not in defn.facts:
                    raise InvalidData(
                        namespace,
                        f"is not a fact namespace of workflow {defn.name!r}",
                        suggest(namespace, list(defn.facts)),
                    )
        else:
            given = {}
        for namespace, needed in ct.needs.items():
            supplied = given.get(namespace)
            if supplied is None:
                supplied = self.plugins.hook.crmflow_provide_facts(
                    namespace=namespace,
                    instance_key=record.key,
                    workflow=record.workflow,
                    data=data,
                    needed=list(needed),
                )
            if supplied is None:
                raise MissingFact(namespace, "", _rule_reading(ct, namespace))
            if type(supplied) is not dict and not isinstance(supplied, Mapping):
                raise InvalidData(
                    namespace,
                    f"expected a mapping of attribute to value, got {type(supplied).__name__}",
                )
            declared = defn.facts[namespace]
            values: dict[str, Any] = {}
            for attribute in needed:
                if attribute not in supplied:
                    raise MissingFact(namespace, attribute, _rule_reading(ct, namespace, attribute))
                values[attribute] = coerce_value(
                    f"{namespace}.{attribute}", declared[attribute], supplied[attribute]
                )
            facts[namespace] = values
        return facts

    def _verdicts(self, ct: CompiledTransition, facts: Mapping[str, Any]) -> list[Verdict]:
        if ct.prepared is None:
            return []
        return self._rules.evaluate(ct.prepared, facts)

    @staticmethod
    def _judge(
        verdicts: Sequence[Verdict], actor: Actor, override: str | None
    ) -> tuple[list[Refusal], list[Refusal], list[Override]]:
        refusals: list[Refusal] = []
        warnings: list[Refusal] = []
        overrides: list[Override] = []
        for v in verdicts:
            if not v.fired:
                continue
            refusal = Refusal(v.rule, v.effect, v.message, v.hint, tuple(v.override_roles))
            if v.effect == "warn":
                warnings.append(refusal)
            elif v.effect == "confirm" and override and actor.has_any_role(refusal.override_roles):
                overrides.append(Override(v.rule, actor.id, override, v.message))
            elif v.effect == "confirm" and override:
                roles = ", ".join(refusal.override_roles)
                refusals.append(
                    Refusal(
                        v.rule,
                        v.effect,
                        f"{v.message} (an override needs the role {roles}; "
                        f"{actor.id} does not have it)",
                        v.hint,
                        refusal.override_roles,
                    )
                )
            else:
                refusals.append(refusal)
        return refusals, warnings, overrides

    def _transition(
        self, compiled: CompiledWorkflow, record: InstanceRecord, trigger: str
    ) -> CompiledTransition:
        ct = compiled.transition(record.state, trigger)
        if ct is not None:
            return ct
        defn = compiled.defn
        if trigger in defn.triggers:
            raise UnknownTrigger(
                trigger,
                workflow=defn.name,
                state=record.state,
                suggestions=tuple(compiled.by_state.get(record.state, {}))[:3],
            )
        raise UnknownTrigger(
            trigger, workflow=defn.name, suggestions=suggest(trigger, list(defn.triggers))
        )

    # -- firing ---------------------------------------------------------------------------

    def fire(
        self,
        key: str,
        trigger: str,
        *,
        actor: Actor,
        data: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
        override: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> FireResult:
        """Fire ``trigger`` on the instance ``key`` as ``actor``.

        ``data`` updates instance fields with the transition; ``facts`` supplies host-owned
        fact namespaces (others come from ``crmflow_provide_facts`` plugins, only when a rule
        reads them). ``override`` is the reason given to pass ``confirm`` rules the actor may
        override. ``idempotency_key`` makes a retried command return the first result.
        ``expected_version`` refuses to act on a newer version than the caller saw.

        A rule refusal returns ``ok=False`` with the refusals; misuse raises a
        :class:`CrmflowError`.
        """
        return self._fire(
            key,
            trigger,
            actor=actor,
            data=data,
            facts=facts,
            override=override,
            idempotency_key=idempotency_key,
            expected_version=expected_version,
        )

    def _fire(
        self,
        key: str,
        trigger: str,
        *,
        actor: Actor,
        data: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
        override: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        system: bool = False,
        in_tx: Callable[[StorageTx], None] | None = None,
        extra_outbox: Sequence[OutboxRecord] = (),
        event: str | None = None,
    ) -> FireResult:
        """The one path every fire takes: a host call, or a timer (``system``: no role check).

        ``in_tx`` runs inside whichever transaction records the outcome (the change, or the
        refusal), and ``extra_outbox`` rows are written there too: a timer marks itself fired
        in the same transaction as what it did.
        """
        if idempotency_key is not None:
            earlier = self.store.get_idempotency(idempotency_key)
            if earlier is not None:
                return self._replay(earlier, key, trigger, idempotency_key)
        record = self._record(key)
        if expected_version is not None and record.version != expected_version:
            raise ConcurrencyConflict(key, expected_version, record.version)
        compiled = self._compiled_for(record)
        ct = self._transition(compiled, record, trigger)
        if not system and not actor.has_any_role(ct.defn.roles):
            self._record_refusal(
                record,
                actor,
                trigger,
                "denied",
                f"requires one of the roles {', '.join(ct.defn.roles)}",
                {},
            )
            raise PermissionDenied(actor.id, trigger, ct.defn.roles, sorted(actor.roles))
        # merge_data returns a new dict: record.data stays as read (the data before).
        new_data, changes = merge_data(
            compiled.defn.fields, record.data, data, trigger=trigger, writes=ct.defn.writes
        )
        verdicts = self._verdicts(ct, self._facts_for(compiled, ct, record, new_data, actor, facts))
        refusals, warnings, overrides = self._judge(verdicts, actor, override)
        # Tasks are read only by workflows that have checklists: the others pay nothing.
        tasks = self.store.tasks(key) if compiled.defn.checklists else []
        if ct.defn.requires:
            refusals.extend(gate_refusals(compiled.defn, ct.defn.requires, tasks))
        if refusals:
            self._record_refusal(
                record,
                actor,
                trigger,
                "refused",
                "; ".join(r.message for r in refusals),
                {"refusals": [r.as_dict() for r in refusals]},
                in_tx=in_tx,
                outbox=extra_outbox,
            )
            return FireResult(
                ok=False,
                key=key,
                trigger=trigger,
                state=record.state,
                previous_state=record.state,
                version=record.version,
                refusals=tuple(refusals),
                warnings=tuple(warnings),
                effects={"notifications": summarize(extra_outbox)} if extra_outbox else {},
            )
        dest = compiled.machine.fire(record.state, trigger)
        try:
            return self._commit(
                compiled,
                record,
                actor,
                ct,
                dest,
                new_data,
                changes,
                warnings,
                overrides,
                idempotency_key,
                tasks,
                in_tx=in_tx,
                extra_outbox=extra_outbox,
                event=event,
            )
        except ConcurrencyConflict:
            # A retry of this very command may have won the race: answer as it did.
            if idempotency_key is not None:
                earlier = self.store.get_idempotency(idempotency_key)
                if earlier is not None:
                    return self._replay(earlier, key, trigger, idempotency_key)
            raise

    def _replay(
        self, earlier: Mapping[str, Any], key: str, trigger: str, idempotency_key: str
    ) -> FireResult:
        if "ok" not in earlier or "trigger" not in earlier:
            raise CrmflowError(
                f"idempotency key {idempotency_key!r} was used for another kind of command; "
                "use a new key per command"
            )
        result = FireResult.from_dict(earlier, replayed=True)
        if (result.key, result.trigger) != (key, trigger):
            raise CrmflowError(
                f"idempotency key {idempotency_key!r} was used for {result.trigger!r} on "
                f"{result.key!r}, not {trigger!r} on {key!r}; use a new key per command"
            )
        return result

    def _commit(
        self,
        compiled: CompiledWorkflow,
        record: InstanceRecord,
        actor: Actor,
        ct: CompiledTransition,
        dest: str,
        new_data: Mapping[str, Any],
        changes: Mapping[str, Any],
        warnings: Sequence[Refusal],
        overrides: Sequence[Override],
        idempotency_key: str | None,
        tasks: Sequence[Task],
        *,
        in_tx: Callable[[StorageTx], None] | None = None,
        extra_outbox: Sequence[OutboxRecord] = (),
        event: str | None = None,
    ) -> FireResult:
        now = self.clock.now()
        trigger = ct.defn.trigger
        side: SideEffects | None = None
        if compiled.defn.checklists or compiled.defn.timers or compiled.automations:
            side = self._side_effects(
                compiled,
                record,
                to_state=dest,
                trigger=trigger,
                event=event,
                gates=ct.defn.requires,
                tasks=tasks,
                data=new_data,
                changed=changes,
                actor=actor,
                now=now,
            )
            side.outbox[:0] = list(extra_outbox)
        elif extra_outbox:
            side = SideEffects(outbox=list(extra_outbox))
        if side is not None and side.data:
            # Values an automation sets are part of this change, like the caller's data.
            new_data = dict(new_data)
            changes = dict(changes)
            for name, value in side.data.items():
                if new_data.get(name) != value:
                    changes[name] = [new_data.get(name), value]
                    new_data[name] = value
        updated = InstanceRecord(
            key=record.key,
            workflow=record.workflow,
            workflow_version=record.workflow_version,
            definition_digest=record.definition_digest,
            state=dest,
            # merge_data's new dict, which nothing else holds; storage keeps its own copy.
            data=new_data,
            version=record.version + 1,
            created_at=record.created_at,
            updated_at=now,
            owner=record.owner,
        )
        reason = "; ".join(o.reason for o in overrides) if overrides else ""
        hooks = self.plugins.hook
        # The context (with two copies of the data) is built only when something reads it.
        context: TransitionContext | None = None
        if (
            ct.defn.actions
            or hooks.crmflow_before_commit.get_hookimpls()
            or hooks.crmflow_after_fire.get_hookimpls()
        ):
            context = TransitionContext(
                engine_name=self.name,
                key=record.key,
                workflow=record.workflow,
                workflow_version=record.workflow_version,
                trigger=trigger,
                from_state=record.state,
                to_state=dest,
                actor=actor,
                data_before=dict(record.data),
                data_after=dict(new_data),
                at=now,
                reason=reason,
            )
        with self.store.transaction() as tx:
            tx.update_instance(updated, expected_version=record.version)
            if in_tx is not None:
                in_tx(tx)
            actions: list[dict[str, Any]] = []
            described: dict[str, Any] = {}
            if side is not None:
                side.write(tx, record.key, now)
                described = side.describe()
            if context is not None:
                actions = [self._run_action(action, context, tx) for action in ct.defn.actions]
            effects: dict[str, Any] = {}
            if changes:
                effects["data_changed"] = dict(changes)
            if actions:
                effects["actions"] = actions
            if described:
                effects.update(described)
            tx.append_history(
                HistoryDraft(
                    instance_key=record.key,
                    at=now,
                    actor=actor.id,
                    kind="override" if overrides else "transition",
                    trigger=trigger,
                    from_state=record.state,
                    to_state=dest,
                    reason=reason,
                    # Not the dict in effects: the caller may change that one.
                    changes=changes,
                    details={
                        "overrides": [o.as_dict() for o in overrides],
                        "warnings": [w.as_dict() for w in warnings],
                        "roles": sorted(actor.roles),
                        "actions": actions,
                        **described,
                    },
                )
            )
            if context is not None:
                hooks.crmflow_before_commit(context=context, tx=tx)
            result = FireResult(
                ok=True,
                key=record.key,
                trigger=trigger,
                state=dest,
                previous_state=record.state,
                version=updated.version,
                warnings=tuple(warnings),
                overrides=tuple(overrides),
                effects=effects,
            )
            if idempotency_key is not None:
                tx.put_idempotency(idempotency_key, record.key, result.as_dict(), at=now)
        if context is not None:
            self._after_fire(context, result)
        return result

    def _run_action(
        self, action: ActionDef, context: TransitionContext, tx: StorageTx
    ) -> dict[str, Any]:
        outcome = self.plugins.hook.crmflow_run_action(
            name=action.name, params=dict(action.params), context=context, tx=tx
        )
        if outcome is None:
            # Load-time checks make this unreachable unless a plugin stops answering.
            raise PluginError(f"no plugin ran the action {action.name!r}")
        return {"action": action.name, **dict(outcome)}

    def _after_fire(self, context: TransitionContext, result: FireResult) -> None:
        try:
            self.plugins.hook.crmflow_after_fire(context=context, result=result)
        except Exception:
            # The change is committed; an observer failing afterwards must not undo or hide it.
            log.exception("crmflow_after_fire observer failed for %s", context.key)

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
    ) -> None:
        extra: dict[str, Any] = {}
        if outbox:
            extra["notifications"] = summarize(outbox)
        with self.store.transaction() as tx:
            current = tx.lock_instance(record.key)
            if in_tx is not None:
                in_tx(tx)
            if outbox:
                tx.insert_outbox(outbox)
            tx.append_history(
                HistoryDraft(
                    instance_key=record.key,
                    at=self.clock.now(),
                    actor=actor.id,
                    kind=kind,
                    trigger=trigger,
                    from_state=current.state if current else record.state,
                    to_state=current.state if current else record.state,
                    reason=reason,
                    details=dict(details, roles=sorted(actor.roles), **extra),
                )
            )

    # -- what can be done now -------------------------------------------------------------

    def available(
        self, key: str, actor: Actor, *, facts: Mapping[str, Any] | None = None
    ) -> list[TriggerOption]:
        """Every trigger of the instance's current state, for ``actor``, with reasons.

        Nothing is written. A trigger the actor lacks the role for is listed as not allowed
        with a ``roles`` reason; rules that would refuse are listed with their messages and
        hints; ``confirm`` rules the actor could override set ``needs_override``.
        """
        record = self._record(key)
        compiled = self._compiled_for(record)
        data = dict(record.data)
        tasks: list[Task] | None = None
        options: list[TriggerOption] = []
        for trigger, ct in compiled.by_state.get(record.state, {}).items():
            dest = compiled.defn.leaf_state(ct.defn.dest)
            reasons: list[Refusal] = []
            if not actor.has_any_role(ct.defn.roles):
                roles = ", ".join(ct.defn.roles)
                reasons.append(
                    Refusal(
                        "roles",
                        "block",
                        f"{trigger} requires one of the roles {roles}",
                        f"ask someone with the role {roles}",
                    )
                )
            try:
                verdicts = self._verdicts(
                    ct, self._facts_for(compiled, ct, record, data, actor, facts)
                )
            except MissingFact as exc:
                reasons.append(Refusal(exc.rule or "facts", "block", str(exc), "supply the fact"))
                verdicts = []
            except (InvalidData, PluginError, RuleEvaluationError) as exc:
                reasons.append(
                    Refusal("facts", "block", str(exc), "correct the facts the host supplies")
                )
                verdicts = []
            refusals, warnings, _ = self._judge(verdicts, actor, None)
            reasons.extend(refusals)
            if ct.defn.requires:
                if tasks is None:
                    tasks = self.store.tasks(key)
                reasons.extend(gate_refusals(compiled.defn, ct.defn.requires, tasks))
            # Role and fact reasons are blocks, so only pure confirm refusals qualify.
            needs_override = bool(reasons) and all(
                r.effect == "confirm" and actor.has_any_role(r.override_roles) for r in reasons
            )
            options.append(
                TriggerOption(
                    trigger=trigger,
                    dest=dest,
                    allowed=not reasons,
                    reasons=tuple(reasons),
                    warnings=tuple(warnings),
                    needs_override=needs_override,
                )
            )
        return options

    def instances(self, workflow: str | None = None) -> list[Instance]:
        """Every instance (of ``workflow`` when given), in key order."""
        return [self._instance(r) for r in self.store.iter_instances(workflow)]

    def __repr__(self) -> str:
        workflows = sorted(self._latest)
        return f"Engine(name={self.name!r}, store={self.store.url!r}, workflows={workflows})"


def _rule_reading(ct: CompiledTransition, namespace: str, attribute: str | None = None) -> str:
    """The first rule of ``ct`` that reads ``namespace`` (and ``attribute`` when given)."""
    for rule in ct.rules:
        for ns, attr in rule.needs:
            if ns == namespace and (attribute is None or attr == attribute):
                return rule.name
    return ""


def _did_you_mean(suggestions: Sequence[str]) -> str:
    return f" (did you mean {' or '.join(repr(s) for s in suggestions)}?)" if suggestions else ""
