"""Instance data and host facts: checked against their declared types and made exact."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from crmflow._errors import InvalidData
from crmflow._suggest import suggest
from crmflow.engine._model import FieldDef

__all__ = ["coerce_value", "merge_data", "validate_new_data"]

#: Declared types whose values are returned as they are when of exactly this Python type
#: (a Decimal only when finite); the checks below would only confirm them.
_UNCHANGED: dict[str, type] = {
    "decimal": Decimal,
    "int": int,
    "bool": bool,
    "str": str,
    "date": date,
}


def coerce_value(name: str, type_name: str, value: Any) -> Any:
    """Convert ``value`` to the Python type of ``type_name`` or raise :class:`InvalidData`.

    Money stays exact: a float is converted through its shortest decimal representation
    (``0.1`` becomes ``Decimal("0.1")``), never through its binary value.
    """
    if value is None:
        return None
    kind = type(value)
    if kind is _UNCHANGED.get(type_name) and (kind is not Decimal or value.is_finite()):
        return value
    try:
        if type_name == "decimal":
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, Decimal):
                result = value
            elif isinstance(value, float):
                result = Decimal(repr(value))
            elif isinstance(value, int | str):
                result = Decimal(value)
            else:
                raise TypeError
            if not result.is_finite():
                raise ValueError
            return result
        if type_name == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                    return int(value)
                raise TypeError
            return value
        if type_name == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if type_name == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if type_name == "datetime":
            moment = datetime.fromisoformat(value) if isinstance(value, str) else value
            if not isinstance(moment, datetime):
                raise TypeError
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        if type_name == "date":
            if isinstance(value, datetime):
                raise TypeError
            day = date.fromisoformat(value) if isinstance(value, str) else value
            if not isinstance(day, date):
                raise TypeError
            return day
        if type_name == "list[str]":
            if not isinstance(value, list | tuple | set | frozenset) or not all(
                isinstance(v, str) for v in value
            ):
                raise TypeError
            return sorted(value) if isinstance(value, set | frozenset) else list(value)
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise InvalidData(
            name, f"expected {type_name}, got {type(value).__name__} {value!r}"
        ) from exc
    raise InvalidData(name, f"unknown type {type_name!r}")


def _check_known(fields: Mapping[str, FieldDef], data: Mapping[str, Any]) -> None:
    for name in data:
        if name not in fields:
            raise InvalidData(name, "is not a declared field", suggest(name, list(fields)))


def validate_new_data(fields: Mapping[str, FieldDef], data: Mapping[str, Any]) -> dict[str, Any]:
    """Data for a new instance: declared fields only, typed, defaults filled, required present."""
    _check_known(fields, data)
    result: dict[str, Any] = {}
    for name, spec in fields.items():
        if name in data:
            result[name] = coerce_value(name, spec.type, data[name])
        elif spec.default is not None:
            result[name] = coerce_value(name, spec.type, spec.default)
        else:
            result[name] = None
        if spec.required and result[name] is None:
            raise InvalidData(name, "is required")
    return result


def merge_data(
    fields: Mapping[str, FieldDef],
    current: Mapping[str, Any],
    update: Mapping[str, Any] | None,
    *,
    trigger: str,
    writes: tuple[str, ...],
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Apply ``update`` to ``current``; return the new data and ``{field: [old, new]}``.

    Only the fields the transition ``writes`` may change: otherwise any caller allowed to fire
    a transition could also rewrite the data its guards read (the warehouse marking its own
    prepayment as received).
    """
    merged = dict(current)
    changes: dict[str, list[Any]] = {}
    if not update:
        return merged, changes
    _check_known(fields, update)
    for name in update:
        if name not in writes:
            allowed = ", ".join(writes) or "no fields"
            raise InvalidData(
                name,
                f"trigger {trigger!r} may not change it (it writes {allowed}); list it under "
                "the transition's 'writes' in the workflow to allow it",
            )
    for name, value in update.items():
        new = coerce_value(name, fields[name].type, value)
        if fields[name].required and new is None:
            raise InvalidData(name, "is required")
        old = merged.get(name)
        # Decimal("0.1") == Decimal("0.10"), but the stored text differs: record the change.
        if new != old or type(new) is not type(old) or str(new) != str(old):
            changes[name] = [old, new]
        merged[name] = new
    return merged, changes
