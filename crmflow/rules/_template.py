"""Message templates: literal text with ``{expression}`` placeholders, and value rendering."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crmflow._errors import ExpressionError

from ._ast import Expr, Pos
from ._checker import Schema, check
from ._evaluate import Env, evaluate
from ._parser import parse_expression

__all__ = ["MAX_TEMPLATE_LENGTH", "Template", "parse_template", "render_value"]

MAX_TEMPLATE_LENGTH = 10_000


@dataclass(frozen=True)
class Template:
    """A parsed, type-checked template: literal strings alternating with expressions."""

    text: str
    parts: tuple[str | Expr, ...]

    def expressions(self) -> list[Expr]:
        """Return the placeholder expressions."""
        return [p for p in self.parts if not isinstance(p, str)]

    def render(self, env: Env) -> str:
        """Render with every placeholder evaluated over ``env``."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(render_value(evaluate(part, env), env.zone))
        return "".join(out)


def render_value(value: Any, zone: _dt.tzinfo | None = None) -> str:
    """Render one value the way messages show it (thousands separators, yes/no, ISO dates)."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return f"{int(value):,}"
        return f"{value:,f}"
    if isinstance(value, _dt.datetime):
        # Evaluation holds moments as naive UTC; show them in ``zone`` with its offset, or say
        # UTC, rather than print a bare clock time.
        moment = value.replace(tzinfo=_dt.UTC) if value.tzinfo is None else value
        moment = moment.astimezone(zone or _dt.UTC)
        shown = f"{moment:%Y-%m-%d %H:%M:%S}" if moment.second else f"{moment:%Y-%m-%d %H:%M}"
        if zone is None:
            return f"{shown} UTC"
        offset = moment.strftime("%z")  # +0800
        return f"{shown} {offset[:3]}:{offset[3:]}"
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return ", ".join(render_value(v, zone) for v in value)
    return str(value)


def _pos_at(text: str, index: int) -> Pos:
    before = text[:index]
    line = before.count("\n") + 1
    return Pos(line, index - (before.rfind("\n") + 1) + 1)


def _shift(err: ExpressionError, text: str, start: int) -> ExpressionError:
    """Re-anchor an error inside a placeholder to a position inside the whole template."""
    inner = err.expression
    lines = inner.split("\n")
    line_idx = min(max(err.line, 1), len(lines)) - 1
    offset = sum(len(x) + 1 for x in lines[:line_idx]) + err.column - 1
    pos = _pos_at(text, start + min(offset, len(inner)))
    return ExpressionError(
        err.reason,
        expression=text,
        line=pos.line,
        column=pos.column,
        suggestions=err.suggestions,
        hint=err.hint,
    )


def _scan(text: str) -> list[tuple[str, int]]:
    """Split into ("lit", ...) and ("expr", start) pieces; returns (content, start) pairs.

    Expression pieces are marked by a start index >= 0, literal pieces by -1.
    """
    pieces: list[tuple[str, int]] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{" and text.startswith("{{", i):
            buf.append("{")
            i += 2
        elif ch == "}" and text.startswith("}}", i):
            buf.append("}")
            i += 2
        elif ch == "}":
            raise _error("single '}' in template", text, i, "write }} for a literal brace")
        elif ch == "{":
            start = i + 1
            j, quote = start, ""
            while j < n:
                c = text[j]
                if quote:
                    if c == "\\":
                        j += 1
                    elif c == quote:
                        quote = ""
                elif c in "'\"":
                    quote = c
                elif c == "}":
                    break
                j += 1
            if j >= n:
                raise _error("unclosed '{' in template", text, i, "write {{ for a literal brace")
            if buf:
                pieces.append(("".join(buf), -1))
                buf = []
            pieces.append((text[start:j], start))
            i = j + 1
        else:
            buf.append(ch)
            i += 1
    if buf:
        pieces.append(("".join(buf), -1))
    return pieces


def _error(reason: str, text: str, index: int, hint: str) -> ExpressionError:
    pos = _pos_at(text, index)
    return ExpressionError(reason, expression=text, line=pos.line, column=pos.column, hint=hint)


def parse_template(text: str, schema: Schema) -> Template:
    """Parse and type-check a message template.

    Raises:
        ExpressionError: with ``line``/``column`` inside the template text.

    """
    if not isinstance(text, str):
        raise ExpressionError("a template must be a string", expression=repr(text))
    if len(text) > MAX_TEMPLATE_LENGTH:
        raise ExpressionError(
            f"template is longer than {MAX_TEMPLATE_LENGTH} characters", expression=text
        )
    parts: list[str | Expr] = []
    for content, start in _scan(text):
        if start < 0:
            parts.append(content)
            continue
        try:
            node = check(content, parse_expression(content), schema)
        except ExpressionError as err:
            raise _shift(err, text, start) from None
        parts.append(node)
    return Template(text=text, parts=tuple(parts))
