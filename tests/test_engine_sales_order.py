"""The sales order through its guards, on every storage back end."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from crmflow import (
    Actor,
    Engine,
    InvalidData,
    MissingFact,
    PermissionDenied,
    UnknownInstance,
    UnknownTrigger,
    VirtualClock,
)

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"

ALICE = Actor("alice", roles={"sales_rep"})
BOB = Actor("bob", roles={"sales_manager"})
WANG = Actor("wang", roles={"warehouse"})
FIONA = Actor("fiona", roles={"finance"})

ACME = {
    "name": "ACME",
    "credit_limit": Decimal("10000"),
    "open_balance": Decimal("5000"),
    "payment_terms": "net30",
}
PREPAID = dict(ACME, payment_terms="prepaid", open_balance=Decimal("0"))


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    with Engine.from_path(
        WORKFLOWS, store=store_url, clock=VirtualClock("2026-01-05T09:00"), load_entry_points=False
    ) as eng:
        yield eng


def _order(engine: Engine, key: str = "SO-1", amount: str = "8000") -> None:
    engine.start(
        "sales_order", key, actor=ALICE, data={"customer_id": "C1", "amount": Decimal(amount)}
    )


def test_credit_limit_asks_for_confirmation_with_the_excess(engine: Engine) -> None:
    _order(engine)
    result = engine.fire("SO-1", "approve", actor=ALICE, facts={"customer": ACME})
    assert not result.ok
    assert result.state == "draft"
    assert len(result.refusals) == 1
    refusal = result.refusals[0]
    assert (refusal.rule, refusal.effect) == ("credit_limit", "confirm")
    assert "3,000" in refusal.message or "3000" in refusal.message
    assert refusal.hint
    assert refusal.override_roles == ("sales_manager",)
    assert engine.get("SO-1").state == "draft"


def test_manager_override_passes_and_is_recorded(engine: Engine) -> None:
    _order(engine)
    engine.fire("SO-1", "approve", actor=ALICE, facts={"customer": ACME})
    result = engine.fire(
        "SO-1", "approve", actor=BOB, facts={"customer": ACME}, override="pays on time for years"
    )
    assert result.ok
    assert result.state == "approved"
    assert [o.rule for o in result.overrides] == ["credit_limit"]
    last = engine.history("SO-1")[-1]
    assert (last.actor, last.kind, last.reason) == ("bob", "override", "pays on time for years")
    assert last.details["overrides"][0]["rule"] == "credit_limit"


def test_override_by_a_sales_rep_is_refused(engine: Engine) -> None:
    _order(engine)
    result = engine.fire(
        "SO-1", "approve", actor=ALICE, facts={"customer": ACME}, override="I promise"
    )
    assert not result.ok
    assert [r.rule for r in result.refusals] == ["credit_limit"]
    assert "sales_manager" in result.refusals[0].message
    assert engine.get("SO-1").state == "draft"
    assert engine.history("SO-1")[-1].kind == "refused"
    for actor, can_override in ((ALICE, False), (BOB, True)):
        options = {
            o.trigger: o for o in engine.available("SO-1", actor=actor, facts={"customer": ACME})
        }
        assert not options["approve"].allowed
        assert options["approve"].needs_override is can_override


def test_within_the_limit_approves_without_override(engine: Engine) -> None:
    _order(engine, amount="5000")  # 5000 + 5000 == 10000: exactly at the limit passes
    result = engine.fire("SO-1", "approve", actor=ALICE, facts={"customer": ACME})
    assert result.ok, result.explain()


def test_prepayment_blocks_shipping_and_available_says_why(engine: Engine) -> None:
    _order(engine)
    assert engine.fire("SO-1", "approve", actor=ALICE, facts={"customer": PREPAID}).ok
    result = engine.fire("SO-1", "ship", actor=WANG, facts={"customer": PREPAID})
    assert not result.ok
    assert [(r.rule, r.effect) for r in result.refusals] == [("prepayment", "block")]
    assert "prepayment" in result.refusals[0].message
    options = {
        o.trigger: o for o in engine.available("SO-1", actor=WANG, facts={"customer": PREPAID})
    }
    assert not options["ship"].allowed
    assert [r.message for r in options["ship"].reasons] == [result.refusals[0].message]
    # After finance records the payment, shipping passes.
    assert engine.fire(
        "SO-1", "confirm_prepayment", actor=FIONA, data={"prepayment_received": True}
    ).ok
    assert engine.get("SO-1").state == "approved"
    assert engine.fire("SO-1", "ship", actor=WANG, facts={"customer": PREPAID}).ok


def test_roles_per_transition(engine: Engine) -> None:
    _order(engine)
    with pytest.raises(PermissionDenied, match="warehouse") as info:
        engine.fire("SO-1", "approve", actor=WANG, facts={"customer": ACME})
    assert info.value.required_roles == ("sales_rep", "sales_manager")
    assert engine.history("SO-1")[-1].kind == "denied"
    options = {o.trigger: o for o in engine.available("SO-1", actor=WANG, facts={"customer": ACME})}
    assert not options["approve"].allowed
    assert options["approve"].reasons[0].rule == "roles"


def test_full_lifecycle_and_history_chain(engine: Engine) -> None:
    _order(engine, amount="100")
    assert engine.fire("SO-1", "approve", actor=ALICE, facts={"customer": ACME}).ok
    assert engine.fire("SO-1", "ship", actor=WANG, facts={"customer": ACME}).ok
    assert engine.fire("SO-1", "invoice", actor=FIONA, data={"invoice_no": "INV-1"}).ok
    result = engine.fire("SO-1", "record_payment", actor=FIONA)
    assert result.ok and result.state == "paid"
    inst = engine.get("SO-1")
    assert inst.final and inst.version == 5 and inst.data["invoice_no"] == "INV-1"
    history = engine.history("SO-1")
    assert [h.seq for h in history] == list(range(1, len(history) + 1))
    assert [h.kind for h in history] == [
        "start",
        "transition",
        "transition",
        "transition",
        "transition",
    ]
    assert engine.verify("SO-1").ok
    assert engine.available("SO-1", actor=FIONA) == []


def test_idempotency_key_returns_the_first_result(engine: Engine) -> None:
    _order(engine, amount="100")
    first = engine.fire(
        "SO-1", "approve", actor=ALICE, facts={"customer": ACME}, idempotency_key="erp-1"
    )
    again = engine.fire(
        "SO-1", "approve", actor=ALICE, facts={"customer": ACME}, idempotency_key="erp-1"
    )
    assert first.ok and again.ok and again.replayed and not first.replayed
    assert again.version == first.version == engine.get("SO-1").version
    assert len(engine.history("SO-1")) == 2


def test_misuse_raises(engine: Engine) -> None:
    _order(engine)
    with pytest.raises(UnknownInstance):
        engine.fire("SO-404", "approve", actor=ALICE)
    with pytest.raises(UnknownTrigger, match="did you mean 'approve'"):
        engine.fire("SO-1", "aprove", actor=ALICE)
    with pytest.raises(UnknownTrigger, match="cannot fire from state 'draft'"):
        engine.fire("SO-1", "ship", actor=WANG)
    with pytest.raises(MissingFact, match="customer"):
        engine.fire("SO-1", "approve", actor=ALICE)
    with pytest.raises(InvalidData, match="did you mean 'amount'"):
        engine.fire("SO-1", "approve", actor=ALICE, data={"amout": 1}, facts={"customer": ACME})
    with pytest.raises(InvalidData, match="amount"):
        engine.start("sales_order", "SO-2", actor=ALICE, data={"customer_id": "C1"})
    assert engine.get("SO-1").version == 1


def test_facts_come_from_a_provider_only_when_a_rule_needs_them(store_url: str) -> None:
    from crmflow import hookimpl

    class Erp:
        def __init__(self) -> None:
            self.calls: list[tuple[str, tuple[str, ...]]] = []

        @hookimpl
        def crmflow_provide_facts(self, namespace, instance_key, workflow, data, needed):  # type: ignore[no-untyped-def]
            self.calls.append((namespace, tuple(needed)))
            return ACME if namespace == "customer" else None

    erp = Erp()
    with Engine.from_path(
        WORKFLOWS, store=store_url, plugins=[erp], load_entry_points=False
    ) as engine:
        _order(engine, amount="100")
        assert engine.fire("SO-1", "approve", actor=ALICE).ok
        assert erp.calls == [("customer", ("credit_limit", "name", "open_balance"))]
        assert engine.fire("SO-1", "ship", actor=WANG).ok
        assert engine.fire("SO-1", "invoice", actor=FIONA).ok  # no rule: no lookup
        assert len(erp.calls) == 2
