"""Compiled rules and verdicts: what the engine holds and what back ends return."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crmflow._errors import ExpressionError

from ._ast import Attr, Call, Expr, Name, walk
from ._checker import NOW_FACT, Schema, check
from ._evaluate import Env, FactPlan, fact_plan, read_facts, truth
from ._functions import FunctionSpec
from ._parser import parse_expression
from ._template import Template, parse_template

__all__ = ["EFFECTS", "CompiledRule", "Verdict", "compile_rule", "decide"]

#: What a fired rule does to the transition.
EFFECTS = ("block", "confirm", "warn")


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """A parsed, type-checked rule, ready for :meth:`RulesBackend.prepare`.

    Attributes:
        name: the rule's name.
        effect: ``"block"``, ``"confirm"`` or ``"warn"``.
        override_roles: roles that may override the effect.
        needs: ``(namespace, attribute)`` pairs read by when/message/hint; fields are
            ``("", name)``; ``("", "now")`` when a function needs the reference time.
        when_text / message_text / hint_text: the source texts.
        when: the typed IR of the condition.
        message / hint: the parsed templates.
        schema: the schema the rule was checked against.

    """

    name: str
    effect: str
    override_roles: tuple[str, ...]
    needs: frozenset[tuple[str, str]]
    when_text: str
    message_text: str
    hint_text: str
    when: Expr = field(repr=False)
    message: Template = field(repr=False)
    hint: Template = field(repr=False)
    schema: Schema = field(repr=False)
    #: Prepared once from the fields above, for every evaluation: what the rule reads, the
    #: functions it may call, and its verdict when it does not fire (verdicts are immutable,
    #: so one serves every evaluation).
    reads: FactPlan = field(init=False, repr=False)
    functions: Mapping[str, FunctionSpec] = field(init=False, repr=False)
    not_fired: Verdict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reads", fact_plan(self.schema, self.needs))
        object.__setattr__(self, "functions", self.schema.all_functions())
        object.__setattr__(
            self, "not_fired", Verdict(self.name, self.effect, False, "", "", self.override_roles)
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of one rule for one set of facts.

    Attributes:
        rule: the rule's name.
        effect: the rule's effect.
        fired: True when the ``when`` condition holds (the effect applies).
        message: the rendered message ("" when not fired).
        hint: the rendered hint ("" when not fired).
        override_roles: the rule's override roles.

    """

    rule: str
    effect: str
    fired: bool
    message: str = ""
    hint: str = ""
    override_roles: tuple[str, ...] = ()


def _with_part(err: ExpressionError, part: str) -> ExpressionError:
    err.part = part  # type: ignore[attr-defined]
    return err


def _needs(nodes: Iterable[Expr], schema: Schema) -> frozenset[tuple[str, str]]:
    functions = schema.all_functions()
    out: set[tuple[str, str]] = set()
    for root in nodes:
        for node in walk(root):
            if isinstance(node, Name):
                out.add(("", node.id))
            elif isinstance(node, Attr):
                out.add((node.ns, node.attr))
            elif isinstance(node, Call) and functions[node.func].needs_now:
                out.add(("", NOW_FACT))
    return frozenset(out)


def compile_rule(
    name: str,
    *,
    when: str,
    effect: str,
    message: str = "",
    hint: str = "",
    override_roles: Iterable[str] = (),
    schema: Schema,
) -> CompiledRule:
    """Parse and type-check a rule.

    Raises:
        ExpressionError: with an extra attribute ``part`` (``"when"``, ``"message"`` or
            ``"hint"``); ``line``/``column`` are inside that part's text.

    """
    if effect not in EFFECTS:
        raise _with_part(
            ExpressionError(
                f"unknown effect {effect!r}; expected one of {', '.join(EFFECTS)}",
                expression=str(effect),
            ),
            "effect",
        )
    try:
        when_ir = check(when, parse_expression(when), schema, want="bool")
    except ExpressionError as err:
        raise _with_part(err, "when") from None
    try:
        message_t = parse_template(message, schema)
    except ExpressionError as err:
        raise _with_part(err, "message") from None
    try:
        hint_t = parse_template(hint, schema)
    except ExpressionError as err:
        raise _with_part(err, "hint") from None
    needs = _needs([when_ir, *message_t.expressions(), *hint_t.expressions()], schema)
    return CompiledRule(
        name=name,
        effect=effect,
        override_roles=tuple(override_roles),
        needs=needs,
        when_text=when,
        message_text=message,
        hint_text=hint,
        when=when_ir,
        message=message_t,
        hint=hint_t,
        schema=schema,
    )


def make_env(rule: CompiledRule, facts: Mapping[str, Any]) -> Env:
    """Normalise ``facts`` for ``rule`` into an evaluation environment."""
    fields, namespaces, now = read_facts(facts, rule.reads)
    return Env(fields, namespaces, rule.functions, now, rule.name)


def verdict(rule: CompiledRule, env: Env, fired: bool) -> Verdict:
    """Build the verdict, rendering message and hint only when the rule fired."""
    if not fired:
        return rule.not_fired
    return Verdict(
        rule=rule.name,
        effect=rule.effect,
        fired=True,
        message=rule.message.render(env),
        hint=rule.hint.render(env),
        override_roles=rule.override_roles,
    )


def decide(rule: CompiledRule, facts: Mapping[str, Any]) -> Verdict:
    """Evaluate ``rule`` entirely in Python (the reference semantics)."""
    env = make_env(rule, facts)
    return verdict(rule, env, truth(rule.when, env))
