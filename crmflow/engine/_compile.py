"""Turn a validated :class:`WorkflowDef` into what the runtime needs.

Rules are compiled against the workflow's fields and fact namespaces (so an unknown name is a
``DefinitionError`` with file, line and column at load time, never at the first trigger), each
transition's rules are prepared once on the rules back end, and the ``transitions`` machine is
built.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from crmflow._errors import DefinitionError, ExpressionError
from crmflow._suggest import suggest
from crmflow.engine._automations import (
    CompiledAutomation,
    compile_automations,
    compile_timer_notifies,
)
from crmflow.engine._machine import WorkflowMachine
from crmflow.engine._model import TimerDef, TransitionDef, WorkflowDef
from crmflow.engine._notify import CompiledNotify
from crmflow.rules import CompiledRule, FunctionSpec, RulesBackend, Schema, compile_rule
from crmflow.rules._checker import NOW_FACT

__all__ = [
    "ACTOR_NAMESPACE",
    "BUILTIN_FIELDS",
    "CompiledTransition",
    "CompiledWorkflow",
    "build_schema",
    "check_actions",
    "compile_workflow",
]

#: The name an owner change carries in results and history (it is not a trigger).
REASSIGN = TransitionDef(trigger="reassign", sources=(), dest="")

#: Names every rule can read besides the declared fields.
BUILTIN_FIELDS: dict[str, str] = {"key": "str", "state": "str", "workflow": "str"}
#: Built-in names a workflow may declare a field of its own for (the field then wins): the
#: instance's current owner.
SOFT_BUILTIN_FIELDS: dict[str, str] = {"owner": "str"}
#: The acting user, as rules see it.
ACTOR_NAMESPACE: dict[str, str] = {"id": "str", "roles": "list[str]", "org": "str"}


@dataclass
class CompiledTransition:
    """A transition with its prepared rules and the facts they read."""

    defn: TransitionDef
    rules: tuple[CompiledRule, ...]
    prepared: Any
    #: namespace -> attributes read, for host-owned fact namespaces only
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Whether a rule reads the acting user (``actor.*``) or the time (``now``).
    reads_actor: bool = False
    reads_now: bool = False


@dataclass
class CompiledWorkflow:
    """Everything the runtime uses for one workflow version."""

    defn: WorkflowDef
    schema: Schema
    rules: dict[str, CompiledRule]
    machine: WorkflowMachine
    #: state -> trigger -> the transition that fires (innermost source wins)
    by_state: dict[str, dict[str, CompiledTransition]]
    #: The owner change as a transition that stays where it is: its roles and rules.
    reassign: CompiledTransition | None = None
    #: Automations with their conditions and templates compiled.
    automations: list[CompiledAutomation] = field(default_factory=list)
    #: Workflow timers' notifications, by timer name.
    timer_notifies: dict[str, CompiledNotify] = field(default_factory=dict)
    #: Timers automations start (``start_timer`` actions).
    automation_timers: list[TimerDef] = field(default_factory=list)

    def transition(self, state: str, trigger: str) -> CompiledTransition | None:
        """The transition ``trigger`` fires from ``state``, if any."""
        return self.by_state.get(state, {}).get(trigger)


#: Names the engine fills in itself; a field or fact namespace by these names would let a
#: caller's data shadow who is acting or what time it is.
RESERVED_NAMES = frozenset({*BUILTIN_FIELDS, "actor", "now"})


def _check_reserved(defn: WorkflowDef) -> None:
    for name, spec in defn.fields.items():
        if name in RESERVED_NAMES:
            raise DefinitionError(
                f"field name {name!r} is reserved",
                source=spec.pos.source or defn.source,
                line=spec.pos.line,
                column=spec.pos.column,
                path=f"fields.{name}",
                hint=f"rename it; the engine provides {', '.join(sorted(RESERVED_NAMES))}",
            )
    for namespace in defn.facts:
        if namespace in defn.fields:
            pos = defn.positions.get("facts", defn.pos)
            raise DefinitionError(
                f"{namespace!r} is both a field and a fact namespace",
                source=pos.source or defn.source,
                line=pos.line,
                column=pos.column,
                path=f"facts.{namespace}",
                hint="a rule could not tell which one a name means; rename one of them",
            )
        if namespace in RESERVED_NAMES:
            pos = defn.positions.get("facts", defn.pos)
            raise DefinitionError(
                f"fact namespace {namespace!r} is reserved",
                source=pos.source or defn.source,
                line=pos.line,
                column=pos.column,
                path=f"facts.{namespace}",
                hint="the acting user is always 'actor', filled in by the engine; rename it",
            )


def build_schema(defn: WorkflowDef, functions: Mapping[str, FunctionSpec]) -> Schema:
    """The names and types a rule of ``defn`` may read."""
    _check_reserved(defn)
    fields = dict(BUILTIN_FIELDS)
    fields.update(SOFT_BUILTIN_FIELDS)
    fields.update({name: f.type for name, f in defn.fields.items()})
    namespaces: dict[str, dict[str, str]] = {ns: dict(attrs) for ns, attrs in defn.facts.items()}
    namespaces["actor"] = dict(ACTOR_NAMESPACE)
    return Schema(fields=fields, namespaces=namespaces, functions=dict(functions))


def _compile_rules(defn: WorkflowDef, schema: Schema) -> dict[str, CompiledRule]:
    compiled: dict[str, CompiledRule] = {}
    for name, rule in defn.rules.items():
        try:
            compiled[name] = compile_rule(
                name,
                when=rule.when,
                effect=rule.effect,
                message=rule.message,
                hint=rule.hint,
                override_roles=rule.override_roles,
                schema=schema,
            )
        except ExpressionError as exc:
            part = getattr(exc, "part", "when")
            pos = rule.positions.get(part, rule.pos)
            text = {"when": rule.when, "message": rule.message, "hint": rule.hint}.get(part, "")
            line, column = pos.locate(text, exc.line, exc.column)
            raise DefinitionError(
                exc.reason,
                source=pos.source or defn.source,
                line=line,
                column=column,
                path=f"rules.{name}.{part}",
                suggestions=exc.suggestions,
                hint=exc.hint,
            ) from exc
    return compiled


def _group_name(defn: WorkflowDef, index: int, t: TransitionDef) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", f"{defn.name}_v{defn.version}_{defn.digest[:10]}")
    return f"{safe}_{index}_{t.trigger}"


def compile_workflow(
    defn: WorkflowDef, backend: RulesBackend, functions: Mapping[str, FunctionSpec]
) -> CompiledWorkflow:
    """Compile rules, prepare each transition's rule group and build the machine."""
    schema = build_schema(defn, functions)
    rules = _compile_rules(defn, schema)

    def prepare(name: str, t: TransitionDef) -> CompiledTransition:
        group = tuple(rules[r] for r in t.rules)
        prepared = backend.prepare(name, list(group)) if group else None
        needs: dict[str, set[str]] = {}
        for rule in group:
            for namespace, attribute in rule.needs:
                if namespace and namespace in defn.facts:
                    needs.setdefault(namespace, set()).add(attribute)
        read = {need for rule in group for need in rule.needs}
        return CompiledTransition(
            defn=t,
            rules=group,
            prepared=prepared,
            needs={ns: tuple(sorted(attrs)) for ns, attrs in needs.items()},
            reads_actor=any(namespace == "actor" for namespace, _ in read),
            reads_now=("", NOW_FACT) in read,
        )

    compiled_transitions = [
        prepare(_group_name(defn, index, t), t) for index, t in enumerate(defn.transitions)
    ]
    spec = defn.reassignment
    reassign = prepare(
        _group_name(defn, len(defn.transitions), REASSIGN),
        TransitionDef(
            trigger=REASSIGN.trigger,
            sources=tuple(defn.states),
            dest="",
            roles=spec.roles,
            rules=spec.rules,
            pos=spec.pos,
            internal=True,
        ),
    )
    by_state: dict[str, dict[str, CompiledTransition]] = {}
    by_def = {id(ct.defn): ct for ct in compiled_transitions}
    for state in defn.states.values():
        if state.children:
            continue
        table: dict[str, CompiledTransition] = {}
        for t in defn.transitions_from(state.name):
            # transitions_from lists the innermost source first; the first one found wins.
            table.setdefault(t.trigger, by_def[id(t)])
        by_state[state.name] = table
    return CompiledWorkflow(
        defn=defn,
        schema=schema,
        rules=rules,
        machine=WorkflowMachine(defn),
        by_state=by_state,
        reassign=reassign,
        automations=compile_automations(defn, schema),
        timer_notifies=compile_timer_notifies(defn, schema),
        automation_timers=[
            action.timer
            for auto in defn.automations
            for action in auto.actions
            if action.timer is not None
        ],
    )


def check_actions(defn: WorkflowDef, known: Collection[str]) -> None:
    """Refuse a transition action that no registered plugin implements."""
    for index, t in enumerate(defn.transitions):
        for action in t.actions:
            if action.name not in known:
                hint = (
                    "register a plugin implementing crmflow_run_action and "
                    "crmflow_known_actions for it"
                )
                raise DefinitionError(
                    f"unknown action {action.name!r}",
                    source=action.pos.source or defn.source,
                    line=action.pos.line,
                    column=action.pos.column,
                    path=action.pos.path or f"transitions[{index}].actions",
                    suggestions=suggest(action.name, sorted(known)),
                    hint=hint,
                )
