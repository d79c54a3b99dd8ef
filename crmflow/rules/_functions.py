"""Built-in functions of the rule language and the :class:`FunctionSpec` that declares them."""

from __future__ import annotations

import datetime as _dt
import decimal
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

__all__ = ["BUILTINS", "SAME_AS_FIRST", "FunctionSpec", "needs_now"]

#: ``returns`` value meaning "the type of the first argument" (used by ``abs``).
SAME_AS_FIRST = "same"
#: Largest number of decimal places ``round`` accepts.
MAX_ROUND_DIGITS = 12
_WIDE = decimal.Context(prec=400)


@dataclass(frozen=True)
class FunctionSpec:
    """A function callable from rule expressions.

    Attributes:
        name: the name used in expressions.
        params: one type per parameter (``"str"``, ``"int"``, ``"decimal"``, ``"bool"``,
            ``"date"``, ``"datetime"``, ``"list[str]"``); ``"a|b"`` accepts either; an ``int``
            argument is accepted for a ``decimal`` parameter.
        returns: the result type, or ``"same"`` for the type of the first argument.
        impl: the Python callable. It is called only with non-None arguments (a None argument
            makes the result None without calling it) and must not have side effects.
        needs_now: the function also receives the evaluation's reference time ``now`` (a naive
            UTC datetime) as its first argument.

    """

    name: str
    params: tuple[str, ...]
    returns: str
    impl: Callable[..., Any]
    needs_now: bool = False


def _as_utc_naive(value: _dt.datetime) -> _dt.datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(_dt.UTC).replace(tzinfo=None)


def _days_since(now: _dt.datetime, value: _dt.date) -> int:
    if isinstance(value, _dt.datetime):
        return (_as_utc_naive(now) - _as_utc_naive(value)).days
    return (_as_utc_naive(now).date() - value).days


def _len(value: str | list[str]) -> int:
    return len(value)


def _lower(value: str) -> str:
    return value.lower()


def _normalize_phone(value: str) -> str:
    return "".join(ch for ch in value if "0" <= ch <= "9")


def _abs(value: int | Decimal) -> int | Decimal:
    # Decimal.__abs__ rounds to the ambient context; copy_abs is exact.
    return value.copy_abs() if isinstance(value, Decimal) else abs(value)


def _round(value: Decimal, digits: int) -> Decimal | None:
    if not 0 <= digits <= MAX_ROUND_DIGITS:
        return None
    # quantize fails (InvalidOperation) when the result has more digits than the context
    # allows; a wide context keeps large amounts exact.
    try:
        return value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP, context=_WIDE)
    except decimal.InvalidOperation:
        return None


BUILTINS: dict[str, FunctionSpec] = {
    spec.name: spec
    for spec in (
        FunctionSpec("days_since", ("date|datetime",), "int", _days_since, needs_now=True),
        FunctionSpec("len", ("str|list[str]",), "int", _len),
        FunctionSpec("lower", ("str",), "str", _lower),
        FunctionSpec("normalize_phone", ("str",), "str", _normalize_phone),
        FunctionSpec("abs", ("int|decimal",), SAME_AS_FIRST, _abs),
        FunctionSpec("round", ("decimal", "int"), "decimal", _round),
    )
}


def needs_now(spec: FunctionSpec) -> bool:
    """Return whether ``spec`` is called with the reference time."""
    return spec.needs_now
