"""Both back ends: the API contract, rendering, the null rule, money exactness, isolation."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal as D
from typing import Any

import pytest

from crmflow._errors import MissingFact
from crmflow.rules import (
    FunctionSpec,
    RuleEvaluationError,
    RulesBackend,
    RulesBackendError,
    Schema,
    Verdict,
    available_backends,
    compile_rule,
    make_backend,
    render_value,
)

HAS_DURABLE = "durable" in available_backends()
durable_only = pytest.mark.skipif(
    not HAS_DURABLE, reason="durable_rules is not importable here (e.g. CPython 3.13+)"
)
KINDS = ["python", pytest.param("durable", marks=durable_only)]

SCHEMA = Schema(
    fields={
        "amount": "decimal",
        "prepayment_received": "bool",
        "key": "str",
        "state": "str",
        "qty": "int",
        "created": "date",
        "phone": "str",
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
    functions={"boom": FunctionSpec("boom", ("str",), "bool", lambda s: 1 / 0)},
)
CREDIT = compile_rule(
    "credit_limit",
    when="amount + customer.open_balance > customer.credit_limit",
    effect="confirm",
    message="Credit limit of {customer.name} exceeded by "
    "{amount + customer.open_balance - customer.credit_limit}",
    hint="Collect the open balance or raise the limit",
    override_roles=("sales_manager",),
    schema=SCHEMA,
)


def facts(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "amount": D("8000"),
        "customer": {
            "credit_limit": D("10000"),
            "open_balance": D("5000"),
            "name": "ACME",
            "payment_terms": "net30",
            "lock_owner": False,
        },
        "actor": {"id": "bob", "roles": ["sales_rep"], "org": "east"},
        "key": "SO-1",
        "state": "draft",
        "qty": 3,
        "prepayment_received": False,
        "created": dt.date(2024, 1, 1),
        "now": dt.datetime(2024, 1, 31, 12, 0),
        "phone": "+1 (555) 010-2030",
    }
    base.update(over)
    return base


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest) -> Any:
    b = make_backend(request.param, namespace=f"test-{request.param}")
    yield b
    b.close()


def one(backend: RulesBackend, when: str, f: dict[str, Any], **kw: Any) -> Verdict:
    rule = compile_rule("r", when=when, effect="block", schema=SCHEMA, **kw)
    return backend.evaluate(backend.prepare("g", [rule]), f)[0]


def test_example_from_the_design(backend: RulesBackend) -> None:
    group = backend.prepare("sales_order/v1/approve", [CREDIT])
    (v,) = backend.evaluate(group, facts())
    assert v == Verdict(
        rule="credit_limit",
        effect="confirm",
        fired=True,
        message="Credit limit of ACME exceeded by 3,000",
        hint="Collect the open balance or raise the limit",
        override_roles=("sales_manager",),
    )
    (v,) = backend.evaluate(group, facts(amount=D("5000")))
    assert v.fired is False and v.message == "" and v.hint == ""


def test_verdicts_in_rule_order(backend: RulesBackend) -> None:
    rules = [
        compile_rule(f"r{i}", when=w, effect="warn", schema=SCHEMA)
        for i, w in enumerate(["qty > 5", "qty > 1", "key == 'SO-1'", "False"])
    ]
    out = backend.evaluate(backend.prepare("order", rules), facts())
    assert [(v.rule, v.fired) for v in out] == [
        ("r0", False),
        ("r1", True),
        ("r2", True),
        ("r3", False),
    ]


@pytest.mark.parametrize(
    ("amount", "fired"),
    [("5000", False), ("5000.0001", True), ("4999.9999", False), ("5000.00001", True)],
)
def test_money_boundary_is_exact(backend: RulesBackend, amount: str, fired: bool) -> None:
    assert (
        one(
            backend,
            "amount + customer.open_balance > customer.credit_limit",
            facts(amount=D(amount)),
        ).fired
        is fired
    )


def test_float_rounding_trap(backend: RulesBackend) -> None:
    # 0.1 + 0.2 == 0.3 is False in binary floating point.
    f = facts(amount=D("0.1"), customer={"open_balance": D("0.2"), "credit_limit": D("0.3")})
    assert one(backend, "amount + customer.open_balance == customer.credit_limit", f).fired


@pytest.mark.parametrize(
    ("when", "fired"),
    [
        ("amount > 1", False),
        ("amount <= 1", False),
        ("not (amount > 1)", True),
        ("amount == None", True),
        ("amount != None", False),
        ("amount + 1 == None", True),
        ("amount != 1", True),
        ("amount == customer.credit_limit", False),
        ("amount in [1, 2]", False),
        ("amount not in [1, 2]", True),
        ("prepayment_received", False),
        ("not prepayment_received", True),
        ("len(key) > 0", False),
        ("key == None and customer.name == None", True),
    ],
)
def test_null_rule(backend: RulesBackend, when: str, fired: bool) -> None:
    f = facts(
        amount=None,
        prepayment_received=None,
        key=None,
        customer={"credit_limit": D(5), "name": None},
    )
    assert one(backend, when, f).fired is fired


def test_missing_namespace_reads_as_none(backend: RulesBackend) -> None:
    f = facts()
    del f["customer"]
    v = one(backend, "customer.name == None", f, message="{customer.name}")
    assert v.fired and v.message == "(none)"


def test_functions(backend: RulesBackend) -> None:
    f = facts()
    assert one(backend, "days_since(created) == 30", f).fired
    assert one(backend, "normalize_phone(phone) == '15550102030'", f).fired
    assert one(backend, "lower(customer.name) == 'acme' and len(actor.roles) == 1", f).fired
    assert one(backend, "abs(-amount) == 8000 and round(amount / 3, 2) == 2666.67", f).fired
    assert one(backend, "'sales_rep' in actor.roles and 'x' not in actor.roles", f).fired


def test_days_since_needs_now(backend: RulesBackend) -> None:
    f = facts()
    del f["now"]
    with pytest.raises(MissingFact):
        one(backend, "days_since(created) > 3", f)


def test_function_failure_is_wrapped(backend: RulesBackend) -> None:
    with pytest.raises(RuleEvaluationError):
        one(backend, "boom(key)", facts())


def test_rendering() -> None:
    assert render_value(D("3000.00")) == "3,000"
    assert render_value(D("1234.50")) == "1,234.50"
    assert render_value(1234567) == "1,234,567"
    assert render_value(True) == "yes" and render_value(False) == "no"
    assert render_value(None) == "(none)"
    assert render_value(dt.date(2024, 2, 1)) == "2024-02-01"
    assert render_value(dt.datetime(2024, 2, 1, 9, 30)) == "2024-02-01 09:30 UTC"
    shanghai = dt.timezone(dt.timedelta(hours=8))
    assert render_value(dt.datetime(2024, 2, 1, 17, 0, 5, tzinfo=shanghai)) == (
        "2024-02-01 09:00:05 UTC"
    )
    assert render_value(dt.datetime(2024, 2, 1, 9, 30), shanghai) == "2024-02-01 17:30 +08:00"
    assert render_value(D("-0.5")) == "-0.5"


def test_message_rendering_in_both(backend: RulesBackend) -> None:
    v = one(
        backend,
        "True",
        facts(amount=D("1234.50")),
        message="{amount} {qty * 1000} {prepayment_received} {created} {actor.roles}",
    )
    assert v.message == "1,234.50 3,000 no 2024-01-01 sales_rep"


def test_division_by_zero_is_none(backend: RulesBackend) -> None:
    assert one(backend, "amount / qty > 1", facts(qty=0)).fired is False
    assert one(backend, "amount / qty == None", facts(qty=0)).fired is True


def test_facts_accept_ints_strings_and_aware_datetimes(backend: RulesBackend) -> None:
    f = facts(amount=8000, created="2024-01-01", now=dt.datetime(2024, 1, 31, 12, tzinfo=dt.UTC))
    assert one(backend, "amount == 8000 and days_since(created) == 30", f).fired


def test_wrong_fact_type_is_invalid_data(backend: RulesBackend) -> None:
    from crmflow._errors import InvalidData

    with pytest.raises(InvalidData):
        one(backend, "qty > 1", facts(qty="three"))


def test_available_and_auto() -> None:
    names = available_backends()
    assert "python" in names
    assert make_backend("auto").name == names[0]
    with pytest.raises(RulesBackendError):
        make_backend("nope")


def test_foreign_group_rejected() -> None:
    a, b = make_backend("python"), make_backend("python")
    group = a.prepare("g", [CREDIT])
    with pytest.raises(RulesBackendError):
        b.evaluate(group, facts())


@durable_only
def test_two_durable_backends_same_group_name_keep_their_rules() -> None:
    a = make_backend("durable", namespace="engine-a")
    b = make_backend("durable", namespace="engine-b")
    c = make_backend("durable", namespace="engine-a")  # even a reused namespace is isolated
    try:
        ga = a.prepare(
            "so/v1/approve", [compile_rule("r", when="qty > 1", effect="block", schema=SCHEMA)]
        )
        gb = b.prepare(
            "so/v1/approve", [compile_rule("r", when="qty > 5", effect="block", schema=SCHEMA)]
        )
        gc = c.prepare(
            "so/v1/approve", [compile_rule("r", when="qty < 0", effect="block", schema=SCHEMA)]
        )
        f = facts(qty=3)
        assert a.evaluate(ga, f)[0].fired is True
        assert b.evaluate(gb, f)[0].fired is False
        assert c.evaluate(gc, f)[0].fired is False
    finally:
        a.close()
        b.close()
        c.close()


@durable_only
def test_durable_decides_in_durable_and_falls_back_when_inexact() -> None:
    b: Any = make_backend("durable", namespace="stats")
    try:
        group = b.prepare("g", [CREDIT])
        b.evaluate(group, facts())
        assert b.stats["durable"] == 1
        b.evaluate(group, facts(amount=D("0.000001")))  # more than 4 decimal places
        assert b.stats["python_runtime"] == 1
        b.evaluate(group, facts(amount=D("900000000000000")))  # beyond 2**53 once scaled
        assert b.stats["python_runtime"] == 2
        div = compile_rule("d", when="amount / 3 > 1", effect="warn", schema=SCHEMA)
        b.evaluate(b.prepare("g", [div]), facts())
        assert b.stats["python_static"] == 1
    finally:
        b.close()


@durable_only
def test_durable_under_threads() -> None:
    b = make_backend("durable", namespace="threads")
    rules = [compile_rule("r", when="qty > 5", effect="block", schema=SCHEMA)]
    group = b.prepare("g", rules)
    errors: list[str] = []

    def work(seed: int) -> None:
        for i in range(300):
            qty = (seed + i) % 11
            if b.evaluate(group, facts(qty=qty))[0].fired is not (qty > 5):
                errors.append(f"{seed}/{i}")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert errors == []


@durable_only
def test_durable_many_evaluations_do_not_leak_sessions() -> None:
    b = make_backend("durable", namespace="leak")
    group = b.prepare("g", [CREDIT])
    for i in range(5000):
        b.evaluate(group, facts(amount=D(i)))
    b.close()
    with pytest.raises(RulesBackendError):
        b.evaluate(group, facts())
