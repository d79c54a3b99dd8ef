"""Parse rule expressions into our IR.

The text goes through :func:`ast.parse` in ``eval`` mode and then through an allow-list converter:
anything not explicitly handled is rejected with the column of the offending construct. Nothing
is ever evaluated, executed or compiled as Python.
"""

from __future__ import annotations

import ast
import io
import tokenize
from decimal import Decimal, InvalidOperation

from crmflow._errors import ExpressionError

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

__all__ = ["MAX_DEPTH", "MAX_EXPRESSION_LENGTH", "MAX_STRING_LENGTH", "parse_expression"]

MAX_EXPRESSION_LENGTH = 2000
MAX_STRING_LENGTH = 1000
MAX_DEPTH = 32
#: Integer digits a numeric literal may have; keeps literals far from float/overflow territory.
MAX_LITERAL_DIGITS = 30

_CMP_OPS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_BIN_OPS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}
_REJECTED: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda expressions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Subscript: "subscripts ([...]) are not allowed",
    ast.NamedExpr: "the walrus operator := is not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.Set: "set literals are not allowed",
    ast.Tuple: "tuples are not allowed; use a list literal [a, b]",
    ast.IfExp: "conditional expressions (x if c else y) are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not allowed",
}


class _Source:
    """Maps positions in the parsed (wrapped) source back to the user's text."""

    def __init__(self, text: str, wrapped: str) -> None:
        self.text = text
        self.lines = wrapped.split("\n")

    def pos(self, node: ast.AST) -> Pos:
        lineno = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        return self.at(lineno, col)

    def at(self, lineno: int, byte_col: int) -> Pos:
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        # ast reports UTF-8 byte offsets; users count characters.
        char_col = len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))
        if lineno == 1:
            char_col -= 1  # the "(" we added in front
        return Pos(lineno, max(char_col, 0) + 1)

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment("\n".join(self.lines), node) or ""


def _fail(text: str, reason: str, pos: Pos, hint: str = "") -> ExpressionError:
    return ExpressionError(reason, expression=text, line=pos.line, column=pos.column, hint=hint)


def _check_brackets(text: str) -> None:
    # The text is parsed inside "( ... )" so that it may span lines; a text like "a) or (b"
    # would then parse, so closing brackets must never outnumber opening ones.
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
                if depth < 0:
                    raise _fail(
                        text, f"unmatched '{tok.string}'", Pos(tok.start[0], tok.start[1] + 1)
                    )
    except (tokenize.TokenError, SyntaxError, ValueError, IndentationError):
        return  # ast.parse below reports these with a better message


def parse_expression(text: str) -> Expr:
    """Parse a rule expression into the crmflow IR.

    Raises:
        ExpressionError: the text is not valid in the rule language; ``line`` and ``column``
            point into ``text``.

    """
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string", expression=repr(text))
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise _fail(
            text,
            f"expression is longer than {MAX_EXPRESSION_LENGTH} characters",
            Pos(1, 1),
            hint="split the rule into several rules",
        )
    if not text.strip():
        raise _fail(text, "empty expression", Pos(1, 1))
    if "\x00" in text:
        idx = text.index("\x00")
        raise _fail(text, "NUL character in expression", _offset_pos(text, idx))
    _check_brackets(text)
    wrapped = "(" + text + "\n)"
    try:
        tree = ast.parse(wrapped, mode="eval")
    except SyntaxError as exc:
        lineno = exc.lineno or 1
        offset = (exc.offset or 1) - (1 if lineno == 1 else 0)
        lines = text.split("\n")
        lineno = min(max(lineno, 1), len(lines))
        raise _fail(text, f"syntax error: {exc.msg}", Pos(lineno, max(offset, 1))) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise _fail(text, f"cannot parse expression: {type(exc).__name__}", Pos(1, 1)) from None
    src = _Source(text, wrapped)
    return _Converter(src).convert(tree.body, 1)


def _offset_pos(text: str, index: int) -> Pos:
    before = text[:index]
    line = before.count("\n") + 1
    col = index - (before.rfind("\n") + 1) + 1
    return Pos(line, col)


class _Converter:
    def __init__(self, src: _Source) -> None:
        self.src = src

    def fail(self, node: ast.AST, reason: str, hint: str = "") -> ExpressionError:
        return _fail(self.src.text, reason, self.src.pos(node), hint)

    def convert(self, node: ast.AST, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"expression is nested deeper than {MAX_DEPTH} levels")
        pos = self.src.pos(node)
        d = depth + 1
        if isinstance(node, ast.Constant):
            return self.constant(node, pos)
        if isinstance(node, ast.Name):
            self.check_identifier(node, node.id)
            if node.id in ("True", "False", "None"):  # pragma: no cover - parsed as Constant
                raise self.fail(node, f"{node.id} cannot be used as a name")
            return Name(id=node.id, pos=pos)
        if isinstance(node, ast.Attribute):
            return self.attribute(node, pos)
        if isinstance(node, ast.BoolOp):
            op = "and" if isinstance(node.op, ast.And) else "or"
            return BoolOp(op=op, values=tuple(self.convert(v, d) for v in node.values), pos=pos)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return Not(operand=self.convert(node.operand, d), pos=pos)
            if isinstance(node.op, ast.USub | ast.UAdd):
                sign = "-" if isinstance(node.op, ast.USub) else "+"
                return Unary(op=sign, operand=self.convert(node.operand, d), pos=pos)
            raise self.fail(node, "the operator ~ is not allowed")
        if isinstance(node, ast.BinOp):
            return self.binop(node, pos, d)
        if isinstance(node, ast.Compare):
            return self.compare(node, pos, d)
        if isinstance(node, ast.Call):
            return self.call(node, pos, d)
        if isinstance(node, ast.List):
            return self.list_literal(node, pos, d)
        for kind, reason in _REJECTED.items():
            if isinstance(node, kind):
                raise self.fail(node, reason)
        raise self.fail(node, f"{type(node).__name__} is not allowed in a rule expression")

    def check_identifier(self, node: ast.AST, name: str) -> None:
        if name.startswith("__") or name.endswith("__"):
            raise self.fail(node, f"dunder name {name!r} is not allowed")
        if name.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed: {name!r}")

    def constant(self, node: ast.Constant, pos: Pos) -> Const:
        value = node.value
        if value is None or isinstance(value, bool):
            return Const(value=value, pos=pos)
        if isinstance(value, str):
            if len(value) > MAX_STRING_LENGTH:
                raise self.fail(
                    node, f"string literal is longer than {MAX_STRING_LENGTH} characters"
                )
            return Const(value=value, pos=pos)
        if isinstance(value, int):
            if len(str(abs(value))) > MAX_LITERAL_DIGITS:
                raise self.fail(node, f"number literal has more than {MAX_LITERAL_DIGITS} digits")
            return Const(value=value, pos=pos)
        if isinstance(value, float):
            # Never go through the float: re-read the digits the user wrote.
            literal = self.src.segment(node).replace("_", "")
            try:
                dec = Decimal(literal)
            except InvalidOperation:
                raise self.fail(node, f"invalid number literal {literal!r}") from None
            if not dec.is_finite() or abs(dec.adjusted()) > MAX_LITERAL_DIGITS:
                raise self.fail(node, f"number literal {literal!r} is out of range")
            if len(dec.as_tuple().digits) > 2 * MAX_LITERAL_DIGITS:
                raise self.fail(node, f"number literal {literal!r} has too many digits")
            return Const(value=dec, pos=pos)
        if isinstance(value, bytes):
            raise self.fail(node, "bytes literals are not allowed")
        if isinstance(value, complex):
            raise self.fail(node, "complex numbers are not allowed")
        raise self.fail(node, f"literal {type(value).__name__} is not allowed")

    def attribute(self, node: ast.Attribute, pos: Pos) -> Attr:
        attr_pos = self.attr_pos(node)
        if node.attr.startswith("_"):
            raise _fail(
                self.src.text,
                f"attribute {node.attr!r} is not allowed (names starting with '_' are private)",
                attr_pos,
            )
        if not isinstance(node.value, ast.Name):
            if isinstance(node.value, ast.Attribute):
                raise self.fail(
                    node,
                    "attribute chains deeper than namespace.attribute are not allowed",
                )
            raise self.fail(node, "attributes may only be read from a fact namespace")
        self.check_identifier(node.value, node.value.id)
        return Attr(ns=node.value.id, attr=node.attr, pos=pos)

    def attr_pos(self, node: ast.Attribute) -> Pos:
        end_line = getattr(node, "end_lineno", None) or node.lineno
        end_col = getattr(node, "end_col_offset", None)
        if end_col is None:
            return self.src.pos(node)
        line = self.src.lines[end_line - 1]
        start_byte = end_col - len(node.attr.encode("utf-8"))
        _ = line
        return self.src.at(end_line, start_byte)

    def binop(self, node: ast.BinOp, pos: Pos, d: int) -> BinOp:
        op = _BIN_OPS.get(type(node.op))
        if op is None:
            symbol = {
                ast.Pow: "**",
                ast.FloorDiv: "//",
                ast.Mod: "%",
                ast.MatMult: "@",
                ast.LShift: "<<",
                ast.RShift: ">>",
                ast.BitOr: "|",
                ast.BitAnd: "&",
                ast.BitXor: "^",
            }.get(type(node.op), type(node.op).__name__)
            raise _fail(
                self.src.text,
                f"the operator {symbol} is not allowed",
                self.operator_pos(node),
                hint="only + - * / are allowed",
            )
        return BinOp(
            op=op, left=self.convert(node.left, d), right=self.convert(node.right, d), pos=pos
        )

    def operator_pos(self, node: ast.BinOp) -> Pos:
        # Point at the operator itself, which sits after the left operand.
        end_line = getattr(node.left, "end_lineno", None)
        end_col = getattr(node.left, "end_col_offset", None)
        if end_line is None or end_col is None:
            return self.src.pos(node)
        line = self.src.lines[end_line - 1]
        raw = line.encode("utf-8")
        i = end_col
        while i < len(raw) and raw[i : i + 1] in (b" ", b")", b"\t"):
            i += 1
        return self.src.at(end_line, i)

    def compare(self, node: ast.Compare, pos: Pos, d: int) -> Expr:
        operands = [node.left, *node.comparators]
        converted = [self.convert(o, d) for o in operands]
        parts: list[Expr] = []
        for i, op in enumerate(node.ops):
            left, right = converted[i], converted[i + 1]
            if isinstance(op, ast.In | ast.NotIn):
                parts.append(
                    Member(needle=left, haystack=right, negated=isinstance(op, ast.NotIn), pos=pos)
                )
                continue
            name = _CMP_OPS.get(type(op))
            if name is None:
                raise _fail(
                    self.src.text,
                    "'is' / 'is not' are not allowed",
                    self.src.pos(operands[i + 1]),
                    hint="use == None or != None",
                )
            parts.append(Compare(op=name, left=left, right=right, pos=pos))
        if len(parts) == 1:
            return parts[0]
        return BoolOp(op="and", values=tuple(parts), pos=pos)

    def call(self, node: ast.Call, pos: Pos, d: int) -> Call:
        if not isinstance(node.func, ast.Name):
            raise self.fail(
                node.func, "only registered functions may be called, by their plain name"
            )
        self.check_identifier(node.func, node.func.id)
        if node.keywords:
            raise self.fail(node.keywords[0].value, "keyword arguments are not allowed")
        return Call(func=node.func.id, args=tuple(self.convert(a, d) for a in node.args), pos=pos)

    def list_literal(self, node: ast.List, pos: Pos, d: int) -> ListLit:
        items: list[Const] = []
        for elt in node.elts:
            item = self.convert(elt, d)
            if isinstance(item, Unary) and isinstance(item.operand, Const):
                value = item.operand.value
                if isinstance(value, int | Decimal) and not isinstance(value, bool):
                    item = Const(value=-value if item.op == "-" else value, pos=item.pos)
            if not isinstance(item, Const):
                raise self.fail(elt, "list items must be literals")
            if item.value is None:
                raise self.fail(elt, "None is not allowed inside a list")
            items.append(item)
        return ListLit(items=tuple(items), pos=pos)
