"""The loader's sections about what happens on its own: timers, automations, notify, calendar.

Each function takes the loader's builder (for its error reporting, role, state and field checks)
and one section of the document, and returns model objects; errors are recorded on the builder
with file, line and column like every other loader error. Templates (``subject``, ``body``) and
conditions (``if``) are kept as written, with their positions: the runtime compiles them against
the rule schema.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from crmflow._errors import DefinitionError
from crmflow._suggest import suggest
from crmflow.engine._calendar import _KEYS as _CALENDAR_FILE_KEYS
from crmflow.engine._calendar import calendar_from_document
from crmflow.engine._loader_tasks import CHECKLIST_ITEM_KEYS, _duration
from crmflow.engine._model import (
    AUTOMATION_EVENTS,
    AutomationActionDef,
    AutomationDef,
    ChecklistItemDef,
    NotifyDef,
    TimerDef,
)
from crmflow.engine._yaml import KeyPath

if TYPE_CHECKING:
    from crmflow.engine._loader import _Builder

__all__ = [
    "ANY_TRIGGER",
    "AUTOMATION_ACTION_KEYS",
    "AUTOMATION_KEYS",
    "CALENDAR_KEYS",
    "CREATE_TASK_KEYS",
    "NOTIFY_KEYS",
    "NOTIFY_SHORTHAND_KEYS",
    "ON_KEYS",
    "RECIPIENT_KINDS",
    "SET_KEYS",
    "SLA_KEYS",
    "START_TIMER_KEYS",
    "TIMER_KEYS",
    "UNIT_PATH",
    "parse_automations",
    "parse_calendar",
    "parse_timers",
]

#: ``on: {transition: "*"}`` — any fired trigger.
ANY_TRIGGER = "*"

#: ``calendar:`` in a workflow: a calendar file's keys; the name defaults to the workflow's.
CALENDAR_KEYS: Mapping[str, bool] = MappingProxyType({**_CALENDAR_FILE_KEYS, "calendar": False})
# The key tables: key -> required. Order is the order the reference documents them in.
TIMER_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        "name": True,
        "in_state": False,
        "after": False,
        "before": False,
        "of": False,
        "sla": False,
        "working_time": False,
        "fire": False,
        "notify": False,
        "reset_on": False,
        "cancel_on": False,
    }
)
#: A timer an automation starts: its scope is the state current when it starts.
START_TIMER_KEYS: Mapping[str, bool] = MappingProxyType(
    {k: v for k, v in TIMER_KEYS.items() if k != "in_state"}
)
SLA_KEYS: Mapping[str, bool] = MappingProxyType({"by": True, "hours": True, "default": False})
NOTIFY_KEYS: Mapping[str, bool] = MappingProxyType(
    {"to": True, "subject": True, "body": False, "channels": False}
)
AUTOMATION_KEYS: Mapping[str, bool] = MappingProxyType(
    {"name": False, "on": True, "if": False, "do": True}
)
#: Keys of one ``on`` mapping; at least one is needed.
ON_KEYS: Mapping[str, bool] = MappingProxyType(
    {"transition": False, "enter": False, "event": False}
)
#: Keys of one ``do`` entry; exactly one is needed.
AUTOMATION_ACTION_KEYS: Mapping[str, bool] = MappingProxyType(
    {"notify": False, "create_task": False, "set": False, "start_timer": False}
)
#: A task an automation opens is a checklist item without a checklist to depend on.
CREATE_TASK_KEYS: Mapping[str, bool] = MappingProxyType(
    {k: v for k, v in CHECKLIST_ITEM_KEYS.items() if k != "depends_on"}
)
SET_KEYS: Mapping[str, bool] = MappingProxyType({"field": True, "value": True})
#: ``notify:`` entries: an automation with one notify action, written flat.
NOTIFY_SHORTHAND_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        "name": False,
        "on": True,
        "if": False,
        "to": True,
        "subject": True,
        "body": False,
        "channels": False,
    }
)

#: Recipient forms, as the org directory resolves them.
RECIPIENT_KINDS: tuple[str, ...] = ("owner", "manager", "managers", "role", "user", "unit")
_BARE_KINDS = frozenset({"owner", "manager", "managers"})
_RECIPIENT_HINT = "use owner, manager, managers, role:NAME, user:ID or unit:PATH"
#: A unit path: unit ids joined by ``/`` (``sales/east``); empty for the top unit.
UNIT_PATH = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*)?")
_USER_ID = re.compile(r"[^\s/]+")
_TIMER_KINDS = ("after", "before", "sla")
_DATE_TYPES = ("date", "datetime")
_NOTIFY_POSITION_KEYS = ("to", "subject", "body", "channels")
_AUTOMATION_POSITION_KEYS = ("name", "on", "if", "do")


# -- calendar --------------------------------------------------------------------------------


def parse_calendar(b: _Builder, workflow: str | None) -> Any:
    """Parse ``calendar:`` (a business calendar; its name defaults to the workflow's)."""
    try:
        return calendar_from_document(b.doc, ("calendar",), default_name=workflow or "workflow")
    except DefinitionError as exc:
        # The calendar reader stops at its first mistake; the rest of the file still counts.
        b.errors.append(exc)
        raise b.Skip() from None


# -- notifications ---------------------------------------------------------------------------


def _entries(b: _Builder, value: Any, path: KeyPath, what: str) -> list[tuple[Any, KeyPath]]:
    """A single string, or a non-empty list, as (item, path) pairs."""
    if isinstance(value, str):
        return [(value, path)]
    if isinstance(value, list):
        if not value:
            raise b.error(f"expected at least one {what}", path)
        return [(item, (*path, index)) for index, item in enumerate(value)]
    raise b.error(f"expected a {what} or a list of them, got {_kind(value)}", path)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "an integer", float: "a number", list: "a list"}.get(
        type(value), "a mapping" if isinstance(value, dict) else type(value).__name__
    )


def _recipient(b: _Builder, value: Any, path: KeyPath) -> str:
    """One recipient spec, normalised (``role: x`` -> ``role:x``, ``unit:/a/`` -> ``unit:a``)."""
    text: str = b.expect(value, str, path, "a recipient such as owner or role:NAME")
    kind, colon, argument = text.strip().partition(":")
    kind, argument = kind.strip(), argument.strip()
    if kind in _BARE_KINDS:
        if colon:
            raise b.error(
                f"recipient {text!r}: {kind!r} takes no name",
                path,
                suggestions=(kind,),
                hint=f"write just {kind}",
            )
        return kind
    if kind not in RECIPIENT_KINDS:
        near = suggest(kind, RECIPIENT_KINDS)
        if colon:
            found = tuple(f"{n}:{argument}" if n not in _BARE_KINDS else n for n in near)
        else:
            found = tuple(n if n in _BARE_KINDS else f"{n}:NAME" for n in near)
        raise b.error(f"unknown recipient {text!r}", path, suggestions=found, hint=_RECIPIENT_HINT)
    if kind == "unit":
        unit = argument.strip("/")
        if not colon or not UNIT_PATH.fullmatch(unit):
            raise b.error(
                f"recipient {text!r}: expected a unit path such as unit:sales/east",
                path,
                hint="unit ids joined by '/'; unit:/ is the whole organisation",
            )
        return f"unit:{unit}"
    if not argument:
        raise b.error(
            f"recipient {text!r}: {kind!r} needs a name after ':'", path, hint=f"write {kind}:NAME"
        )
    if kind == "user":
        if not _USER_ID.fullmatch(argument):
            raise b.error(
                f"recipient {text!r}: a user id has no spaces or '/'",
                path,
                hint="write the host's user id, e.g. user:alice",
            )
        return f"user:{argument}"
    role = b.identifier(argument, path, "role")
    if b.declared_roles is not None and role not in b.declared_roles:
        raise b.error(
            f"unknown role {role!r} in recipient {text!r}",
            path,
            suggestions=tuple(f"role:{r}" for r in suggest(role, b.declared_roles)),
            hint="declare it under 'roles' at the top of the workflow",
        )
    b.used_roles.add(role)
    return f"role:{role}"


def _notify_fields(b: _Builder, spec: Mapping[str, Any], path: KeyPath) -> NotifyDef:
    """The notification in ``spec`` (``to``, ``subject``, ``body``, ``channels``; keys checked)."""
    failed = len(b.errors)
    recipients: list[str] = []
    if "to" in spec:
        try:
            for item, item_path in _entries(b, spec["to"], (*path, "to"), "recipient"):
                try:
                    spec_text = _recipient(b, item, item_path)
                except b.Skip:
                    continue
                if spec_text not in recipients:
                    recipients.append(spec_text)
        except b.Skip:
            pass
    subject = ""
    if "subject" in spec:
        try:
            subject = b.expect(spec["subject"], str, (*path, "subject"))
            if not subject.strip():
                b.error("'subject' must not be empty", (*path, "subject"))
        except b.Skip:
            pass
    body = b.text_value(spec, "body", path)
    channels: tuple[str, ...] = ()
    if spec.get("channels") is not None:
        try:
            names = b.name_list(spec["channels"], (*path, "channels"), "channel name")
            channels = tuple(dict.fromkeys(name for name, _ in names))
        except b.Skip:
            pass
    if len(b.errors) > failed or not recipients or not subject:
        raise b.Skip()
    return NotifyDef(
        to=tuple(recipients),
        subject=subject,
        body=body,
        channels=channels,
        pos=b.doc.pos(path),
        positions=MappingProxyType(
            {k: b.doc.pos((*path, k)) for k in _NOTIFY_POSITION_KEYS if k in spec}
        ),
    )


def _notify(b: _Builder, value: Any, path: KeyPath) -> NotifyDef:
    """A ``notify: {to, subject, body, channels}`` mapping."""
    spec = b.expect(value, dict, path, "a mapping with 'to' and 'subject'")
    complete = b.check_keys(spec, path, NOTIFY_KEYS, "a notification")
    # The keys that are there are checked too, so their mistakes show in the same run.
    notify = _notify_fields(b, spec, path)
    if not complete:
        raise b.Skip()
    return notify


# -- timers ----------------------------------------------------------------------------------


def _trigger(b: _Builder, value: Any, path: KeyPath) -> str:
    """A trigger some transition of the workflow has."""
    name = b.identifier(value, path, "trigger")
    if name not in b.trigger_names:
        raise b.error(
            f"unknown trigger {name!r}",
            path,
            suggestions=suggest(name, sorted(b.trigger_names)),
            hint="triggers are the 'trigger' names under 'transitions'",
        )
    return name


def _field(b: _Builder, value: Any, path: KeyPath, types: tuple[str, ...], why: str) -> str:
    """A declared field whose type is one of ``types``."""
    name = b.identifier(value, path, "field name")
    field = b.fields.get(name)
    if field is None:
        raise b.error(
            f"unknown field {name!r}",
            path,
            suggestions=suggest(name, sorted(b.field_names)),
            hint="declare it under 'fields'",
        )
    if field.type not in types:
        wanted = " or ".join(types)
        raise b.error(f"field {name!r} is of type {field.type}, expected {wanted}", path, hint=why)
    return name


def _hours(b: _Builder, value: Any, path: KeyPath) -> float:
    """A positive, finite number of hours."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise b.error(f"expected a number of hours, got {_kind(value)}", path)
    if not math.isfinite(value) or value <= 0:
        raise b.error(f"hours must be a positive number, got {value!r}", path)
    return float(value)


def _sla(b: _Builder, value: Any, path: KeyPath) -> tuple[str, Mapping[str, float], float | None]:
    """``sla: {by: FIELD, hours: {VALUE: HOURS}, default: HOURS}``."""
    spec = b.expect(value, dict, path, "a mapping with 'by' and 'hours'")
    if not b.check_keys(spec, path, SLA_KEYS, "an SLA"):
        raise b.Skip()
    failed = len(b.errors)
    by = ""
    with contextlib.suppress(b.Skip):
        by = _field(
            b, spec["by"], (*path, "by"), ("str",), "the hours are looked up by the field's text"
        )
    hours: dict[str, float] = {}
    try:
        table = b.expect(spec["hours"], dict, (*path, "hours"), "a mapping of value to hours")
        for key, number in table.items():
            try:
                hours[key] = _hours(b, number, (*path, "hours", key))
            except b.Skip:
                continue
    except b.Skip:
        table = None
    default = None
    if spec.get("default") is not None:
        with contextlib.suppress(b.Skip):
            default = _hours(b, spec["default"], (*path, "default"))
    if table == {} and "default" not in spec:
        b.error(
            "the SLA applies to nothing",
            (*path, "hours"),
            hint="give hours for some values, or a default",
        )
    if len(b.errors) > failed:
        raise b.Skip()
    return by, MappingProxyType(hours), default


def _state_scope(b: _Builder, value: Any, path: KeyPath) -> tuple[str, ...]:
    """A timer's ``in_state``: states (full paths, as written), none of them final."""
    result: list[str] = []
    failed = False
    for item, item_path in _entries(b, value, path, "state"):
        try:
            name = b.resolve_state(item, item_path)
        except b.Skip:
            failed = True
            continue
        if b.states[name].final:
            b.error(
                f"a timer cannot run in final state {name!r}: an instance there is finished",
                item_path,
            )
            failed = True
        elif name not in result:
            result.append(name)
    if failed:
        raise b.Skip()
    return tuple(result)


def _ancestors(b: _Builder, name: str) -> list[str]:
    chain = [name]
    parent = b.states[name].parent
    while parent is not None:
        chain.append(parent)
        parent = b.states[parent].parent
    return chain


def _fires_from(b: _Builder, trigger: str, leaf: str) -> bool:
    chain = _ancestors(b, leaf)
    return any(t.trigger == trigger and any(s in chain for s in t.sources) for t in b.transitions)


def _live_leaves(b: _Builder, states: tuple[str, ...]) -> list[str]:
    """The non-final leaves of ``states`` (of the whole machine when empty), in file order."""
    roots = states or tuple(s for s in b.states if b.states[s].parent is None)
    leaves: list[str] = []
    for root in roots:
        for name in b.descendants(root):
            state = b.states[name]
            if not state.children and not state.final and name not in leaves:
                leaves.append(name)
    return leaves


def _check_fire(b: _Builder, trigger: str, leaves: list[str], path: KeyPath, where: str) -> None:
    """Every leaf the timer can be due in must let ``trigger`` fire."""
    if not b.machine_ok:
        return  # a transition with an error of its own is missing here; no echo errors
    for leaf in leaves:
        if not _fires_from(b, trigger, leaf):
            b.error(
                f"trigger {trigger!r} cannot fire from state {leaf!r}, {where}",
                path,
                hint="add a transition for it from that state, or narrow where the timer runs",
            )
            return


def _timer(
    b: _Builder,
    value: Any,
    path: KeyPath,
    *,
    start_leaves: list[str] | None = None,
    started: bool = False,
) -> TimerDef:
    """One timer mapping; ``started`` for an automation's ``start_timer`` (no ``in_state``).

    ``start_leaves`` are the states a started timer can start in, when they are known.
    """
    what = "a started timer" if started else "a timer"
    spec = b.expect(value, dict, path, f"{what} mapping with 'name'")
    failed = len(b.errors)
    keys = START_TIMER_KEYS if started else TIMER_KEYS
    if started and "in_state" in spec:
        b.error(
            "a started timer has no 'in_state'",
            (*path, "in_state"),
            at_key=True,
            hint="it runs in the state the instance is in when the automation starts it",
        )
        spec = {k: v for k, v in spec.items() if k != "in_state"}
    complete = b.check_keys(spec, path, keys, what)
    name = None
    if "name" in spec:
        with contextlib.suppress(b.Skip):
            name = b.identifier(spec["name"], (*path, "name"), "timer name")
    kinds = [k for k in _TIMER_KINDS if k in spec]
    if not kinds:
        b.error(
            f"{what} needs one of 'after', 'before' or 'sla'",
            path,
            hint="after: 10d (after entering), before: 2d with of: FIELD, or sla: {by, hours}",
        )
    for other in kinds[1:]:
        b.error(
            f"{kinds[0]!r} and {other!r} exclude each other",
            (*path, other),
            at_key=True,
            hint="a timer is due after entering its states, before a date, or by an SLA",
        )
    kind = kinds[0] if kinds else ""
    after = before = None
    for key in ("after", "before"):
        if key in spec:
            try:
                # "before: 0d" means at the date itself (a receivable falling due).
                duration = _duration(b, spec[key], (*path, key), allow_zero=key == "before")
            except b.Skip:
                continue
            if key == "after":
                after = duration
            else:
                before = duration
    date_field = None
    if "of" in spec and "before" not in spec:
        b.error(
            "'of' goes with 'before'",
            (*path, "of"),
            at_key=True,
            hint="before: 2d, of: FIELD is due two days before the date in FIELD",
        )
    elif "of" in spec:
        with contextlib.suppress(b.Skip):
            date_field = _field(
                b, spec["of"], (*path, "of"), _DATE_TYPES, "'before' counts back from a date"
            )
    elif "before" in spec:
        b.error(
            "missing required key 'of' (the date field 'before' counts back from)", (*path, "of")
        )
    sla_by, sla_default = "", None
    sla_hours: Mapping[str, float] = MappingProxyType({})
    if "sla" in spec:
        with contextlib.suppress(b.Skip):
            sla_by, sla_hours, sla_default = _sla(b, spec["sla"], (*path, "sla"))
    states: tuple[str, ...] = ()
    if spec.get("in_state") is not None:
        with contextlib.suppress(b.Skip):
            states = _state_scope(b, spec["in_state"], (*path, "in_state"))
    working_time = b.flag(spec, "working_time", path)
    fire = None
    if spec.get("fire") is not None:
        with contextlib.suppress(b.Skip):
            fire = _trigger(b, spec["fire"], (*path, "fire"))
    notify = None
    if spec.get("notify") is not None:
        with contextlib.suppress(b.Skip):
            notify = _notify(b, spec["notify"], (*path, "notify"))
    if spec.get("fire") is None and spec.get("notify") is None:
        b.error(
            f"{what} needs 'fire' or 'notify' (or both)",
            path,
            hint="fire: TRIGGER fires a transition when due; notify: {to, subject} sends a message",
        )
    reset_on: list[str] = []
    if spec.get("reset_on") is not None:
        if kind and kind != "after":
            b.error(
                f"'reset_on' applies to an 'after' timer, not to {kind!r}",
                (*path, "reset_on"),
                at_key=True,
                hint=(
                    "a 'before' timer follows its date field"
                    if kind == "before"
                    else "an SLA counts from entering its states; leaving them ends it"
                ),
            )
        else:
            try:
                for item, item_path in _entries(
                    b, spec["reset_on"], (*path, "reset_on"), "trigger"
                ):
                    try:
                        trigger = _trigger(b, item, item_path)
                    except b.Skip:
                        continue
                    if trigger not in reset_on:
                        reset_on.append(trigger)
            except b.Skip:
                pass
    cancel_on: list[str] = []
    if spec.get("cancel_on") is not None:
        try:
            for item, item_path in _entries(b, spec["cancel_on"], (*path, "cancel_on"), "trigger"):
                try:
                    trigger = _trigger(b, item, item_path)
                except b.Skip:
                    continue
                if trigger not in cancel_on:
                    cancel_on.append(trigger)
        except b.Skip:
            pass
    if fire is not None and len(b.errors) == failed:
        if not started:
            _check_fire(b, fire, _live_leaves(b, states), (*path, "fire"), "where this timer runs")
        elif start_leaves:
            _check_fire(
                b, fire, start_leaves, (*path, "fire"), "where this automation can start the timer"
            )
    if not complete or len(b.errors) > failed or name is None:
        raise b.Skip()
    return TimerDef(
        name=name,
        kind=kind,  # type: ignore[arg-type]  # one of _TIMER_KINDS, checked above
        states=states,
        after=after,
        before=before,
        date_field=date_field,
        sla_by=sla_by or None,
        sla_hours=sla_hours,
        sla_default=sla_default,
        working_time=working_time,
        fire=fire,
        notify=notify,
        reset_on=tuple(reset_on),
        cancel_on=tuple(cancel_on),
        pos=b.doc.pos((*path, "name")),
    )


def _claim(
    b: _Builder, seen: dict[str, int], name: str, path: KeyPath, what: str, hint: str = ""
) -> bool:
    """Record ``name`` as used at ``path``; report and return False when it is taken."""
    if name in seen:
        b.error(f"{what} {name!r} is already used (line {seen[name]})", path, hint=hint)
        return False
    seen[name] = b.doc.pos(path).line
    return True


def parse_timers(b: _Builder, value: Any) -> tuple[TimerDef, ...]:
    """Parse ``timers``: a list of timer mappings with unique names.

    Needs the states and transitions parsed: ``fire`` must be able to fire wherever the
    timer runs.
    """
    entries = b.expect(value, list, ("timers",), "a list of timers")
    timers: list[TimerDef] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        path: KeyPath = ("timers", index)
        try:
            timer = _timer(b, entry, path)
        except b.Skip:
            continue
        if _claim(b, seen, timer.name, (*path, "name"), "timer name"):
            timers.append(timer)
    return tuple(timers)


# -- automations -----------------------------------------------------------------------------


class _Names:
    """Names that must be unique across the automation sections, with the line of their use."""

    def __init__(self, b: _Builder, timers: tuple[TimerDef, ...]) -> None:
        self.automations: dict[str, int] = {}
        self.declared_timers = {t.name: t.pos.line for t in timers}
        self.started_timers: dict[str, int] = {}
        # Checklist items and created tasks share one namespace: both are the instance's tasks.
        self.tasks = {item.id: item.pos.line for c in b.checklists.values() for item in c.items}


def _on(
    b: _Builder, value: Any, path: KeyPath
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``on``: one ``{transition, enter, event}`` mapping or a list of them, merged."""
    if isinstance(value, list):
        if not value:
            raise b.error("expected at least one trigger", path)
        parts = [(item, (*path, index)) for index, item in enumerate(value)]
    else:
        parts = [(value, path)]
    transitions: list[str] = []
    enters: list[str] = []
    events: list[str] = []
    failed = len(b.errors)
    for part, part_path in parts:
        try:
            spec = b.expect(part, dict, part_path, "a mapping such as {transition: NAME}")
        except b.Skip:
            continue
        b.check_keys(spec, part_path, ON_KEYS, "'on'")
        if not spec:
            b.error(
                "expected at least one of 'transition', 'enter' or 'event'",
                part_path,
                hint="e.g. on: {transition: approve} or on: {enter: handling}",
            )
        if spec.get("transition") is not None:
            _on_transitions(b, spec["transition"], (*part_path, "transition"), transitions)
        if spec.get("enter") is not None:
            try:
                for item, item_path in _entries(b, spec["enter"], (*part_path, "enter"), "state"):
                    try:
                        state = b.resolve_state(item, item_path)
                    except b.Skip:
                        continue
                    if state not in enters:
                        enters.append(state)
            except b.Skip:
                pass
        if spec.get("event") is not None:
            try:
                for item, item_path in _entries(b, spec["event"], (*part_path, "event"), "event"):
                    try:
                        event = _event(b, item, item_path)
                    except b.Skip:
                        continue
                    if event not in events:
                        events.append(event)
            except b.Skip:
                pass
    if len(b.errors) > failed:
        raise b.Skip()
    return tuple(transitions), tuple(enters), tuple(events)


def _on_transitions(b: _Builder, value: Any, path: KeyPath, found: list[str]) -> None:
    entries = _entries(b, value, path, "trigger")
    if any(item == ANY_TRIGGER for item, _ in entries) and len(entries) > 1:
        raise b.error(f"{ANY_TRIGGER!r} already matches every trigger; list it alone", path)
    for item, item_path in entries:
        try:
            trigger = ANY_TRIGGER if item == ANY_TRIGGER else _trigger(b, item, item_path)
        except b.Skip:
            continue
        if trigger not in found:
            found.append(trigger)


def _event(b: _Builder, value: Any, path: KeyPath) -> str:
    name = b.expect(value, str, path, "an event name")
    if name not in AUTOMATION_EVENTS:
        found = suggest(name, AUTOMATION_EVENTS)
        raise b.error(
            f"unknown event {name!r}",
            path,
            suggestions=found,
            hint="events: " + ", ".join(AUTOMATION_EVENTS),
        )
    return str(name)


def _condition(b: _Builder, spec: Mapping[str, Any], path: KeyPath) -> str | None:
    if spec.get("if") is None:
        return None
    text = b.expect(spec["if"], str, (*path, "if"), "a rule expression")
    if not text.strip():
        raise b.error("'if' must not be empty", (*path, "if"))
    return str(text)


def _start_leaves(
    b: _Builder, on: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
) -> list[str] | None:
    """The states an instance can be in when the automation runs, if ``on`` pins them down."""
    transitions, enters, events = on
    if events or ANY_TRIGGER in transitions or not b.machine_ok:
        return None
    leaves = _live_leaves(b, enters) if enters else []
    for transition in b.transitions:
        if transition.trigger not in transitions:
            continue
        state = b.states[transition.dest]
        while state.initial_child is not None:
            state = b.states[state.initial_child]
        if not state.final and state.name not in leaves:
            leaves.append(state.name)
    return leaves


def _task(b: _Builder, value: Any, path: KeyPath, names: _Names) -> ChecklistItemDef:
    """``create_task``: a checklist item on its own (no ``depends_on``)."""
    spec = b.expect(value, dict, path, "a task mapping with 'id' and 'title'")
    failed = len(b.errors)
    if "depends_on" in spec:
        b.error(
            "a task an automation creates cannot depend on other tasks",
            (*path, "depends_on"),
            at_key=True,
            hint="dependencies belong to checklist items; put the task in a checklist",
        )
        spec = {k: v for k, v in spec.items() if k != "depends_on"}
    if not b.check_keys(spec, path, CREATE_TASK_KEYS, "a task"):
        raise b.Skip()
    task_id = b.identifier(spec["id"], (*path, "id"), "task id")
    title = b.expect(spec["title"], str, (*path, "title"))
    if not title.strip():
        b.error("'title' must not be empty", (*path, "title"))
    _claim(
        b,
        names.tasks,
        task_id,
        (*path, "id"),
        "task id",
        "task ids are unique across the workflow's checklist items and created tasks",
    )
    role = None
    if spec.get("role") is not None:
        roles = b.roles(spec["role"], (*path, "role"))
        if len(roles) > 1:
            raise b.error("expected one role", (*path, "role"))
        role = roles[0] if roles else None  # an unknown role is reported already
    due = None
    with contextlib.suppress(b.Skip):
        due = _duration(b, spec.get("due"), (*path, "due"))
    result_type = None
    if spec.get("result") is not None:
        result_type = b.field_type(spec["result"], (*path, "result"))
    required = b.flag(spec, "required", path) if "required" in spec else True
    deferrable = b.flag(spec, "deferrable", path)
    if len(b.errors) > failed:
        raise b.Skip()
    return ChecklistItemDef(
        id=task_id,
        title=title,
        required=required,
        deferrable=deferrable,
        role=role,
        due=due,
        result=result_type,  # type: ignore[arg-type]  # checked by field_type
        description=b.text_value(spec, "description", path),
        pos=b.doc.pos((*path, "id")),
    )


def _set(b: _Builder, value: Any, path: KeyPath) -> tuple[str, Any]:
    """``set: {field, value}``: a declared field and a value of its type (``null`` clears)."""
    spec = b.expect(value, dict, path, "a mapping with 'field' and 'value'")
    if not b.check_keys(spec, path, SET_KEYS, "'set'"):
        raise b.Skip()
    name = b.identifier(spec["field"], (*path, "field"), "field name")
    field = b.fields.get(name)
    if field is None:
        raise b.error(
            f"unknown field {name!r}",
            (*path, "field"),
            suggestions=suggest(name, sorted(b.field_names)),
            hint="declare it under 'fields'",
        )
    if spec["value"] is None and field.required:
        raise b.error(f"field {name!r} is required; it cannot be cleared", (*path, "value"))
    return name, b.default(field.type, spec["value"], (*path, "value"))


def _action(
    b: _Builder,
    value: Any,
    path: KeyPath,
    names: _Names,
    start_leaves: list[str] | None,
) -> AutomationActionDef:
    """One ``do`` entry: a mapping with exactly one of the action keys."""
    spec = b.expect(value, dict, path, "an action mapping such as {notify: {...}}")
    b.check_keys(spec, path, AUTOMATION_ACTION_KEYS, "an action")
    kinds = [k for k in AUTOMATION_ACTION_KEYS if k in spec]
    if not spec:
        raise b.error(
            "expected one action", path, hint="actions: " + ", ".join(AUTOMATION_ACTION_KEYS)
        )
    if not kinds:
        raise b.Skip()  # the unknown key is reported already
    for other in kinds[1:]:
        b.error(
            f"one action per entry: {kinds[0]!r} and {other!r}",
            (*path, other),
            at_key=True,
            hint="write each action as its own entry of the 'do' list",
        )
    if len(kinds) > 1:
        raise b.Skip()
    kind = kinds[0]
    body_path: KeyPath = (*path, kind)
    pos = b.doc.key_pos(body_path)
    if kind == "notify":
        return AutomationActionDef(kind="notify", notify=_notify(b, spec[kind], body_path), pos=pos)
    if kind == "create_task":
        return AutomationActionDef(
            kind="create_task", task=_task(b, spec[kind], body_path, names), pos=pos
        )
    if kind == "set":
        field, field_value = _set(b, spec[kind], body_path)
        return AutomationActionDef(kind="set", set_field=field, set_value=field_value, pos=pos)
    timer = _timer(b, spec[kind], body_path, start_leaves=start_leaves, started=True)
    if timer.name in names.declared_timers:
        line = names.declared_timers[timer.name]
        raise b.error(
            f"timer name {timer.name!r} is already used under 'timers' (line {line})",
            (*body_path, "name"),
            hint="a timer name identifies one timer: give the started timer its own name",
        )
    if not _claim(b, names.started_timers, timer.name, (*body_path, "name"), "timer name"):
        raise b.Skip()
    return AutomationActionDef(kind="start_timer", timer=timer, pos=pos)


def _automation_name(
    b: _Builder, spec: Mapping[str, Any], path: KeyPath, default: str, names: _Names
) -> str:
    if spec.get("name") is None:
        hint = "give this entry a 'name'"
        if not _claim(b, names.automations, default, path, "automation name", hint):
            raise b.Skip()
        return default
    name = b.identifier(spec["name"], (*path, "name"), "automation name")
    if not _claim(b, names.automations, name, (*path, "name"), "automation name"):
        raise b.Skip()
    return name


def _automation(b: _Builder, value: Any, path: KeyPath, index: int, names: _Names) -> AutomationDef:
    """One ``automations`` entry: ``{name, on, if, do}``."""
    spec = b.expect(value, dict, path, "an automation mapping with 'on' and 'do'")
    failed = len(b.errors)
    complete = b.check_keys(spec, path, AUTOMATION_KEYS, "an automation")
    name = None
    with contextlib.suppress(b.Skip):
        name = _automation_name(b, spec, path, f"automation_{index}", names)
    on: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())
    on_ok = False
    if "on" in spec:
        try:
            on = _on(b, spec["on"], (*path, "on"))
            on_ok = True
        except b.Skip:
            pass
    condition = None
    with contextlib.suppress(b.Skip):
        condition = _condition(b, spec, path)
    actions: list[AutomationActionDef] = []
    if "do" in spec:
        start_leaves = _start_leaves(b, on) if on_ok else None
        try:
            entries = b.expect(spec["do"], list, (*path, "do"), "a list of actions")
            if not entries:
                b.error("expected at least one action", (*path, "do"))
            for action_index, entry in enumerate(entries):
                try:
                    actions.append(
                        _action(b, entry, (*path, "do", action_index), names, start_leaves)
                    )
                except b.Skip:
                    continue
        except b.Skip:
            pass
    if not complete or len(b.errors) > failed or name is None:
        raise b.Skip()
    return _make(b, name, on, condition, tuple(actions), spec, path)


def _make(
    b: _Builder,
    name: str,
    on: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
    condition: str | None,
    actions: tuple[AutomationActionDef, ...],
    spec: Mapping[str, Any],
    path: KeyPath,
) -> AutomationDef:
    return AutomationDef(
        name=name,
        on_transitions=on[0],
        on_enter=on[1],
        on_events=on[2],
        condition=condition,
        actions=actions,
        pos=b.doc.pos(path),
        positions=MappingProxyType(
            {k: b.doc.pos((*path, k)) for k in _AUTOMATION_POSITION_KEYS if k in spec}
        ),
    )


def _shorthand(b: _Builder, value: Any, path: KeyPath, index: int, names: _Names) -> AutomationDef:
    """One ``notify`` entry: ``{name, on, if, to, subject, body, channels}``."""
    spec = b.expect(value, dict, path, "a mapping with 'on', 'to' and 'subject'")
    failed = len(b.errors)
    complete = b.check_keys(spec, path, NOTIFY_SHORTHAND_KEYS, "a notification")
    name = None
    with contextlib.suppress(b.Skip):
        name = _automation_name(b, spec, path, f"notify_{index}", names)
    on: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())
    if "on" in spec:
        with contextlib.suppress(b.Skip):
            on = _on(b, spec["on"], (*path, "on"))
    condition = None
    with contextlib.suppress(b.Skip):
        condition = _condition(b, spec, path)
    notify = None
    with contextlib.suppress(b.Skip):
        notify = _notify_fields(b, spec, path)
    if not complete or len(b.errors) > failed or name is None or notify is None:
        raise b.Skip()
    action = AutomationActionDef(kind="notify", notify=notify, pos=b.doc.pos(path))
    return _make(b, name, on, condition, (action,), spec, path)


def parse_automations(
    b: _Builder, data: Mapping[str, Any], timers: tuple[TimerDef, ...]
) -> tuple[AutomationDef, ...]:
    """Parse ``automations`` and the ``notify`` shorthand, in that order, into automations.

    Names are unique across both sections (``automation_<index>`` and ``notify_<index>`` when
    not given); task ids of ``create_task`` are unique with the checklist items; a started
    timer's name is unique with ``timers``.
    """
    names = _Names(b, timers)
    result: list[AutomationDef] = []
    sections = (
        ("automations", "automations", _automation),
        ("notify", "notifications", _shorthand),
    )
    for key, what, parse in sections:
        if data.get(key) is None:
            continue
        try:
            entries = b.expect(data[key], list, (key,), f"a list of {what}")
        except b.Skip:
            continue
        for index, entry in enumerate(entries):
            try:
                result.append(parse(b, entry, (key, index), index, names))
            except b.Skip:
                continue
    return tuple(result)
