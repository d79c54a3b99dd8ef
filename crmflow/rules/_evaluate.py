"""The reference evaluator: walks the typed IR over normalised facts with exact Decimals.

It is the python back end, the renderer of message templates, and what the durable back end
uses for function results and for the rules it cannot decide exactly.
"""

from __future__ import annotations

import datetime as _dt
import decimal
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from crmflow._errors import CrmflowError, InvalidData, MissingFact

from ._ast import (
    Attr,
    BinOp,
    BoolOp,
    Call,
    Compare,
    Const,
    Expr,
    ListLit,
    Member,
    Name,
    Not,
    Unary,
)
from ._checker import NOW_FACT, Schema
from ._functions import FunctionSpec

__all__ = [
    "Env",
    "FactPlan",
    "RuleEvaluationError",
    "evaluate",
    "fact_plan",
    "normalize_facts",
    "read_facts",
    "truth",
]

#: Precision for + - *: wide enough that sums of facts and literals (≤ 30 digits) stay exact.
_EXACT = decimal.Context(prec=80, traps=[decimal.InvalidOperation, decimal.Overflow])
#: Division is the one inexact operation; its quotient is rounded to 28 significant digits.
_DIVISION = decimal.Context(prec=28, traps=[decimal.InvalidOperation, decimal.Overflow])


class RuleEvaluationError(CrmflowError):
    """A rule could not be evaluated: a function raised, or the rules back end failed.

    Attributes:
        rule: the rule's name ("" when not tied to one rule).

    """

    def __init__(self, message: str, *, rule: str = "") -> None:
        self.rule = rule
        super().__init__(message)


@dataclass(slots=True)
class Env:
    """Normalised facts plus what evaluation needs besides them."""

    fields: Mapping[str, Any]
    namespaces: Mapping[str, Mapping[str, Any]]
    functions: Mapping[str, FunctionSpec]
    now: _dt.datetime | None
    rule: str = ""
    #: Where date-times are shown when a template renders them (``None``: UTC).
    zone: _dt.tzinfo | None = None


def _utc_naive(value: _dt.datetime) -> _dt.datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(_dt.UTC).replace(tzinfo=None)


def _normalize(where: str, typ: str, value: Any) -> Any:
    """Coerce one fact value to its declared type (None stays None)."""
    if value is None:
        return None

    def bad() -> InvalidData:
        # Built only on failure: formatting the message costs more than the check itself.
        return InvalidData(where, f"expected {typ}, got {type(value).__name__} {value!r}")

    if typ == "str":
        if not isinstance(value, str):
            raise bad()
        return value
    if typ == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if typ == "int":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
            return int(value)
        raise bad()
    if typ == "decimal":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return Decimal(value)
        if isinstance(value, float | str):
            # Floats go through their shortest repr so 0.1 becomes Decimal("0.1"), not the
            # binary expansion; pass Decimal to avoid the question entirely.
            try:
                value = Decimal(str(value).strip())
            except decimal.InvalidOperation:
                raise bad() from None
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise InvalidData(where, f"decimal value must be finite, got {value}")
            return value
        raise bad()
    if typ == "date":
        if isinstance(value, str):
            try:
                return _dt.date.fromisoformat(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
            return value
        raise bad()
    if typ == "datetime":
        if isinstance(value, str):
            try:
                value = _dt.datetime.fromisoformat(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, _dt.datetime):
            return _utc_naive(value)
        raise bad()
    if typ == "list[str]":
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad()
    raise bad()  # pragma: no cover - Schema rejects unknown types


#: Declared types whose values pass unchanged when they already have this exact Python type.
_PASS_TYPES: dict[str, type] = {
    "str": str,
    "bool": bool,
    "int": int,
    "decimal": Decimal,
    "date": _dt.date,
}


@dataclass(frozen=True)
class FactPlan:
    """What a rule reads from the facts, worked out once per rule instead of once per call.

    Attributes:
        reads: ``(namespace, attribute, declared type, label for errors, pass type)`` in
            sorted order ("" namespace for fields); a value of exactly the pass type is
            taken as it is (a Decimal only when finite).
        now: whether the rule reads the reference time (a function needs it).

    """

    reads: tuple[tuple[str, str, str, str, type | None], ...]
    now: bool


def fact_plan(schema: Schema, needs: frozenset[tuple[str, str]]) -> FactPlan:
    """Prepare :func:`read_facts` for a rule of ``schema`` that reads ``needs``."""
    reads: list[tuple[str, str, str, str, type | None]] = []
    for ns, attr in sorted(needs):
        if ns == "":
            if attr == NOW_FACT and attr not in schema.fields:
                continue
            typ = schema.fields[attr]
            reads.append((ns, attr, typ, attr, _PASS_TYPES.get(typ)))
        else:
            typ = schema.namespaces[ns][attr]
            reads.append((ns, attr, typ, f"{ns}.{attr}", _PASS_TYPES.get(typ)))
    return FactPlan(tuple(reads), ("", NOW_FACT) in needs)


def normalize_facts(
    facts: Mapping[str, Any], schema: Schema, needs: frozenset[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], _dt.datetime | None]:
    """Return (fields, namespaces, now) holding exactly what ``needs`` lists, coerced.

    A missing field, namespace or attribute reads as None; the engine decides beforehand
    whether a missing fact is an error (``MissingFact``).
    """
    return read_facts(facts, replace(fact_plan(schema, needs), now=True))


def read_facts(
    facts: Mapping[str, Any], plan: FactPlan
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], _dt.datetime | None]:
    """Like :func:`normalize_facts`, from a prepared plan; ``now`` is None unless it is read.

    A ``now`` of the wrong type is refused either way.
    """
    fields: dict[str, Any] = {}
    namespaces: dict[str, dict[str, Any]] = {}
    for ns, attr, typ, label, exact in plan.reads:
        if ns == "":
            value = facts.get(attr)
        else:
            raw = facts.get(ns)
            value = None
            if type(raw) is dict or isinstance(raw, Mapping):
                value = raw.get(attr)
            elif raw is not None:
                value = getattr(raw, attr, None)
        kind = type(value)
        if not (value is None or (kind is exact and (kind is not Decimal or value.is_finite()))):
            value = _normalize(label, typ, value)
        if ns == "":
            fields[attr] = value
        else:
            target = namespaces.get(ns)
            if target is None:
                target = namespaces[ns] = {}
            target[attr] = value
    now_raw = facts.get(NOW_FACT)
    now: _dt.datetime | None = None
    if isinstance(now_raw, _dt.datetime):
        if plan.now:
            now = _utc_naive(now_raw)
    elif isinstance(now_raw, _dt.date):
        if plan.now:
            now = _dt.datetime(now_raw.year, now_raw.month, now_raw.day)
    elif now_raw is not None:
        raise InvalidData(NOW_FACT, f"expected datetime, got {type(now_raw).__name__}")
    return fields, namespaces, now


def truth(node: Expr, env: Env) -> bool:
    """Evaluate a bool-typed expression; a None value counts as False."""
    return evaluate(node, env) is True


#: What a namespace absent from the facts reads as (never written to).
_NO_VALUES: Mapping[str, Any] = {}


def evaluate(node: Expr, env: Env) -> Any:
    """Evaluate ``node``; None is the null value and propagates through arithmetic and calls."""
    # Leaves first, then the operators rules use most: every rule evaluation walks this chain
    # once per node.
    if isinstance(node, Name):
        return env.fields.get(node.id)
    if isinstance(node, Attr):
        return env.namespaces.get(node.ns, _NO_VALUES).get(node.attr)
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Compare):
        return compare(node.op, evaluate(node.left, env), evaluate(node.right, env))
    if isinstance(node, BinOp):
        return arithmetic(node.op, evaluate(node.left, env), evaluate(node.right, env))
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(truth(v, env) for v in node.values)
        return any(truth(v, env) for v in node.values)
    if isinstance(node, Not):
        return not truth(node.operand, env)
    if isinstance(node, Member):
        needle = evaluate(node.needle, env)
        hay = evaluate(node.haystack, env)
        found = needle is not None and hay is not None and needle in hay
        return found != node.negated
    if isinstance(node, Unary):
        value = evaluate(node.operand, env)
        if value is None:
            return None
        if node.op == "+":
            return value
        # Decimal's unary minus rounds to the ambient context; the exact context does not.
        return _EXACT.minus(value) if isinstance(value, Decimal) else -value
    if isinstance(node, ListLit):
        return [item.value for item in node.items]
    if isinstance(node, Call):
        return call(node, env)
    raise TypeError(f"not an expression node: {node!r}")  # pragma: no cover


def compare(op: str, left: Any, right: Any) -> bool:
    """Compare two values under the null rule: ``==``/``!=`` see None, ordering is False."""
    if op == "==":
        return (left is None and right is None) or (
            left is not None and right is not None and left == right
        )
    if op == "!=":
        return not compare("==", left, right)
    if left is None or right is None:
        return False
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def arithmetic(op: str, left: Any, right: Any) -> Any:
    """Apply ``+ - * /``; None in → None out; division by zero → None."""
    if left is None or right is None:
        return None
    if isinstance(left, str):
        return left + right
    if op == "/":
        if right == 0:
            return None
        return _DIVISION.divide(Decimal(left), Decimal(right))
    if isinstance(left, int) and isinstance(right, int):
        return left + right if op == "+" else left - right if op == "-" else left * right
    a, b = Decimal(left), Decimal(right)
    if op == "+":
        return _EXACT.add(a, b)
    if op == "-":
        return _EXACT.subtract(a, b)
    return _EXACT.multiply(a, b)


def call(node: Call, env: Env) -> Any:
    """Call a registered function; any None argument makes the result None."""
    spec = env.functions[node.func]
    args = [evaluate(a, env) for a in node.args]
    if any(a is None for a in args):
        return None
    for i, param in enumerate(spec.params):
        kinds = param.split("|")
        # An int passed for a decimal-only parameter arrives as the Decimal it stands for.
        if "decimal" in kinds and "int" not in kinds and isinstance(args[i], int):
            args[i] = Decimal(args[i])
    if spec.needs_now:
        if env.now is None:
            raise MissingFact("", NOW_FACT, env.rule)
        args.insert(0, env.now)
    try:
        result = spec.impl(*args)
    except CrmflowError:
        raise
    except Exception as exc:
        raise RuleEvaluationError(
            f"function {node.func}() failed in rule {env.rule!r}: {exc!r}", rule=env.rule
        ) from exc
    return _coerce_result(node, result, env.rule)


def _coerce_result(node: Call, result: Any, rule: str) -> Any:
    if result is None:
        return None
    try:
        return _normalize(f"{node.func}()", node.typ, result)
    except InvalidData as exc:
        raise RuleEvaluationError(
            f"function {node.func}() returned a wrong type in rule {rule!r}: {exc}", rule=rule
        ) from None
