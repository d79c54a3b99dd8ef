"""Schemas and the type checker: resolves names, checks types, annotates the IR."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from crmflow._errors import DefinitionError, ExpressionError

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
    Pos,
    Unary,
)
from ._functions import BUILTINS, SAME_AS_FIRST, FunctionSpec

__all__ = ["NOW_FACT", "TYPES", "Schema", "check"]

#: The types a field or namespace attribute may be declared with.
TYPES = frozenset({"str", "int", "decimal", "bool", "date", "datetime", "list[str]"})
#: The fact key holding the reference time for ``days_since``.
NOW_FACT = "now"
#: Message keys the durable back end uses for its own purposes.
RESERVED_PREFIX = "_"

_NUMERIC = frozenset({"int", "decimal"})
_ORDERED = frozenset({"int", "decimal", "str", "date", "datetime"})


@dataclass(frozen=True, eq=False)
class Schema:
    """What an expression may read: fields, fact namespaces and extra functions.

    Attributes:
        fields: field name → type, read as a plain name (``amount``).
        namespaces: namespace → attribute → type, read as ``customer.credit_limit``.
        functions: extra functions by name; the built-ins are always available (a function
            given here with a built-in's name replaces it).

    """

    fields: Mapping[str, str] = field(default_factory=dict)
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, typ in self.fields.items():
            _check_decl(f"field {name!r}", name, typ)
        for ns, attrs in self.namespaces.items():
            _check_name(f"namespace {ns!r}", ns)
            if ns in self.fields:
                raise DefinitionError(f"{ns!r} is both a field and a fact namespace", path=ns)
            for attr, typ in attrs.items():
                _check_decl(f"attribute {ns}.{attr}", attr, typ)
        for name, spec in self.functions.items():
            _check_name(f"function {name!r}", name)
            if spec.name != name:
                raise DefinitionError(
                    f"function registered as {name!r} is named {spec.name!r}", path=name
                )
            for typ in spec.params:
                for part in typ.split("|"):
                    if part not in TYPES:
                        raise DefinitionError(
                            f"function {name!r}: unknown parameter type {part!r}", path=name
                        )
            if spec.returns not in TYPES and spec.returns != SAME_AS_FIRST:
                raise DefinitionError(
                    f"function {name!r}: unknown return type {spec.returns!r}", path=name
                )

    def all_functions(self) -> dict[str, FunctionSpec]:
        """Return built-ins merged with this schema's functions."""
        return {**BUILTINS, **self.functions}


def _check_name(what: str, name: str) -> None:
    if not name.isidentifier() or name.startswith(RESERVED_PREFIX):
        raise DefinitionError(f"{what}: names must be identifiers not starting with '_'", path=name)


def _check_decl(what: str, name: str, typ: str) -> None:
    _check_name(what, name)
    if typ not in TYPES:
        raise DefinitionError(
            f"{what}: unknown type {typ!r}",
            path=name,
            suggestions=difflib.get_close_matches(typ, sorted(TYPES), n=2),
        )


def _display(typ: str) -> str:
    return "None" if typ == "null" else typ


class _Checker:
    def __init__(self, text: str, schema: Schema) -> None:
        self.text = text
        self.schema = schema
        self.functions = schema.all_functions()

    def fail(
        self, pos: Pos, reason: str, suggestions: list[str] | None = None, hint: str = ""
    ) -> ExpressionError:
        return ExpressionError(
            reason,
            expression=self.text,
            line=pos.line,
            column=pos.column,
            suggestions=suggestions or (),
            hint=hint,
        )

    def check(self, node: Expr) -> Expr:
        method = getattr(self, "c_" + type(node).__name__)
        out: Expr = method(node)
        return out

    def c_Const(self, node: Const) -> Expr:
        v = node.value
        if v is None:
            typ = "null"
        elif isinstance(v, bool):
            typ = "bool"
        elif isinstance(v, int):
            typ = "int"
        elif isinstance(v, Decimal):
            typ = "decimal"
        else:
            typ = "str"
        return dataclasses.replace(node, typ=typ)

    def c_ListLit(self, node: ListLit) -> Expr:
        items = tuple(self.c_Const(i) for i in node.items)
        kinds = {i.typ for i in items}
        if not kinds:
            typ = "list[]"
        elif kinds <= _NUMERIC:
            typ = "list[decimal]" if "decimal" in kinds else "list[int]"
        elif len(kinds) == 1:
            typ = f"list[{next(iter(kinds))}]"
        else:
            raise self.fail(node.pos, "list items must all have the same type")
        return dataclasses.replace(node, items=items, typ=typ)  # type: ignore[arg-type]

    def c_Name(self, node: Name) -> Expr:
        if node.id in self.schema.fields:
            return dataclasses.replace(node, typ=self.schema.fields[node.id])
        if node.id in self.schema.namespaces:
            attrs = sorted(self.schema.namespaces[node.id])
            raise self.fail(
                node.pos,
                f"{node.id!r} is a fact namespace, not a value",
                hint=f"read one of its attributes, e.g. {node.id}.{attrs[0]}" if attrs else "",
            )
        if node.id in self.functions:
            raise self.fail(node.pos, f"{node.id!r} is a function; call it: {node.id}(...)")
        candidates = sorted(self.schema.fields) + sorted(self.schema.namespaces)
        raise self.fail(
            node.pos,
            f"unknown name {node.id!r}",
            suggestions=difflib.get_close_matches(node.id, candidates, n=3),
        )

    def c_Attr(self, node: Attr) -> Expr:
        if node.ns not in self.schema.namespaces:
            if node.ns in self.schema.fields:
                raise self.fail(node.pos, f"field {node.ns!r} has no attributes")
            raise self.fail(
                node.pos,
                f"unknown fact namespace {node.ns!r}",
                suggestions=difflib.get_close_matches(node.ns, sorted(self.schema.namespaces)),
            )
        attrs = self.schema.namespaces[node.ns]
        if node.attr not in attrs:
            col = node.pos.column + len(node.ns) + 1
            raise self.fail(
                Pos(node.pos.line, col),
                f"fact namespace {node.ns!r} has no attribute {node.attr!r}",
                suggestions=difflib.get_close_matches(node.attr, sorted(attrs)),
            )
        return dataclasses.replace(node, typ=attrs[node.attr])

    def c_Unary(self, node: Unary) -> Expr:
        operand = self.check(node.operand)
        if operand.typ not in _NUMERIC:
            raise self.fail(
                node.pos, f"unary {node.op} needs a number, not {_display(operand.typ)}"
            )
        return dataclasses.replace(node, operand=operand, typ=operand.typ)

    def c_Not(self, node: Not) -> Expr:
        operand = self.check(node.operand)
        self.need_bool(operand, "not")
        return dataclasses.replace(node, operand=operand, typ="bool")

    def need_bool(self, node: Expr, what: str) -> None:
        if node.typ != "bool":
            raise self.fail(node.pos, f"{what} needs a bool, not {_display(node.typ)}")

    def c_BoolOp(self, node: BoolOp) -> Expr:
        values = tuple(self.check(v) for v in node.values)
        for v in values:
            self.need_bool(v, f"'{node.op}'")
        return dataclasses.replace(node, values=values, typ="bool")

    def c_BinOp(self, node: BinOp) -> Expr:
        left, right = self.check(node.left), self.check(node.right)
        lt, rt = left.typ, right.typ
        if lt in _NUMERIC and rt in _NUMERIC:
            typ = "int" if lt == rt == "int" and node.op != "/" else "decimal"
        elif node.op == "+" and lt == rt == "str":
            typ = "str"
        elif "null" in (lt, rt):
            raise self.fail(
                node.pos,
                f"cannot use None with {node.op}",
                hint="a None value already makes arithmetic yield no value",
            )
        else:
            raise self.fail(
                node.pos, f"cannot apply {node.op} to {_display(lt)} and {_display(rt)}"
            )
        return dataclasses.replace(node, left=left, right=right, typ=typ)

    def c_Compare(self, node: Compare) -> Expr:
        left, right = self.check(node.left), self.check(node.right)
        lt, rt = left.typ, right.typ
        if lt.startswith("list") or rt.startswith("list"):
            raise self.fail(node.pos, "lists can only be used with 'in' / 'not in'")
        if node.op in ("==", "!="):
            ok = lt == rt or {lt, rt} <= _NUMERIC or "null" in (lt, rt)
        else:
            if "null" in (lt, rt):
                raise self.fail(
                    node.pos, f"cannot order with None ({node.op})", hint="use == None / != None"
                )
            ok = (lt == rt and lt in _ORDERED) or {lt, rt} <= _NUMERIC
            if lt == rt == "bool":
                raise self.fail(node.pos, f"cannot order bool values with {node.op}")
        if not ok:
            raise self.fail(node.pos, f"cannot compare {_display(lt)} with {_display(rt)}")
        return dataclasses.replace(node, left=left, right=right, typ="bool")

    def c_Member(self, node: Member) -> Expr:
        needle, haystack = self.check(node.needle), self.check(node.haystack)
        ht = haystack.typ
        if not ht.startswith("list["):
            raise self.fail(haystack.pos, f"'in' needs a list on the right, not {_display(ht)}")
        item = ht[5:-1]
        nt = needle.typ
        if nt == "null":
            raise self.fail(needle.pos, "None cannot be looked up in a list; use == None")
        ok = item == "" or item == nt or {item, nt} <= _NUMERIC
        if not ok:
            raise self.fail(node.pos, f"cannot look up {_display(nt)} in {ht}")
        return dataclasses.replace(node, needle=needle, haystack=haystack, typ="bool")

    def c_Call(self, node: Call) -> Expr:
        spec = self.functions.get(node.func)
        if spec is None:
            raise self.fail(
                node.pos,
                f"unknown function {node.func!r}",
                suggestions=difflib.get_close_matches(node.func, sorted(self.functions)),
                hint="only registered functions may be called",
            )
        args = tuple(self.check(a) for a in node.args)
        if len(args) != len(spec.params):
            raise self.fail(
                node.pos,
                f"{node.func}() takes {len(spec.params)} argument(s), {len(args)} given",
            )
        for arg, param in zip(args, spec.params, strict=True):
            accepted = set(param.split("|"))
            if "decimal" in accepted:
                accepted.add("int")
            if arg.typ == "null" or arg.typ not in accepted:
                raise self.fail(
                    arg.pos,
                    f"{node.func}() expects {param.replace('|', ' or ')}, not {_display(arg.typ)}",
                )
        typ = args[0].typ if spec.returns == SAME_AS_FIRST else spec.returns
        return dataclasses.replace(node, args=args, typ=typ)


def check(text: str, node: Expr, schema: Schema, *, want: str | None = None) -> Expr:
    """Type-check ``node`` against ``schema`` and return it with ``typ`` filled in everywhere.

    ``want="bool"`` requires the whole expression to be a condition.
    """
    checker = _Checker(text, schema)
    typed = checker.check(node)
    if typed.typ.startswith("list[") and typed.typ != "list[str]":
        raise checker.fail(typed.pos, "a list literal can only be used with 'in'")
    if want is not None and typed.typ != want:
        raise checker.fail(
            Pos(1, 1),
            f"the condition must be a bool, but this expression is {_display(typed.typ)}",
            hint="compare it, e.g. amount > 0",
        )
    return typed
