"""Parser, type checker and template errors: positions, suggestions, parts."""

from __future__ import annotations

from decimal import Decimal

import pytest

from crmflow._errors import ExpressionError
from crmflow.rules import FunctionSpec, Schema, compile_rule, parse_expression
from crmflow.rules._ast import BinOp, BoolOp, Compare, Const, Member, Name

SCHEMA = Schema(
    fields={
        "amount": "decimal",
        "prepayment_received": "bool",
        "key": "str",
        "state": "str",
        "qty": "int",
        "created": "date",
    },
    namespaces={
        "customer": {
            "credit_limit": "decimal",
            "open_balance": "decimal",
            "payment_terms": "str",
            "name": "str",
            "lock_owner": "bool",
        },
        "actor": {"id": "str", "roles": "list[str]", "org": "str"},
    },
    functions={"double": FunctionSpec("double", ("decimal",), "decimal", lambda x: x * 2)},
)


def err(when: str, **kw: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        compile_rule("r", when=when, effect="block", schema=SCHEMA, **kw)
    return info.value


def test_decimal_literal_keeps_its_digits() -> None:
    node = parse_expression("amount > 10000.50")
    assert isinstance(node, Compare) and node.right == Const(value=Decimal("10000.50"))
    assert str(node.right.value) == "10000.50"  # type: ignore[union-attr]


def test_chained_comparison_becomes_and() -> None:
    node = parse_expression("0 < amount <= 10")
    assert isinstance(node, BoolOp) and node.op == "and" and len(node.values) == 2


def test_in_list_literal() -> None:
    node = parse_expression("state in ['draft', 'sent']")
    assert isinstance(node, Member) and not node.negated


def test_multiline_expression_positions() -> None:
    node = parse_expression("amount\n  + qty > 1")
    assert isinstance(node, Compare) and isinstance(node.left, BinOp)
    assert isinstance(node.left.right, Name) and node.left.right.pos.line == 2
    assert node.left.right.pos.column == 5


def test_unknown_name_suggests() -> None:
    e = err("amout > 5")
    assert e.part == "when"  # type: ignore[attr-defined]
    assert e.suggestions[0] == "amount" and (e.line, e.column) == (1, 1)
    assert "did you mean 'amount'" in str(e)


def test_unknown_attribute_points_at_attribute() -> None:
    e = err("amount > customer.credit_limt")
    assert e.suggestions == ("credit_limit",)
    assert e.column == len("amount > customer.") + 1


def test_str_vs_decimal() -> None:
    e = err("customer.name > amount")
    assert "cannot compare str with decimal" in e.reason


def test_when_must_be_bool() -> None:
    assert "must be a bool" in err("amount + 1").reason


def test_int_decimal_mix_and_str_concat_ok() -> None:
    rule = compile_rule(
        "r", when="qty + amount > 1 and key + state == 'ab'", effect="warn", schema=SCHEMA
    )
    assert ("", "qty") in rule.needs and ("", "state") in rule.needs


def test_needs_cover_message_and_hint_and_now() -> None:
    rule = compile_rule(
        "r",
        when="days_since(created) > 3",
        effect="warn",
        message="{customer.name}",
        hint="ask {actor.org}",
        schema=SCHEMA,
    )
    assert rule.needs == {("", "created"), ("", "now"), ("customer", "name"), ("actor", "org")}


def test_message_error_position_inside_template() -> None:
    e = err("amount > 1", message="Limit of {customer.nam} hit")
    assert e.part == "message"  # type: ignore[attr-defined]
    assert e.column == len("Limit of {customer.") + 1 and e.suggestions == ("name",)


def test_hint_error_line_and_column() -> None:
    e = err("amount > 1", hint="line one\n  {amout}")
    assert e.part == "hint" and (e.line, e.column) == (2, 4)  # type: ignore[attr-defined]


def test_template_braces() -> None:
    rule = compile_rule(
        "r", when="True", effect="warn", message="{{literal}} {amount}", schema=SCHEMA
    )
    assert rule.message.parts[0] == "{literal} "
    assert err("True", message="oops {amount").reason.startswith("unclosed")
    assert err("True", message="oops }").reason.startswith("single")


def test_function_arity_and_types() -> None:
    assert "takes 1 argument" in err("len(key, key) > 1").reason
    assert "expects str" in err("lower(amount) == 'x'").reason
    compile_rule("r", when="double(qty) > 1", effect="warn", schema=SCHEMA)


def test_unknown_function_suggests() -> None:
    e = err("lowr(key) == 'a'")
    assert e.suggestions == ("lower",) and "unknown function" in e.reason


def test_bad_effect() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_rule("r", when="True", effect="deny", schema=SCHEMA)
    assert info.value.part == "effect"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        ("amount > None", "cannot order with None"),
        ("amount + None > 1", "cannot use None"),
        ("prepayment_received > False", "cannot order bool"),
        ("actor.roles == 'x'", "lists can only"),
        ("1 in key", "needs a list"),
        ("amount in ['a']", "cannot look up"),
        ("customer > 1", "fact namespace"),
        ("amount.x > 1", "has no attributes"),
        ("[1, 'a'] == key", "same type"),
        ("amount is None", "'is'"),
        ("amount // 2 > 1", "//"),
        ("amount % 2 > 1", "%"),
        ("1 if amount else 2", "conditional"),
        ("(amount, 1)", "tuples"),
        ("", "empty"),
    ],
)
def test_rejections(when: str, fragment: str) -> None:
    assert fragment in err(when).reason


def test_schema_rejects_bad_types() -> None:
    from crmflow._errors import DefinitionError

    with pytest.raises(DefinitionError):
        Schema(fields={"x": "float"})
    with pytest.raises(DefinitionError):
        Schema(fields={"_cf": "str"})
    with pytest.raises(DefinitionError):
        Schema(fields={"customer": "str"}, namespaces={"customer": {}})
