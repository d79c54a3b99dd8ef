"""Onboarding as a project: checklist tasks, dependencies, the gate to active, the hand-over.

Runs on every storage back end (memory, a SQLite file, PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from crmflow import (
    Actor,
    CrmflowError,
    Engine,
    InvalidData,
    PermissionDenied,
    UnknownTask,
    VirtualClock,
)

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
ORG = ROOT / "examples" / "org.yaml"  # alice and bob report to erin

ALICE = Actor("alice", roles={"sales_rep"})
BOB = Actor("bob", roles={"sales_rep"})
SAM = Actor("sam", roles={"sales_manager"})
FAY = Actor("fay", roles={"finance"})
WALT = Actor("walt", roles={"warehouse"})
QUINN = Actor("quinn", roles={"quality"})

ITEMS = [
    "payment_terms",
    "payment_method",
    "credit_limit",
    "price_list",
    "packaging",
    "delivery_address",
    "invoice_details",
    "contact_person",
    "quality_standard",
    "first_order_date",
    "prepayment_received",
    "first_shipment",
    "welcome_gift",
]
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    with Engine.from_path(
        WORKFLOWS, store=store_url, clock=VirtualClock(START), load_entry_points=False, org=ORG
    ) as eng:
        yield eng


def _confirming(engine: Engine, key: str = "C-1", owner: Actor = ALICE) -> None:
    engine.start("onboarding", key, actor=owner, data={"company": "Hangzhou Tea Co."})
    result = engine.fire(key, "start_confirmation", actor=owner)
    assert result.ok, result.explain()


def _finish_all_but(engine: Engine, key: str, skip: set[str]) -> None:
    """Complete every item not in ``skip``, each by someone allowed to."""
    doers = {
        "credit_limit": (SAM, Decimal("50000")),
        "invoice_details": (FAY, None),
        "prepayment_received": (FAY, None),
        "first_shipment": (WALT, None),
        "quality_standard": (QUINN, None),
        "first_order_date": (ALICE, "2026-02-01"),
    }
    for item in ITEMS:
        if item in skip:
            continue
        actor, result = doers.get(item, (ALICE, None))
        outcome = engine.complete_task(key, item, actor=actor, result=result)
        assert outcome.ok, outcome.explain()


# -- entering the state opens the checklist -------------------------------------------------


def test_entering_confirming_opens_every_item_as_a_task(engine: Engine) -> None:
    engine.start("onboarding", "C-1", actor=ALICE, data={"company": "Hangzhou Tea Co."})
    assert engine.tasks("C-1") == []
    result = engine.fire("C-1", "start_confirmation", actor=ALICE)
    assert result.effects["tasks_opened"] == ITEMS
    tasks = engine.tasks("C-1")
    assert [t.id for t in tasks] == ITEMS
    assert {t.status for t in tasks} == {"open"}
    by_id = {t.id: t for t in tasks}
    # Held by the owner unless the item names a role; due counted from entering the state.
    assert by_id["payment_terms"].assignee == "alice"
    assert by_id["payment_terms"].due_at == START + timedelta(days=2)
    assert (by_id["invoice_details"].assignee, by_id["invoice_details"].role) == (None, "finance")
    assert by_id["welcome_gift"].due_at is None
    assert by_id["first_shipment"].depends_on == ("prepayment_received",)
    history = engine.history("C-1")
    assert history[-1].details["tasks_opened"] == ITEMS
    assert engine.verify("C-1").ok


def test_first_shipment_waits_for_the_prepayment_and_the_refusal_names_it(engine: Engine) -> None:
    _confirming(engine)
    refused = engine.complete_task("C-1", "first_shipment", actor=WALT)
    assert not refused.ok
    assert refused.task.status == "open"
    (refusal,) = refused.refusals
    assert refusal.items == ("prepayment_received",)
    assert "prepayment_received" in refusal.message
    assert "complete prepayment_received first" in refusal.hint
    assert engine.history("C-1")[-1].kind == "refused"

    assert engine.complete_task("C-1", "prepayment_received", actor=FAY, note="bank slip").ok
    done = engine.complete_task("C-1", "first_shipment", actor=WALT, note="waybill SF123")
    assert done.ok
    assert done.task.status == "done"
    assert done.task.closed_by == "walt"
    assert done.task.note == "waybill SF123"
    assert engine.task("C-1", "first_shipment").status == "done"
    assert engine.verify("C-1").ok


def test_price_list_waits_for_the_credit_limit_which_carries_a_typed_result(
    engine: Engine,
) -> None:
    _confirming(engine)
    assert not engine.complete_task("C-1", "price_list", actor=ALICE).ok
    with pytest.raises(InvalidData, match="needs a result"):
        engine.complete_task("C-1", "credit_limit", actor=SAM)
    with pytest.raises(InvalidData):
        engine.complete_task("C-1", "credit_limit", actor=SAM, result="a lot")
    outcome = engine.complete_task("C-1", "credit_limit", actor=SAM, result="50000.00")
    assert outcome.task.result == Decimal("50000.00")
    assert engine.task("C-1", "credit_limit").result == Decimal("50000.00")
    assert engine.complete_task("C-1", "price_list", actor=ALICE).ok


# -- the gate to active ---------------------------------------------------------------------


def test_gate_to_active_lists_the_open_required_items(engine: Engine) -> None:
    _confirming(engine)
    _finish_all_but(engine, "C-1", {"payment_terms", "packaging", "quality_standard"})
    result = engine.fire("C-1", "activate", actor=ALICE)
    assert not result.ok
    assert result.state == "confirming"
    (refusal,) = result.refusals
    assert refusal.rule == "checklist:confirmation"
    assert set(refusal.items) == {"payment_terms", "packaging", "quality_standard"}
    assert "payment_terms" in refusal.message
    assert "defer the deferrable ones (packaging, quality_standard)" in refusal.hint
    # The optional item never blocks, so it is not listed.
    assert "welcome_gift" not in refusal.items
    option = next(o for o in engine.available("C-1", ALICE) if o.trigger == "activate")
    assert not option.allowed
    assert option.reasons[0].items == refusal.items


def test_gate_passes_with_the_deferrable_items_deferred_and_keeps_them(engine: Engine) -> None:
    _confirming(engine)
    _finish_all_but(engine, "C-1", {"packaging", "quality_standard", "welcome_gift"})
    later = START + timedelta(days=30)
    deferred = engine.defer_task(
        "C-1", "packaging", actor=ALICE, reason="customer decides after the trade fair", due=later
    )
    assert deferred.ok
    assert deferred.task.due_at == later
    assert engine.defer_task("C-1", "quality_standard", actor=QUINN, reason="lab busy").ok
    result = engine.fire("C-1", "activate", actor=ALICE)
    assert result.ok, result.explain()
    assert result.state == "active"
    # Leaving through the gate keeps the deferred and optional tasks to be done later.
    assert "tasks_cancelled" not in result.effects
    statuses = {t.id: t.status for t in engine.tasks("C-1")}
    assert statuses["packaging"] == statuses["quality_standard"] == "deferred"
    assert statuses["welcome_gift"] == "open"
    assert engine.complete_task("C-1", "packaging", actor=ALICE).ok


def test_a_required_item_that_is_not_deferrable_cannot_be_deferred(engine: Engine) -> None:
    _confirming(engine)
    outcome = engine.defer_task("C-1", "payment_terms", actor=ALICE, reason="later")
    assert not outcome.ok
    assert outcome.refusals[0].rule == "deferrable"
    with pytest.raises(InvalidData, match="reason"):
        engine.defer_task("C-1", "packaging", actor=ALICE, reason=" ")


def test_leaving_by_another_path_cancels_the_open_tasks(engine: Engine) -> None:
    _confirming(engine)
    assert engine.complete_task("C-1", "payment_terms", actor=ALICE).ok
    assert engine.defer_task("C-1", "packaging", actor=ALICE, reason="later").ok
    result = engine.fire("C-1", "abandon", actor=SAM, data={"close_reason": "went elsewhere"})
    assert result.ok
    assert set(result.effects["tasks_cancelled"]) == set(ITEMS) - {"payment_terms"}
    statuses = {t.id: t.status for t in engine.tasks("C-1")}
    assert statuses.pop("payment_terms") == "done"
    assert set(statuses.values()) == {"cancelled"}
    refused = engine.complete_task("C-1", "contact_person", actor=ALICE)
    assert not refused.ok
    assert "finished (abandoned)" in refused.refusals[0].message


def test_closing_the_customer_cancels_what_the_gate_carried_along(engine: Engine) -> None:
    _confirming(engine)
    _finish_all_but(engine, "C-1", {"packaging", "quality_standard", "welcome_gift"})
    assert engine.defer_task("C-1", "packaging", actor=ALICE, reason="later").ok
    assert engine.defer_task("C-1", "quality_standard", actor=QUINN, reason="later").ok
    assert engine.fire("C-1", "activate", actor=ALICE).ok
    assert engine.fire("C-1", "mark_dormant", actor=ALICE).ok
    assert engine.progress("C-1").deferred == 2  # still work to do while the customer lives
    result = engine.fire("C-1", "close", actor=SAM, data={"close_reason": "moved abroad"})
    assert set(result.effects["tasks_cancelled"]) == {
        "packaging",
        "quality_standard",
        "welcome_gift",
    }
    progress = engine.progress("C-1")
    assert (progress.open, progress.deferred, progress.cancelled) == (0, 0, 3)
    assert not engine.complete_task("C-1", "packaging", actor=ALICE).ok
    assert engine.verify("C-1").ok


def test_task_filters_refuse_unknown_names(engine: Engine) -> None:
    _confirming(engine)
    with pytest.raises(InvalidData) as info:
        engine.tasks("C-1", status="opne")
    assert "open" in info.value.suggestions
    with pytest.raises(InvalidData) as info:
        engine.tasks("C-1", checklist="confirmaton")
    assert info.value.suggestions == ("confirmation",)


# -- task operations: roles, status, history -------------------------------------------------


def test_task_operations_are_checked_by_role_and_recorded(engine: Engine) -> None:
    _confirming(engine)
    with pytest.raises(PermissionDenied):
        engine.complete_task("C-1", "invoice_details", actor=ALICE)  # finance's item
    with pytest.raises(PermissionDenied):
        engine.complete_task("C-1", "payment_terms", actor=BOB)  # alice's item
    assert engine.history("C-1")[-1].kind == "denied"
    # The checklist's managers may act on every item.
    assert engine.complete_task("C-1", "invoice_details", actor=SAM).ok
    again = engine.complete_task("C-1", "invoice_details", actor=FAY)
    assert not again.ok
    assert "already done by sam" in again.refusals[0].message
    reopened = engine.reopen_task("C-1", "invoice_details", actor=FAY, note="wrong bank account")
    assert reopened.ok
    assert reopened.task.status == "open"
    assert reopened.task.closed_by is None
    handed = engine.reassign_task("C-1", "payment_terms", to="bob", actor=ALICE)
    assert handed.ok and handed.task.assignee == "bob"
    assert engine.complete_task("C-1", "payment_terms", actor=BOB).ok
    with pytest.raises(UnknownTask, match="payment_term'") as info:
        engine.complete_task("C-1", "payment_term", actor=BOB)
    assert info.value.suggestions[0] == "payment_terms"

    task_entries = [h for h in engine.history("C-1") if h.kind == "task"]
    assert [(h.actor, h.details["operation"], h.details["task"]) for h in task_entries] == [
        ("sam", "complete", "invoice_details"),
        ("fay", "reopen", "invoice_details"),
        ("alice", "reassign", "payment_terms"),
        ("bob", "complete", "payment_terms"),
    ]
    assert task_entries[1].reason == "wrong bank account"
    assert task_entries[2].details["changes"]["assignee"] == ["alice", "bob"]
    assert engine.verify("C-1").ok
    assert engine.get("C-1").version == 2 + len(task_entries)


def test_reopening_a_task_that_done_tasks_depend_on_is_refused(engine: Engine) -> None:
    _confirming(engine)
    assert engine.complete_task("C-1", "prepayment_received", actor=FAY).ok
    assert engine.complete_task("C-1", "first_shipment", actor=WALT).ok
    refused = engine.reopen_task("C-1", "prepayment_received", actor=FAY)
    assert not refused.ok
    assert refused.refusals[0].items == ("first_shipment",)
    assert engine.reopen_task("C-1", "first_shipment", actor=WALT).ok
    assert engine.reopen_task("C-1", "prepayment_received", actor=FAY).ok


# -- reassignment hand-over -----------------------------------------------------------------


def test_reassigning_a_locked_customer_is_refused_with_the_rule_message(engine: Engine) -> None:
    _confirming(engine)
    assert engine.fire("C-1", "set_owner_lock", actor=SAM, data={"lock_owner": True}).ok
    preview = engine.preview_reassign("C-1", "bob", actor=SAM)
    assert not preview.allowed
    assert preview.refusals[0].rule == "reassignment_allowed"
    result = engine.reassign("C-1", "bob", actor=SAM)
    assert not result.ok
    assert result.refusals[0].message == (
        "Hangzhou Tea Co. is locked to its salesperson; the owner cannot be changed"
    )
    # B4: the refusal is a notice to the owner's manager, queued with the refusal.
    assert [(n["to"], n["status"]) for n in result.effects["notifications"]] == [
        ("erin", "pending")
    ]
    (notice,) = engine.store.outbox(instance_key="C-1")
    assert notice.subject == "Reassigning C-1 to bob was refused"
    assert "locked to its salesperson" in notice.body
    assert engine.get("C-1").owner == "alice"
    assert engine.history("C-1")[-1].kind == "refused"
    with pytest.raises(PermissionDenied):
        engine.reassign("C-1", "bob", actor=ALICE)


def test_preview_and_reassign_move_every_open_task_but_the_kept_ones(engine: Engine) -> None:
    _confirming(engine, "C-1", ALICE)
    _confirming(engine, "C-2", ALICE)
    _confirming(engine, "C-3", BOB)
    assert engine.complete_task("C-1", "payment_terms", actor=ALICE).ok
    own_items = [i for i in ITEMS if i not in {"credit_limit", "invoice_details"}]
    own_items = [
        i
        for i in own_items
        if i not in {"quality_standard", "prepayment_received", "first_shipment"}
    ]
    preview = engine.preview_reassign("C-1", "bob", actor=SAM)
    assert preview.allowed
    assert (preview.from_owner, preview.to_owner) == ("alice", "bob")
    assert preview.current is not None
    assert (preview.current.instances, preview.current.open_tasks) == (
        2,
        2 * len(own_items) - 1,
    )
    assert (preview.new.instances, preview.new.open_tasks) == (1, len(own_items))
    assert [t.id for t in preview.open_tasks] == [i for i in ITEMS if i != "payment_terms"]
    assert engine.get("C-1").owner == "alice"  # a preview writes nothing

    result = engine.reassign(
        "C-1", "bob", actor=SAM, keep={"contact_person"}, reason="alice moves to key accounts"
    )
    assert result.ok, result.explain()
    assert engine.get("C-1").owner == "bob"
    holders = {t.id: t.holder for t in engine.tasks("C-1", status={"open", "deferred"})}
    assert holders.pop("contact_person") == "alice"
    for role_item, role in [
        ("credit_limit", "sales_manager"),
        ("invoice_details", "finance"),
        ("quality_standard", "quality"),
        ("prepayment_received", "finance"),
        ("first_shipment", "warehouse"),
    ]:
        assert holders.pop(role_item) == f"role:{role}"
    assert set(holders.values()) == {"bob"}
    assert result.effects["tasks_kept"] == ["contact_person"]
    assert set(result.effects["tasks_moved"]) == set(holders)
    assert [n["to"] for n in result.effects["notifications"]] == ["alice", "bob", "erin"]
    queued = engine.store.outbox(instance_key="C-1")
    assert {(n.recipient, n.channel, n.status) for n in queued} == {
        ("alice", "inbox", "pending"),
        ("bob", "inbox", "pending"),
        ("erin", "inbox", "pending"),
    }
    assert "contact_person" in queued[0].body
    entry = engine.history("C-1")[-1]
    assert (entry.kind, entry.actor, entry.reason) == (
        "reassign",
        "sam",
        "alice moves to key accounts",
    )
    assert entry.details["owner"] == ["alice", "bob"]
    assert entry.details["tasks_kept"] == ["contact_person"]
    assert engine.verify("C-1").ok
    after = engine.preview_reassign("C-2", "bob", actor=SAM)
    assert after.current is not None
    assert (after.current.instances, after.new.instances) == (1, 2)


def test_reassign_refuses_unknown_kept_tasks_and_a_no_op(engine: Engine) -> None:
    _confirming(engine)
    assert engine.complete_task("C-1", "payment_terms", actor=ALICE).ok
    with pytest.raises(UnknownTask) as info:
        engine.reassign("C-1", "bob", actor=SAM, keep={"contact_persn"})
    assert info.value.suggestions == ("contact_person",)
    with pytest.raises(InvalidData, match="is done"):
        engine.reassign("C-1", "bob", actor=SAM, keep={"payment_terms"})
    with pytest.raises(InvalidData, match="set of task ids"):
        engine.reassign("C-1", "bob", actor=SAM, keep="contact_person")
    with pytest.raises(InvalidData, match="already owns"):
        engine.reassign("C-1", "alice", actor=SAM)
    # Someone without the role learns nothing about the tasks: the role is checked first.
    with pytest.raises(PermissionDenied):
        engine.reassign("C-1", "bob", actor=ALICE, keep={"no_such_task"})
    with pytest.raises(PermissionDenied):
        engine.preview_reassign("C-1", "bob", actor=ALICE)
    assert engine.get("C-1").owner == "alice"


def test_a_workflow_without_a_reassignment_section_keeps_its_owners(engine: Engine) -> None:
    engine.start("sales_order", "SO-1", actor=ALICE, data={"customer_id": "C", "amount": "10"})
    with pytest.raises(PermissionDenied, match="no 'reassignment' section") as denied:
        engine.reassign("SO-1", "mallory", actor=Actor("mallory"))
    assert "add 'reassignment: {roles: [...]}'" in str(denied.value)
    assert "requires one of the roles" not in str(denied.value)
    assert engine.get("SO-1").owner == "alice"


def test_an_idempotency_key_reused_for_another_command_is_an_error(engine: Engine) -> None:
    _confirming(engine)
    engine.record_cost("C-1", "samples", "10", actor=ALICE, idempotency_key="k1")
    with pytest.raises(CrmflowError, match="another"):
        engine.fire("C-1", "abandon", actor=SAM, idempotency_key="k1")
    with pytest.raises(CrmflowError, match="another"):
        engine.reassign("C-1", "bob", actor=SAM, idempotency_key="k1")
    with pytest.raises(CrmflowError, match="another"):
        engine.record_cost("C-1", "greetings", "999", actor=ALICE, idempotency_key="k1")
    engine.reassign("C-1", "bob", actor=SAM, idempotency_key="k2")
    with pytest.raises(CrmflowError, match="not 'carol'"):
        engine.reassign("C-1", "carol", actor=SAM, idempotency_key="k2")


def test_a_retried_reassign_with_its_idempotency_key_is_replayed(engine: Engine) -> None:
    _confirming(engine)
    first = engine.reassign("C-1", "bob", actor=SAM, idempotency_key="hr-42")
    again = engine.reassign("C-1", "bob", actor=SAM, idempotency_key="hr-42")
    assert again.replayed and again.version == first.version
    assert engine.get("C-1").version == first.version


# -- costs ----------------------------------------------------------------------------------


def test_costs_by_category_and_by_instance(engine: Engine) -> None:
    _confirming(engine, "C-1")
    _confirming(engine, "C-2")
    engine.record_cost("C-1", "customer_development", "800", actor=ALICE, note="dinner")
    engine.record_cost("C-1", "greetings", Decimal("120.50"), actor=ALICE, note="mooncakes")
    engine.record_cost("C-2", "greetings", 60, actor=SAM)
    engine.record_cost("C-2", "holiday_sponsorship", "2000.00", actor=SAM)
    engine.record_cost("C-2", "holiday_sponsorship", "-500", actor=SAM, note="partly refunded")
    assert engine.cost_totals() == {
        "customer_development": Decimal("800"),
        "greetings": Decimal("180.50"),
        "holiday_sponsorship": Decimal("1500.00"),
    }
    assert engine.cost_totals(by="instance") == {
        "C-1": Decimal("920.50"),
        "C-2": Decimal("1560.00"),
    }
    assert engine.cost_totals("C-1") == {
        "customer_development": Decimal("800"),
        "greetings": Decimal("120.50"),
    }
    entries = engine.costs("C-1")
    assert [(c.category, c.amount, c.actor, c.currency) for c in entries] == [
        ("customer_development", Decimal("800"), "alice", "CNY"),
        ("greetings", Decimal("120.50"), "alice", "CNY"),
    ]
    assert entries[0].seq < entries[1].seq
    assert [h.kind for h in engine.history("C-1")][-2:] == ["cost", "cost"]
    assert engine.verify("C-1").ok


def test_bad_costs_are_refused_and_change_nothing(engine: Engine) -> None:
    _confirming(engine)
    version = engine.get("C-1").version
    with pytest.raises(InvalidData) as info:
        engine.record_cost("C-1", "greeting", "10", actor=ALICE)
    assert info.value.suggestions == ("greetings",)
    with pytest.raises(InvalidData, match="float"):
        engine.record_cost("C-1", "greetings", 10.5, actor=ALICE)  # type: ignore[arg-type]
    with pytest.raises(InvalidData):
        engine.record_cost("C-1", "greetings", "ten", actor=ALICE)
    with pytest.raises(InvalidData):
        engine.record_cost("C-1", "greetings", "0", actor=ALICE)
    with pytest.raises(InvalidData, match="out of range"):
        engine.record_cost("C-1", "greetings", "9E+999999", actor=ALICE)
    with pytest.raises(InvalidData, match="decimal places"):
        engine.record_cost("C-1", "greetings", "0.0000001", actor=ALICE)
    with pytest.raises(PermissionDenied):
        engine.record_cost("C-1", "greetings", "10", actor=FAY)
    assert engine.costs("C-1") == []
    assert engine.get("C-1").version == version


def test_a_retried_cost_with_its_idempotency_key_is_recorded_once(engine: Engine) -> None:
    _confirming(engine)
    first = engine.record_cost("C-1", "samples", "35", actor=ALICE, idempotency_key="erp-9")
    again = engine.record_cost("C-1", "samples", "35", actor=ALICE, idempotency_key="erp-9")
    assert again == first
    assert len(engine.costs("C-1")) == 1
