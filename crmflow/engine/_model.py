"""The format-neutral, immutable model of a workflow definition.

The YAML loader produces these objects; the runtime, lint and diagram read them. Every object
keeps the source position of its definition so that later checks can point at the spot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Literal

FieldType = Literal["str", "int", "decimal", "bool", "date", "datetime"]
FIELD_TYPES: tuple[str, ...] = ("str", "int", "decimal", "bool", "date", "datetime")

Effect = Literal["block", "confirm", "warn"]
EFFECTS: tuple[str, ...] = ("block", "confirm", "warn")

#: Separator between a parent state and its sub-state in a state path.
STATE_SEPARATOR = "."


@dataclass(frozen=True)
class SourcePos:
    """Where a value was written: file, 1-based line and column, and its key path."""

    source: str = "<string>"
    line: int = 0
    column: int = 0
    path: str = ""
    #: For a block scalar (``|`` or ``>``): (line, column, length) of each content line, so
    #: that a position inside the value's text can be mapped back onto the file.
    lines: tuple[tuple[int, int, int], ...] = ()

    def locate(self, text: str, line: int, column: int) -> tuple[int, int]:
        """Map a 1-based (line, column) inside this value's ``text`` onto the file."""
        if not self.line:
            return 0, 0
        if not self.lines:
            if line > 1:
                return self.line + line - 1, column
            return self.line, self.column + column - 1
        # Offset into the value; folding or keeping a line break both take one character.
        offset = sum(len(part) + 1 for part in text.split("\n")[: line - 1]) + column - 1
        for file_line, file_column, length in self.lines:
            if offset <= length:
                return file_line, file_column + offset
            offset -= length + 1
        last_line, last_column, last_length = self.lines[-1]
        return last_line, last_column + last_length


NOWHERE = SourcePos()


@dataclass(frozen=True)
class FieldDef:
    """A data field an instance carries."""

    name: str
    type: FieldType
    required: bool = False
    default: Any = None
    description: str = ""
    pos: SourcePos = NOWHERE


@dataclass(frozen=True)
class StateDef:
    """A state; ``name`` is the full path (``opportunity.negotiation`` for a sub-state)."""

    name: str
    initial: bool = False
    final: bool = False
    parent: str | None = None
    children: tuple[str, ...] = ()
    initial_child: str | None = None
    description: str = ""
    pos: SourcePos = NOWHERE
    #: Checklists whose items open as tasks when an instance enters this state.
    checklists: tuple[str, ...] = ()

    @property
    def short_name(self) -> str:
        """The last component of the state path."""
        return self.name.rsplit(STATE_SEPARATOR, 1)[-1]

    @property
    def is_compound(self) -> bool:
        """Whether the state has sub-states."""
        return bool(self.children)


@dataclass(frozen=True)
class ActionDef:
    """A custom action a transition runs inside its transaction (``crmflow_run_action``)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    pos: SourcePos = NOWHERE


@dataclass(frozen=True)
class GateDef:
    """A transition's requirement that a checklist is complete (``requires:``)."""

    checklist: str
    #: Whether deferred (deferrable) items count as satisfied.
    allow_deferred: bool = False
    pos: SourcePos = NOWHERE


@dataclass(frozen=True)
class TransitionDef:
    """A transition: ``trigger`` moves an instance from any of ``sources`` to ``dest``.

    A source that is a compound state also matches all of its sub-states.
    ``positions`` maps a key of the transition (``to``, ``from``, ``roles`` ...) to its position.
    ``internal`` marks a transition written without ``to``: the instance stays in its state
    (the loader gives each such transition one leaf source and ``dest`` equal to it).
    """

    trigger: str
    sources: tuple[str, ...]
    dest: str
    roles: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    description: str = ""
    pos: SourcePos = NOWHERE
    positions: Mapping[str, SourcePos] = field(default_factory=lambda: MappingProxyType({}))
    internal: bool = False
    actions: tuple[ActionDef, ...] = ()
    #: Fields a fire of this transition may change through ``data``; none unless listed.
    writes: tuple[str, ...] = ()
    #: For an internal transition: the state it was written on (possibly a compound state).
    origin: str = ""
    #: Checklists that must be complete before the transition may fire.
    requires: tuple[GateDef, ...] = ()

    def level_for(self, state: str, defn: WorkflowDef) -> str:
        """The state of ``state``'s ancestry this transition was written on."""
        if self.origin:
            return self.origin
        chain = defn.ancestors(state)
        return next((s for s in self.sources if s in chain), state)


@dataclass(frozen=True)
class RuleDef:
    """A named rule: when ``when`` holds, ``effect`` applies with ``message`` and ``hint``.

    ``message`` and ``hint`` are templates whose ``{...}`` parts are rule expressions.
    """

    name: str
    when: str
    effect: Effect
    message: str
    hint: str = ""
    override_roles: tuple[str, ...] = ()
    description: str = ""
    pos: SourcePos = NOWHERE
    positions: Mapping[str, SourcePos] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ChecklistItemDef:
    """One item of a checklist; entering the checklist's state opens it as a task.

    ``due`` is the time after entering the state by which it is due. ``role`` makes the item
    held by a role instead of the instance's owner. ``result`` optionally types the value
    recorded on completion (a field type name).
    """

    id: str
    title: str
    required: bool = True
    deferrable: bool = False
    role: str | None = None
    due: timedelta | None = None
    depends_on: tuple[str, ...] = ()
    result: FieldType | None = None
    description: str = ""
    pos: SourcePos = NOWHERE


@dataclass(frozen=True)
class ChecklistDef:
    """A named checklist: items in order, and who may manage every item."""

    name: str
    title: str
    items: tuple[ChecklistItemDef, ...]
    #: Roles that may complete, defer, reopen and hand over any item, not only their own.
    manager_roles: tuple[str, ...] = ()
    description: str = ""
    pos: SourcePos = NOWHERE

    def item(self, item_id: str) -> ChecklistItemDef | None:
        """The item with ``item_id``, if any."""
        return next((i for i in self.items if i.id == item_id), None)


@dataclass(frozen=True)
class CostsDef:
    """The cost categories an instance may record costs under (``costs:``)."""

    #: category name -> title
    categories: Mapping[str, str]
    #: Roles that may record costs (any role when empty).
    roles: tuple[str, ...] = ()
    currency: str = ""
    pos: SourcePos = NOWHERE


@dataclass(frozen=True)
class ReassignmentDef:
    """Who may change an instance's owner, and the rules that must let it pass."""

    roles: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    pos: SourcePos = NOWHERE


@dataclass(frozen=True)
class NotifyDef:
    """A notification to send: to whom, what, on which channels.

    ``to`` holds recipient specs: ``owner``, ``manager`` (the owner's manager), ``role:NAME``,
    ``user:ID``, ``unit:PATH``. ``subject`` and ``body`` are templates whose ``{...}`` parts
    are rule expressions over the instance's fields (and ``key``, ``state``, ``owner``).
    ``channels`` empty means the engine's default channels.
    """

    to: tuple[str, ...]
    subject: str
    body: str = ""
    channels: tuple[str, ...] = ()
    pos: SourcePos = NOWHERE
    positions: Mapping[str, SourcePos] = field(default_factory=lambda: MappingProxyType({}))


TimerKind = Literal["after", "before", "sla"]


@dataclass(frozen=True)
class TimerDef:
    """A timer an instance runs while it is in one of ``states`` (or below them).

    Kinds:

    * ``after``: due ``after`` once the instance enters the scope; ``reset_on`` triggers
      restart it (a visit resets "no visit for 10 days").
    * ``before``: due ``before`` ahead of the date or datetime in ``date_field``; set again when
      the field changes; no timer while the field is empty.
    * ``sla``: due ``sla_hours[value of sla_by]`` hours after entering the scope
      (``sla_default`` for values not listed; no timer when neither applies).

    With ``working_time`` the due time follows the business calendar: durations count working
    time only, and a due time outside working time moves to the next working moment (never
    skipped). When due, the timer fires ``fire`` (a trigger, through the same path as a host
    call) and/or sends ``notify``. An empty ``states`` means the whole life of the instance
    (until a final state).
    """

    name: str
    kind: TimerKind
    states: tuple[str, ...] = ()
    after: timedelta | None = None
    before: timedelta | None = None
    date_field: str | None = None
    sla_by: str | None = None
    sla_hours: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    sla_default: float | None = None
    working_time: bool = False
    fire: str | None = None
    notify: NotifyDef | None = None
    reset_on: tuple[str, ...] = ()
    #: Triggers that end the timer early (a manager escalating by hand ends the deadline).
    cancel_on: tuple[str, ...] = ()
    pos: SourcePos = NOWHERE


AutomationActionKind = Literal["notify", "create_task", "set", "start_timer"]


@dataclass(frozen=True)
class AutomationActionDef:
    """One action of an automation's ``do:`` list; exactly one of the payloads is set.

    * ``notify``: send ``notify``.
    * ``create_task``: open ``task`` (an item: id, title, role, due, ...) as a task of the
      instance, held by the owner unless it names a role.
    * ``set``: set field ``set_field`` to ``set_value`` (checked against the field's type).
    * ``start_timer``: start ``timer`` (a timer definition whose scope is the current state).
    """

    kind: AutomationActionKind
    notify: NotifyDef | None = None
    task: ChecklistItemDef | None = None
    set_field: str | None = None
    set_value: Any = None
    timer: TimerDef | None = None
    pos: SourcePos = NOWHERE


@dataclass(frozen=True)
class AutomationDef:
    """``on`` an event, ``if`` a condition holds, ``do`` actions (in the same transaction).

    The automation runs when any of its ``on`` parts matches the change being committed:
    a fired trigger in ``on_transitions`` (``"*"`` for any transition that changes state or
    not), a state in ``on_enter`` being entered (or a state below it), or an event in
    ``on_events`` (``started``, ``task_completed``, ``task_deferred``, ``reassigned``,
    ``cost_recorded``, ``timer``). ``condition`` is a rule expression (``if:``) over the
    instance after the change.
    """

    name: str
    on_transitions: tuple[str, ...] = ()
    on_enter: tuple[str, ...] = ()
    on_events: tuple[str, ...] = ()
    condition: str | None = None
    actions: tuple[AutomationActionDef, ...] = ()
    pos: SourcePos = NOWHERE
    positions: Mapping[str, SourcePos] = field(default_factory=lambda: MappingProxyType({}))


#: Events an automation can listen to besides transitions and state entries.
AUTOMATION_EVENTS: tuple[str, ...] = (
    "started",
    "task_completed",
    "task_deferred",
    "reassigned",
    "cost_recorded",
    "timer",
)


@dataclass(frozen=True)
class WorkflowDef:
    """One version of one workflow, validated and immutable.

    ``facts`` declares the host-owned fact namespaces rules may read, each a mapping of
    attribute name to type (``{"customer": {"credit_limit": "decimal"}}``).
    ``roles`` lists the roles the workflow knows (declared, plus any used by transitions).
    ``digest`` is a hash of the source text; it distinguishes two texts with the same version.
    ``positions`` maps each top-level key (``workflow``, ``roles`` ...) to its value's position,
    and ``roles.<name>`` to where a declared role is written (lint points there).
    """

    name: str
    version: int
    states: Mapping[str, StateDef]
    transitions: tuple[TransitionDef, ...]
    fields: Mapping[str, FieldDef]
    rules: Mapping[str, RuleDef]
    facts: Mapping[str, Mapping[str, FieldType]]
    roles: tuple[str, ...] = ()
    start_roles: tuple[str, ...] = ()
    title: str = ""
    description: str = ""
    source: str = "<string>"
    digest: str = ""
    pos: SourcePos = NOWHERE
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    positions: Mapping[str, SourcePos] = field(default_factory=lambda: MappingProxyType({}))
    checklists: Mapping[str, ChecklistDef] = field(default_factory=lambda: MappingProxyType({}))
    costs: CostsDef | None = None
    reassignment: ReassignmentDef = field(default_factory=ReassignmentDef)
    timers: tuple[TimerDef, ...] = ()
    automations: tuple[AutomationDef, ...] = ()
    #: The business calendar written in the workflow (``calendar:``); ``None`` uses the
    #: engine's calendar. Typed loosely to keep the model free of the calendar module.
    calendar: Any = None

    def checklist_item(self, item_id: str) -> tuple[ChecklistDef, ChecklistItemDef] | None:
        """The checklist and item with ``item_id`` (item ids are unique per workflow)."""
        for checklist in self.checklists.values():
            item = checklist.item(item_id)
            if item is not None:
                return checklist, item
        return None

    def task_item(self, item_id: str) -> ChecklistItemDef | None:
        """The item a task with ``item_id`` was opened from (checklist or ``create_task``).

        Task ids are unique across checklist items and automations' ``create_task`` items.
        """
        found = self.checklist_item(item_id)
        if found is not None:
            return found[1]
        for automation in self.automations:
            for action in automation.actions:
                if action.task is not None and action.task.id == item_id:
                    return action.task
        return None

    @property
    def initial_state(self) -> str:
        """The top-level initial state's path (not descended into sub-states)."""
        for state in self.states.values():
            if state.initial and state.parent is None:
                return state.name
        raise LookupError(f"workflow {self.name!r} has no initial state")  # loader prevents this

    @property
    def final_states(self) -> tuple[str, ...]:
        """Paths of the final states."""
        return tuple(s.name for s in self.states.values() if s.final)

    @property
    def triggers(self) -> tuple[str, ...]:
        """Every trigger name, in order of first appearance."""
        return tuple(dict.fromkeys(t.trigger for t in self.transitions))

    def leaf_state(self, name: str) -> str:
        """Descend from ``name`` through initial sub-states to the state an instance rests in."""
        state = self.states[name]
        while state.initial_child is not None:
            state = self.states[state.initial_child]
        return state.name

    def ancestors(self, name: str) -> tuple[str, ...]:
        """The state itself followed by its parents, innermost first."""
        chain = [name]
        parent = self.states[name].parent
        while parent is not None:
            chain.append(parent)
            parent = self.states[parent].parent
        return tuple(chain)

    def transitions_from(self, state: str) -> tuple[TransitionDef, ...]:
        """Transitions that can fire from ``state`` (a leaf), innermost source first."""
        chain = self.ancestors(state)
        found: list[TransitionDef] = []
        for level in chain:
            for t in self.transitions:
                # An internal copy lists only its leaf as source but ranks at its origin.
                written_here = t.origin == level if t.origin else level in t.sources
                if written_here and (not t.origin or state in t.sources):
                    found.append(t)
        return tuple(found)
