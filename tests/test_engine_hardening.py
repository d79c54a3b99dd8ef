"""Edges a host relies on: threads on nested workflows, reserved names, who may write what."""

from __future__ import annotations

import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from crmflow import (
    Actor,
    CrmflowError,
    DefinitionError,
    Engine,
    InvalidData,
    UnknownInstance,
    load_workflow_text,
)

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
REP = Actor("rep", roles={"sales_rep"})
ALICE = Actor("alice", roles={"sales_rep"})
WANG = Actor("wang", roles={"warehouse"})
PREPAID = {
    "name": "ACME",
    "credit_limit": Decimal("10000"),
    "open_balance": Decimal("0"),
    "payment_terms": "prepaid",
}


def test_threads_firing_on_a_nested_workflow(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with Engine.from_path(WORKFLOWS, rules_backend="python", load_entry_points=False) as engine:

        def work(n: int) -> None:
            try:
                for i in range(40):
                    key = f"D-{n}-{i}"
                    engine.start("deal", key, actor=REP, data={"company": "X"})
                    for trigger in ("qualify", "confirm_intent", "negotiate", "lose"):
                        assert engine.fire(key, trigger, actor=REP).ok
                    assert engine.get(key).state == "lost"
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []


@pytest.mark.parametrize(
    ("snippet", "path"),
    [("fields: {state: str}", "fields.state"), ("facts: {actor: {id: str}}", "facts.actor")],
    ids=["field-named-state", "facts-named-actor"],
)
def test_reserved_names_are_refused(snippet: str, path: str) -> None:
    doc = f"""
workflow: w
{snippet}
states:
  - {{name: a, initial: true}}
  - {{name: b, final: true}}
transitions:
  - {{trigger: go, from: a, to: b}}
"""
    with pytest.raises(DefinitionError, match="reserved") as info:
        Engine([load_workflow_text(doc)], load_entry_points=False)
    assert info.value.path == path
    assert info.value.line == 3


def test_a_trigger_writes_only_its_declared_fields() -> None:
    with Engine.from_path(WORKFLOWS, load_entry_points=False) as engine:
        engine.start("sales_order", "SO-1", actor=ALICE, data={"customer_id": "C", "amount": 1})
        assert engine.fire("SO-1", "approve", actor=ALICE, facts={"customer": PREPAID}).ok
        with pytest.raises(InvalidData, match="trigger 'ship' may not change it") as info:
            engine.fire(
                "SO-1",
                "ship",
                actor=WANG,
                data={"prepayment_received": True},
                facts={"customer": PREPAID},
            )
        assert info.value.field == "prepayment_received"
        assert engine.get("SO-1").state == "approved"


def test_an_idempotency_key_belongs_to_one_command() -> None:
    with Engine.from_path(WORKFLOWS, load_entry_points=False) as engine:
        engine.start("sales_order", "SO-1", actor=ALICE, data={"customer_id": "C", "amount": 1})
        assert engine.fire(
            "SO-1", "revise", actor=ALICE, data={"amount": 2}, idempotency_key="k1"
        ).ok
        with pytest.raises(CrmflowError, match="was used for 'revise'"):
            engine.fire("SO-1", "cancel", actor=ALICE, idempotency_key="k1")
        assert engine.get("SO-1").state == "draft"


def test_verify_notices_deleted_newest_entries(sqlite_url: str) -> None:
    with Engine.from_path(WORKFLOWS, store=sqlite_url, load_entry_points=False) as engine:
        engine.start("sales_order", "SO-1", actor=ALICE, data={"customer_id": "C", "amount": 1})
        assert engine.fire("SO-1", "cancel", actor=ALICE).ok
        assert engine.verify("SO-1").ok
        with pytest.raises(UnknownInstance):
            engine.verify("SO-404")
        path = sqlite_url.removeprefix("sqlite:///").split("?")[0]
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM crmflow_history WHERE seq = 2")
        report = engine.verify("SO-1")
        assert not report.ok and "missing" in report.reason


def test_available_lists_bad_facts_as_a_reason() -> None:
    with Engine.from_path(WORKFLOWS, load_entry_points=False) as engine:
        engine.start("sales_order", "SO-1", actor=ALICE, data={"customer_id": "C", "amount": 1})
        bad = dict(PREPAID, credit_limit="n/a")
        options = {
            o.trigger: o for o in engine.available("SO-1", actor=ALICE, facts={"customer": bad})
        }
        assert not options["approve"].allowed
        assert "credit_limit" in options["approve"].reasons[0].message
        assert options["cancel"].allowed
        with pytest.raises(InvalidData, match="expected a mapping"):
            engine.fire("SO-1", "approve", actor=ALICE, facts={"customer": "C-1"})


def test_a_decimal_rescaled_is_recorded_as_a_change() -> None:
    with Engine.from_path(WORKFLOWS, load_entry_points=False) as engine:
        engine.start(
            "sales_order", "SO-1", actor=ALICE, data={"customer_id": "C", "amount": Decimal("0.1")}
        )
        result = engine.fire("SO-1", "revise", actor=ALICE, data={"amount": Decimal("0.10")})
        assert result.effects["data_changed"] == {"amount": [Decimal("0.1"), Decimal("0.10")]}
        assert str(engine.get("SO-1").data["amount"]) == "0.10"


NESTED = """
workflow: n
roles: [rep, boss]
states:
  - {name: a, initial: true}
  - name: p
    states:
      - {name: q1, initial: true}
      - q2
  - {name: z, final: true}
transitions:
  - {trigger: enter, from: a, to: p}
  - {trigger: poke, from: p, roles: [boss]}
  - {trigger: poke, from: p.q1, to: p.q2, roles: [rep]}
  - {trigger: out, from: p, to: z}
"""


def test_a_sub_state_transition_overrides_an_internal_one_on_its_parent() -> None:
    both = Actor("x", roles={"rep", "boss"})
    with Engine([load_workflow_text(NESTED)], load_entry_points=False) as engine:
        engine.start("n", "K", actor=both)
        assert engine.fire("K", "enter", actor=both).state == "p.q1"
        options = {o.trigger: o for o in engine.available("K", actor=both)}
        assert options["poke"].dest == "p.q2"
        assert engine.fire("K", "poke", actor=Actor("r", roles={"rep"})).state == "p.q2"
        # In q2 only the parent's internal poke applies: the boss may, and nothing moves.
        result = engine.fire("K", "poke", actor=Actor("b", roles={"boss"}))
        assert (result.ok, result.state, result.version) == (True, "p.q2", 4)
