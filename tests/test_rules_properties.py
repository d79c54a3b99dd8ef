"""Differential and robustness properties of the rules layer (Hypothesis)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmflow._errors import ExpressionError
from crmflow.rules import Schema, available_backends, compile_rule, make_backend
from crmflow.rules._compile import LIMIT, SCALE, Inexact, _encoder, encode, plan_condition
from crmflow.rules._rule import make_env

SCHEMA = Schema(
    fields={
        "a": "decimal",
        "b": "decimal",
        "n": "int",
        "s": "str",
        "t": "str",
        "f": "bool",
        "d": "date",
    },
    namespaces={
        "c": {"x": "decimal", "y": "int", "name": "str", "ok": "bool", "tags": "list[str]"}
    },
)
SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("RULES_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

durable_only = pytest.mark.skipif(
    "durable" not in available_backends(),
    reason="durable_rules is not importable in this interpreter (e.g. CPython 3.13+)",
)

# -- expression text by type ---------------------------------------------------------------
NUM_LEAVES = st.sampled_from(
    ["a", "b", "n", "c.x", "c.y", "0", "1", "3", "-2", "0.5", "1.25", "13000", "8000.0001"]
)
STR_LEAVES = st.sampled_from(["s", "t", "c.name", "'a'", "'b'", "''", "'é'"])


def _num(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-"]), children).map(
            lambda p: f"({p[0]} {p[1]} {p[2]})"
        ),
        st.tuples(children, st.sampled_from(["2", "-3", "0", "1.5"])).map(
            lambda p: f"({p[0]} * {p[1]})"
        ),
        children.map(lambda x: f"(-{x})"),
        children.map(lambda x: f"abs({x})"),
        children.map(lambda x: f"round({x}, 2)"),
        st.tuples(children, children).map(lambda p: f"({p[0]} / {p[1]})"),
        st.tuples(children, children).map(lambda p: f"({p[0]} * {p[1]})"),
        STR_LEAVES.map(lambda x: f"len({x})"),
    )


NUM = st.recursive(NUM_LEAVES, _num, max_leaves=5)
STR = st.one_of(
    STR_LEAVES,
    STR_LEAVES.map(lambda x: f"lower({x})"),
    st.tuples(STR_LEAVES, STR_LEAVES).map(lambda p: f"({p[0]} + {p[1]})"),
)
CMP = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
ATOMS = st.one_of(
    st.tuples(NUM, CMP, NUM).map(lambda p: f"{p[0]} {p[1]} {p[2]}"),
    st.tuples(STR, CMP, STR).map(lambda p: f"{p[0]} {p[1]} {p[2]}"),
    st.tuples(
        st.sampled_from(["a", "n", "s", "f", "c.x", "c.ok", "(a + n)"]),
        st.sampled_from(["==", "!="]),
    ).map(lambda p: f"{p[0]} {p[1]} None"),
    st.sampled_from(["f", "c.ok", "True", "False", "f == c.ok", "d < d", "d == d"]),
    st.tuples(
        STR,
        st.sampled_from(["in", "not in"]),
        st.sampled_from(["['a', 'b']", "[]", "c.tags", "['é', '']"]),
    ).map(" ".join),
    st.tuples(
        NUM, st.sampled_from(["in", "not in"]), st.sampled_from(["[1, 2.5, 13000]", "[0]"])
    ).map(" ".join),
    st.tuples(NUM, CMP, NUM, CMP, NUM).map(lambda p: " ".join(p)),
)
COND = st.recursive(
    ATOMS,
    lambda ch: st.one_of(
        st.tuples(ch, st.sampled_from(["and", "or"]), ch).map(lambda p: f"({p[0]} {p[1]} {p[2]})"),
        ch.map(lambda x: f"not ({x})"),
    ),
    max_leaves=4,
)

DECIMALS = st.sampled_from(
    [
        None,
        "0",
        "1",
        "-1",
        "0.5",
        "1.25",
        "5000",
        "8000",
        "13000",
        "8000.0001",
        "0.0001",
        "0.00001",
        "123456789012.5",
        "-0.0000",
    ]
).map(lambda v: None if v is None else Decimal(v))
INTS = st.sampled_from([None, 0, 1, -2, 3, 13000, 10**16])
STRS = st.sampled_from([None, "", "a", "b", "A", "é", "a\x00b", "ab"])
BOOLS = st.sampled_from([None, True, False])
FACTS = st.fixed_dictionaries(
    {
        "a": DECIMALS,
        "b": DECIMALS,
        "n": INTS,
        "s": STRS,
        "t": STRS,
        "f": BOOLS,
        "d": st.sampled_from([None, dt.date(2024, 1, 1), dt.date(1999, 12, 31)]),
        "c": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "x": DECIMALS,
                    "y": INTS,
                    "name": STRS,
                    "ok": BOOLS,
                    "tags": st.sampled_from([None, [], ["a"], ["b", "é"]]),
                }
            ),
        ),
    }
)


_BACKENDS: dict[str, Any] = {}


def _backend(kind: str) -> Any:
    if kind not in _BACKENDS:
        _BACKENDS[kind] = make_backend(kind, namespace=f"prop-{kind}")
    return _BACKENDS[kind]


@durable_only
@SETTINGS
@given(when=COND, facts=FACTS, extra=NUM)
def test_backends_agree(when: str, facts: dict[str, Any], extra: str) -> None:
    rule = compile_rule(
        "r",
        when=when,
        effect="warn",
        message="{a} | {n} | {s} | {c.x} | {" + extra + "} | {" + when + "}",
        hint="{c.name} {f}",
        schema=SCHEMA,
    )
    py, du = _backend("python"), _backend("durable")
    expected = py.evaluate(py.prepare("g", [rule]), facts)
    got = du.evaluate(du.prepare("g", [rule]), facts)
    assert [(v.fired, v.message, v.hint) for v in got] == [
        (v.fired, v.message, v.hint) for v in expected
    ], when


@durable_only
@settings(max_examples=60, deadline=None)
@given(
    x=st.integers(min_value=-(10**11), max_value=10**11),
    y=st.integers(min_value=-(10**11), max_value=10**11),
    frac=st.integers(min_value=0, max_value=9999),
)
def test_money_boundaries_are_exact(x: int, y: int, frac: int) -> None:
    a = Decimal(x) + Decimal(frac).scaleb(-4)
    b = Decimal(y)
    total = a + b
    rule = compile_rule("r", when="a + b > c.x", effect="block", schema=SCHEMA)
    du = _backend("durable")
    group = du.prepare("money", [rule])
    for limit, fired in ((total, False), (total - Decimal("0.0001"), True)):
        facts = {"a": a, "b": b, "c": {"x": limit}}
        assert du.evaluate(group, facts)[0].fired is fired


TOKENS = st.sampled_from(
    [
        "a",
        "c",
        ".",
        "x",
        "(",
        ")",
        "[",
        "]",
        "+",
        "-",
        "*",
        "/",
        "**",
        "==",
        "<",
        "not",
        "and",
        "or",
        "in",
        "1",
        "2.5",
        "'s'",
        "None",
        "True",
        ",",
        "lambda",
        ":",
        "__class__",
        "len",
        "f",
        "if",
        "else",
        "for",
        "is",
        "@",
        "~",
        "{",
        "}",
        "\n",
        "#",
        "=",
        ":=",
        "%",
    ]
)


@SETTINGS
@given(text=st.text(max_size=80))
def test_random_text_only_raises_expression_error(text: str) -> None:
    with contextlib.suppress(ExpressionError):
        compile_rule("r", when=text, effect="warn", message=text, schema=SCHEMA)


@SETTINGS
@given(tokens=st.lists(TOKENS, max_size=25))
def test_random_token_soup_only_raises_expression_error(tokens: list[str]) -> None:
    text = " ".join(tokens)
    try:
        compile_rule("r", when=text, effect="warn", hint="{" + text + "}", schema=SCHEMA)
    except ExpressionError as err:
        assert err.part in ("when", "hint")  # type: ignore[attr-defined]
        assert err.line >= 1 and err.column >= 1


@SETTINGS
@given(when=COND, facts=FACTS)
def test_python_backend_never_raises_on_well_typed_rules(when: str, facts: dict[str, Any]) -> None:
    rule = compile_rule("r", when=when, effect="warn", message="{" + when + "}", schema=SCHEMA)
    py = _backend("python")
    (verdict,) = py.evaluate(py.prepare("g", [rule]), facts)
    assert verdict.message in ("yes", "no", "") and verdict.fired in (True, False)


# -- what durable is sent ----------------------------------------------------------------------
def _outcome(encoder: Any, value: Any) -> Any:
    try:
        return ("ok", encoder(value))
    except Inexact:
        return ("inexact", None)  # the rule is then decided in Python, whatever the reason


def _exactly_scaled(value: Decimal | int) -> Any:
    """The oracle: exact rational arithmetic, whatever the value's digits or exponent."""
    ratio = Fraction(value) * 10**SCALE
    if ratio.denominator != 1 or abs(ratio) >= LIMIT:
        return ("inexact", None)
    return ("ok", int(ratio))


_EDGE_DECIMALS = [
    Decimal("1E+1000"),
    Decimal("-1E-1000"),
    Decimal("1E-5"),
    Decimal("900719925474.0991"),
    Decimal("900719925474.0992"),
    Decimal("-900719925474.0992"),
    Decimal("0E-30"),
    Decimal("0E+30"),
    Decimal("-0"),
    Decimal("1E+3"),
    Decimal("1.00000"),
    Decimal("1.00001"),
    # More digits than any context the encoder might round in: exact, and not.
    Decimal("1." + "0" * 600),
    Decimal("1." + "0" * 600 + "1"),
    Decimal("123." + "0" * 500 + "1E+2"),
]


@settings(max_examples=400, deadline=None)
@given(
    value=st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False),
        st.decimals(allow_nan=False, allow_infinity=False, places=4),
        st.sampled_from(_EDGE_DECIMALS),
    )
)
def test_decimal_values_are_posted_exactly_or_not_at_all(value: Decimal) -> None:
    expected = _exactly_scaled(value)
    assert _outcome(_encoder("decimal"), value) == expected
    assert _outcome(lambda v: encode("decimal", v), value) == expected


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.integers(),
        st.integers(min_value=LIMIT // 10**SCALE - 3, max_value=LIMIT // 10**SCALE + 3),
        st.integers(min_value=-(LIMIT // 10**SCALE) - 3, max_value=-(LIMIT // 10**SCALE) + 3),
    )
)
def test_int_values_are_posted_exactly_or_not_at_all(value: int) -> None:
    expected = _exactly_scaled(value)
    assert _outcome(_encoder("int"), value) == expected
    assert _outcome(lambda v: encode("int", v), value) == expected


def test_extreme_exponents_are_refused_without_building_huge_numbers() -> None:
    # Each of these would take minutes (or forever) if the exact ratio were computed.
    for text in ("1E-999999999", "-1E-30000000", "1E+999999999", "9.99E+999999"):
        assert _outcome(_encoder("decimal"), Decimal(text)) == ("inexact", None)
    assert _outcome(_encoder("decimal"), Decimal("0E-999999999")) == ("ok", 0)


def test_the_message_text_holds_every_value_at_its_path() -> None:
    # Fields and namespace attributes interleaved: the text's slots follow its nesting, not
    # the order the condition reads them in.
    rule = compile_rule(
        "r",
        when="c.x > a and n < c.y and lower(s) == 'x' and f",
        effect="warn",
        schema=SCHEMA,
    )
    plan = plan_condition(rule.when)
    facts = {"a": Decimal("1.5"), "n": 3, "s": 'q"%s', "f": True, "c": {"x": None, "y": 7}}
    message = json.loads(plan.text(make_env(rule, facts), "0", "42"))
    assert message["sid"] == "0"
    assert message["id"] == "42"
    assert message["v"] == {"c": {"x": None, "y": 70000}, "a": 15000, "n": 30000, "f": True}
    assert message["x"] == {"zero": 0, "one": 1, "d0": 'q"%s'}
