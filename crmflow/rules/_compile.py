"""Compile a typed ``when`` condition into a durable_rules JSON condition.

The compiled condition reads one message shaped ``{"v": facts, "x": extras}``:

* ``v.<field>`` and ``v.<namespace>.<attribute>`` hold the facts the condition reads.
  Numbers (int and decimal alike) are posted as exact integers scaled by ``10**SCALE``;
  dates as ordinal days, datetimes as microseconds since the epoch (UTC).
* ``x.d<i>`` hold *derived* values computed by the shared Python evaluator: function calls,
  string concatenation and membership in a list-valued fact. durable_rules has no functions,
  so their results are posted as values and the logic around them stays in durable.
* ``x.zero`` = 0 and ``x.one`` = 1 serve comparisons with no fact on either side
  (``a + b > c + d`` becomes ``0 > (c + d) - (a + b)``) and the constants True/False.

The null rule is compiled explicitly (durable's own handling of null differs from ours): every
comparison carries its guards, and negation is pushed down to the atoms (durable has no
general ``not``).

Not compiled (the rule is decided by the Python evaluator; see docs/rules.md): ``/`` anywhere
(durable divides integers by truncation), ``*`` unless one side is an integer constant (scaled
x scaled would need rescaling), literals with more than ``SCALE`` decimal places, and
conditions whose disjunctive form has more than ``MAX_BRANCHES`` branches.
"""

from __future__ import annotations

import datetime as _dt
import decimal
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from json.encoder import encode_basestring as _quote
from typing import Any

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
    walk,
)
from ._evaluate import _NO_VALUES, Env, compare, evaluate

__all__ = ["LIMIT", "SCALE", "DurablePlan", "NotCompilable", "encode", "plan_condition"]

#: Decimal places kept exactly in durable: values are posted as integers x 10**SCALE.
SCALE = 4
_FACTOR = 10**SCALE
#: durable numbers are C doubles: integers are exact strictly below 2**53.
LIMIT = 2**53
#: Largest disjunctive-normal-form size sent to durable (its rete expands ``$or``).
MAX_BRANCHES = 64

_OPS = {"==": "$eq", "!=": "$neq", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_INVERSE = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_EPOCH = _dt.datetime(1970, 1, 1)


class NotCompilable(Exception):
    """The condition cannot be decided exactly by durable; the reason says why."""


class Inexact(Exception):
    """A value cannot be posted to durable exactly."""


# Formulas: True / False / ("atom", json) / ("and", [...]) / ("or", [...]).
Formula = Any


def _and(*parts: Formula) -> Formula:
    out: list[Formula] = []
    for p in parts:
        if p is False:
            return False
        if p is True:
            continue
        out.extend(p[1] if p[0] == "and" else [p])
    if not out:
        return True
    return out[0] if len(out) == 1 else ("and", out)


def _or(*parts: Formula) -> Formula:
    out: list[Formula] = []
    for p in parts:
        if p is True:
            return True
        if p is False:
            continue
        out.extend(p[1] if p[0] == "or" else [p])
    if not out:
        return False
    return out[0] if len(out) == 1 else ("or", out)


def _branches(f: Formula) -> int:
    if f is True or f is False or f[0] == "atom":
        return 1
    if f[0] == "or":
        return sum(_branches(p) for p in f[1])
    n = 1
    for p in f[1]:
        n *= _branches(p)
    return n


def _to_json(f: Formula) -> dict[str, Any]:
    if f is True:
        return {"x.one": 1}
    if f is False:
        return {"x.one": 0}
    if f[0] == "atom":
        atom: dict[str, Any] = f[1]
        return atom
    return {"$" + f[0]: [_to_json(p) for p in f[1]]}


def encode(typ: str, value: Any) -> Any:
    """Encode one normalised value for a durable message; raises Inexact when impossible."""
    if value is None or typ == "bool":
        return value
    if typ in ("int", "decimal"):
        if type(value) is int:
            return _scaled_int(value)
        return scaled(value if type(value) is Decimal else Decimal(value))
    if typ == "str":
        if "\x00" in value:
            raise Inexact("NUL character in string")  # C strings end at NUL
        return value
    if typ == "date":
        return value.toordinal()
    if typ == "datetime":
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise Inexact(f"type {typ} is not posted")


#: Above this adjusted exponent a decimal scaled by 10**SCALE cannot be below LIMIT.
_MAX_ADJUSTED = len(str(LIMIT)) - SCALE
#: Wide enough for every value that can be posted, so that scaling one never rounds; a value
#: that would need rounding has more than SCALE places (or too many digits) and is refused.
_SCALING = decimal.Context(
    prec=SCALE + _MAX_ADJUSTED + 1,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.Inexact],
)


def scaled(value: Decimal) -> int:
    """``value`` x 10**SCALE as an exact int; raises Inexact when that is impossible.

    The work is bounded by the value's own digits: whatever its exponent, no large power of
    ten is built (``1E-999999999`` is refused at once, not after computing 10**999999999).
    """
    if not value.is_finite():
        raise Inexact(f"{value} is not a finite number")
    if value and value.adjusted() > _MAX_ADJUSTED:
        raise Inexact(f"{value} is too large")
    try:
        result = value.scaleb(SCALE, context=_SCALING)
    except decimal.Inexact:
        raise Inexact(f"{value} has more than {SCALE} decimal places") from None
    as_int = int(result)
    if result != as_int:
        raise Inexact(f"{value} has more than {SCALE} decimal places")
    if -LIMIT < as_int < LIMIT:
        return as_int
    raise Inexact(f"{value} is too large")


def _scaled_int(value: Any) -> Any:
    if type(value) is not int:
        return encode("int", value)
    as_int = value * _FACTOR
    if -LIMIT < as_int < LIMIT:
        return as_int
    # Not the value itself: Python refuses to write out ints of more than 4300 digits.
    raise Inexact(f"an integer of {value.bit_length()} bits is too large")


def _scaled_decimal(value: Any) -> Any:
    if type(value) is not Decimal:
        return encode("decimal", value)
    return scaled(value)


def _encoder(typ: str) -> Callable[[Any], Any]:
    """A function with the same answers as ``encode(typ, value)`` for normalised values."""
    if typ == "int":
        return _scaled_int
    if typ == "decimal":
        return _scaled_decimal
    return lambda value: encode(typ, value)


def _json_scalar(value: Any) -> str:
    """JSON text of one encoded value (None, bool, int or str)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    return _quote(value)


# One value of the message: (field name or namespace, attribute or "", the node when a Python
# evaluation computes it, encoder, numeric).
_Read = tuple[str, str, Expr | None, Callable[[Any], Any], bool]


@dataclass(frozen=True)
class DurablePlan:
    """How one rule's condition is decided in durable.

    Attributes:
        condition: the durable JSON condition (for the ``"m"`` event).
        paths: message path → (IR node reading it, type); facts the message must carry.
        derived: message path → node computed by the Python evaluator.
        growth: bound on how many leaf magnitudes an intermediate numeric value can sum.
        literal_max: largest scaled numeric literal in the condition.

    """

    condition: dict[str, Any]
    paths: dict[str, tuple[Expr, str]]
    derived: dict[str, Expr]
    growth: int
    literal_max: int
    #: What the message carries, in the order of the slots of ``_layout``.
    _reads: tuple[_Read, ...] = field(init=False, repr=False, compare=False)
    #: The message text with ``%s`` for the message id and then each value.
    _layout: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every message has the same shape: lay its text out once, fill in values per post.
        values: dict[str, Any] = {}
        reads: list[_Read] = []
        for path, (node, typ) in self.paths.items():
            parts = path.split(".")[1:]
            target = values
            for key in parts[:-1]:
                target = target.setdefault(key, {})
            target[parts[-1]] = _Slot(len(reads))
            ns, attr = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
            evaluated = node if not isinstance(node, Name | Attr) else None
            reads.append((ns, attr, evaluated, _encoder(typ), typ in ("int", "decimal")))
        extras: dict[str, Any] = {"zero": 0, "one": 1}
        for path, node in self.derived.items():
            extras[path.split(".", 1)[1]] = _Slot(len(reads))
            reads.append(("", "", node, _encoder(node.typ), node.typ in ("int", "decimal")))
        order: list[int] = []
        layout = _layout_text({"sid": _SID, "id": _MID, "v": values, "x": extras}, order)
        object.__setattr__(self, "_reads", tuple(reads[i] for i in order))
        object.__setattr__(self, "_layout", layout)

    def text(self, env: Env, sid: str, mid: str) -> str:
        """The JSON text of the message to post; raises Inexact when durable cannot decide.

        ``sid`` and ``mid`` are the session and message ids (plain ASCII, no quotes).
        """
        texts: list[str] = [sid, mid]
        biggest = self.literal_max
        fields = env.fields
        namespaces = env.namespaces
        for ns, attr, node, encoder, numeric in self._reads:
            if node is not None:
                value = evaluate(node, env)
            elif ns:
                value = namespaces.get(ns, _NO_VALUES).get(attr)
            else:
                value = fields.get(attr)
            encoded = encoder(value)
            if encoded is None:
                texts.append("null")
                continue
            if numeric:
                magnitude = -encoded if encoded < 0 else encoded
                if magnitude > biggest:
                    biggest = magnitude
                texts.append(str(encoded))
            else:
                texts.append(_json_scalar(encoded))
        if biggest * self.growth >= LIMIT:
            raise Inexact("intermediate values could exceed 2**53")
        return self._layout % tuple(texts)


class _Slot(int):
    """A placeholder in the message layout (see ``_layout_text``)."""


_SID = _Slot(-2)
_MID = _Slot(-1)


def _layout_text(message: dict[str, Any], order: list[int]) -> str:
    """The message as JSON text with ``%s`` where each placeholder stands.

    The session and message ids (negative slots) must come first; ``order`` receives the
    other slots in the order the text holds them.
    """

    def text(value: Any) -> str:
        if isinstance(value, _Slot):
            if value >= 0:
                order.append(value)
                return "%s"
            return '"%s"'
        if isinstance(value, dict):
            items = ", ".join(
                f"{_quote(k).replace('%', '%%')}: {text(v)}" for k, v in value.items()
            )
            return "{" + items + "}"
        return _json_scalar(value)

    return text(message)


class _Planner:
    def __init__(self) -> None:
        self.paths: dict[str, tuple[Expr, str]] = {}
        self.derived: dict[str, Expr] = {}
        self.derived_ids: dict[Expr, str] = {}
        self.growth = 1
        self.literal_max = 0

    # -- values -------------------------------------------------------------------------
    def is_derived(self, node: Expr) -> bool:
        if isinstance(node, Call):
            return True
        if isinstance(node, BinOp) and node.typ == "str":
            return True
        return isinstance(node, Member) and not isinstance(node.haystack, ListLit)

    def path_of(self, node: Expr) -> str | None:
        if isinstance(node, Name):
            path = f"v.{node.id}"
        elif isinstance(node, Attr):
            path = f"v.{node.ns}.{node.attr}"
        elif self.is_derived(node):
            if node not in self.derived_ids:
                path = f"x.d{len(self.derived_ids)}"
                self.derived_ids[node] = path
                self.derived[path] = node
            return self.derived_ids[node]
        else:
            return None
        self.paths[path] = (node, node.typ)
        return path

    def leaf_paths(self, node: Expr) -> list[str]:
        """Paths whose null-ness makes ``node`` null (null propagates through arithmetic)."""
        direct = self.path_of(node)
        if direct is not None:
            return [direct]
        if isinstance(node, Unary):
            return self.leaf_paths(node.operand)
        if isinstance(node, BinOp):
            return self.leaf_paths(node.left) + self.leaf_paths(node.right)
        return []

    def folded(self, node: Expr) -> Const | None:
        """Return the constant value of a subtree that reads nothing, else None."""
        if isinstance(node, Const):
            return node
        if any(isinstance(n, Name | Attr | Call) for n in walk(node)):
            return None
        empty = Env({}, {}, {}, None)
        return Const(value=evaluate(node, empty), typ=node.typ)

    def literal(self, const: Const) -> Any:
        try:
            encoded = encode(const.typ, const.value)
        except Inexact as exc:
            raise NotCompilable(f"literal {const.value}: {exc}") from None
        if const.typ in ("int", "decimal") and encoded is not None:
            self.literal_max = max(self.literal_max, abs(encoded))
        return encoded

    def numeric(self, node: Expr) -> tuple[Any, int]:
        """Return (durable JSON, growth) for a numeric expression."""
        const = self.folded(node)
        if const is not None:
            return self.literal(const), 1
        path = self.path_of(node)
        if path is not None:
            return {"$m": path}, 1
        if isinstance(node, Unary):
            inner, g = self.numeric(node.operand)
            if node.op == "+":
                return inner, g
            return {"$mul": {"$l": -1, "$r": inner}}, g
        if isinstance(node, BinOp):
            if node.op in ("+", "-"):
                left, gl = self.numeric(node.left)
                right, gr = self.numeric(node.right)
                key = "$add" if node.op == "+" else "$sub"
                return {key: {"$l": left, "$r": right}}, gl + gr
            if node.op == "*":
                for factor, other in ((node.left, node.right), (node.right, node.left)):
                    k = self.folded(factor)
                    if k is None or k.value is None:
                        continue
                    kv = Decimal(k.value)
                    if kv != kv.to_integral_value() or abs(kv) >= LIMIT:
                        raise NotCompilable("multiplication by a non-integer constant")
                    inner, g = self.numeric(other)
                    return {"$mul": {"$l": int(kv), "$r": inner}}, g * max(abs(int(kv)), 1)
                raise NotCompilable("multiplication of two facts")
        raise NotCompilable(f"{type(node).__name__} in arithmetic")  # pragma: no cover

    def operand(self, node: Expr) -> tuple[str, Any, int]:
        """Classify an operand as ("path", path, 1), ("const", Const, 1) or ("expr", json, g)."""
        const = self.folded(node)
        if const is not None:
            return "const", const, 1
        path = self.path_of(node)
        if path is not None:
            return "path", path, 1
        json, g = self.numeric(node)
        return "expr", json, g

    def value_json(self, kind: str, payload: Any) -> Any:
        if kind == "path":
            return {"$m": payload}
        if kind == "const":
            return self.literal(payload)
        return payload

    # -- comparisons --------------------------------------------------------------------
    def raw_compare(self, op: str, left: Expr, right: Expr) -> Formula:
        """Build the bare comparison; it is valid only when neither side is null."""
        lk, lp, lg = self.operand(left)
        rk, rp, rg = self.operand(right)
        self.growth = max(self.growth, lg + rg)
        if lk == "const" and rk == "const":
            return compare(op, lp.value, rp.value)
        if lk == "path":
            rhs = self.value_json(rk, rp)
            return ("atom", {lp: rhs} if op == "==" else {_OPS[op]: {lp: rhs}})
        if rk == "path":
            lhs = self.value_json(lk, lp)
            flipped = _FLIP[op]
            return ("atom", {rp: lhs} if flipped == "==" else {_OPS[flipped]: {rp: lhs}})
        # Neither side is a plain value: 0 op (right - left)  <=>  left op right.
        diff = {"$sub": {"$l": self.value_json(rk, rp), "$r": self.value_json(lk, lp)}}
        return ("atom", {_OPS[op]: {"x.zero": diff}})

    def null(self, node: Expr) -> Formula:
        const = self.folded(node)
        if const is not None:
            return const.value is None
        return _or(*[("atom", {p: None}) for p in self.leaf_paths(node)])

    def not_null(self, node: Expr) -> Formula:
        const = self.folded(node)
        if const is not None:
            return const.value is not None
        return _and(*[("atom", {"$neq": {p: None}}) for p in self.leaf_paths(node)])

    def equality(self, left: Expr, right: Expr, positive: bool) -> Formula:
        both_null = _and(self.null(left), self.null(right))
        both_set = _and(self.not_null(left), self.not_null(right))
        if both_set is False:
            cmp_eq: Formula = False
            cmp_ne: Formula = False
        else:
            cmp_eq = self.raw_compare("==", left, right)
            cmp_ne = self.raw_compare("!=", left, right)
        if positive:
            return _or(both_null, _and(both_set, cmp_eq))
        some_set = _or(self.not_null(left), self.not_null(right))
        some_null = _or(self.null(left), self.null(right))
        return _and(some_set, _or(some_null, cmp_ne))

    # -- conditions ---------------------------------------------------------------------
    def cond(self, node: Expr, positive: bool) -> Formula:
        if isinstance(node, BoolOp):
            parts = [self.cond(v, positive) for v in node.values]
            return _and(*parts) if (node.op == "and") == positive else _or(*parts)
        if isinstance(node, Not):
            return self.cond(node.operand, not positive)
        if isinstance(node, Compare):
            if node.op in ("==", "!="):
                return self.equality(node.left, node.right, positive == (node.op == "=="))
            if positive:
                return _and(
                    self.not_null(node.left),
                    self.not_null(node.right),
                    self.raw_compare(node.op, node.left, node.right),
                )
            return _or(
                self.null(node.left),
                self.null(node.right),
                self.raw_compare(_INVERSE[node.op], node.left, node.right),
            )
        if isinstance(node, Member) and isinstance(node.haystack, ListLit):
            want = positive != node.negated
            items = [Const(value=i.value, typ=i.typ) for i in node.haystack.items]
            if want:
                return _and(
                    self.not_null(node.needle),
                    _or(*[self.raw_compare("==", node.needle, i) for i in items]),
                )
            return _or(
                self.null(node.needle),
                _and(*[self.raw_compare("!=", node.needle, i) for i in items]),
            )
        const = self.folded(node)
        if const is not None:
            return (const.value is True) == positive
        path = self.path_of(node)
        if path is None:  # pragma: no cover - every bool-typed node is handled above
            raise NotCompilable(f"{type(node).__name__} as a condition")
        if positive:
            return ("atom", {path: True})
        return _or(("atom", {path: None}), ("atom", {path: False}))


def plan_condition(when: Expr) -> DurablePlan:
    """Compile a typed bool condition; raises NotCompilable when durable can't be exact."""
    for node in walk(when):
        if isinstance(node, BinOp) and node.op == "/":
            raise NotCompilable("division (durable truncates integer quotients)")
    planner = _Planner()
    formula = planner.cond(when, True)
    if _branches(formula) > MAX_BRANCHES:
        raise NotCompilable(f"condition expands to more than {MAX_BRANCHES} branches")
    # Only the paths the final formula mentions need posting.
    text = repr(formula)
    paths = {p: v for p, v in planner.paths.items() if repr(p) in text}
    derived = {p: v for p, v in planner.derived.items() if repr(p) in text}
    return DurablePlan(
        condition=_to_json(formula),
        paths=paths,
        derived=derived,
        growth=planner.growth,
        literal_max=planner.literal_max,
    )
