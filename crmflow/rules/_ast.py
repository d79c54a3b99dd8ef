"""Our own expression IR: frozen dataclasses, independent of Python's ``ast`` module.

Python's ``ast`` is only the tokenizer/parser front end; everything after parsing works on these
nodes, so no Python object from the parse ever reaches an evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeAlias

__all__ = [
    "Attr",
    "BinOp",
    "BoolOp",
    "Call",
    "Compare",
    "Const",
    "Expr",
    "ListLit",
    "Member",
    "Name",
    "Not",
    "Pos",
    "Unary",
    "walk",
]

Scalar: TypeAlias = int | Decimal | str | bool | None


@dataclass(frozen=True)
class Pos:
    """A 1-based position inside the expression text (the column counts characters)."""

    line: int = 1
    column: int = 1


_NOWHERE = Pos()


@dataclass(frozen=True, kw_only=True)
class _Node:
    # Positions and inferred types do not take part in equality: two ``amount`` nodes are the
    # same expression wherever they stand.
    pos: Pos = field(default=_NOWHERE, compare=False)
    typ: str = field(default="", compare=False)


@dataclass(frozen=True, kw_only=True)
class Const(_Node):
    """A literal: int, Decimal (from a literal with a fraction), str, bool or None."""

    value: Scalar


@dataclass(frozen=True, kw_only=True)
class ListLit(_Node):
    """A list of literals, only valid on the right of ``in`` / ``not in``."""

    items: tuple[Const, ...]


@dataclass(frozen=True, kw_only=True)
class Name(_Node):
    """A field of the record (``amount``)."""

    id: str


@dataclass(frozen=True, kw_only=True)
class Attr(_Node):
    """An attribute of a declared fact namespace (``customer.credit_limit``)."""

    ns: str
    attr: str


@dataclass(frozen=True, kw_only=True)
class Unary(_Node):
    """Unary ``-`` or ``+`` on a number."""

    op: str
    operand: Expr


@dataclass(frozen=True, kw_only=True)
class Not(_Node):
    """Boolean negation."""

    operand: Expr


@dataclass(frozen=True, kw_only=True)
class BinOp(_Node):
    """Arithmetic ``+ - * /`` (``+`` also concatenates strings)."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, kw_only=True)
class BoolOp(_Node):
    """``and`` / ``or`` over two or more operands."""

    op: str
    values: tuple[Expr, ...]


@dataclass(frozen=True, kw_only=True)
class Compare(_Node):
    """One binary comparison; chained comparisons become an ``and`` of these."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, kw_only=True)
class Member(_Node):
    """``needle in haystack`` (``negated`` for ``not in``)."""

    needle: Expr
    haystack: Expr
    negated: bool = False


@dataclass(frozen=True, kw_only=True)
class Call(_Node):
    """A call of a registered function by name."""

    func: str
    args: tuple[Expr, ...]


Expr: TypeAlias = (
    Const | ListLit | Name | Attr | Unary | Not | BinOp | BoolOp | Compare | Member | Call
)


def children(node: Expr) -> tuple[Expr, ...]:
    """Return the direct sub-expressions of ``node``."""
    if isinstance(node, ListLit):
        return node.items
    if isinstance(node, Unary | Not):
        return (node.operand,)
    if isinstance(node, BinOp | Compare):
        return (node.left, node.right)
    if isinstance(node, BoolOp):
        return node.values
    if isinstance(node, Member):
        return (node.needle, node.haystack)
    if isinstance(node, Call):
        return node.args
    return ()


def walk(node: Expr) -> list[Expr]:
    """Return ``node`` and all its descendants, parents first."""
    out: list[Expr] = []
    stack = [node]
    while stack:
        cur = stack.pop()
        out.append(cur)
        stack.extend(reversed(children(cur)))
    return out
