"""Load workflow definitions from YAML into the immutable model of :mod:`crmflow.engine._model`.

Everything is validated here, at load time: names, types, references between states,
transitions, rules and roles. Every problem is a :class:`~crmflow.DefinitionError` that points at
the spot (``file:line:column: path: message (did you mean ...?)``). Within one file the builder
keeps going after an error where it can, so :func:`collect_errors` reports several at once;
the ``load_*`` functions raise the first one (by position in the file).

The document shape is described in ``docs/yaml-reference.md``; the key tables below are the single
source of truth for which keys exist, and the JSON Schema in ``crmflow/schema`` is generated from
them (see :mod:`crmflow.engine._schema`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

from crmflow._errors import DefinitionError
from crmflow._suggest import suggest
from crmflow.engine._loader_tasks import (
    check_gate_sources,
    parse_checklists,
    parse_costs,
    parse_gates,
    parse_reassignment,
    parse_state_checklists,
)
from crmflow.engine._loader_timers import parse_automations, parse_calendar, parse_timers
from crmflow.engine._model import (
    EFFECTS,
    FIELD_TYPES,
    STATE_SEPARATOR,
    ActionDef,
    ChecklistDef,
    FieldDef,
    GateDef,
    ReassignmentDef,
    RuleDef,
    SourcePos,
    StateDef,
    TimerDef,
    TransitionDef,
    WorkflowDef,
)
from crmflow.engine._yaml import (
    DEFAULT_LIMITS,
    KeyPath,
    YamlDocument,
    YamlLimits,
    format_path,
    read_text_file,
    read_yaml_text,
)

__all__ = [
    "ACTION_KEYS",
    "ANY_STATE",
    "FIELD_KEYS",
    "IDENTIFIER",
    "RESERVED_TOP_LEVEL_KEYS",
    "RULE_KEYS",
    "STATE_KEYS",
    "TOP_LEVEL_KEYS",
    "TRANSITION_KEYS",
    "collect_definitions",
    "collect_errors",
    "definition_files",
    "load_definitions",
    "load_workflow_file",
    "load_workflow_text",
]

#: Names of workflows, states, triggers, fields, facts, rules and roles.
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")

#: ``from: "*"`` — every non-final leaf state outside the destination.
ANY_STATE = "*"

# The key tables: key -> required. Order is the order the reference documents them in.
TOP_LEVEL_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        "workflow": True,
        "version": False,
        "title": False,
        "description": False,
        "roles": False,
        "start_roles": False,
        "fields": False,
        "facts": False,
        "states": True,
        "transitions": False,
        "rules": False,
        "checklists": False,
        "costs": False,
        "reassignment": False,
        "calendar": False,
        "timers": False,
        "automations": False,
        "notify": False,
    }
)
STATE_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        "name": True,
        "initial": False,
        "final": False,
        "description": False,
        "checklists": False,
        "states": False,
    }
)
TRANSITION_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        "trigger": True,
        "from": True,
        "to": False,
        "roles": False,
        "rules": False,
        "writes": False,
        "requires": False,
        "actions": False,
        "description": False,
    }
)
#: Keys of one entry of a transition's ``actions`` list.
ACTION_KEYS: Mapping[str, bool] = MappingProxyType({"action": True, "with": False})
RULE_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        "when": True,
        "effect": False,
        "message": True,
        "hint": False,
        "override_roles": False,
        "description": False,
    }
)
FIELD_KEYS: Mapping[str, bool] = MappingProxyType(
    {"type": True, "required": False, "default": False, "description": False}
)

#: Top-level keys that later features will define; until then they are refused explicitly,
#: so that a document written for a newer crmflow fails loudly instead of half-working.
RESERVED_TOP_LEVEL_KEYS: frozenset[str] = frozenset(
    {"tasks", "permissions", "assignment", "scenarios"}
)

_DEFAULT_EFFECT = "block"
_TRANSITION_POSITION_KEYS = ("trigger", "from", "to", "roles", "rules")
_RULE_POSITION_KEYS = ("when", "effect", "message", "hint", "override_roles")
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


class _Skip(Exception):
    """Internal: the current item had an error already recorded; move on to the next one."""


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    return _KIND_NAMES.get(type(value), type(value).__name__)


class _Builder:
    """Builds one :class:`WorkflowDef` from a parsed document, collecting every error."""

    #: Raised (after an error is recorded) to skip the item being parsed.
    Skip = _Skip

    def __init__(self, doc: YamlDocument, text: str) -> None:
        self.doc = doc
        self.text = text
        self.errors: list[DefinitionError] = []
        self.declared_roles: dict[str, SourcePos] | None = None
        self.used_roles: set[str] = set()
        self.states: dict[str, StateDef] = {}
        self.state_paths: dict[str, KeyPath] = {}
        self.rule_names: set[str] = set()
        self.field_names: set[str] = set()
        self.fields: dict[str, FieldDef] = {}
        self.checklists: dict[str, ChecklistDef] = {}
        #: Every checklist name written, also of checklists that had errors (no echo errors).
        self.checklist_names: set[str] = set()
        #: Every trigger name written, also of transitions that had errors (no echo errors).
        self.trigger_names: set[str] = set()
        self.transitions: tuple[TransitionDef, ...] = ()
        #: Whether states and transitions loaded without errors: only then can a check that
        #: follows the machine (say, where a timer's trigger can fire) trust what it sees.
        self.machine_ok = True

    # -- error helpers -------------------------------------------------------------------

    def error(
        self,
        reason: str,
        path: KeyPath,
        *,
        at_key: bool = False,
        suggestions: tuple[str, ...] = (),
        hint: str = "",
    ) -> _Skip:
        """Record an error at ``path`` and return an exception the caller may raise to skip."""
        pos = self.doc.key_pos(path) if at_key else self.doc.pos(path)
        self.errors.append(
            DefinitionError(
                reason,
                source=self.doc.source,
                line=pos.line,
                column=pos.column,
                path=format_path(path),
                suggestions=suggestions,
                hint=hint,
            )
        )
        return _Skip()

    def expect(self, value: Any, kind: type, path: KeyPath, what: str = "") -> Any:
        """Return ``value`` when it is of ``kind`` (bool is not an int here); else record."""
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if ok:
            return value
        hint = ""
        if kind is str and isinstance(value, dict | list):
            hint = "quote the text: a value starting with '{' or '[' is read as a mapping or list"
        elif kind is bool and isinstance(value, str):
            hint = "only true and false are booleans (YAML 1.2); yes/no/on/off are strings"
        expected = what or _KIND_NAMES[kind]
        raise self.error(f"expected {expected}, got {_kind(value)}", path, hint=hint)

    def identifier(self, value: Any, path: KeyPath, what: str = "name") -> str:
        """Return ``value`` when it is a valid identifier; else record and skip."""
        text = self.expect(value, str, path, f"a {what}")
        if not IDENTIFIER.fullmatch(text):
            raise self.error(
                f"invalid {what} {text!r}",
                path,
                hint="use lower-case letters, digits and '_', not starting with a digit",
            )
        return str(text)

    def text_value(self, mapping: Mapping[str, Any], key: str, path: KeyPath) -> str:
        """Return an optional free-text value (``""`` when absent or invalid)."""
        if key not in mapping or mapping[key] is None:
            return ""
        try:
            return str(self.expect(mapping[key], str, (*path, key)))
        except _Skip:
            return ""

    def flag(self, mapping: Mapping[str, Any], key: str, path: KeyPath) -> bool:
        """Return an optional boolean value (``False`` when absent or invalid)."""
        if key not in mapping:
            return False
        try:
            return bool(self.expect(mapping[key], bool, (*path, key)))
        except _Skip:
            return False

    def check_keys(
        self,
        mapping: Mapping[str, Any],
        path: KeyPath,
        allowed: Mapping[str, bool],
        what: str,
        reserved: frozenset[str] = frozenset(),
    ) -> bool:
        """Record unknown and missing keys; return whether all required keys are present."""
        # A missing key that an unknown key looks like is one mistake, reported once.
        misspelled: set[str] = set()
        for key in mapping:
            if key in allowed:
                continue
            if key in reserved:
                self.error(
                    f"key {key!r} is reserved for a later version of crmflow",
                    (*path, key),
                    at_key=True,
                    hint="remove it; this version does not support it yet",
                )
                continue
            near = suggest(key, [k for k in allowed if k not in mapping] or allowed)
            misspelled.update(near[:1])
            hint = "" if near else "allowed keys: " + ", ".join(allowed)
            if mapping[key] is None and " " in key:
                # {description: a, b} reads "b" as a key: the usual cause of a key with spaces.
                hint = "a ',' inside {...} ends a value; quote text that contains commas"
            self.error(
                f"unknown key {key!r} in {what}",
                (*path, key),
                at_key=True,
                suggestions=near,
                hint=hint,
            )
        complete = True
        for key, required in allowed.items():
            if required and key not in mapping:
                complete = False
                if key not in misspelled:
                    # The path names the missing key; its position is the enclosing mapping's.
                    self.error(f"missing required key {key!r} in {what}", (*path, key))
        return complete

    def name_list(self, value: Any, path: KeyPath, what: str) -> list[tuple[str, KeyPath]]:
        """Parse a list of identifiers (a single string is a list of one), with their paths."""
        items: list[tuple[str, KeyPath]] = []
        if isinstance(value, str):
            candidates: list[tuple[Any, KeyPath]] = [(value, path)]
        elif isinstance(value, list):
            candidates = [(item, (*path, index)) for index, item in enumerate(value)]
        else:
            raise self.error(f"expected a list of {what}s, got {_kind(value)}", path)
        for item, item_path in candidates:
            try:
                items.append((self.identifier(item, item_path, what), item_path))
            except _Skip:
                continue
        return items

    def roles(self, value: Any, path: KeyPath) -> tuple[str, ...]:
        """Parse role names, checked against the declared roles when there are any."""
        result: list[str] = []
        for role, role_path in self.name_list(value, path, "role"):
            if self.declared_roles is not None and role not in self.declared_roles:
                self.error(
                    f"unknown role {role!r}",
                    role_path,
                    suggestions=suggest(role, self.declared_roles),
                    hint="declare it under 'roles' at the top of the workflow",
                )
                continue
            self.used_roles.add(role)
            if role not in result:
                result.append(role)
        return tuple(result)

    # -- the document --------------------------------------------------------------------

    def build(self) -> WorkflowDef | None:
        """Validate the whole document; return the definition, or ``None`` after errors."""
        data = self.doc.data
        if not isinstance(data, dict):
            what = "an empty document" if data is None else _kind(data)
            self.error(
                f"expected a mapping with 'workflow', 'states' and 'transitions', got {what}", ()
            )
            return None
        self.check_keys(data, (), TOP_LEVEL_KEYS, "the workflow", RESERVED_TOP_LEVEL_KEYS)

        name = self.section(
            lambda: self.identifier(data["workflow"], ("workflow",), "workflow name"),
            "workflow",
            data,
        )
        version = self.section(lambda: self.version(data["version"]), "version", data, 1)
        title = self.text_value(data, "title", ())
        description = self.text_value(data, "description", ())
        self.section(lambda: self.declare_roles(data["roles"]), "roles", data)
        fields = self.section(lambda: self.parse_fields(data["fields"]), "fields", data, {})
        self.fields = dict(fields)
        self.field_names = set(fields)
        facts = self.section(lambda: self.facts(data["facts"]), "facts", data, {})
        if isinstance(data.get("checklists"), dict):
            self.checklist_names = {k for k in data["checklists"] if IDENTIFIER.fullmatch(k)}
        self.checklists = self.section(
            lambda: parse_checklists(self, data["checklists"]), "checklists", data, {}
        )
        machine_errors = len(self.errors)
        self.section(lambda: self.top_states(data["states"]), "states", data)
        rules_value = data.get("rules") or {}
        # Rule names first, so that transitions can refer to rules defined below them.
        if isinstance(rules_value, dict):
            self.rule_names = {key for key in rules_value if IDENTIFIER.fullmatch(key)}
        if isinstance(data.get("transitions"), list):
            self.trigger_names = {
                t["trigger"]
                for t in data["transitions"]
                if isinstance(t, dict)
                and isinstance(t.get("trigger"), str)
                and IDENTIFIER.fullmatch(t["trigger"])
            }
        transitions = self.section(
            lambda: self.parse_transitions(data["transitions"]), "transitions", data, ()
        )
        self.transitions = transitions
        self.machine_ok = len(self.errors) == machine_errors
        rules = self.section(lambda: self.rules(data["rules"]), "rules", data, {})
        start_roles = self.section(
            lambda: self.roles(data["start_roles"], ("start_roles",)), "start_roles", data, ()
        )
        costs = self.section(lambda: parse_costs(self, data["costs"]), "costs", data)
        reassignment = self.section(
            lambda: parse_reassignment(self, data["reassignment"]),
            "reassignment",
            data,
            ReassignmentDef(),
        )
        calendar = self.section(lambda: parse_calendar(self, name), "calendar", data)
        # After the transitions: a timer's 'fire' must be able to fire where the timer runs.
        timers: tuple[TimerDef, ...] = self.section(
            lambda: parse_timers(self, data["timers"]), "timers", data, ()
        )
        automations = parse_automations(self, data, timers)
        if self.errors:
            return None

        roles = (
            tuple(self.declared_roles)
            if self.declared_roles is not None
            else tuple(sorted(self.used_roles))
        )
        positions = {key: self.doc.pos((key,)) for key in data}
        if self.declared_roles is not None:
            positions.update({f"roles.{r}": pos for r, pos in self.declared_roles.items()})
        return WorkflowDef(
            name=name,
            version=version,
            states=MappingProxyType(dict(self.states)),
            transitions=transitions,
            fields=MappingProxyType(fields),
            rules=MappingProxyType(rules),
            facts=MappingProxyType({ns: MappingProxyType(attrs) for ns, attrs in facts.items()}),
            roles=roles,
            start_roles=start_roles,
            title=title,
            description=description,
            source=self.doc.source,
            digest=hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest(),
            pos=self.doc.pos(()),
            positions=MappingProxyType(positions),
            checklists=MappingProxyType(dict(self.checklists)),
            costs=costs,
            reassignment=reassignment,
            timers=timers,
            automations=automations,
            calendar=calendar,
        )

    def section(self, build: Any, key: str, data: Mapping[str, Any], default: Any = None) -> Any:
        """Run ``build`` when ``key`` is present; errors inside skip the section.

        An optional key written with no value (``rules:``) counts as absent; a required one
        goes through ``build``, which reports the missing value.
        """
        if key not in data or (data[key] is None and not TOP_LEVEL_KEYS.get(key, False)):
            return default
        try:
            return build()
        except _Skip:
            return default

    def version(self, value: Any) -> int:
        """Parse the workflow version: an integer from 1."""
        number = int(self.expect(value, int, ("version",), "an integer version"))
        if number < 1:
            raise self.error(f"version must be 1 or more, got {number}", ("version",))
        return number

    def declare_roles(self, value: Any) -> None:
        """Record the declared roles; once declared, every role used must be one of them."""
        declared: dict[str, SourcePos] = {}
        for role, path in self.name_list(value, ("roles",), "role"):
            if role in declared:
                self.error(f"role {role!r} is declared twice", path)
                continue
            declared[role] = self.doc.pos(path)
        self.declared_roles = declared

    # -- fields and facts ----------------------------------------------------------------

    def field_type(self, value: Any, path: KeyPath) -> str:
        """Parse a field type name."""
        text = self.expect(value, str, path, "a field type")
        if text not in FIELD_TYPES:
            raise self.error(
                f"unknown field type {text!r}",
                path,
                suggestions=suggest(text, FIELD_TYPES),
                hint="" if suggest(text, FIELD_TYPES) else "types: " + ", ".join(FIELD_TYPES),
            )
        return str(text)

    def parse_fields(self, value: Any) -> dict[str, FieldDef]:
        """Parse ``fields``: ``name: type`` or ``name: {type, required, default, ...}``."""
        mapping = self.expect(value, dict, ("fields",))
        result: dict[str, FieldDef] = {}
        for key, spec in mapping.items():
            path: KeyPath = ("fields", key)
            try:
                name = self.identifier(key, path, "field name")
                if isinstance(spec, dict):
                    if not self.check_keys(spec, path, FIELD_KEYS, f"field {name!r}"):
                        continue
                    type_ = self.field_type(spec["type"], (*path, "type"))
                    default = self.default(type_, spec.get("default"), (*path, "default"))
                    required = self.flag(spec, "required", path)
                    description = self.text_value(spec, "description", path)
                else:
                    type_ = self.field_type(spec, path)
                    default, required, description = None, False, ""
            except _Skip:
                continue
            result[name] = FieldDef(
                name=name,
                type=type_,  # type: ignore[arg-type]  # checked against FIELD_TYPES above
                required=required,
                default=default,
                description=description,
                pos=self.doc.key_pos(path),
            )
        return result

    def default(self, type_: str, value: Any, path: KeyPath) -> Any:
        """Convert a field's default to its type (dates and decimals from the text written)."""
        if value is None:
            return None
        if type_ == "str":
            return self.expect(value, str, path)
        if type_ == "int":
            return self.expect(value, int, path)
        if type_ == "bool":
            return self.expect(value, bool, path)
        if type_ == "decimal":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise self.error(f"expected a decimal number, got {_kind(value)}", path)
            # The raw text, not the float: 0.1 must become Decimal("0.1"), not 0.10000000000001.
            try:
                number = Decimal(self.doc.raw.get(path, str(value)).strip())
            except InvalidOperation:
                raise self.error(f"{value!r} is not a decimal number", path) from None
            if not number.is_finite():
                raise self.error(f"{value!r} is not a finite decimal number", path)
            return number
        text = self.expect(value, str, path, f"an ISO {type_} string")
        try:
            if type_ == "date":
                return dt.date.fromisoformat(text)
            return dt.datetime.fromisoformat(text)
        except ValueError:
            example = "2026-01-31" if type_ == "date" else "2026-01-31T09:00:00"
            raise self.error(
                f"{text!r} is not an ISO {type_}", path, hint=f"write it like {example}"
            ) from None

    def facts(self, value: Any) -> dict[str, dict[str, str]]:
        """Parse ``facts``: namespace -> attribute -> type."""
        mapping = self.expect(value, dict, ("facts",))
        result: dict[str, dict[str, str]] = {}
        for namespace, attrs in mapping.items():
            path: KeyPath = ("facts", namespace)
            try:
                ns = self.identifier(namespace, path, "fact namespace")
                attr_map = self.expect(attrs, dict, path, "a mapping of attribute to type")
            except _Skip:
                continue
            result[ns] = {}
            for attr, type_value in attr_map.items():
                attr_path: KeyPath = (*path, attr)
                try:
                    result[ns][self.identifier(attr, attr_path, "fact attribute")] = (
                        self.field_type(type_value, attr_path)
                    )
                except _Skip:
                    continue
        return result

    # -- states --------------------------------------------------------------------------

    def top_states(self, value: Any) -> None:
        """Parse the top-level ``states`` list."""
        failed = len(self.errors)
        names = self.state_list(value, ("states",), None)
        initial = [n for n in names if self.states[n].initial]
        # After an error inside the states (say, "initial: yes") "no initial state" is noise.
        if not initial and names and len(self.errors) == failed:
            self.error(
                "no initial state",
                ("states",),
                hint="mark exactly one top-level state with 'initial: true'",
            )

    def state_list(self, value: Any, path: KeyPath, parent: str | None) -> list[str]:
        """One level of states; returns the full names in order."""
        items = self.expect(value, list, path, "a list of states")
        if not items:
            raise self.error("expected at least one state", path)
        names: list[str] = []
        initial: str | None = None
        for index, item in enumerate(items):
            item_path: KeyPath = (*path, index)
            try:
                full = self.state(item, item_path, parent)
            except _Skip:
                continue
            names.append(full)
            if self.states[full].initial:
                if initial is not None:
                    self.error(
                        f"more than one initial state (the first is {initial!r})",
                        (*item_path, "initial"),
                    )
                else:
                    initial = full
        if parent is not None and names:
            child = initial or names[0]
            state = self.states[parent]
            self.states[parent] = StateDef(
                name=state.name,
                initial=state.initial,
                final=state.final,
                parent=state.parent,
                children=tuple(names),
                initial_child=child,
                description=state.description,
                pos=state.pos,
                checklists=state.checklists,
            )
            if initial is None:
                # Mark the implicit initial child, so every level reads the same way.
                first = self.states[child]
                self.states[child] = StateDef(
                    name=first.name,
                    initial=True,
                    final=first.final,
                    parent=first.parent,
                    children=first.children,
                    initial_child=first.initial_child,
                    description=first.description,
                    pos=first.pos,
                    checklists=first.checklists,
                )
        return names

    def state(self, item: Any, path: KeyPath, parent: str | None) -> str:
        """One state entry (a name, or a mapping); registers it and its sub-states."""
        if isinstance(item, dict):
            if not self.check_keys(item, path, STATE_KEYS, "a state"):
                raise _Skip()
            name_path: KeyPath = (*path, "name")
            short = self.identifier(item["name"], name_path, "state name")
            spec: Mapping[str, Any] = item
        else:
            name_path = path
            short = self.identifier(item, path, "state name")
            spec = {}
        full = short if parent is None else f"{parent}{STATE_SEPARATOR}{short}"
        if full in self.states:
            first = self.states[full].pos
            raise self.error(
                f"state {full!r} is defined twice (first at line {first.line})", name_path
            )
        initial = self.flag(spec, "initial", path)
        final = self.flag(spec, "final", path)
        if initial and final and parent is None:
            self.error("the initial state cannot be final", (*path, "final"))
        checklists: tuple[str, ...] = ()
        if spec.get("checklists"):
            checklists = parse_state_checklists(
                self, spec["checklists"], (*path, "checklists"), self.checklists
            )
            if final and checklists:
                self.error(
                    "a final state cannot open checklists: nothing can complete them",
                    (*path, "checklists"),
                )
        self.states[full] = StateDef(
            name=full,
            initial=initial,
            final=final,
            parent=parent,
            description=self.text_value(spec, "description", path),
            pos=self.doc.pos(name_path),
            checklists=checklists,
        )
        self.state_paths[full] = name_path
        children = spec.get("states")
        if children is not None:
            if final:
                self.error("a final state cannot have sub-states", (*path, "states"))
            else:
                with contextlib.suppress(_Skip):
                    self.state_list(children, (*path, "states"), full)
        return full

    def resolve_state(self, value: Any, path: KeyPath) -> str:
        """Resolve a state reference: a full path, or a sub-state's bare name when unique."""
        name = self.expect(value, str, path, "a state name")
        if name in self.states:
            return str(name)
        matches = [s for s in self.states if self.states[s].short_name == name]
        if STATE_SEPARATOR not in name and len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise self.error(f"state name {name!r} is ambiguous", path, suggestions=tuple(matches))
        shorts = [s.short_name for s in self.states.values()]
        unique_shorts = [s for s in shorts if shorts.count(s) == 1]
        candidates = list(dict.fromkeys([*self.states, *unique_shorts]))
        found = suggest(name, candidates)
        raise self.error(
            f"unknown state {name!r}",
            path,
            suggestions=found,
            hint="" if found or not candidates else "states: " + ", ".join(self.states),
        )

    def descendants(self, name: str) -> Iterator[str]:
        """``name`` and every state below it."""
        yield name
        for child in self.states[name].children:
            yield from self.descendants(child)

    # -- transitions ---------------------------------------------------------------------

    def parse_transitions(self, value: Any) -> tuple[TransitionDef, ...]:
        """Parse the ``transitions`` list."""
        items = self.expect(value, list, ("transitions",), "a list of transitions")
        result: list[TransitionDef] = []
        for index, item in enumerate(items):
            try:
                result.extend(self.transition(item, ("transitions", index)))
            except _Skip:
                continue
        return tuple(result)

    def transition(self, item: Any, path: KeyPath) -> tuple[TransitionDef, ...]:
        """Parse one transition mapping.

        Without ``to`` the transition is internal: the instance stays where it is. It becomes
        one :class:`TransitionDef` per leaf source with ``dest`` equal to that leaf and
        ``internal=True``, so every consumer of the model sees an ordinary transition.
        """
        spec = self.expect(item, dict, path, "a transition mapping")
        complete = self.check_keys(spec, path, TRANSITION_KEYS, "a transition")
        failed = len(self.errors)
        trigger = dest = None
        sources: tuple[str, ...] = ()
        try:
            if "trigger" in spec:
                trigger = self.identifier(spec["trigger"], (*path, "trigger"), "trigger")
        except _Skip:
            pass
        try:
            if "to" in spec:
                dest = self.resolve_state(spec["to"], (*path, "to"))
        except _Skip:
            pass
        internal = "to" not in spec
        try:
            if "from" in spec:
                sources = self.sources(spec["from"], (*path, "from"), dest, internal)
        except _Skip:
            pass
        roles = self.roles(spec["roles"], (*path, "roles")) if spec.get("roles") else ()
        rules = self.rule_refs(spec["rules"], (*path, "rules")) if spec.get("rules") else ()
        gates: tuple[GateDef, ...] = ()
        if spec.get("requires"):
            gates = parse_gates(self, spec["requires"], (*path, "requires"), self.checklists)
            if gates and sources:
                check_gate_sources(self, gates, sources, self.states, path)
        writes: list[str] = []
        if spec.get("writes"):
            for name, name_path in self.name_list(spec["writes"], (*path, "writes"), "field name"):
                if name not in self.field_names:
                    self.error(
                        f"unknown field {name!r}",
                        name_path,
                        suggestions=suggest(name, sorted(self.field_names)),
                        hint="declare it under 'fields'",
                    )
                elif name not in writes:
                    writes.append(name)
        actions = self.actions(spec["actions"], (*path, "actions")) if "actions" in spec else ()
        description = self.text_value(spec, "description", path)
        if not complete or len(self.errors) > failed or trigger is None:
            raise _Skip()
        positions = MappingProxyType(
            {k: self.doc.pos((*path, k)) for k in _TRANSITION_POSITION_KEYS if k in spec}
        )
        if internal:
            # One copy per leaf, remembering the state it was written on: a transition written
            # on a sub-state still takes precedence over this one (innermost wins).
            origins: dict[str, str] = {}
            for source in sources:
                for leaf in self.descendants(source):
                    if not self.states[leaf].children and not self.states[leaf].final:
                        origins.setdefault(leaf, source)
            pairs: list[tuple[tuple[str, ...], str, str]] = [
                ((leaf,), leaf, origin) for leaf, origin in origins.items()
            ]
        elif dest is None:
            raise _Skip()
        else:
            pairs = [(sources, dest, "")]
        return tuple(
            TransitionDef(
                trigger=trigger,
                sources=pair_sources,
                dest=pair_dest,
                roles=roles,
                rules=rules,
                description=description,
                pos=self.doc.pos(path),
                positions=positions,
                internal=internal,
                actions=actions,
                writes=tuple(writes),
                origin=origin,
                requires=gates,
            )
            for pair_sources, pair_dest, origin in pairs
        )

    def rule_refs(self, value: Any, path: KeyPath) -> tuple[str, ...]:
        """Parse a list of rule names, each defined under ``rules``."""
        rules: list[str] = []
        for rule, rule_path in self.name_list(value, path, "rule name"):
            if rule not in self.rule_names:
                self.error(
                    f"unknown rule {rule!r}",
                    rule_path,
                    suggestions=suggest(rule, self.rule_names),
                    hint="define it under 'rules'",
                )
            elif rule not in rules:
                rules.append(rule)
        return tuple(rules)

    def actions(self, value: Any, path: KeyPath) -> tuple[ActionDef, ...]:
        """Parse a transition's ``actions``: a list of names or ``{action: name, with: {...}}``."""
        items = self.expect(value, list, path, "a list of actions")
        result: list[ActionDef] = []
        for index, item in enumerate(items):
            item_path = (*path, index)
            try:
                if isinstance(item, str):
                    name = self.identifier(item, item_path, "action name")
                    result.append(ActionDef(name=name, pos=self.doc.pos(item_path)))
                    continue
                spec = self.expect(item, dict, item_path, "an action name or mapping")
                if not self.check_keys(spec, item_path, ACTION_KEYS, "an action"):
                    continue
                name = self.identifier(spec["action"], (*item_path, "action"), "action name")
                params = spec.get("with") or {}
                params = self.expect(params, dict, (*item_path, "with"), "a mapping of parameters")
                result.append(
                    ActionDef(
                        name=name,
                        params=MappingProxyType(dict(params)),
                        pos=self.doc.pos((*item_path, "action")),
                    )
                )
            except _Skip:
                continue
        return tuple(result)

    def sources(
        self, value: Any, path: KeyPath, dest: str | None, internal: bool = False
    ) -> tuple[str, ...]:
        """Parse a transition's ``from``: one state, a list, or ``"*"``."""
        if isinstance(value, list):
            if not value:
                raise self.error("expected at least one source state", path)
            entries = [(item, (*path, index)) for index, item in enumerate(value)]
        else:
            entries = [(value, path)]
        if any(item == ANY_STATE for item, _ in entries):
            if len(entries) > 1:
                raise self.error(f"{ANY_STATE!r} cannot be combined with other states", path)
            if dest is None and not internal:
                raise _Skip()  # the error in 'to' is reported already
            below_dest = set(self.descendants(dest)) if dest is not None else set()
            expanded = tuple(
                s.name
                for s in self.states.values()
                if not s.children and not s.final and s.name not in below_dest
            )
            if not expanded:
                raise self.error(f"{ANY_STATE!r} matches no state here", path)
            return expanded
        result: list[str] = []
        failed = False
        for item, item_path in entries:
            try:
                name = self.resolve_state(item, item_path)
            except _Skip:
                failed = True
                continue
            if self.states[name].final:
                self.error(
                    f"final state {name!r} cannot have outgoing transitions",
                    item_path,
                    hint="remove 'final: true' or this transition",
                )
                failed = True
                continue
            if name not in result:
                result.append(name)
        if failed:
            raise _Skip()
        return tuple(result)

    # -- rules ---------------------------------------------------------------------------

    def rules(self, value: Any) -> dict[str, RuleDef]:
        """Parse ``rules``: name -> rule mapping. Expressions are stored unparsed."""
        mapping = self.expect(value, dict, ("rules",), "a mapping of rule name to rule")
        result: dict[str, RuleDef] = {}
        for key, spec in mapping.items():
            path: KeyPath = ("rules", key)
            try:
                name = self.identifier(key, path, "rule name")
                result[name] = self.rule(name, spec, path)
            except _Skip:
                continue
        return result

    def rule(self, name: str, item: Any, path: KeyPath) -> RuleDef:
        """One rule mapping."""
        spec = self.expect(item, dict, path, "a rule mapping")
        failed = len(self.errors)
        complete = self.check_keys(spec, path, RULE_KEYS, f"rule {name!r}")
        texts: dict[str, str] = {}
        for key in ("when", "message"):
            if key in spec:
                try:
                    text = self.expect(spec[key], str, (*path, key))
                    if not text.strip():
                        self.error(f"'{key}' must not be empty", (*path, key))
                    texts[key] = text
                except _Skip:
                    pass
        effect = _DEFAULT_EFFECT
        if spec.get("effect") is not None:
            try:
                effect = self.expect(spec["effect"], str, (*path, "effect"), "an effect")
                if effect not in EFFECTS:
                    self.error(
                        f"unknown effect {effect!r}",
                        (*path, "effect"),
                        suggestions=suggest(effect, EFFECTS),
                        hint="effects: " + ", ".join(EFFECTS),
                    )
            except _Skip:
                pass
        override_roles: tuple[str, ...] = ()
        if spec.get("override_roles"):
            override_roles = self.roles(spec["override_roles"], (*path, "override_roles"))
        hint = self.text_value(spec, "hint", path)
        description = self.text_value(spec, "description", path)
        if not complete or len(self.errors) > failed:
            raise _Skip()
        return RuleDef(
            name=name,
            when=texts["when"],
            effect=effect,  # type: ignore[arg-type]  # checked against EFFECTS above
            message=texts["message"],
            hint=hint,
            override_roles=override_roles,
            description=description,
            pos=self.doc.key_pos(path),
            positions=MappingProxyType(
                {k: self.doc.pos((*path, k)) for k in _RULE_POSITION_KEYS if k in spec}
            ),
        )


def _sort_key(error: DefinitionError) -> tuple[int, int]:
    return (error.line or 0, error.column or 0)


def _build(
    text: str, source: str, limits: YamlLimits
) -> tuple[WorkflowDef | None, list[DefinitionError]]:
    try:
        doc = read_yaml_text(text, source, limits)
    except DefinitionError as exc:
        return None, [exc]
    builder = _Builder(doc, text)
    defn = builder.build()
    return defn, sorted(builder.errors, key=_sort_key)


def load_workflow_text(
    text: str, source: str = "<string>", *, limits: YamlLimits = DEFAULT_LIMITS
) -> WorkflowDef:
    """Load one workflow from YAML text.

    Args:
        text: the YAML document.
        source: the name used in positions and errors (a file name, or ``"<string>"``).
        limits: size, depth and node-count limits for the YAML reader.

    Raises:
        DefinitionError: the first problem in the document, by position.

    """
    defn, errors = _build(text, source, limits)
    if errors:
        raise errors[0]
    assert defn is not None  # no errors means the builder produced a definition
    return defn


def load_workflow_file(path: str | Path, *, limits: YamlLimits = DEFAULT_LIMITS) -> WorkflowDef:
    """Load one workflow from a YAML file (UTF-8, at most ``limits.max_bytes``).

    Raises:
        DefinitionError: when the file cannot be read or the definition is invalid.

    """
    text = read_text_file(path, limits)
    return load_workflow_text(text, str(path), limits=limits)


#: Directories beside the workflows that hold other kinds of YAML.
_NOT_WORKFLOWS = frozenset({"scenarios", "forecasts"})


def definition_files(path: str | Path) -> list[Path]:
    """List the workflow files under ``path``.

    That is the file itself, or the ``*.yaml``/``*.yml`` files below a directory (recursively,
    sorted). Hidden directories, directories named ``scenarios`` or ``forecasts``, and
    ``*.scenario.yaml`` / ``*.forecast.yaml`` files are skipped: scenarios and forecasts live
    beside the workflows they exercise but are not workflows.

    Raises:
        DefinitionError: when ``path`` does not exist.

    """
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DefinitionError("no such file or directory", source=str(root))
    found = []
    for candidate in sorted(root.rglob("*")):
        relative = candidate.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if _NOT_WORKFLOWS.intersection(relative.parts[:-1]):
            continue
        name = candidate.name
        if candidate.suffix not in (".yaml", ".yml") or not candidate.is_file():
            continue
        if name.endswith((".scenario.yaml", ".scenario.yml", ".forecast.yaml", ".forecast.yml")):
            continue
        found.append(candidate)
    return found


def _duplicate_error(defn: WorkflowDef, first: WorkflowDef) -> DefinitionError:
    pos = defn.positions.get("workflow", defn.pos)
    first_pos = first.positions.get("workflow", first.pos)
    return DefinitionError(
        f"workflow {defn.name!r} version {defn.version} is already defined in "
        f"{first.source}:{first_pos.line}",
        source=defn.source,
        line=pos.line,
        column=pos.column,
        path="workflow",
        hint="give this one a higher 'version'",
    )


def load_definitions(path: str | Path, *, limits: YamlLimits = DEFAULT_LIMITS) -> list[WorkflowDef]:
    """Load every workflow in a file or directory (see :func:`definition_files`).

    Two definitions with the same workflow name and version are an error pointing at the second
    (in sorted file order); the same name with different versions is allowed.

    Raises:
        DefinitionError: the first problem found.

    """
    result: list[WorkflowDef] = []
    seen: dict[tuple[str, int], WorkflowDef] = {}
    for file in definition_files(path):
        defn = load_workflow_file(file, limits=limits)
        key = (defn.name, defn.version)
        if key in seen:
            raise _duplicate_error(defn, seen[key])
        seen[key] = defn
        result.append(defn)
    return result


def collect_definitions(
    path: str | Path, *, limits: YamlLimits = DEFAULT_LIMITS
) -> tuple[list[WorkflowDef], list[DefinitionError]]:
    """Load what loads under ``path`` and collect every problem, without stopping at the first.

    Within one file, the errors that do not depend on an earlier one are all reported; a file
    with errors contributes no definition, and neither does a duplicate name and version.
    """
    try:
        files = definition_files(path)
    except DefinitionError as exc:
        return [], [exc]
    definitions: list[WorkflowDef] = []
    errors: list[DefinitionError] = []
    seen: dict[tuple[str, int], WorkflowDef] = {}
    for file in files:
        try:
            text = read_text_file(file, limits)
        except DefinitionError as exc:
            errors.append(exc)
            continue
        defn, file_errors = _build(text, str(file), limits)
        errors.extend(file_errors)
        if defn is not None:
            key = (defn.name, defn.version)
            if key in seen:
                errors.append(_duplicate_error(defn, seen[key]))
            else:
                seen[key] = defn
                definitions.append(defn)
    return definitions, errors


def collect_errors(
    path: str | Path, *, limits: YamlLimits = DEFAULT_LIMITS
) -> list[DefinitionError]:
    """Every problem in every workflow file under ``path`` (see :func:`collect_definitions`).

    An empty list means :func:`load_definitions` would succeed.
    """
    return collect_definitions(path, limits=limits)[1]
