"""The JSON Schema (draft 2020-12) of a workflow document, for editors and CI.

The schema is generated from the loader's key tables (:data:`~crmflow.engine._loader.TOP_LEVEL_KEYS`
and friends), so the two cannot disagree on which keys exist or are required. The shipped file
``crmflow/schema/workflow.schema.json`` is the output of::

    python -m crmflow.engine._schema

and a test fails when it is out of date. The schema checks shape only; references between
states, rules and roles are the loader's job.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crmflow.engine._loader import (
    ANY_STATE,
    FIELD_KEYS,
    IDENTIFIER,
    RULE_KEYS,
    STATE_KEYS,
    TOP_LEVEL_KEYS,
    TRANSITION_KEYS,
)
from crmflow.engine._loader_tasks import (
    CHECKLIST_ITEM_KEYS,
    CHECKLIST_KEYS,
    COSTS_KEYS,
    GATE_KEYS,
    REASSIGNMENT_KEYS,
)
from crmflow.engine._loader_timers import (
    ANY_TRIGGER,
    AUTOMATION_ACTION_KEYS,
    AUTOMATION_KEYS,
    CALENDAR_KEYS,
    CREATE_TASK_KEYS,
    NOTIFY_KEYS,
    NOTIFY_SHORTHAND_KEYS,
    ON_KEYS,
    SET_KEYS,
    SLA_KEYS,
    START_TIMER_KEYS,
    TIMER_KEYS,
    UNIT_PATH,
)
from crmflow.engine._model import AUTOMATION_EVENTS, EFFECTS, FIELD_TYPES

__all__ = ["SCHEMA_ID", "build_schema", "load_schema", "render_schema", "schema_path"]

#: The ``$id`` of the schema.
SCHEMA_ID = "https://crmflow.invalid/schema/workflow.schema.json"

_REF = "#/$defs/"
_TEXT: dict[str, Any] = {"type": "string"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_NAMES: dict[str, Any] = {"$ref": _REF + "names"}

# One fragment per key of each loader table; build_schema refuses a table key without one.
_TOP: dict[str, Any] = {
    "workflow": {"$ref": _REF + "identifier"},
    "version": {"type": "integer", "minimum": 1, "default": 1},
    "title": _TEXT,
    "description": _TEXT,
    "roles": {
        "oneOf": [
            {"$ref": _REF + "identifier"},
            {"type": "array", "items": {"$ref": _REF + "identifier"}, "uniqueItems": True},
        ]
    },
    "start_roles": _NAMES,
    "fields": {"type": "object", "additionalProperties": {"$ref": _REF + "field"}},
    "facts": {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "additionalProperties": {"$ref": _REF + "field_type"},
        },
    },
    "states": {"type": "array", "minItems": 1, "items": {"$ref": _REF + "state"}},
    "transitions": {"type": "array", "items": {"$ref": _REF + "transition"}},
    "rules": {"type": "object", "additionalProperties": {"$ref": _REF + "rule"}},
    "checklists": {"type": "object", "additionalProperties": {"$ref": _REF + "checklist"}},
    "costs": {"$ref": _REF + "costs"},
    "reassignment": {"$ref": _REF + "reassignment"},
    "calendar": {"$ref": _REF + "calendar"},
    "timers": {"type": "array", "items": {"$ref": _REF + "timer"}},
    "automations": {"type": "array", "items": {"$ref": _REF + "automation"}},
    "notify": {"type": "array", "items": {"$ref": _REF + "notify_shorthand"}},
}
_DURATION: dict[str, Any] = {"type": "string", "pattern": r"^\s*\d+[smhdw](\s+\d+[smhdw])*\s*$"}
_CHECKLIST: dict[str, Any] = {
    "title": _TEXT,
    "description": _TEXT,
    "manager_roles": _NAMES,
    "items": {"type": "array", "minItems": 1, "items": {"$ref": _REF + "checklist_item"}},
}
_CHECKLIST_ITEM: dict[str, Any] = {
    "id": {"$ref": _REF + "identifier"},
    "title": {"type": "string"},
    "required": {**_BOOL, "default": True},
    "deferrable": {**_BOOL, "default": False},
    "role": {"$ref": _REF + "identifier"},
    "due": _DURATION,
    "depends_on": _NAMES,
    "result": {"$ref": _REF + "field_type"},
    "description": _TEXT,
}
_GATE: dict[str, Any] = {
    "checklist": {"$ref": _REF + "identifier"},
    "allow_deferred": {**_BOOL, "default": False},
}
_COSTS: dict[str, Any] = {
    "categories": {
        "oneOf": [
            {"type": "array", "minItems": 1, "items": {"$ref": _REF + "identifier"}},
            {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
        ]
    },
    "roles": _NAMES,
    "currency": _TEXT,
}
_REASSIGNMENT: dict[str, Any] = {"roles": _NAMES, "rules": _NAMES}
_STATE_REFS: dict[str, Any] = {
    "oneOf": [
        {"$ref": _REF + "state_ref"},
        {"type": "array", "minItems": 1, "items": {"$ref": _REF + "state_ref"}},
    ]
}
_TRIGGERS: dict[str, Any] = {
    "oneOf": [
        {"$ref": _REF + "identifier"},
        {"type": "array", "minItems": 1, "items": {"$ref": _REF + "identifier"}},
    ]
}
_HOURS: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
# The calendar's own reader checks the details (weekdays, ranges, dates); this is its shape.
_TEXTS: dict[str, Any] = {"oneOf": [_TEXT, {"type": "array", "items": _TEXT}]}
_CALENDAR: dict[str, Any] = {
    "calendar": {"$ref": _REF + "identifier"},
    "timezone": _TEXT,
    "hours": {"type": "object", "additionalProperties": _TEXTS},
    "holidays": {"type": "array", "items": _TEXT},
    "working_days": {"type": "object", "additionalProperties": _TEXTS},
}
_TIMER: dict[str, Any] = {
    "name": {"$ref": _REF + "identifier"},
    "in_state": _STATE_REFS,
    "after": _DURATION,
    "before": _DURATION,
    "of": {"$ref": _REF + "identifier"},
    "sla": {"$ref": _REF + "sla"},
    "working_time": {**_BOOL, "default": False},
    "fire": {"$ref": _REF + "identifier"},
    "notify": {"$ref": _REF + "notify"},
    "reset_on": _TRIGGERS,
    "cancel_on": _TRIGGERS,
}
_START_TIMER: dict[str, Any] = {k: v for k, v in _TIMER.items() if k != "in_state"}
# Exactly one kind; 'of' and 'before' go together; something happens when it is due.
_TIMER_RULES: dict[str, Any] = {
    "oneOf": [{"required": ["after"]}, {"required": ["before"]}, {"required": ["sla"]}],
    "anyOf": [{"required": ["fire"]}, {"required": ["notify"]}],
    "dependentRequired": {"before": ["of"], "of": ["before"]},
}
_SLA: dict[str, Any] = {
    "by": {"$ref": _REF + "identifier"},
    "hours": {"type": "object", "additionalProperties": _HOURS},
    "default": _HOURS,
}
_RECIPIENT: dict[str, Any] = {
    "type": "string",
    "pattern": (
        rf"^\s*(owner|manager|managers|role:\s*[a-z_][a-z0-9_]*|user:\s*[^\s/]+"
        rf"|unit:\s*/?{UNIT_PATH.pattern}/?)\s*$"
    ),
}
_NOTIFY: dict[str, Any] = {
    "to": {
        "oneOf": [
            {"$ref": _REF + "recipient"},
            {"type": "array", "minItems": 1, "items": {"$ref": _REF + "recipient"}},
        ]
    },
    "subject": {"type": "string", "minLength": 1},
    "body": _TEXT,
    "channels": _NAMES,
}
_ON: dict[str, Any] = {
    "transition": {
        "oneOf": [
            {"$ref": _REF + "trigger_ref"},
            {"type": "array", "minItems": 1, "items": {"$ref": _REF + "trigger_ref"}},
        ]
    },
    "enter": _STATE_REFS,
    "event": {
        "oneOf": [
            {"enum": list(AUTOMATION_EVENTS)},
            {"type": "array", "minItems": 1, "items": {"enum": list(AUTOMATION_EVENTS)}},
        ]
    },
}
_AUTOMATION: dict[str, Any] = {
    "name": {"$ref": _REF + "identifier"},
    "on": {"$ref": _REF + "on"},
    "if": {"type": "string", "minLength": 1},
    "do": {"type": "array", "minItems": 1, "items": {"$ref": _REF + "automation_action"}},
}
_AUTOMATION_ACTION: dict[str, Any] = {
    "notify": {"$ref": _REF + "notify"},
    "create_task": {"$ref": _REF + "create_task"},
    "set": {"$ref": _REF + "set"},
    "start_timer": {"$ref": _REF + "start_timer"},
}
_CREATE_TASK: dict[str, Any] = {k: v for k, v in _CHECKLIST_ITEM.items() if k != "depends_on"}
_SET: dict[str, Any] = {"field": {"$ref": _REF + "identifier"}, "value": {}}
_NOTIFY_SHORTHAND: dict[str, Any] = {
    "name": _AUTOMATION["name"],
    "on": _AUTOMATION["on"],
    "if": _AUTOMATION["if"],
    **_NOTIFY,
}
_STATE: dict[str, Any] = {
    "name": {"$ref": _REF + "identifier"},
    "initial": _BOOL,
    "final": _BOOL,
    "description": _TEXT,
    "checklists": _NAMES,
    "states": {"type": "array", "minItems": 1, "items": {"$ref": _REF + "state"}},
}
_TRANSITION: dict[str, Any] = {
    "trigger": {"$ref": _REF + "identifier"},
    "from": {
        "oneOf": [
            {"$ref": _REF + "state_ref"},
            {"type": "array", "minItems": 1, "items": {"$ref": _REF + "state_ref"}},
        ]
    },
    "to": {"$ref": _REF + "state_ref"},
    "roles": _NAMES,
    "rules": _NAMES,
    "writes": _NAMES,
    "requires": {
        "oneOf": [
            {"$ref": _REF + "gate"},
            {"type": "array", "minItems": 1, "items": {"$ref": _REF + "gate"}},
        ]
    },
    "actions": {
        "type": "array",
        "items": {
            "oneOf": [
                {"$ref": _REF + "identifier"},
                {
                    "type": "object",
                    "properties": {
                        "action": {"$ref": _REF + "identifier"},
                        "with": {"type": "object"},
                    },
                    "required": ["action"],
                    "additionalProperties": False,
                },
            ]
        },
    },
    "description": _TEXT,
}
_RULE: dict[str, Any] = {
    "when": {"type": "string", "minLength": 1},
    "effect": {"enum": list(EFFECTS), "default": "block"},
    "message": {"type": "string", "minLength": 1},
    "hint": _TEXT,
    "override_roles": _NAMES,
    "description": _TEXT,
}
_FIELD: dict[str, Any] = {
    "type": {"$ref": _REF + "field_type"},
    "required": _BOOL,
    "default": {"type": ["string", "number", "boolean", "null"]},
    "description": _TEXT,
}


def _object(table: Mapping[str, bool], fragments: Mapping[str, Any], what: str) -> dict[str, Any]:
    missing = set(table) - set(fragments)
    extra = set(fragments) - set(table)
    if missing or extra:
        raise AssertionError(f"schema fragments for {what} disagree with the loader: {missing=}")
    return {
        "type": "object",
        "properties": {key: fragments[key] for key in table},
        "required": [key for key, required in table.items() if required],
        "additionalProperties": False,
    }


def build_schema() -> dict[str, Any]:
    """Build the workflow document's JSON Schema from the loader's key tables."""
    identifier = {"type": "string", "pattern": f"^{IDENTIFIER.pattern}$"}
    state_path = f"^{IDENTIFIER.pattern}(\\.{IDENTIFIER.pattern})*$"
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "crmflow workflow",
        "description": "A crmflow workflow definition (see docs/yaml-reference.md).",
        **_object(TOP_LEVEL_KEYS, _TOP, "the workflow"),
        "$defs": {
            "identifier": identifier,
            "names": {
                "oneOf": [
                    {"$ref": _REF + "identifier"},
                    {"type": "array", "items": {"$ref": _REF + "identifier"}},
                ]
            },
            "field_type": {"enum": list(FIELD_TYPES)},
            "state_ref": {
                "type": "string",
                "anyOf": [{"pattern": state_path}, {"const": ANY_STATE}],
            },
            "state": {
                "oneOf": [
                    {"$ref": _REF + "identifier"},
                    _object(STATE_KEYS, _STATE, "a state"),
                ]
            },
            "transition": _object(TRANSITION_KEYS, _TRANSITION, "a transition"),
            "rule": _object(RULE_KEYS, _RULE, "a rule"),
            "checklist": _object(CHECKLIST_KEYS, _CHECKLIST, "a checklist"),
            "checklist_item": _object(CHECKLIST_ITEM_KEYS, _CHECKLIST_ITEM, "a checklist item"),
            "gate": _object(GATE_KEYS, _GATE, "a requirement"),
            "costs": _object(COSTS_KEYS, _COSTS, "costs"),
            "reassignment": _object(REASSIGNMENT_KEYS, _REASSIGNMENT, "reassignment"),
            "calendar": _object(CALENDAR_KEYS, _CALENDAR, "a calendar"),
            "trigger_ref": {
                "type": "string",
                "anyOf": [{"pattern": identifier["pattern"]}, {"const": ANY_TRIGGER}],
            },
            "recipient": _RECIPIENT,
            "timer": {**_object(TIMER_KEYS, _TIMER, "a timer"), **_TIMER_RULES},
            "start_timer": {
                **_object(START_TIMER_KEYS, _START_TIMER, "a started timer"),
                **_TIMER_RULES,
            },
            "sla": _object(SLA_KEYS, _SLA, "an SLA"),
            "notify": _object(NOTIFY_KEYS, _NOTIFY, "a notification"),
            "on": {
                "oneOf": [
                    {**_object(ON_KEYS, _ON, "'on'"), "minProperties": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {**_object(ON_KEYS, _ON, "'on'"), "minProperties": 1},
                    },
                ]
            },
            "automation": _object(AUTOMATION_KEYS, _AUTOMATION, "an automation"),
            "automation_action": {
                **_object(AUTOMATION_ACTION_KEYS, _AUTOMATION_ACTION, "an action"),
                "minProperties": 1,
                "maxProperties": 1,
            },
            "create_task": _object(CREATE_TASK_KEYS, _CREATE_TASK, "a task"),
            "set": _object(SET_KEYS, _SET, "'set'"),
            "notify_shorthand": _object(NOTIFY_SHORTHAND_KEYS, _NOTIFY_SHORTHAND, "a notification"),
            "field": {
                "oneOf": [
                    {"$ref": _REF + "field_type"},
                    _object(FIELD_KEYS, _FIELD, "a field"),
                ]
            },
        },
    }
    return schema


def schema_path() -> Path:
    """Path of the shipped schema file (package data next to the code)."""
    return Path(__file__).resolve().parent.parent / "schema" / "workflow.schema.json"


def load_schema() -> dict[str, Any]:
    """Read the shipped schema."""
    result: dict[str, Any] = json.loads(schema_path().read_text(encoding="utf-8"))
    return result


def render_schema() -> str:
    """Return the schema as the shipped file's text (2-space indent, trailing newline)."""
    return json.dumps(build_schema(), indent=2) + "\n"


if __name__ == "__main__":
    # Regenerate the shipped file after changing the loader's key tables.
    schema_path().write_text(render_schema(), encoding="utf-8")
    sys.stdout.write(f"wrote {schema_path()}\n")
