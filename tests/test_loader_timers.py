"""Timers, automations, notify and calendar in YAML: what loads, and every error's position."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmflow import DefinitionError, load_workflow_text
from crmflow.engine._lint import lint
from crmflow.engine._loader import _build
from crmflow.engine._loader_timers import (
    AUTOMATION_KEYS,
    NOTIFY_KEYS,
    NOTIFY_SHORTHAND_KEYS,
    SLA_KEYS,
    TIMER_KEYS,
)
from crmflow.engine._model import AutomationDef, TimerDef
from crmflow.engine._schema import load_schema
from crmflow.engine._yaml import DEFAULT_LIMITS, read_yaml_text

HEAD = """\
workflow: complaint
roles: [rep, manager, quality, warehouse]
fields:
  customer_name: str
  category: str
  promised_reply_date: date
  escalated: {type: bool, default: false}
  amount: {type: decimal, required: true}
checklists:
  intake:
    items:
      - {id: record_call, title: Record the call}
states:
  - {name: received, initial: true, checklists: [intake]}
  - accepted
  - handling
  - name: opportunity
    states: [contact, negotiation]
  - {name: closed, final: true}
transitions:
  - {trigger: accept, from: received, to: accepted}
  - {trigger: handle, from: accepted, to: handling}
  - {trigger: approve, from: handling, to: opportunity}
  - {trigger: log_visit, from: opportunity}
  - {trigger: release, from: opportunity, to: received}
  - {trigger: escalate, from: [received, accepted, handling]}
  - {trigger: close, from: "*", to: closed}
"""

CALENDAR = """\
calendar:
  calendar: office
  timezone: Asia/Shanghai
  hours: {mon-fri: "09:00-18:00"}
"""

TIMERS = """\
timers:
  - {name: no_visit, in_state: opportunity, after: 10d, fire: release, reset_on: [log_visit]}
  - name: reply_reminder
    before: 2d
    of: promised_reply_date
    in_state: [accepted, handling]
    notify: {to: [owner], subject: "Reply to {customer_name} due {promised_reply_date}"}
  - name: reply_sla
    sla: {by: category, hours: {quality: 24, delivery: 48.5}, default: 72}
    in_state: [received, accepted, handling]
    working_time: true
    fire: escalate
    notify: {to: [manager], subject: "Complaint {key} is overdue", channels: [email, inbox]}
"""

AUTOMATIONS = """\
automations:
  - name: track_every_action
    on: {transition: "*"}
    if: category == "quality"
    do:
      - notify: {to: [manager], subject: "{key}: {state}", body: "...", channels: [inbox]}
      - create_task: {id: call_back, title: Call the customer back, due: 1d, role: quality}
      - set: {field: escalated, value: true}
      - start_timer: {name: chase, after: 2d, notify: {to: [owner], subject: "Chase {key}"}}
  - on: [{enter: handling}, {event: [task_completed, reassigned]}]
    do:
      - set: {field: amount, value: 12.50}
"""

NOTIFY = """\
notify:
  - {on: {transition: approve}, to: [owner, "role:warehouse"], subject: "Order {key} approved"}
  - name: closed_note
    on: {enter: closed}
    if: amount > 100
    to: [manager, "user:alice", "unit:/sales/east/"]
    subject: Closed
    body: |
      {customer_name} is closed.
"""

BASE = HEAD + CALENDAR + TIMERS + AUTOMATIONS + NOTIFY


def collect_errors(text: str, source: str = "client.yaml") -> list[DefinitionError]:
    return _build(text, source, DEFAULT_LIMITS)[1]


def _line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def _where(text: str, fragment: str, nth: int = 0) -> tuple[int, int]:
    """1-based line and column where the ``nth`` occurrence of ``fragment`` starts."""
    offset = -1
    for _ in range(nth + 1):
        offset = text.index(fragment, offset + 1)
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


# -- what loads ------------------------------------------------------------------------------


def test_the_full_document_loads_into_the_model() -> None:
    defn = load_workflow_text(BASE, "client.yaml")

    no_visit, reminder, sla = defn.timers
    assert (no_visit.name, no_visit.kind, no_visit.states) == (
        "no_visit",
        "after",
        ("opportunity",),
    )
    assert no_visit.after == timedelta(days=10)
    assert (no_visit.fire, no_visit.reset_on, no_visit.notify) == ("release", ("log_visit",), None)
    assert (no_visit.pos.line, no_visit.pos.path) == (
        _line_of(BASE, "name: no_visit"),
        "timers[0].name",
    )

    assert (reminder.kind, reminder.before, reminder.date_field) == (
        "before",
        timedelta(days=2),
        "promised_reply_date",
    )
    assert reminder.states == ("accepted", "handling")
    assert reminder.notify is not None
    assert reminder.notify.to == ("owner",)
    assert reminder.notify.subject == "Reply to {customer_name} due {promised_reply_date}"
    assert reminder.notify.channels == ()
    subject_pos = reminder.notify.positions["subject"]
    line, column = _where(BASE, "Reply to {customer_name}")
    assert (subject_pos.line, subject_pos.column) == (line, column)

    assert sla.kind == "sla"
    assert (sla.sla_by, dict(sla.sla_hours), sla.sla_default) == (
        "category",
        {"quality": 24.0, "delivery": 48.5},
        72.0,
    )
    assert all(isinstance(v, float) for v in sla.sla_hours.values())
    assert sla.working_time and sla.fire == "escalate"
    assert sla.states == ("received", "accepted", "handling")
    assert sla.notify is not None and sla.notify.channels == ("email", "inbox")

    assert [a.name for a in defn.automations] == [
        "track_every_action",
        "automation_1",
        "notify_0",
        "closed_note",
    ]
    track, second, approved, closed = defn.automations
    assert (track.on_transitions, track.on_enter, track.on_events) == (("*",), (), ())
    assert track.condition == 'category == "quality"'
    assert track.positions["if"].line == _line_of(BASE, "if: category")
    assert [a.kind for a in track.actions] == ["notify", "create_task", "set", "start_timer"]
    notify, task, set_, start = track.actions
    assert notify.notify is not None and notify.notify.body == "..."
    assert task.task is not None
    assert (task.task.id, task.task.title, task.task.role, task.task.due) == (
        "call_back",
        "Call the customer back",
        "quality",
        timedelta(days=1),
    )
    assert task.task.required and not task.task.depends_on
    assert (set_.set_field, set_.set_value) == ("escalated", True)
    assert start.timer is not None
    assert (start.timer.name, start.timer.kind, start.timer.states) == ("chase", "after", ())
    assert start.timer.notify is not None and start.timer.notify.to == ("owner",)

    assert (second.on_enter, second.on_events) == (("handling",), ("task_completed", "reassigned"))
    assert second.condition is None
    assert str(second.actions[0].set_value) == "12.50"  # a Decimal, from the text

    assert approved.on_transitions == ("approve",)
    assert approved.actions[0].notify is not None
    assert approved.actions[0].notify.to == ("owner", "role:warehouse")
    assert closed.on_enter == ("closed",)
    assert closed.condition == "amount > 100"
    closed_notify = closed.actions[0].notify
    assert closed_notify is not None
    assert closed_notify.to == ("manager", "user:alice", "unit:sales/east")
    assert closed_notify.body == "{customer_name} is closed.\n"
    assert closed_notify.positions["body"].lines  # a block scalar keeps its lines

    assert defn.calendar is not None and defn.calendar.name == "office"
    assert defn.calendar.timezone == "Asia/Shanghai"
    assert "warehouse" in defn.roles


def test_a_calendar_without_a_name_takes_the_workflows() -> None:
    text = BASE.replace("  calendar: office\n", "")
    assert load_workflow_text(text).calendar.name == "complaint"


def test_the_sections_are_optional_and_may_be_empty() -> None:
    defn = load_workflow_text(HEAD + "timers: []\nautomations: []\nnotify:\ncalendar:\n")
    assert (defn.timers, defn.automations, defn.calendar) == ((), (), None)


def test_a_timer_without_in_state_runs_everywhere_so_fire_must_work_everywhere() -> None:
    defn = load_workflow_text(HEAD + "timers:\n  - {name: stale, after: 30d, fire: close}\n")
    assert defn.timers[0].states == ()
    errors = collect_errors(HEAD + "timers:\n  - {name: stale, after: 30d, fire: escalate}\n")
    assert len(errors) == 1
    assert "cannot fire from state 'opportunity.contact'" in errors[0].reason


def test_other_reserved_keys_are_still_refused() -> None:
    errors = collect_errors(HEAD + "tasks: []\n")
    assert [e.reason for e in errors] == ["key 'tasks' is reserved for a later version of crmflow"]


# -- mistakes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A change to BASE, the error it must give, and where it must point.

    ``at`` is a snippet of the changed text where the error's line and column start
    (``nth`` picks a later occurrence).
    """

    id: str
    old: str
    new: str
    reason: str
    path: str
    at: str
    suggestions: tuple[str, ...] = ()
    nth: int = 0
    hint: str = ""


NO_VISIT = _line_of(BASE, "name: no_visit")
TRACK = _line_of(BASE, "name: track_every_action")
RECORD_CALL = _line_of(BASE, "id: record_call")
SECOND = _line_of(BASE, "  - on: [{enter: handling}")

CASES = [
    # timers
    Case("timer-missing-name", "{name: no_visit, in_state", "{in_state",
         "missing required key 'name'", "timers[0].name", "{in_state"),
    Case("timer-duplicate-name", "name: reply_reminder", "name: no_visit",
         f"timer name 'no_visit' is already used (line {NO_VISIT})", "timers[1].name", "no_visit",
         nth=1),
    Case("timer-unknown-key", "reset_on: [log_visit]", "reset_onn: [log_visit]",
         "unknown key 'reset_onn' in a timer", "timers[0].reset_onn", "reset_onn", ("reset_on",)),
    Case("timer-two-kinds", "after: 10d,", "after: 10d, sla: {by: category, hours: {a: 1}},",
         "'after' and 'sla' exclude each other", "timers[0].sla", "sla:", hint="by an SLA"),
    Case("timer-no-kind", "after: 10d, ", "", "a timer needs one of 'after', 'before' or 'sla'",
         "timers[0]", "{name: no_visit"),
    Case("timer-before-without-of", "    of: promised_reply_date\n", "",
         "missing required key 'of'", "timers[1].of", "name: reply_reminder"),
    Case("timer-of-without-before", "after: 10d,", "after: 10d, of: promised_reply_date,",
         "'of' goes with 'before'", "timers[0].of", "of: promised"),
    Case("timer-of-unknown-field", "of: promised_reply_date", "of: promised_reply_dat",
         "unknown field 'promised_reply_dat'", "timers[1].of", "promised_reply_dat\n",
         ("promised_reply_date",)),
    Case("timer-of-not-a-date", "of: promised_reply_date", "of: customer_name",
         "field 'customer_name' is of type str, expected date or datetime", "timers[1].of",
         "customer_name\n"),
    Case("timer-bad-duration", "after: 10d,", "after: 10 days,", "bad duration '10'",
         "timers[0].after", "10 days"),
    Case("timer-zero-duration", "after: 10d,", "after: 0h,",
         "duration '0h' must be longer than zero", "timers[0].after", "0h"),
    Case("timer-unknown-state", "in_state: opportunity,", "in_state: oportunity,",
         "unknown state 'oportunity'", "timers[0].in_state", "oportunity", ("opportunity",)),
    Case("timer-final-state", "in_state: [accepted, handling]", "in_state: [accepted, closed]",
         "a timer cannot run in final state 'closed'", "timers[1].in_state[1]", "closed]"),
    Case("timer-nothing-to-do", "after: 10d, fire: release,", "after: 10d,",
         "a timer needs 'fire' or 'notify' (or both)", "timers[0]", "{name: no_visit"),
    Case("timer-unknown-fire", "fire: release", "fire: relase", "unknown trigger 'relase'",
         "timers[0].fire", "relase", ("release",)),
    Case("timer-fire-not-everywhere", "in_state: [received, accepted, handling]",
         "in_state: [received, opportunity]",
         "trigger 'escalate' cannot fire from state 'opportunity.contact', where this timer runs",
         "timers[2].fire", "escalate\n"),
    Case("timer-unknown-reset", "reset_on: [log_visit]", "reset_on: [log_vist]",
         "unknown trigger 'log_vist'", "timers[0].reset_on[0]", "log_vist", ("log_visit",)),
    Case("timer-reset-on-before", "    before: 2d\n", "    before: 2d\n    reset_on: log_visit\n",
         "'reset_on' applies to an 'after' timer, not to 'before'", "timers[1].reset_on",
         "reset_on: log_visit"),
    Case("sla-by-unknown", "sla: {by: category,", "sla: {by: categroy,", "unknown field 'categroy'",
         "timers[2].sla.by", "categroy", ("category",)),
    Case("sla-by-not-str", "sla: {by: category,", "sla: {by: promised_reply_date,",
         "field 'promised_reply_date' is of type date, expected str", "timers[2].sla.by",
         "promised_reply_date,"),
    Case("sla-negative-hours", "quality: 24,", "quality: -24,",
         "hours must be a positive number, got -24", "timers[2].sla.hours.quality", "-24"),
    Case("sla-hours-not-a-number", "quality: 24,", "quality: a day,",
         "expected a number of hours, got a string", "timers[2].sla.hours.quality", "a day"),
    Case("sla-misspelled-key", "default: 72}", "defualt: 72}", "unknown key 'defualt' in an SLA",
         "timers[2].sla.defualt", "defualt", ("default",)),
    Case("sla-empty", "hours: {quality: 24, delivery: 48.5}, default: 72", "hours: {}",
         "the SLA applies to nothing", "timers[2].sla.hours", "{}}"),
    # notifications
    Case("notify-missing-to", 'notify: {to: [owner], subject: "Reply', 'notify: {subject: "Reply',
         "missing required key 'to' in a notification", "timers[1].notify.to", '{subject: "Reply'),
    Case("notify-misspelled-key", 'subject: "Complaint', 'subjet: "Complaint',
         "unknown key 'subjet' in a notification", "timers[2].notify.subjet", "subjet",
         ("subject",)),
    Case("recipient-misspelled", '{to: [owner], subject: "Reply', '{to: [onwer], subject: "Reply',
         "unknown recipient 'onwer'", "timers[1].notify.to[0]", "onwer", ("owner",)),
    Case("recipient-misspelled-form", '"role:warehouse"', '"rol:warehouse"',
         "unknown recipient 'rol:warehouse'", "notify[0].to[1]", "rol:warehouse",
         ("role:warehouse",)),
    Case("recipient-unknown-role", '"role:warehouse"', '"role:warehous"',
         "unknown role 'warehous' in recipient 'role:warehous'", "notify[0].to[1]", "role:warehous",
         ("role:warehouse",)),
    Case("recipient-bare-with-name", 'to: [owner, "role', 'to: ["owner:bob", "role',
         "recipient 'owner:bob': 'owner' takes no name", "notify[0].to[0]", "owner:bob",
         ("owner",)),
    Case("recipient-without-name", '"user:alice"', '"user:"',
         "recipient 'user:': 'user' needs a name after ':'", "notify[1].to[1]", 'user:"'),
    Case("recipient-bad-unit", '"unit:/sales/east/"', '"unit:sales east"',
         "recipient 'unit:sales east': expected a unit path", "notify[1].to[2]", "unit:sales east"),
    Case("recipient-empty-list", "notify: {to: [owner]", "notify: {to: []",
         "expected at least one recipient", "timers[1].notify.to", "[]"),
    Case("subject-empty", 'subject: "Complaint {key} is overdue"', 'subject: ""',
         "'subject' must not be empty", "timers[2].notify.subject", '", channels', hint=""),
    # automations
    Case("automation-missing-on", '    on: {transition: "*"}\n', "",
         "missing required key 'on' in an automation", "automations[0].on",
         "name: track_every_action"),
    Case("automation-on-misspelled", 'on: {transition: "*"}', 'on: {transtion: "*"}',
         "unknown key 'transtion' in 'on'", "automations[0].on.transtion", "transtion",
         ("transition",)),
    Case("automation-on-empty", 'on: {transition: "*"}', "on: {}",
         "expected at least one of 'transition', 'enter' or 'event'", "automations[0].on", "{}"),
    Case("automation-on-unknown-trigger", "on: {transition: approve}", "on: {transition: aprove}",
         "unknown trigger 'aprove'", "notify[0].on.transition", "aprove", ("approve",)),
    Case("automation-on-star-combined", 'on: {transition: "*"}', 'on: {transition: ["*", approve]}',
         "'*' already matches every trigger", "automations[0].on.transition", '["*"'),
    Case("automation-on-unknown-state", "{enter: handling}", "{enter: handlng}",
         "unknown state 'handlng'", "automations[1].on[0].enter", "handlng", ("handling",)),
    Case("automation-on-unknown-event", "[task_completed, reassigned]",
         "[task_complete, reassigned]", "unknown event 'task_complete'",
         "automations[1].on[1].event[0]", "task_complete", ("task_completed",)),
    Case("automation-empty-if", 'if: category == "quality"', 'if: "  "', "'if' must not be empty",
         "automations[0].if", '  "'),
    Case("automation-if-not-text", 'if: category == "quality"', "if: true",
         "expected a rule expression, got a boolean", "automations[0].if", "true\n    do:"),
    Case("automation-duplicate-name", "name: closed_note", "name: track_every_action",
         f"automation name 'track_every_action' is already used (line {TRACK})", "notify[1].name",
         "track_every_action", nth=1),
    Case("automation-default-name-taken", "  - on: [{enter: handling}",
         "  - name: notify_0\n    on: [{enter: handling}",
         f"automation name 'notify_0' is already used (line {SECOND})", "notify[0]",
         "{on: {transition: approve}", hint="give this entry a 'name'"),
    Case("do-empty", "    do:\n      - set: {field: amount, value: 12.50}\n", "    do: []\n",
         "expected at least one action", "automations[1].do", "[]\n"),
    Case("do-two-actions", "- set: {field: escalated, value: true}",
         "- {set: {field: escalated, value: true}, notify: {to: owner, subject: x}}",
         "one action per entry: 'notify' and 'set'", "automations[0].do[2].set",
         "set: {field: escalated"),
    Case("do-unknown-action", "- set: {field: escalated", "- sett: {field: escalated",
         "unknown key 'sett' in an action", "automations[0].do[2].sett", "sett", ("set",)),
    Case("do-nothing", "- set: {field: escalated, value: true}", "- {}", "expected one action",
         "automations[0].do[2]", "{}"),
    Case("task-depends-on", "due: 1d, role: quality}", "due: 1d, role: quality, depends_on: [x]}",
         "a task an automation creates cannot depend on other tasks",
         "automations[0].do[1].create_task.depends_on", "depends_on"),
    Case("task-id-of-a-checklist-item", "{id: call_back,", "{id: record_call,",
         f"task id 'record_call' is already used (line {RECORD_CALL})",
         "automations[0].do[1].create_task.id", "record_call", nth=1),
    Case("task-unknown-role", "role: quality}", "role: qualty}", "unknown role 'qualty'",
         "automations[0].do[1].create_task.role", "qualty", ("quality",)),
    Case("task-misspelled-key", "title: Call the customer back", "titel: Call the customer back",
         "unknown key 'titel' in a task", "automations[0].do[1].create_task.titel", "titel",
         ("title",)),
    Case("set-unknown-field", "{field: escalated,", "{field: escalate,", "unknown field 'escalate'",
         "automations[0].do[2].set.field", "escalate, value", ("escalated",)),
    Case("set-wrong-type", "{field: escalated, value: true}", "{field: escalated, value: yes}",
         "expected true or false, got a string", "automations[0].do[2].set.value", "yes}"),
    Case("set-clears-required", "{field: amount, value: 12.50}", "{field: amount, value: null}",
         "field 'amount' is required; it cannot be cleared", "automations[1].do[0].set.value",
         "null"),
    Case("set-bad-decimal", "value: 12.50}", "value: 12x}", "'12x' is not a decimal number",
         "automations[1].do[0].set.value", "12x"),
    Case("start-timer-in-state", "{name: chase, after: 2d,",
         "{name: chase, in_state: handling, after: 2d,", "a started timer has no 'in_state'",
         "automations[0].do[3].start_timer.in_state", "in_state: handling"),
    Case("start-timer-name-of-a-timer", "{name: chase,", "{name: no_visit,",
         f"timer name 'no_visit' is already used under 'timers' (line {NO_VISIT})",
         "automations[0].do[3].start_timer.name", "no_visit", nth=1),
    Case("start-timer-without-kind", "{name: chase, after: 2d,", "{name: chase,",
         "a started timer needs one of 'after', 'before' or 'sla'",
         "automations[0].do[3].start_timer", "{name: chase"),
    # notify shorthand
    Case("shorthand-misspelled-key", 'to: [owner, "role', 'too: [owner, "role',
         "unknown key 'too' in a notification", "notify[0].too", "too", ("to",)),
    Case("shorthand-missing-subject", ', subject: "Order {key} approved"', "",
         "missing required key 'subject' in a notification", "notify[0].subject",
         "{on: {transition: approve}"),
    Case("shorthand-missing-on", "{on: {transition: approve}, to:", "{to:",
         "missing required key 'on' in a notification", "notify[0].on", '{to: [owner, "role'),
    # calendar
    Case("calendar-bad-zone", "timezone: Asia/Shanghai", "timezone: Asia/Shangai",
         "unknown time zone 'Asia/Shangai'", "calendar.timezone", "Asia/Shangai",
         ("Asia/Shanghai",)),
    Case("calendar-bad-weekday", "{mon-fri:", "{mon-fry:", "unknown weekday 'fry' in 'mon-fry'",
         "calendar.hours.mon-fry", "mon-fry", ("mon-fri",)),
    Case("calendar-not-a-mapping", CALENDAR, "calendar: office\n",
         "expected a mapping with 'calendar', 'timezone' and 'hours', got a string", "calendar",
         "office"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_mistake_points_at_the_spot(case: Case) -> None:
    assert case.old in BASE, case.old
    text = BASE.replace(case.old, case.new, 1)
    errors = collect_errors(text)
    assert len(errors) == 1, [e.render() for e in errors]
    error = errors[0]
    assert case.reason in error.reason, error.render()
    assert error.path == case.path, error.render()
    assert (error.line, error.column) == _where(text, case.at, case.nth), error.render()
    assert error.suggestions[: len(case.suggestions)] == case.suggestions, error.render()
    if case.hint:
        assert case.hint in error.hint
    assert error.source == "client.yaml"
    # The loader raises the same error.
    with pytest.raises(DefinitionError) as info:
        load_workflow_text(text, "client.yaml")
    assert info.value.render() == error.render()


def test_a_started_timer_must_be_able_to_fire_where_the_automation_starts_it() -> None:
    text = HEAD + (
        "automations:\n"
        "  - on: {transition: approve}\n"
        "    do:\n"
        "      - start_timer: {name: chase, after: 2d, fire: escalate}\n"
    )
    errors = collect_errors(text)
    assert [e.reason for e in errors] == [
        "trigger 'escalate' cannot fire from state 'opportunity.contact', "
        "where this automation can start the timer"
    ]
    assert errors[0].path == "automations[0].do[0].start_timer.fire"
    assert (errors[0].line, errors[0].column) == _where(text, "escalate}")
    # Started on an event, the state is not known: any existing trigger is accepted.
    load_workflow_text(text.replace("{transition: approve}", "{event: reassigned}"))
    # Started on entering 'opportunity', 'release' fires from every state below it.
    load_workflow_text(
        text.replace("{transition: approve}", "{enter: opportunity}").replace(
            "fire: escalate", "fire: release"
        )
    )


def test_several_errors_are_collected_at_once() -> None:
    text = (
        BASE.replace("fire: release", "fire: relase")
        .replace("timezone: Asia/Shanghai", "timezone: Mars/Olympus")
        .replace("[task_completed, reassigned]", "[task_complete, reassigned]")
        .replace('"role:warehouse"', '"role:warehous"')
        .replace("{field: escalated,", "{field: escalate,")
        .replace("  - {name: received, initial: true", "  - {name: received, initial: yes")
    )
    errors = collect_errors(text)
    reasons = [e.reason for e in errors]
    assert len(errors) == 6, reasons
    assert [e.line for e in errors] == sorted(e.line for e in errors)
    for wanted in (
        "expected true or false",
        "unknown time zone 'Mars/Olympus'",
        "unknown trigger 'relase'",
        "unknown event 'task_complete'",
        "unknown field 'escalate'",
        "unknown role 'warehous'",
    ):
        assert any(wanted in r for r in reasons), (wanted, reasons)


def test_a_broken_transition_does_not_echo_into_the_timers() -> None:
    # 'release' has a mistake of its own; the timer that fires it says nothing more.
    text = BASE.replace(
        "{trigger: release, from: opportunity,", "{trigger: release, from: oportunity,"
    )
    errors = collect_errors(text)
    assert [e.reason for e in errors] == ["unknown state 'oportunity'"]


def test_role_recipients_are_free_when_no_roles_are_declared() -> None:
    text = BASE.replace("roles: [rep, manager, quality, warehouse]\n", "")
    defn = load_workflow_text(text)
    assert {"quality", "warehouse"} <= set(defn.roles)


# -- lint ------------------------------------------------------------------------------------


def test_lint_warns_about_working_time_without_a_calendar() -> None:
    found = lint(load_workflow_text(BASE.replace(CALENDAR, ""), "client.yaml"))
    issues = [i for i in found if i.code == "timer-without-calendar"]
    assert [(i.severity, i.pos.path) for i in issues] == [("warning", "timers[2].name")]
    assert "'reply_sla'" in issues[0].message
    assert not [i for i in lint(load_workflow_text(BASE)) if i.code == "timer-without-calendar"]


def test_lint_counts_roles_used_by_recipients_and_created_tasks() -> None:
    found = lint(load_workflow_text(BASE))
    assert [i.message for i in found if i.code == "unused-role"] == [
        "role 'rep' is declared but not used",
        "role 'manager' is declared but not used",
    ]
    # 'quality' is used by a created task only, 'warehouse' by a role: recipient only.
    text = BASE.replace(", role: quality}", "}").replace(', "role:warehouse"', "")
    unused = [i.message for i in lint(load_workflow_text(text)) if i.code == "unused-role"]
    assert "role 'quality' is declared but not used" in unused
    assert "role 'warehouse' is declared but not used" in unused


# -- the JSON Schema -------------------------------------------------------------------------

needs_jsonschema = pytest.mark.skipif(
    importlib.util.find_spec("jsonschema") is None, reason="needs jsonschema"
)


@needs_jsonschema
def test_the_schema_accepts_the_full_document() -> None:
    import jsonschema

    jsonschema.validate(read_yaml_text(BASE).data, load_schema())


@needs_jsonschema
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("after: 10d,", "after: 10d, sla: {by: category, hours: {a: 1}},"),  # two kinds
        ("    of: promised_reply_date\n", ""),  # before without of
        ("after: 10d, fire: release,", "after: 10d,"),  # nothing happens when due
        ('{to: [owner], subject: "Reply', '{to: [onwer], subject: "Reply'),  # recipient
        ("- set: {field: escalated, value: true}", "- {set: {field: x, value: 1}, notify: {}}"),
        ('    on: {transition: "*"}\n', ""),  # automation without on
        ('on: {transition: "*"}', "on: {}"),
        ("[task_completed, reassigned]", "[task_complete]"),
        ("{name: chase, after: 2d,", "{name: chase, in_state: a, after: 2d,"),
        ("quality: 24,", "quality: -24,"),
        ("  timezone: Asia/Shanghai\n", ""),
        ("reset_on: [log_visit]", "reset_onn: [log_visit]"),
    ],
)
def test_the_schema_rejects_bad_shapes(old: str, new: str) -> None:
    import jsonschema

    assert old in BASE
    data = read_yaml_text(BASE.replace(old, new, 1)).data
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, load_schema())


# -- properties ------------------------------------------------------------------------------

# Valid timer mappings over HEAD's machine, each as a flow mapping (name filled in).
VALID_TIMERS: list[dict[str, Any]] = [
    {"in_state": "opportunity", "after": "10d", "fire": "release", "reset_on": ["log_visit"]},
    {"in_state": ["received", "handling"], "after": "4h", "fire": "escalate"},
    {"after": "30d", "fire": "close", "working_time": True},
    {"before": "2d", "of": "promised_reply_date", "notify": {"to": "owner", "subject": "s"}},
    {
        "sla": {"by": "category", "hours": {"a": 1, "b": 2.5}},
        "in_state": "accepted",
        "fire": "escalate",
        "notify": {"to": ["manager", "role:quality"], "subject": "late", "channels": "inbox"},
    },
    {
        "sla": {"by": "category", "hours": {}, "default": 8},
        "notify": {"to": "user:u1", "subject": "x"},
    },
]


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _timers_text(timers: list[dict[str, Any]]) -> str:
    return "timers:\n" + "".join(f"  - {_flow(t)}\n" for t in timers)


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, len(VALID_TIMERS) - 1), max_size=8), data=st.data())
def test_any_selection_of_valid_timers_loads_in_order(
    picks: list[int], data: st.DataObject
) -> None:
    timers = []
    for number, pick in enumerate(picks):
        spec = dict(VALID_TIMERS[pick])
        # Any key order is the same timer.
        keys = data.draw(st.permutations(list(spec)))
        timers.append({"name": f"t{number}", **{k: spec[k] for k in keys}})
    defn = load_workflow_text(HEAD + _timers_text(timers))
    assert [t.name for t in defn.timers] == [t["name"] for t in timers]
    for loaded, written in zip(defn.timers, timers, strict=True):
        assert isinstance(loaded, TimerDef)
        assert loaded.kind == next(k for k in ("after", "before", "sla") if k in written)


def _misspell(key: str, how: int, where: int) -> str:
    where %= len(key)
    if how == 0 and len(key) > 4:  # drop a letter
        return key[:where] + key[where + 1 :]
    if how == 1 and where < len(key) - 1:  # swap two neighbours
        return key[:where] + key[where + 1] + key[where] + key[where + 2 :]
    return key[:where] + key[where] + key[where:]  # double a letter


# (the text of a document, the path of the mapping whose key is misspelled, its keys)
SECTIONS: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "timers",
        "  - {name: t, in_state: accepted, after: 2d, fire: escalate, "
        "working_time: true, reset_on: [accept], notify: {to: owner, subject: s}}\n",
        ("timers", 0),
    ),
    (
        "timers",
        "  - {name: t, before: 2d, of: promised_reply_date, notify: {to: owner, "
        "subject: s, body: b, channels: [inbox]}}\n",
        ("timers", 0, "notify"),
    ),
    (
        "timers",
        "  - {name: t, sla: {by: category, hours: {a: 1}, default: 2}, fire: close}\n",
        ("timers", 0, "sla"),
    ),
    (
        "automations",
        '  - {name: a, on: {transition: accept}, if: "true", '
        "do: [{set: {field: escalated, value: true}}]}\n",
        ("automations", 0),
    ),
    (
        "notify",
        "  - {name: n, on: {enter: accepted}, if: x, to: owner, subject: s, body: b, "
        "channels: inbox}\n",
        ("notify", 0),
    ),
]
TABLES = {
    ("timers", 0): TIMER_KEYS,
    ("timers", 0, "notify"): NOTIFY_KEYS,
    ("timers", 0, "sla"): SLA_KEYS,
    ("automations", 0): AUTOMATION_KEYS,
    ("notify", 0): NOTIFY_SHORTHAND_KEYS,
}


@settings(max_examples=120, deadline=None)
@given(
    section=st.integers(0, len(SECTIONS) - 1),
    pick=st.integers(0, 20),
    how=st.integers(0, 2),
    where=st.integers(0, 20),
)
def test_a_misspelled_key_is_an_error_that_suggests_the_key(
    section: int, pick: int, how: int, where: int
) -> None:
    key_name, entry, target = SECTIONS[section]
    table = TABLES[target]
    data = read_yaml_text(entry).data[0]
    for part in target[2:]:
        data = data[part]
    present = [k for k in data if len(k) >= 4]
    key = present[pick % len(present)]
    wrong = _misspell(key, how, where)
    if wrong in table:
        return
    changed = re.sub(rf"([{{ ]){key}:", rf"\g<1>{wrong}:", entry, count=1)
    assert changed != entry
    text = HEAD + f"{key_name}:\n" + changed
    errors = collect_errors(text)
    unknown = [e for e in errors if e.reason.startswith(f"unknown key {wrong!r}")]
    assert len(unknown) == 1, [e.render() for e in errors]
    assert key in unknown[0].suggestions, unknown[0].render()
    assert unknown[0].line == text.count("\n")  # the entry is the last line
    assert unknown[0].path == ".".join(
        [f"{target[0]}[{target[1]}]", *[str(p) for p in target[2:]], wrong]
    )


def test_the_automation_model_keeps_the_file_order() -> None:
    defn = load_workflow_text(BASE)
    assert all(isinstance(a, AutomationDef) for a in defn.automations)
    lines = [a.pos.line for a in defn.automations]
    assert lines == sorted(lines)


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("owner", "owner"),
        ("managers", "managers"),
        (" role: quality ", "role:quality"),
        ("user:emp-0042", "user:emp-0042"),
        ("unit:/", "unit:"),
        ("unit:/sales/east/", "unit:sales/east"),
    ],
)
def test_recipients_are_stored_in_one_spelling(written: str, stored: str) -> None:
    text = HEAD + f'notify:\n  - {{on: {{enter: closed}}, to: "{written}", subject: s}}\n'
    notify = load_workflow_text(text).automations[0].actions[0].notify
    assert notify is not None and notify.to == (stored,)


@pytest.mark.parametrize(
    ("written", "reason", "suggestions"),
    [
        ("role", "'role' needs a name after ':'", ()),
        ("managr", "unknown recipient 'managr'", ("manager", "managers")),
        ("usr:bob", "unknown recipient 'usr:bob'", ("user:bob",)),
        ("user:a b", "a user id has no spaces or '/'", ()),
        ("role:Quality", "invalid role 'Quality'", ()),
    ],
)
def test_bad_recipients_point_at_the_recipient(
    written: str, reason: str, suggestions: tuple[str, ...]
) -> None:
    text = HEAD + f'notify:\n  - {{on: {{enter: closed}}, to: ["{written}"], subject: s}}\n'
    errors = collect_errors(text)
    assert len(errors) == 1, [e.render() for e in errors]
    assert reason in errors[0].reason
    assert errors[0].suggestions == suggestions
    assert errors[0].path == "notify[0].to[0]"
    line, column = _where(text, f'["{written}"]')
    assert (errors[0].line, errors[0].column) == (line, column + 2)  # inside the quotes
